//! Offloaded payloads: objects written at deterministic keys, so a retried write overwrites the
//! same object harmlessly.
//!
//! Adapters: S3 (any S3-compatible server) and files under `SLUICE_DATA_DIR`.

pub mod adapters;

use async_trait::async_trait;
use bytes::Bytes;

use crate::dependency::DependencyError;

/// Where an item's offloaded payload is written. The key is also the item's stored reference.
pub fn payload_key(batch_id: &str, index: u32) -> String {
    format!("batches/{batch_id}/items/{index}/payload")
}

#[async_trait]
pub trait PayloadStore: Send + Sync + 'static {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), DependencyError>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, DependencyError>;
    async fn ping(&self) -> Result<(), DependencyError>;
}
