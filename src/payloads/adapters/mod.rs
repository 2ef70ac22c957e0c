//! Payload store adapters.

pub mod fs;
pub mod s3;

pub use fs::FsPayloadStore;
pub use s3::{S3PayloadStore, S3Settings};
