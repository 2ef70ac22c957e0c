//! Offloaded payloads as files under a directory, for the embedded mode.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::dependency::{Dependency, DependencyError};
use crate::payloads::PayloadStore;

pub struct FsPayloadStore {
    root: PathBuf,
}

impl FsPayloadStore {
    pub async fn open(root: &Path) -> Result<Self, DependencyError> {
        tokio::fs::create_dir_all(root).await.map_err(unavailable)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys are built by Sluice from batch ids and numbers; never from client text.
        self.root.join(key)
    }
}

fn unavailable(error: std::io::Error) -> DependencyError {
    DependencyError::unavailable(Dependency::PayloadStore, error)
}

#[async_trait]
impl PayloadStore for FsPayloadStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), DependencyError> {
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(unavailable)?;
        }
        // Write then rename, so a reader never sees half an object and a retry replaces it whole.
        let partial = path.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
        tokio::fs::write(&partial, &body)
            .await
            .map_err(unavailable)?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(unavailable)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, DependencyError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(body) => Ok(Some(Bytes::from(body))),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), DependencyError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(error) if error.kind() != ErrorKind::NotFound => Err(unavailable(error)),
            _ => Ok(()),
        }
    }

    async fn delete_prefix(&self, prefix: &str, limit: u32) -> Result<u64, DependencyError> {
        // Prefixes are directories here (`batches/{id}/`): its files, depth first.
        let top = self.path(prefix);
        let mut files = Vec::new();
        let mut directories = vec![top.clone()];
        while let Some(directory) = directories.pop() {
            let mut entries = match tokio::fs::read_dir(&directory).await {
                Ok(entries) => entries,
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => return Err(unavailable(error)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(unavailable)? {
                if entry.file_type().await.map_err(unavailable)?.is_dir() {
                    directories.push(entry.path());
                } else if files.len() < limit as usize {
                    files.push(entry.path());
                }
            }
        }
        for file in &files {
            match tokio::fs::remove_file(file).await {
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    return Err(unavailable(error));
                }
                _ => {}
            }
        }
        if files.len() < limit as usize {
            // Every file is gone: the empty directories go too.
            match tokio::fs::remove_dir_all(&top).await {
                Err(error) if error.kind() != ErrorKind::NotFound => {
                    return Err(unavailable(error));
                }
                _ => {}
            }
        }
        Ok(files.len() as u64)
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        tokio::fs::metadata(&self.root).await.map_err(unavailable)?;
        Ok(())
    }
}
