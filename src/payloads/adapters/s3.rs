//! Offloaded payloads in S3 or any S3-compatible server.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use bytes::Bytes;

use crate::dependency::{Dependency, DependencyError};
use crate::payloads::PayloadStore;

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
}

/// The most keys one ListObjectsV2 page holds and one DeleteObjects call takes.
const MAX_KEYS_PER_PAGE: u64 = 1_000;

pub struct S3PayloadStore {
    client: Client,
    bucket: String,
}

impl S3PayloadStore {
    /// Builds a client from the usual AWS credential sources (environment, profile, instance role).
    pub async fn connect(settings: &S3Settings) -> Self {
        let region = Region::new(
            settings
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        );
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(30))
            // Caps a call with all its retries, so a stuck server costs a request at most this.
            .operation_timeout(Duration::from_secs(60))
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            .timeout_config(timeouts);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
        }
    }
}

/// Transport failures, timeouts and 5xx answers are worth a retry; anything else is not.
fn classify<E>(error: SdkError<E, HttpResponse>) -> DependencyError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let transient = match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    };
    if transient {
        DependencyError::unavailable(Dependency::PayloadStore, error)
    } else {
        DependencyError::failed(Dependency::PayloadStore, error)
    }
}

#[async_trait]
impl PayloadStore for S3PayloadStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), DependencyError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, DependencyError> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(SdkError::ServiceError(service)) if service.err().is_no_such_key() => {
                return Ok(None);
            }
            Err(error) => return Err(classify(error)),
        };
        let body = object
            .body
            .collect()
            .await
            .map_err(|error| DependencyError::unavailable(Dependency::PayloadStore, error))?;
        Ok(Some(body.into_bytes()))
    }

    async fn delete(&self, key: &str) -> Result<(), DependencyError> {
        // S3 answers a delete of a missing key with success.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn delete_prefix(&self, prefix: &str, limit: u32) -> Result<u64, DependencyError> {
        // Pages of at most 1000 keys (the most one DeleteObjects takes), each listed from the
        // start of the prefix, since the page before is gone.
        let mut deleted = 0u64;
        while deleted < u64::from(limit) {
            let page = (u64::from(limit) - deleted).min(MAX_KEYS_PER_PAGE) as i32;
            let listed = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(page)
                .send()
                .await
                .map_err(classify)?;
            let keys: Vec<ObjectIdentifier> = listed
                .contents()
                .iter()
                .filter_map(|object| object.key())
                .filter_map(|key| ObjectIdentifier::builder().key(key).build().ok())
                .collect();
            if keys.is_empty() {
                break;
            }
            let count = keys.len() as u64;
            let delete = Delete::builder()
                .set_objects(Some(keys))
                .quiet(true)
                .build()
                .map_err(|error| DependencyError::failed(Dependency::PayloadStore, error))?;
            let answer = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(classify)?;
            if let Some(error) = answer.errors().first() {
                return Err(DependencyError::unavailable(
                    Dependency::PayloadStore,
                    std::io::Error::other(format!(
                        "could not delete {}: {}",
                        error.key().unwrap_or("an object"),
                        error.message().unwrap_or("no reason given")
                    )),
                ));
            }
            deleted += count;
            if listed.is_truncated() != Some(true) {
                break;
            }
        }
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), DependencyError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(classify)?;
        Ok(())
    }
}
