//! Offloaded payloads: objects written at keys named by their content, so a retried write of the
//! same payload overwrites the same object harmlessly, and a different payload for the same index
//! can never replace the one its index holds (first wins, for offloaded payloads too).
//!
//! Adapters: S3 (any S3-compatible server) and files under `SLUICE_DATA_DIR`.

pub mod adapters;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::dependency::DependencyError;

/// Where an item's offloaded payload is written: under the item's index, named by the SHA-256 of
/// the payload's bytes. The key is also the item's stored reference.
pub fn payload_key(batch_id: &str, index: u32, payload: &[u8]) -> String {
    let digest = hex::encode(Sha256::digest(payload));
    format!("batches/{batch_id}/items/{index}/sha256-{digest}")
}

#[async_trait]
pub trait PayloadStore: Send + Sync + 'static {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), DependencyError>;
    async fn get(&self, key: &str) -> Result<Option<Bytes>, DependencyError>;
    /// Removes the object at `key`; a key with no object is not an error.
    async fn delete(&self, key: &str) -> Result<(), DependencyError>;
    /// Removes up to `limit` of the objects whose keys start with `prefix` (deleting a batch's
    /// payloads: [`batch_prefix`]); returns how many it removed. Fewer than `limit` means none is
    /// left.
    async fn delete_prefix(&self, prefix: &str, limit: u32) -> Result<u64, DependencyError>;
    async fn ping(&self) -> Result<(), DependencyError>;
}

/// The prefix under which every offloaded payload of a batch is written ([`payload_key`]).
pub fn batch_prefix(batch_id: &str) -> String {
    format!("batches/{batch_id}/")
}

#[cfg(test)]
mod tests {
    use super::{batch_prefix, payload_key};

    #[test]
    fn payload_keys_name_the_index_and_the_content() {
        let key = payload_key("batch_1", 7, b"{}");
        assert_eq!(
            key,
            "batches/batch_1/items/7/sha256-44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        assert_ne!(key, payload_key("batch_1", 7, b"[]"));
        assert_ne!(key, payload_key("batch_1", 8, b"{}"));
        assert!(key.starts_with(&batch_prefix("batch_1")));
        assert!(!payload_key("batch_10", 7, b"{}").starts_with(&batch_prefix("batch_1")));
    }
}
