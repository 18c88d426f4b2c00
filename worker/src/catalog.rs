//! Models from the scheduler's catalog, for an on-demand worker assigned a model its
//! repository lacks (docs/models.md). Files are kept by sha256 under
//! `<data_dir>/catalog/blobs/`, downloaded resumably (a `.partial` file grows until it is
//! whole), checked against their sha256 before each load (a corrupt file is discarded and
//! fetched again), and linked into a repository of Triton's layout,
//! `<data_dir>/catalog/models/<name>/<version>/`, which the loader reads as any other.

use std::path::{Component, Path, PathBuf};

use localml_proto::localml::v1::cluster_client::ClusterClient;
use localml_proto::localml::v1::peers_client::PeersClient;
use localml_proto::localml::v1::{BlobChunk, CatalogPeer};
use localml_proto::localml::v1::{
    CatalogModel, CatalogModelRef, FetchBlobRequest, GetRuntimeRequest, RuntimeBuild,
};
use tokio::io::AsyncWriteExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long connecting to a peer worker may take before the next one is tried.
const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// A source (peer or scheduler) that sends nothing for this long is given up.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Peers a worker serves files to at once; more are told to go elsewhere.
const PEER_UPLOADS: usize = 4;
/// Bytes per chunk a worker sends a peer.
const PEER_CHUNK_BYTES: usize = 1 << 20;

use crate::repository::{ModelSource, RepositoryError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the scheduler answered {code:?}: {message}")]
    Scheduler { code: tonic::Code, message: String },
    #[error("file '{path}' arrived with sha256 {actual}, not {expected}; discarded")]
    Hash {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("the catalog entry is unusable: {0}")]
    Entry(String),
    /// The scheduler has no ONNX Runtime build of the flavor asked for.
    #[error("{0}")]
    NoBuild(String),
    #[error("the model cache {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

impl From<tonic::Status> for FetchError {
    fn from(s: tonic::Status) -> FetchError {
        FetchError::Scheduler {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What fetching a model version did.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub source: ModelSource,
    /// Bytes received for it from the scheduler, and from peer workers.
    pub from_scheduler: u64,
    pub from_peers: u64,
    /// Cached files found corrupt and fetched again.
    pub repaired: usize,
}

pub struct ModelCache {
    root: PathBuf,
    /// One fetch at a time: two models (or two deployments of one) may share a file, and
    /// its `.partial` must have one writer.
    fetching: tokio::sync::Mutex<()>,
    /// Peers served at once (each holds a reading thread and a few chunks).
    uploads: std::sync::Arc<tokio::sync::Semaphore>,
    /// Bytes of model files received from the scheduler and from peers, and sent to
    /// peers, since the worker started (`/metrics`).
    pub from_scheduler: std::sync::atomic::AtomicU64,
    pub from_peers: std::sync::atomic::AtomicU64,
    pub to_peers: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The most bytes per second to receive at, on average (`fetch_rate`).
    rate: Option<u64>,
}

impl ModelCache {
    /// A cache under `root`. Links left by an earlier run go (this run has loaded
    /// nothing from the cache yet), so their files can be evicted; the files stay.
    pub fn new(root: PathBuf) -> ModelCache {
        let _ = std::fs::remove_dir_all(root.join("models"));
        ModelCache {
            root,
            fetching: tokio::sync::Mutex::new(()),
            uploads: std::sync::Arc::new(tokio::sync::Semaphore::new(PEER_UPLOADS)),
            from_scheduler: Default::default(),
            from_peers: Default::default(),
            to_peers: Default::default(),
            rate: None,
        }
    }

    /// Receives at most `rate` bytes per second, on average over each file.
    pub fn with_rate(mut self, rate: Option<u64>) -> ModelCache {
        self.rate = rate.filter(|r| *r > 0);
        self
    }

    /// Chunks to ask for: with a rate limit, a quarter of a second's worth (at least
    /// 4 KiB), so the bytes arrive spread out rather than in 1 MiB bursts; else the
    /// sender's own size.
    fn max_chunk(&self) -> u32 {
        self.rate.map_or(0, |r| (r / 4).clamp(4096, 1 << 20) as u32)
    }

    /// Forgets a version's linked files (after an unload): its blobs stay, and become
    /// candidates for eviction.
    pub fn unlink(&self, model_file: &Path) {
        if let Some(dir) = model_file.parent().filter(|d| d.starts_with(&self.root)) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Deletes cached files that no linked version uses, least recently used first, until
    /// the cache takes at most `budget` bytes; returns (files, bytes) deleted.
    pub async fn evict(&self, budget: u64) -> std::io::Result<(usize, u64)> {
        use std::os::unix::fs::MetadataExt;
        // Not while a fetch holds a downloaded file it has not linked yet.
        let _one = self.fetching.lock().await;
        let dir = self.root.join("blobs");
        let mut total = 0u64;
        let mut unused = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            total += meta.len();
            // A file linked into models/ has a second name: some version uses it. The
            // bytes of an interrupted download (.partial) may go too.
            let name = entry.file_name().to_string_lossy().into_owned();
            let partial = name.ends_with(".partial");
            if (localml_trust::is_sha256_hex(&name) || partial) && meta.nlink() == 1 {
                let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                unused.push((used, entry.path(), meta.len()));
            }
        }
        unused.sort();
        let (mut files, mut freed) = (0, 0);
        for (_, path, size) in unused {
            if total <= budget {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= size;
            freed += size;
            files += 1;
        }
        if total > budget {
            tracing::warn!(
                cache_bytes = total,
                budget,
                "the models in use take more than the cache budget"
            );
        }
        Ok((files, freed))
    }

    /// Whether `path` lies in this cache (a model fetched from the catalog).
    pub fn holds(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    /// Makes model `name` (version `version`, or the catalog's highest when empty)
    /// loadable from the cache, fetching what is missing or corrupt.
    pub async fn fetch(
        &self,
        client: &mut ClusterClient<Channel>,
        tls: &ClientTlsConfig,
        name: &str,
        version: &str,
        variant: &str,
    ) -> Result<Fetched, FetchError> {
        let _one = self.fetching.lock().await;
        let entry = client
            .get_catalog_model(CatalogModelRef {
                name: name.into(),
                version: version.into(),
                variant: variant.into(),
            })
            .await?
            .into_inner();
        check_entry(&entry)?;
        let blobs = self.root.join("blobs");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(io(&blobs))?;
        let (mut from_scheduler, mut from_peers, mut repaired) = (0, 0, 0);
        for file in &entry.files {
            let path = self.blob(&file.sha256);
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                let actual = hash(&path).await?;
                if actual == file.sha256 {
                    touch(&path);
                    continue;
                }
                tracing::warn!(model = %entry.name, file = %file.path, expected = %file.sha256, actual = %actual, "cached model file is corrupt; fetching it again");
                tokio::fs::remove_file(&path).await.map_err(io(&path))?;
                repaired += 1;
            }
            let (scheduler, peers) = self
                .download(
                    client,
                    &entry.peers,
                    tls,
                    &file.path,
                    &file.sha256,
                    file.size,
                )
                .await?;
            from_scheduler += scheduler;
            from_peers += peers;
            use std::sync::atomic::Ordering::Relaxed;
            self.from_scheduler.fetch_add(scheduler, Relaxed);
            self.from_peers.fetch_add(peers, Relaxed);
        }
        let source = self.link(&entry).await?;
        Ok(Fetched {
            source,
            from_scheduler,
            from_peers,
            repaired,
        })
    }

    /// Downloads one blob from a peer that holds it, else from the scheduler, resuming a
    /// `.partial` file. Returns the bytes received from (the scheduler, peers).
    async fn download(
        &self,
        client: &mut ClusterClient<Channel>,
        peers: &[CatalogPeer],
        tls: &ClientTlsConfig,
        inside: &str,
        sha256: &str,
        size: u64,
    ) -> Result<(u64, u64), FetchError> {
        for peer in peers {
            let from_peer = self
                .receive(inside, sha256, size, false, |offset| async move {
                    let endpoint = Endpoint::from_shared(format!("https://{}", peer.address))
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
                        .tls_config(tls.clone().domain_name(peer.name.clone()))
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
                        .connect_timeout(PEER_CONNECT_TIMEOUT)
                        .http2_keep_alive_interval(std::time::Duration::from_secs(2))
                        .keep_alive_timeout(std::time::Duration::from_secs(4))
                        .initial_stream_window_size(flow_window(self.rate))
                        .initial_connection_window_size(flow_window(self.rate));
                    let channel = endpoint
                        .connect()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    let request = FetchBlobRequest {
                        sha256: sha256.into(),
                        offset,
                        max_chunk_bytes: self.max_chunk(),
                    };
                    Ok(PeersClient::new(channel)
                        .fetch_blob(request)
                        .await?
                        .into_inner())
                })
                .await;
            match from_peer {
                Ok(n) => {
                    tracing::debug!(peer = %peer.name, file = %inside, bytes = n, "model file fetched from a peer");
                    return Ok((0, n));
                }
                Err(e) => {
                    tracing::info!(peer = %peer.name, file = %inside, error = %e, "cannot fetch the model file from this peer; trying the next, then the scheduler");
                }
            }
        }
        let n = self
            .receive(inside, sha256, size, true, |offset| {
                let mut client = client.clone();
                async move {
                    let request = FetchBlobRequest {
                        sha256: sha256.into(),
                        offset,
                        max_chunk_bytes: self.max_chunk(),
                    };
                    Ok(client.fetch_blob(request).await?.into_inner())
                }
            })
            .await?;
        Ok((n, 0))
    }

    /// Receives one blob into its `.partial` file from the stream `open(offset)` gives,
    /// checks its sha256 and puts it in place; returns the bytes received.
    async fn receive<F, Fut>(
        &self,
        inside: &str,
        sha256: &str,
        size: u64,
        keep_on_error: bool,
        open: F,
    ) -> Result<u64, FetchError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Streaming<BlobChunk>, tonic::Status>>,
    {
        let partial = self.root.join("blobs").join(format!("{sha256}.partial"));
        let mut offset = tokio::fs::metadata(&partial)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if offset > size {
            offset = 0;
            tokio::fs::remove_file(&partial)
                .await
                .map_err(io(&partial))?;
        }
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await
            .map_err(io(&partial))?;
        let result = self
            .receive_into(&mut out, &partial, inside, size, offset, open)
            .await;
        if let Err(e) = result {
            // Bytes from a source that failed are not trusted for a resume elsewhere,
            // unless they came from the scheduler (which checked them).
            if !keep_on_error {
                let _ = out.set_len(offset).await;
            }
            return Err(e);
        }
        let received = result.unwrap_or(0);
        out.sync_all().await.map_err(io(&partial))?;
        drop(out);
        let actual = hash(&partial).await?;
        if actual != sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(FetchError::Hash {
                path: inside.into(),
                expected: sha256.into(),
                actual,
            });
        }
        let blob = self.blob(sha256);
        tokio::fs::rename(&partial, &blob)
            .await
            .map_err(io(&blob))?;
        touch(&blob);
        Ok(received)
    }

    /// Appends what the stream `open(offset)` gives to `out`; a source that stays silent
    /// for [`STALL_TIMEOUT`] is given up.
    async fn receive_into<F, Fut>(
        &self,
        out: &mut tokio::fs::File,
        partial: &Path,
        inside: &str,
        size: u64,
        offset: u64,
        open: F,
    ) -> Result<u64, FetchError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Streaming<BlobChunk>, tonic::Status>>,
    {
        let stalled = || FetchError::Scheduler {
            code: tonic::Code::DeadlineExceeded,
            message: format!("no data for {} s", STALL_TIMEOUT.as_secs()),
        };
        let mut stream = tokio::time::timeout(STALL_TIMEOUT, open(offset))
            .await
            .map_err(|_| stalled())??;
        let mut received = 0u64;
        let started = tokio::time::Instant::now();
        while let Some(chunk) = tokio::time::timeout(STALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| stalled())??
        {
            if offset + received + chunk.data.len() as u64 > size {
                return Err(FetchError::Entry(format!(
                    "more than the {size} bytes of '{inside}' arrived"
                )));
            }
            out.write_all(&chunk.data).await.map_err(io(partial))?;
            received += chunk.data.len() as u64;
            // A rate limit: not reading holds the sender back (HTTP/2 flow control).
            if let Some(rate) = self.rate {
                let due = std::time::Duration::from_secs_f64(received as f64 / rate as f64);
                tokio::time::sleep_until(started + due).await;
            }
        }
        Ok(received)
    }

    /// A file this worker holds whole, for a peer (`Peers.FetchBlob`).
    pub fn serve_blob(
        &self,
        sha256: &str,
        offset: u64,
        max_chunk_bytes: u32,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<std::io::Result<BlobChunk>>, tonic::Status>
    {
        if !localml_trust::is_sha256_hex(sha256) {
            return Err(tonic::Status::invalid_argument(
                "sha256 must be 64 lower-case hex digits",
            ));
        }
        let file = std::fs::File::open(self.blob(sha256))
            .map_err(|_| tonic::Status::not_found(format!("this worker does not hold {sha256}")))?;
        let size = file
            .metadata()
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .len();
        if offset > size {
            return Err(tonic::Status::invalid_argument(format!(
                "offset {offset} is past the file's {size} bytes"
            )));
        }
        Ok(localml_serving::blobs::file_chunks(
            file,
            sha256.to_string(),
            offset,
            size,
            localml_serving::blobs::chunk_size(max_chunk_bytes, PEER_CHUNK_BYTES),
        ))
    }

    /// Links the version's files into `models/<name>/<version>/` and writes its
    /// config.yaml; returns the source the loader reads.
    async fn link(&self, entry: &CatalogModel) -> Result<ModelSource, FetchError> {
        let model_dir = self.root.join("models").join(&entry.name);
        let version_dir = model_dir.join(&entry.version);
        let version: u64 = entry
            .version
            .parse()
            .map_err(|_| FetchError::Entry(format!("version '{}'", entry.version)))?;
        // Another variant's files may be linked there from before.
        let _ = tokio::fs::remove_dir_all(&version_dir).await;
        for file in &entry.files {
            let target = version_dir.join(&file.path);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(io(parent))?;
            }
            let _ = tokio::fs::remove_file(&target).await;
            let blob = self.blob(&file.sha256);
            if tokio::fs::hard_link(&blob, &target).await.is_err() {
                tokio::fs::copy(&blob, &target).await.map_err(io(&target))?;
            }
        }
        let config = model_dir.join("config.yaml");
        tokio::fs::write(&config, &entry.config_yaml)
            .await
            .map_err(io(&config))?;
        Ok(ModelSource {
            name: entry.name.clone(),
            version,
            path: version_dir.join("model.onnx"),
            config: crate::repository::read_config(&config)?,
            variant: entry.variant.clone(),
        })
    }
}

/// Marks a cached file as used now (the eviction order).
fn touch(path: &Path) {
    let now = std::time::SystemTime::now();
    let _ = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(now));
}

/// `localml.v1.Peers` on the inference port: the files this worker holds, for the other
/// workers (worker certificates, see [`crate::peer_role`]).
pub struct PeerService {
    pub worker: std::sync::Arc<crate::state::Worker>,
}

type PeerChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<BlobChunk, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl localml_proto::localml::v1::peers_server::Peers for PeerService {
    type FetchBlobStream = PeerChunks;

    async fn fetch_blob(
        &self,
        r: tonic::Request<FetchBlobRequest>,
    ) -> Result<tonic::Response<PeerChunks>, tonic::Status> {
        let r = r.into_inner();
        let permit = std::sync::Arc::clone(&self.worker.cache.uploads)
            .try_acquire_owned()
            .map_err(|_| {
                tonic::Status::resource_exhausted(format!(
                    "this worker already sends files to {PEER_UPLOADS} peers; fetch from another"
                ))
            })?;
        let chunks = self
            .worker
            .cache
            .serve_blob(&r.sha256, r.offset, r.max_chunk_bytes)?;
        let sent = std::sync::Arc::clone(&self.worker.cache.to_peers);
        let chunks = futures::StreamExt::map(chunks, move |c| {
            let _held = &permit;
            let c =
                c.map_err(|e| tonic::Status::internal(format!("reading the model file: {e}")))?;
            sent.fetch_add(c.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(c)
        });
        Ok(tonic::Response::new(Box::pin(chunks)))
    }
}

async fn hash(path: &Path) -> Result<String, FetchError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || localml_trust::sha256_file(&owned))
        .await
        .map_err(|e| FetchError::Entry(e.to_string()))?
        .map_err(io(path))
}

impl ModelCache {
    /// Fetches the scheduler's ONNX Runtime build of `flavor` into
    /// `<root>/<package>/<version>/` (its blobs checked by sha256 and kept under
    /// `<root>/blobs`, a download resumed where it stopped); returns the library's path.
    pub async fn fetch_runtime(
        &self,
        client: &mut ClusterClient<Channel>,
        tls: &ClientTlsConfig,
        flavor: crate::runtime::Flavor,
    ) -> Result<PathBuf, FetchError> {
        let build = match client
            .get_runtime(GetRuntimeRequest {
                flavor: flavor.name().into(),
            })
            .await
        {
            Ok(b) => b.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(FetchError::NoBuild(s.message().to_string()))
            }
            Err(s) => return Err(s.into()),
        };
        check_runtime(&build)?;
        if flavor == crate::runtime::Flavor::Gpu {
            let names: Vec<&str> = build.files.iter().map(|f| f.path.as_str()).collect();
            crate::runtime::gpu_build_usable(&names, crate::runtime::cuda_runtime_present())
                .map_err(FetchError::NoBuild)?;
        }
        let total: u64 = build.files.iter().map(|f| f.size).sum();
        tracing::info!(flavor = flavor.name(), version = %build.version, files = build.files.len(), bytes = total, "fetching ONNX Runtime from the scheduler");
        let blobs = self.root.join("blobs");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(io(&blobs))?;
        // Linked into a staging directory renamed into place once whole, so an interrupted
        // fetch never leaves a build that looks installed.
        let dir = self.root.join(flavor.package()).join(&build.version);
        let staging = self
            .root
            .join(flavor.package())
            .join(format!(".{}.partial", build.version));
        let _ = tokio::fs::remove_dir_all(&staging).await;
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(io(&staging))?;
        for file in &build.files {
            let blob = self.blob(&file.sha256);
            let whole = tokio::fs::try_exists(&blob).await.unwrap_or(false)
                && hash(&blob).await? == file.sha256;
            if !whole {
                let _ = tokio::fs::remove_file(&blob).await;
                self.download(client, &[], tls, &file.path, &file.sha256, file.size)
                    .await?;
            }
            let target = staging.join(&file.path);
            tokio::fs::hard_link(&blob, &target)
                .await
                .map_err(io(&target))?;
        }
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::rename(&staging, &dir).await.map_err(io(&dir))?;
        let library = dir.join(format!("libonnxruntime.so.{}", build.version));
        tracing::info!(library = %library.display(), "ONNX Runtime fetched from the scheduler and checked (sha256)");
        Ok(library)
    }
}

/// HTTP/2 flow-control windows for channels that fetch files under a rate limit: a
/// second's worth (at least 64 KiB), so the sender cannot run far ahead of the reading;
/// None (the default windows) without a limit.
pub fn flow_window(rate: Option<u64>) -> Option<u32> {
    rate.map(|r| r.clamp(64 << 10, 64 << 20) as u32)
}

/// A worker writes a runtime build's files only inside its own directory, whatever the
/// scheduler sends.
fn check_runtime(b: &RuntimeBuild) -> Result<(), FetchError> {
    let release = !b.version.is_empty()
        && b.version
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if !release {
        return Err(FetchError::Entry(format!(
            "runtime version '{}'",
            b.version
        )));
    }
    for f in &b.files {
        let plain = !f.path.is_empty()
            && !f.path.starts_with('.')
            && f.path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
        if !plain || !localml_trust::is_sha256_hex(&f.sha256) {
            return Err(FetchError::Entry(format!("runtime file '{}'", f.path)));
        }
    }
    let library = format!("libonnxruntime.so.{}", b.version);
    if !b.files.iter().any(|f| f.path == library) {
        return Err(FetchError::Entry(format!(
            "the runtime build has no {library}"
        )));
    }
    Ok(())
}

/// The scheduler checked the entry; a worker does not write outside its cache whatever
/// it is sent.
fn check_entry(m: &CatalogModel) -> Result<(), FetchError> {
    let plain = |s: &str| {
        let p = Path::new(s);
        !s.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
    };
    if !plain(&m.name) || m.name.contains('/') || !plain(&m.version) || m.version.contains('/') {
        return Err(FetchError::Entry(format!(
            "name '{}:{}'",
            m.name, m.version
        )));
    }
    for f in &m.files {
        if !plain(&f.path) || !localml_trust::is_sha256_hex(&f.sha256) {
            return Err(FetchError::Entry(format!("file '{}'", f.path)));
        }
    }
    if !m.files.iter().any(|f| f.path == "model.onnx") {
        return Err(FetchError::Entry("no model.onnx".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_proto::localml::v1::CatalogFile;

    #[test]
    fn entries_that_would_write_outside_the_cache_are_refused() {
        let file = |path: &str| CatalogFile {
            path: path.into(),
            sha256: "a".repeat(64),
            size: 1,
        };
        let entry = |name: &str, path: &str| CatalogModel {
            name: name.into(),
            version: "1".into(),
            files: vec![file("model.onnx"), file(path)],
            ..Default::default()
        };
        check_entry(&entry("m", "labels/en.txt")).expect("fine");
        for (name, path) in [
            ("..", "x"),
            ("m", "../x"),
            ("m", "/etc/x"),
            ("a/b", "x"),
            ("m", "a/../../x"),
        ] {
            assert!(check_entry(&entry(name, path)).is_err(), "{name} {path}");
        }
    }
}
