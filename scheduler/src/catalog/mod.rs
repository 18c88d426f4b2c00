//! The model catalog (docs/models.md): model versions pushed once to the scheduler, so no
//! one walks to every PC with a USB stick.
//!
//! A version is a record under `catalog/<name>/<version>` in the cluster state (its files
//! with sha256 and size, config.yaml, and the inputs and outputs read from its ONNX graph
//! by [`onnx`]) whose files are blobs on this scheduler's disk ([`blobs`]).

pub mod blobs;
pub mod onnx;
pub mod replicas;
pub mod repository;
pub mod runtime;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localml_proto::localml::v1::{
    BlobChunk, CatalogFile, CatalogModel, CatalogVariant, DeleteCatalogModelResponse, Deployment,
};
use localml_store::{Store, StoreError, Txn};
use prost::Message;

use blobs::Blobs;

pub const CATALOG: &str = "catalog/";

/// A blob's chunks as [`Catalog::fetch`] streams them.
pub type BlobChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<BlobChunk, CatalogError>> + Send>>;

/// The highest version number (room to count up from any accepted one).
const MAX_VERSION: u64 = u32::MAX as u64;
/// Longest model name, file path and config.yaml; most files in one version.
const MAX_NAME: usize = 128;
const MAX_PATH: usize = 1024;
const MAX_CONFIG_BYTES: usize = 64 << 10;
const MAX_FILES: usize = 1024;
/// A blob uploaded but not yet part of a version is kept this long by the garbage
/// collector, so a push between its uploads and its PutModel is not undone.
const UNCLAIMED_GRACE: Duration = Duration::from_secs(3600);

/// What is wrong with a catalog request, or what failed; each message names the thing.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("sha256 '{0}' is not 64 lower-case hex digits")]
    BadSha256(String),
    #[error("a file of {0} bytes is over the catalog's limit of {max} bytes", max = blobs::MAX_BLOB_BYTES)]
    TooLarge(u64),
    #[error("blob {0} is already complete")]
    BlobExists(String),
    #[error(
        "the scheduler holds {held} bytes of blob {sha256}: resume at offset {held}, not {offset}"
    )]
    Offset {
        sha256: String,
        offset: u64,
        held: u64,
    },
    #[error("data up to byte {offset} is past the blob's size of {size} bytes")]
    PastSize { offset: u64, size: u64 },
    #[error("another upload of blob {0} is in progress")]
    Busy(String),
    #[error("the upload of blob {sha256} ended after {written} of {size} bytes; push again to send the rest")]
    Short {
        sha256: String,
        written: u64,
        size: u64,
    },
    #[error(
        "the uploaded bytes hash to sha256 {actual}, not {expected}; the upload was discarded"
    )]
    HashMismatch { expected: String, actual: String },
    #[error("the first chunk of an upload must name the blob (sha256 and size)")]
    NoHeader,
    #[error("another scheduler replica: {0}")]
    Replica(String),
    #[error("no blob {0} on the scheduler; upload it first")]
    NoBlob(String),
    #[error("blob {sha256} is incomplete on the scheduler ({held} of {size} bytes); push again to send the rest")]
    Incomplete {
        sha256: String,
        held: u64,
        size: u64,
    },
    #[error("model name '{0}' must be 1 to 128 letters, digits, '-', '_' or '.', not starting with '.' or '-'")]
    Name(String),
    #[error("version '{0}' is not a number from 1 to 4294967295")]
    Version(String),
    #[error("file path '{path}': {reason}")]
    Path { path: String, reason: &'static str },
    #[error("a model version needs a file named model.onnx")]
    NoModelFile,
    #[error("a model version has at most {MAX_FILES} files, not {0}")]
    TooManyFiles(usize),
    #[error("file '{path}' is {declared} bytes in the request, but blob {sha256} has {held}")]
    FileSize {
        path: String,
        sha256: String,
        declared: u64,
        held: u64,
    },
    #[error("model.onnx: {0}")]
    NotOnnx(#[from] onnx::OnnxError),
    #[error("config.yaml: {0}")]
    Config(String),
    #[error("{name} version {version} exists with other files; push as another version or delete it first")]
    VersionExists { name: String, version: String },
    #[error("no model '{0}' in the catalog")]
    NoModel(String),
    #[error("variant '{0}': expected fp32, fp16 or int8")]
    Variant(String),
    #[error("the {variant} variant's inputs and outputs differ from those of {model}: a variant must take and give the same tensors (convert with keep_io_types)")]
    VariantSignature { variant: String, model: String },
    #[error("no {variant} variant of {model} in the catalog")]
    NoVariant { variant: String, model: String },
    #[error(
        "deployment '{deployment}' uses {model}; delete the deployment first, or pass --force"
    )]
    Deployed { model: String, deployment: String },
    #[error("the scheduler's disk: {0}{hint}", hint = if .0.kind() == std::io::ErrorKind::StorageFull { "; what arrived is kept: free space on the scheduler and push again to send the rest" } else { "" })]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(runtime::RuntimeBuildError),
}

impl CatalogError {
    /// The gRPC code clients see.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            CatalogError::BlobExists(_) | CatalogError::VersionExists { .. } => Code::AlreadyExists,
            CatalogError::Offset { .. } | CatalogError::Deployed { .. } => Code::FailedPrecondition,
            CatalogError::Busy(_) | CatalogError::Short { .. } => Code::Aborted,
            CatalogError::NoBlob(_)
            | CatalogError::NoModel(_)
            | CatalogError::NoVariant { .. }
            | CatalogError::Runtime(runtime::RuntimeBuildError::Missing(_)) => Code::NotFound,
            CatalogError::Incomplete { .. } => Code::FailedPrecondition,
            CatalogError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                Code::ResourceExhausted
            }
            CatalogError::Io(_) => Code::Internal,
            CatalogError::Store(_) | CatalogError::Replica(_) => Code::Unavailable,
            _ => Code::InvalidArgument,
        }
    }
}

impl From<CatalogError> for tonic::Status {
    fn from(e: CatalogError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Runs blocking file work (hashing, reading, writing, listing blobs) off the async
/// threads; a task that panicked is an I/O error, not a crash.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, CatalogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CatalogError::Io(std::io::Error::other(e.to_string())))?
}

/// Checks a model name from a client.
pub fn check_name(name: &str) -> Result<(), CatalogError> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Name(
            name.chars().take(MAX_NAME + 8).collect(),
        ))
    }
}

/// Checks a file path inside a model version: relative, '/'-separated, no '..'.
pub fn check_path(path: &str) -> Result<(), CatalogError> {
    let bad = |reason| {
        Err(CatalogError::Path {
            path: path.chars().take(MAX_PATH).collect(),
            reason,
        })
    };
    if path.is_empty() || path.len() > MAX_PATH {
        return bad("must be 1 to 1024 bytes");
    }
    if path.contains(['\\', '\0']) {
        return bad("must use '/' and no NUL or backslash");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("must be relative, without empty, '.' or '..' parts");
        }
    }
    Ok(())
}

fn parse_version(version: &str) -> Result<u64, CatalogError> {
    match version.parse::<u64>() {
        Ok(v) if (1..=MAX_VERSION).contains(&v) && !version.starts_with('0') => Ok(v),
        _ => Err(CatalogError::Version(version.chars().take(40).collect())),
    }
}

fn key(name: &str, version: u64) -> String {
    format!("{CATALOG}{name}/{version}")
}

/// The highest version number a model ever had, so a deleted number is not given again
/// (a worker may still hold the old files under it).
const HIGHEST: &str = "catalog-highest/";

/// Sorted (path, sha256, size): two versions with the same are the same content.
fn content(m: &CatalogModel) -> (Vec<(String, String, u64)>, &str) {
    (file_set(&m.files), m.config_yaml.as_str())
}

/// Sorted (path, sha256, size) of `files`.
fn file_set(files: &[CatalogFile]) -> Vec<(String, String, u64)> {
    let mut set: Vec<_> = files
        .iter()
        .map(|f| (f.path.clone(), f.sha256.clone(), f.size))
        .collect();
    set.sort();
    set
}

pub struct Catalog {
    pub store: Arc<dyn Store>,
    pub blobs: Arc<Blobs>,
    /// Blobs completed by this process that no version references yet, and when.
    unclaimed: Mutex<HashMap<String, Instant>>,
    /// Adding a version (check its blobs, then commit) holds this shared; the garbage
    /// collector holds it alone, so it never removes a blob between the two.
    changing: tokio::sync::RwLock<()>,
    /// The other scheduler replicas, with a shared store (replicas.rs).
    replicas: std::sync::OnceLock<Arc<replicas::Replicas>>,
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>, blobs: Arc<Blobs>) -> Catalog {
        Catalog {
            store,
            blobs,
            unclaimed: Mutex::default(),
            changing: tokio::sync::RwLock::new(()),
            replicas: std::sync::OnceLock::new(),
        }
    }

    /// Keeps files on two replicas from now on (a shared store with several replicas).
    pub fn set_replicas(&self, replicas: Arc<replicas::Replicas>) {
        let _ = self.replicas.set(replicas);
    }

    pub fn replicas(&self) -> Option<&Arc<replicas::Replicas>> {
        self.replicas.get()
    }

    /// Paths and complete blobs checked, and kept from the collector, before the files
    /// are copied to another replica.
    fn ready_to_replicate(&self, files: &[CatalogFile]) -> Result<(), CatalogError> {
        if self.replicas.get().is_none() {
            return Ok(());
        }
        for f in files {
            check_path(&f.path)?;
        }
        self.check_blobs(files)?;
        for f in files {
            self.uploaded(&f.sha256);
        }
        Ok(())
    }

    /// Before a version (or runtime build) is recorded: each of its files is on another
    /// replica too, when there is one, so the push is durable on two. With others
    /// registered and none taking a copy the push fails (UNAVAILABLE), its files kept.
    /// Called without `changing` held.
    async fn ensure_replicated(&self, files: &[CatalogFile]) -> Result<(), CatalogError> {
        let Some(replicas) = self.replicas.get() else {
            return Ok(());
        };
        for f in files {
            match replicas.replicate(&f.sha256, f.size).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::warn!(sha256 = %f.sha256, "no other scheduler replica is registered: the file is on this one only");
                    return Ok(());
                }
                Err(e) => {
                    return Err(CatalogError::Replica(format!(
                        "{} is kept on this replica, but no other took a copy, so the push is not durable yet; push again: {e}",
                        f.path
                    )))
                }
            }
        }
        Ok(())
    }

    /// The size the catalog records for blob `sha256` (a version's, a variant's or a
    /// runtime build's file); None when nothing references it.
    pub async fn size_of(&self, sha256: &str) -> Result<Option<u64>, CatalogError> {
        Ok(self.referenced().await?.get(sha256).copied())
    }

    /// Every blob the catalog references (versions, variants, runtime builds), with its
    /// size.
    pub async fn referenced(&self) -> Result<HashMap<String, u64>, CatalogError> {
        let (kvs, _) = self.store.list(CATALOG).await?;
        let models = kvs
            .iter()
            .filter_map(|kv| CatalogModel::decode(kv.value.as_slice()).ok())
            .flat_map(|m| {
                m.files
                    .into_iter()
                    .chain(m.variants.into_iter().flat_map(|v| v.files))
            });
        let runtimes = self.runtimes().await?.into_iter().flat_map(|r| r.files);
        Ok(models.chain(runtimes).map(|f| (f.sha256, f.size)).collect())
    }

    /// What [`Catalog::fetch`] reads, first fetched from another replica when this one
    /// lacks it (a worker asking a replica that was down during the push).
    pub async fn fetch_anywhere(
        &self,
        sha256: &str,
        offset: u64,
        chunk_bytes: usize,
    ) -> Result<BlobChunks, CatalogError> {
        match self.fetch(sha256, offset, chunk_bytes) {
            Err(CatalogError::NoBlob(_)) if self.replicas.get().is_some() => {
                if let Some(replicas) = self.replicas.get() {
                    replicas.fetch_missing(self, sha256).await?;
                }
                self.fetch(sha256, offset, chunk_bytes)
            }
            other => other,
        }
    }

    /// Completes an upload (length, sha256, fsync, rename) and keeps the blob from the
    /// garbage collector until a version uses it.
    pub async fn finish_upload(&self, upload: blobs::Upload) -> Result<blobs::Held, CatalogError> {
        let _adding = self.changing.read().await;
        let sha256 = upload.sha256().to_string();
        let held = blocking(move || upload.finish()).await?;
        self.uploaded(&sha256);
        Ok(held)
    }

    /// Writes `chunks` into `upload` as they arrive, each on a blocking thread, then
    /// completes it. A stream that fails, or sends nothing for `idle` (`quiet` says so),
    /// leaves what arrived for a resume. A client's upload and a copy from another replica
    /// both come here.
    pub async fn receive<E: From<CatalogError>>(
        &self,
        mut upload: blobs::Upload,
        chunks: impl futures::Stream<Item = Result<bytes::Bytes, E>>,
        idle: Duration,
        quiet: impl Fn() -> E,
    ) -> Result<blobs::Held, E> {
        let mut chunks = std::pin::pin!(chunks);
        loop {
            let next = tokio::time::timeout(idle, futures::StreamExt::next(&mut chunks))
                .await
                .unwrap_or_else(|_| Some(Err(quiet())));
            let data = match next {
                Some(Ok(data)) => data,
                None => break,
                Some(Err(e)) => {
                    tracing::info!(sha256 = %upload.sha256(), received = upload.written(), "blob upload interrupted; kept for a resume");
                    return Err(e);
                }
            };
            if !data.is_empty() {
                upload = blocking(move || {
                    upload.write(&data)?;
                    Ok(upload)
                })
                .await?;
            }
        }
        Ok(self.finish_upload(upload).await?)
    }

    /// A version uses these blobs now: the collector goes by the catalog for them.
    fn claimed(&self, version: &CatalogModel) {
        self.claimed_files(&version.files);
    }

    fn claimed_files(&self, files: &[CatalogFile]) {
        let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        for f in files {
            unclaimed.remove(&f.sha256);
        }
    }

    /// Notes a blob a push is about to use (just uploaded, or found already there): the
    /// garbage collector keeps it for an hour unless a version uses it.
    pub fn uploaded(&self, sha256: &str) {
        self.unclaimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256.to_string(), Instant::now());
    }

    async fn versions(&self, name: &str) -> Result<Vec<CatalogModel>, CatalogError> {
        let (kvs, _) = self.store.list(&format!("{CATALOG}{name}/")).await?;
        let mut out: Vec<CatalogModel> = kvs
            .iter()
            .filter_map(|kv| CatalogModel::decode(kv.value.as_slice()).ok())
            .collect();
        out.sort_by_key(|m| m.version.parse::<u64>().unwrap_or(0));
        Ok(out)
    }

    pub async fn list(&self) -> Result<Vec<CatalogModel>, CatalogError> {
        let (kvs, _) = self.store.list(CATALOG).await?;
        let mut out: Vec<CatalogModel> = kvs
            .iter()
            .filter_map(|kv| CatalogModel::decode(kv.value.as_slice()).ok())
            .collect();
        out.sort_by(|a, b| {
            (a.name.as_str(), a.version.parse::<u64>().unwrap_or(0))
                .cmp(&(b.name.as_str(), b.version.parse::<u64>().unwrap_or(0)))
        });
        Ok(out)
    }

    /// One version, or the highest when `version` is empty.
    pub async fn get(&self, name: &str, version: &str) -> Result<CatalogModel, CatalogError> {
        check_name(name)?;
        let versions = self.versions(name).await?;
        let found = if version.is_empty() {
            versions.into_iter().last()
        } else {
            parse_version(version)?;
            versions.into_iter().find(|m| m.version == version)
        };
        found.ok_or_else(|| CatalogError::NoModel(display(name, version)))
    }

    /// Streams blob `sha256` from `offset` in chunks of `chunk_bytes`, read on a blocking
    /// thread a few chunks ahead of the client (memory stays a few chunks).
    pub fn fetch(
        &self,
        sha256: &str,
        offset: u64,
        chunk_bytes: usize,
    ) -> Result<BlobChunks, CatalogError> {
        blobs::check_sha256(sha256)?;
        let file = match std::fs::File::open(self.blobs.path(sha256)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::NoBlob(sha256.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        if offset > size {
            return Err(CatalogError::PastSize { offset, size });
        }
        let chunks = localml_serving::blobs::file_chunks(
            file,
            sha256.to_string(),
            offset,
            size,
            chunk_bytes,
        );
        Ok(Box::pin(futures::StreamExt::map(chunks, |c| {
            c.map_err(CatalogError::from)
        })))
    }

    /// Checks a new version's request and its blobs, reads its ONNX graph and records it.
    pub async fn put(&self, mut m: CatalogModel) -> Result<CatalogModel, CatalogError> {
        check_name(&m.name)?;
        if !m.version.is_empty() {
            parse_version(&m.version)?;
        }
        if m.files.len() > MAX_FILES {
            return Err(CatalogError::TooManyFiles(m.files.len()));
        }
        let variant = match m.variant.as_str() {
            "" | "fp32" => None,
            v @ ("fp16" | "int8") => Some(v.to_string()),
            other => return Err(CatalogError::Variant(other.chars().take(40).collect())),
        };
        // What the scheduler records, not the client.
        m.variant.clear();
        m.variants.clear();
        m.peers.clear();
        m.measured_bytes = 0;
        m.measured_on.clear();
        // On another replica first, without the collector's lock (a copy may take long,
        // and the other replica's own lock must not wait on this one); the files are kept
        // from the collector meanwhile (`uploaded`), and checked again under the lock.
        self.ready_to_replicate(&m.files)?;
        self.ensure_replicated(&m.files).await?;
        let _adding = self.changing.read().await;
        // A variant's config.yaml is the version's.
        let config = variant.is_none().then_some(m.config_yaml.as_str());
        let signature = self.check_files(&m.files, config).await?;
        if let Some(variant) = variant {
            return self.put_variant(m, variant, signature).await;
        }
        m.inputs = signature.inputs;
        m.outputs = signature.outputs;
        m.ir_version = signature.ir_version;
        m.opset = signature.opset;
        self.record_version(m).await
    }

    /// Checks a version's (or variant's) files: paths, complete blobs of their sizes, its
    /// config.yaml when given, a model.onnx; returns the ONNX graph's signature.
    async fn check_files(
        &self,
        files: &[CatalogFile],
        config: Option<&str>,
    ) -> Result<onnx::OnnxSignature, CatalogError> {
        for f in files {
            check_path(&f.path)?;
        }
        self.check_blobs(files)?;
        // A file that is also a directory of another ("a" and "a/b") cannot be laid out.
        for f in files {
            let dir = format!("{}/", f.path);
            if let Some(inner) = files.iter().find(|g| g.path.starts_with(&dir)) {
                return Err(CatalogError::Path {
                    path: inner.path.clone(),
                    reason: "is inside another file's path",
                });
            }
        }
        if let Some(config) = config {
            check_config(config)?;
            check_task_files(config, files)?;
        }
        let onnx_file: &CatalogFile = files
            .iter()
            .find(|f| f.path == "model.onnx")
            .ok_or(CatalogError::NoModelFile)?;
        let path = self.blobs.path(&onnx_file.sha256);
        blocking(move || {
            let file = std::fs::File::open(path)?;
            Ok(onnx::read_signature(std::io::BufReader::new(file))?)
        })
        .await
    }

    /// Adds (or replaces) variant `variant` of version `m.version` (the highest when
    /// empty), which must take and give the same tensors.
    async fn put_variant(
        &self,
        m: CatalogModel,
        variant: String,
        signature: onnx::OnnxSignature,
    ) -> Result<CatalogModel, CatalogError> {
        for _ in 0..8 {
            let version = if m.version.is_empty() {
                self.versions(&m.name)
                    .await?
                    .last()
                    .map(|v| v.version.clone())
                    .ok_or_else(|| CatalogError::NoModel(m.name.clone()))?
            } else {
                m.version.clone()
            };
            let k = key(&m.name, parse_version(&version)?);
            let kv = self
                .store
                .get(&k)
                .await?
                .ok_or_else(|| CatalogError::NoModel(display(&m.name, &version)))?;
            let Ok(mut record) = CatalogModel::decode(kv.value.as_slice()) else {
                return Err(CatalogError::NoModel(display(&m.name, &version)));
            };
            if (&record.inputs, &record.outputs) != (&signature.inputs, &signature.outputs) {
                return Err(CatalogError::VariantSignature {
                    variant,
                    model: display(&m.name, &version),
                });
            }
            // The version's config.yaml is the variant's: its task's labels file too.
            check_task_files(&record.config_yaml, &m.files)?;
            // The same files again: nothing changes (its measurement stays).
            if record
                .variants
                .iter()
                .any(|v| v.name == variant && file_set(&v.files) == file_set(&m.files))
            {
                self.claimed_files(&m.files);
                return Ok(record);
            }
            record.variants.retain(|v| v.name != variant);
            record.variants.push(CatalogVariant {
                name: variant.clone(),
                files: m.files.clone(),
                ..Default::default()
            });
            record.variants.sort_by(|a, b| a.name.cmp(&b.name));
            let txn = Txn::new()
                .when(&k, kv.mod_revision)
                .put(&k, record.encode_to_vec(), 0);
            if self.store.commit(txn).await?.is_some() {
                self.claimed_files(&m.files);
                tracing::info!(model = %record.name, version = %record.version, variant = %variant, "variant added to the catalog");
                return Ok(record);
            }
        }
        Err(CatalogError::Store(StoreError::Unavailable(
            "the catalog kept changing while a variant was added".into(),
        )))
    }

    /// `m` as a worker fetches it: the files of `variant` ("" or "fp32": its own).
    pub fn variant_of(mut m: CatalogModel, variant: &str) -> Result<CatalogModel, CatalogError> {
        match variant {
            "" | "fp32" => m.variant = "fp32".into(),
            other => {
                let found = m.variants.iter().find(|v| v.name == other).cloned();
                let Some(v) = found else {
                    return Err(CatalogError::NoVariant {
                        variant: other.chars().take(40).collect(),
                        model: display(&m.name, &m.version),
                    });
                };
                m.files = v.files;
                m.variant = v.name;
            }
        }
        m.variants.clear();
        Ok(m)
    }

    /// Checks that `files` name distinct paths and complete blobs of their sizes.
    fn check_blobs(&self, files: &[CatalogFile]) -> Result<(), CatalogError> {
        let mut seen = HashSet::new();
        for f in files {
            blobs::check_sha256(&f.sha256)?;
            if !seen.insert(f.path.as_str()) {
                return Err(CatalogError::Path {
                    path: f.path.clone(),
                    reason: "is listed twice",
                });
            }
            let held = self.blobs.held(&f.sha256)?;
            if !held.complete && held.bytes > 0 {
                return Err(CatalogError::Incomplete {
                    sha256: f.sha256.clone(),
                    held: held.bytes,
                    size: f.size,
                });
            }
            if !held.complete {
                return Err(CatalogError::NoBlob(f.sha256.clone()));
            }
            if held.bytes != f.size {
                return Err(CatalogError::FileSize {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                    declared: f.size,
                    held: held.bytes,
                });
            }
        }
        Ok(())
    }

    /// Records a checked version: the same content again is the version that has it,
    /// otherwise a new number (never one given before).
    async fn record_version(&self, m: CatalogModel) -> Result<CatalogModel, CatalogError> {
        // The same content again is the version that has it; otherwise a new one.
        for _ in 0..8 {
            let versions = self.versions(&m.name).await?;
            let highest_key = format!("{HIGHEST}{}", m.name);
            let highest = self.store.get(&highest_key).await?;
            let ever: u64 = highest
                .as_ref()
                .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                .unwrap_or(0);
            if let Some(same) = versions.iter().find(|v| content(v) == content(&m)) {
                if m.version.is_empty() || m.version == same.version {
                    self.claimed(same);
                    return Ok(same.clone());
                }
            }
            let version = if m.version.is_empty() {
                versions
                    .iter()
                    .filter_map(|v| v.version.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
                    .max(ever)
                    .saturating_add(1)
            } else {
                parse_version(&m.version)?
            };
            let mut record = m.clone();
            record.version = version.to_string();
            record.created_unix_ms = localml_proto::time::unix_ms();
            let k = key(&m.name, version);
            let txn = Txn::new()
                .when(&k, 0)
                .when(
                    &highest_key,
                    highest.as_ref().map_or(0, |kv| kv.mod_revision),
                )
                .put(&k, record.encode_to_vec(), 0)
                .put(&highest_key, ever.max(version).to_string().into_bytes(), 0);
            if self.store.commit(txn).await?.is_some() {
                self.claimed(&record);
                tracing::info!(model = %record.name, version = %record.version, files = record.files.len(), "model added to the catalog");
                return Ok(record);
            }
            let taken = self.store.get(&k).await?.is_some();
            if !m.version.is_empty() && taken {
                return Err(CatalogError::VersionExists {
                    name: m.name,
                    version: m.version,
                });
            }
            // Another push took that number first: count again.
        }
        Err(CatalogError::Store(StoreError::Unavailable(
            "the catalog kept changing while a version was added".into(),
        )))
    }

    /// Deletes a version (or all of a model's when `version` is empty), then the blobs no
    /// version uses any more.
    pub async fn delete(
        &self,
        name: &str,
        version: &str,
        force: bool,
    ) -> Result<DeleteCatalogModelResponse, CatalogError> {
        check_name(name)?;
        if !version.is_empty() {
            parse_version(version)?;
        }
        let doomed: Vec<CatalogModel> = self
            .versions(name)
            .await?
            .into_iter()
            .filter(|m| version.is_empty() || m.version == version)
            .collect();
        if doomed.is_empty() {
            return Err(CatalogError::NoModel(display(name, version)));
        }
        if !force {
            let (kvs, _) = self.store.list(crate::deployments::DEPLOYMENTS).await?;
            for kv in kvs {
                let Ok(d) = Deployment::decode(kv.value.as_slice()) else {
                    continue;
                };
                let uses = d.model == name
                    && (version.is_empty() || d.version.is_empty() || d.version == version);
                if uses {
                    return Err(CatalogError::Deployed {
                        model: display(name, version),
                        deployment: d.name,
                    });
                }
            }
        }
        let mut txn = Txn::new();
        for m in &doomed {
            txn = txn.delete(&key(name, m.version.parse().unwrap_or(0)));
        }
        self.store.commit(txn).await?;
        let deleted: Vec<String> = doomed
            .iter()
            .map(|m| format!("{}:{}", m.name, m.version))
            .collect();
        tracing::info!(model = %name, versions = ?deleted, "deleted from the catalog");
        let (blobs_removed, bytes_freed) = self.collect_garbage().await?;
        Ok(DeleteCatalogModelResponse {
            deleted,
            blobs_removed,
            bytes_freed,
        })
    }

    /// Removes blobs that no catalog version references (except those uploaded within
    /// the last hour for a version not added yet). Returns (blobs, bytes) removed.
    pub async fn collect_garbage(&self) -> Result<(u64, u64), CatalogError> {
        let _alone = self.changing.write().await;
        let used = self.referenced().await?;
        let protected: HashSet<String> = {
            let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
            unclaimed.retain(|_, at| at.elapsed() < UNCLAIMED_GRACE);
            unclaimed.keys().cloned().collect()
        };
        let blobs = Arc::clone(&self.blobs);
        let removed = blocking(move || {
            let (mut count, mut bytes) = (0, 0);
            for name in blobs.list()? {
                if !used.contains_key(&name) && !protected.contains(&name) {
                    bytes += blobs.remove(&name)?;
                    count += 1;
                }
            }
            Ok((count, bytes))
        })
        .await?;
        if removed.0 > 0 {
            tracing::info!(
                blobs = removed.0,
                bytes = removed.1,
                "unused model files removed"
            );
        }
        Ok(removed)
    }
}

/// Keeps in each catalog version (and variant) the largest resident memory a Ready
/// worker measured when it loaded it (`LoadedModel.memory_bytes`); a record is rewritten
/// only when a measurement exceeds the kept one by more than a tenth. Run by the leader.
pub async fn record_footprints(
    store: &dyn Store,
    workers: &[localml_proto::localml::v1::WorkerInfo],
) -> Result<(), StoreError> {
    // (name, version, variant, bytes, worker)
    let measured: Vec<(&str, &str, &str, u64, &str)> = workers
        .iter()
        .filter(|w| w.state == localml_proto::localml::v1::WorkerState::Ready as i32)
        .filter_map(|w| w.status.as_ref())
        .flat_map(|s| {
            s.models
                .iter()
                // A model of a worker's own repository (no variant) is not the catalog's.
                .filter(|m| m.memory_bytes > 0 && !m.variant.is_empty())
                .map(move |m| {
                    let variant = if m.variant == "fp32" {
                        ""
                    } else {
                        m.variant.as_str()
                    };
                    (
                        m.name.as_str(),
                        m.version.as_str(),
                        variant,
                        m.memory_bytes,
                        s.name.as_str(),
                    )
                })
        })
        .collect();
    if measured.is_empty() {
        return Ok(());
    }
    let (kvs, _) = store.list(CATALOG).await?;
    for kv in kvs {
        let Ok(mut record) = CatalogModel::decode(kv.value.as_slice()) else {
            continue;
        };
        let mut changed = false;
        for (_, _, variant, bytes, worker) in measured
            .iter()
            .filter(|(name, version, ..)| *name == record.name && *version == record.version)
        {
            let (kept, on) = if variant.is_empty() {
                (&mut record.measured_bytes, &mut record.measured_on)
            } else if let Some(v) = record.variants.iter_mut().find(|v| v.name == *variant) {
                (&mut v.measured_bytes, &mut v.measured_on)
            } else {
                continue;
            };
            if *bytes > kept.saturating_add(*kept / 10) {
                *kept = *bytes;
                *on = worker.to_string();
                changed = true;
            }
        }
        if !changed {
            continue;
        }
        let txn = Txn::new()
            .when(&kv.key, kv.mod_revision)
            .put(&kv.key, record.encode_to_vec(), 0);
        // Another writer changed the record meanwhile: the next pass measures again.
        if store.commit(txn).await?.is_some() {
            tracing::info!(model = %record.name, version = %record.version, "measured footprint kept in the catalog");
        }
    }
    Ok(())
}

fn display(name: &str, version: &str) -> String {
    if version.is_empty() {
        name.to_string()
    } else {
        format!("{name}:{version}")
    }
}

/// An image task's labels file travels with the version's (or variant's) files, within
/// the size a worker takes (its count is checked when a worker loads it).
fn check_task_files(config: &str, files: &[CatalogFile]) -> Result<(), CatalogError> {
    let task = localml_serving::task::from_config_yaml(config).map_err(CatalogError::Config)?;
    let Some(labels) = task.and_then(|t| t.labels) else {
        return Ok(());
    };
    match files.iter().find(|f| f.path == labels) {
        None => Err(CatalogError::Config(format!(
            "task: labels '{labels}' is not among the files (put it beside model.onnx)"
        ))),
        Some(f) if f.size > localml_serving::task::MAX_LABELS_BYTES => {
            Err(CatalogError::Config(format!(
                "task: labels '{labels}' has {} bytes, over the limit of {}",
                f.size,
                localml_serving::task::MAX_LABELS_BYTES
            )))
        }
        Some(_) => Ok(()),
    }
}

/// config.yaml must be YAML (a mapping, or empty) of a sane size; the worker checks its
/// keys when it loads the model.
fn check_config(text: &str) -> Result<(), CatalogError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(CatalogError::Config(format!(
            "{} bytes, over the limit of {MAX_CONFIG_BYTES}",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Ok(());
    }
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Mapping(_)) | Ok(serde_yaml::Value::Null) => Ok(()),
        Ok(_) => Err(CatalogError::Config("must be a mapping of keys".into())),
        Err(e) => Err(CatalogError::Config(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_versions_are_checked() {
        for ok in ["image_classifier", "resnet-50.v2", "a"] {
            check_name(ok).expect(ok);
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            ".hidden",
            "-flag",
            "a/b",
            "..",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for ok in ["model.onnx", "weights/part1.bin", "labels.txt"] {
            check_path(ok).expect(ok);
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a\\b",
            ".",
            "a/.",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_version("12").ok(), Some(12));
        for bad in [
            "0",
            "01",
            "-1",
            "x",
            "",
            "4294967296",
            "18446744073709551615",
        ] {
            assert!(parse_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_must_be_a_small_mapping() {
        check_config("").expect("empty");
        check_config("max_batch_size: 8\n").expect("mapping");
        assert!(check_config("- a list").is_err());
        assert!(check_config("key: [unclosed").is_err());
        assert!(check_config(&format!("k: '{}'", "x".repeat(70_000))).is_err());
    }

    #[test]
    fn a_tasks_labels_file_must_travel_with_the_files() {
        let config = "task: {kind: image-classification, width: 4, height: 4, labels: labels.txt}";
        let file = |path: &str, size: u64| CatalogFile {
            path: path.into(),
            sha256: String::new(),
            size,
        };
        check_task_files(config, &[file("model.onnx", 10), file("labels.txt", 10)]).expect("there");
        check_task_files("max_batch_size: 4", &[file("model.onnx", 10)]).expect("no task");
        let missing = check_task_files(config, &[file("model.onnx", 10)]).expect_err("missing");
        assert!(
            missing
                .to_string()
                .contains("labels 'labels.txt' is not among"),
            "{missing}"
        );
        let big = check_task_files(config, &[file("labels.txt", 300_000)]).expect_err("big");
        assert!(big.to_string().contains("over the limit"), "{big}");
    }
}
