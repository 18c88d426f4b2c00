//! `localml.v1.Backup`: streams the cluster state for `localml backup` (admin scope; the
//! auth layer checks it). What goes in and the chunking are `crate::backup`; the stream
//! holds the store's listing and one chunk, never one message with everything.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use localml_proto::localml::v1::backup_server::Backup;
use localml_proto::localml::v1::{BackupChunk, BackupInfo, BackupRequest};
use localml_store::{Store, StoreError};
use tonic::{Request, Response, Status};

use crate::backup::{chunks, in_backup};

pub struct BackupService {
    pub store: Arc<dyn Store>,
    /// Bytes of keys and values per streamed chunk.
    pub chunk_bytes: usize,
}

/// The one place this service's errors become statuses.
fn status(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

type Chunks = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Backup for BackupService {
    type BackupStream = Chunks;

    async fn backup(&self, r: Request<BackupRequest>) -> Result<Response<Chunks>, Status> {
        let by = crate::auth::principal(&r).map(|p| p.key.clone());
        // One listing: every key at one revision.
        let (kvs, revision) = self.store.list("").await.map_err(status)?;
        let records = kvs.iter().filter(|kv| in_backup(kv)).count() as u64;
        let info = BackupInfo {
            revision,
            backend: self.store.backend().to_string(),
            created_unix_ms: localml_proto::time::unix_ms(),
            records,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        tracing::info!(records, revision, by = ?by, "backup read (it holds the cluster CA's private key)");
        let stream = futures::stream::iter(chunks(kvs, info, self.chunk_bytes).map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}
