//! `localml.v1.Catalog`: model files pushed to the scheduler and the versions made of
//! them (admin scope; the auth layer checks it). The catalog itself is
//! `crate::catalog`; here the streams: uploads written chunk by chunk on blocking threads,
//! fetches read into a small bounded channel, so memory stays a few chunks whatever the
//! file's size.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use localml_proto::localml::v1::catalog_server::Catalog as CatalogApi;
use localml_proto::localml::v1::*;
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::{blobs, blocking, Catalog, CatalogError};

pub struct CatalogService {
    pub catalog: Arc<Catalog>,
    /// Bytes per fetched chunk (under the port's message limit).
    pub chunk_bytes: usize,
}

type Answer<T> = Result<Response<T>, Status>;

/// How long an upload may send nothing before it is given up (and kept for a resume).
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
type Chunks = Pin<Box<dyn Stream<Item = Result<BlobChunk, Status>> + Send>>;

impl CatalogService {
    async fn upload(&self, mut chunks: Streaming<BlobChunk>) -> Result<BlobStatusResponse, Status> {
        let first = chunks.message().await?.ok_or(CatalogError::NoHeader)?;
        if first.sha256.is_empty() {
            return Err(CatalogError::NoHeader.into());
        }
        let (sha256, size, offset) = (first.sha256.clone(), first.size, first.offset);
        let rest = chunks.map(|c| c.map(|c| c.data));
        let data = futures::stream::iter([Ok(first.data)]).chain(rest);
        self.upload_data(sha256, size, offset, data).await
    }

    /// Writes `data` into blob `sha256` of `size` bytes from `offset` (what the scheduler
    /// already holds), chunk by chunk on blocking threads; an interrupted upload is kept
    /// for a resume. The gRPC upload and the web page's (REST) both come here.
    pub async fn upload_data(
        &self,
        sha256: String,
        size: u64,
        offset: u64,
        data: impl Stream<Item = Result<bytes::Bytes, Status>>,
    ) -> Result<BlobStatusResponse, Status> {
        let blobs = Arc::clone(&self.catalog.blobs);
        let upload = {
            let sha256 = sha256.clone();
            blocking(move || blobs.begin(&sha256, size, offset)).await?
        };
        // A sender that went quiet (a phone that changed networks, a half-open
        // connection) gives the file back to the next upload rather than hold it.
        let quiet = || {
            Status::deadline_exceeded(format!(
                "no bytes of blob {sha256} for {} s: the upload stopped; what arrived is kept, send the rest",
                UPLOAD_IDLE.as_secs()
            ))
        };
        let held = self
            .catalog
            .receive(upload, data, UPLOAD_IDLE, quiet)
            .await?;
        tracing::info!(sha256 = %sha256, bytes = held.bytes, "blob uploaded");
        Ok(BlobStatusResponse {
            sha256,
            complete: held.complete,
            received: held.bytes,
        })
    }
}

#[tonic::async_trait]
impl CatalogApi for CatalogService {
    type FetchBlobStream = Chunks;

    async fn blob_status(&self, r: Request<BlobStatusRequest>) -> Answer<BlobStatusResponse> {
        let sha256 = r.into_inner().sha256;
        blobs::check_sha256(&sha256)?;
        let blobs = Arc::clone(&self.catalog.blobs);
        let held = {
            let sha256 = sha256.clone();
            blocking(move || Ok(blobs.held(&sha256)?)).await?
        };
        // A push asks before it uses a blob: keep it from the collector meanwhile.
        if held.bytes > 0 {
            self.catalog.uploaded(&sha256);
        }
        Ok(Response::new(BlobStatusResponse {
            sha256,
            complete: held.complete,
            received: held.bytes,
        }))
    }

    async fn upload_blob(&self, r: Request<Streaming<BlobChunk>>) -> Answer<BlobStatusResponse> {
        self.upload(r.into_inner()).await.map(Response::new)
    }

    async fn fetch_blob(&self, r: Request<FetchBlobRequest>) -> Answer<Chunks> {
        let r = r.into_inner();
        let chunk = localml_serving::blobs::chunk_size(r.max_chunk_bytes, self.chunk_bytes);
        let chunks = self
            .catalog
            .fetch_anywhere(&r.sha256, r.offset, chunk)
            .await?;
        Ok(Response::new(
            chunks.map(|c| c.map_err(Status::from)).boxed(),
        ))
    }

    async fn put_model(&self, r: Request<CatalogModel>) -> Answer<CatalogModel> {
        Ok(Response::new(self.catalog.put(r.into_inner()).await?))
    }

    async fn list_catalog(&self, _: Request<ListCatalogRequest>) -> Answer<ListCatalogResponse> {
        let models = self.catalog.list().await?;
        Ok(Response::new(ListCatalogResponse { models }))
    }

    async fn get_catalog_model(&self, r: Request<CatalogModelRef>) -> Answer<CatalogModel> {
        let r = r.into_inner();
        Ok(Response::new(self.catalog.get(&r.name, &r.version).await?))
    }

    async fn delete_catalog_model(
        &self,
        r: Request<DeleteCatalogModelRequest>,
    ) -> Answer<DeleteCatalogModelResponse> {
        let r = r.into_inner();
        Ok(Response::new(
            self.catalog.delete(&r.name, &r.version, r.force).await?,
        ))
    }

    async fn put_runtime(&self, r: Request<RuntimeBuild>) -> Answer<RuntimeBuild> {
        let put = self.catalog.put_runtime(r.into_inner()).await?;
        // The build it replaced may have left files nothing uses.
        if let Err(e) = self.catalog.collect_garbage().await {
            tracing::warn!(error = %e, "cannot remove unused files after a runtime push");
        }
        Ok(Response::new(put))
    }

    async fn list_runtimes(&self, _: Request<ListRuntimesRequest>) -> Answer<ListRuntimesResponse> {
        Ok(Response::new(ListRuntimesResponse {
            runtimes: self.catalog.runtimes().await?,
        }))
    }
}
