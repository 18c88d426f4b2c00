//! ONNX Runtime builds in the catalog: the shared libraries of the `onnxruntime` (cpu)
//! or `onnxruntime-gpu` (gpu) wheel, stored as blobs like model files, so a worker PC
//! without internet (and without a package registry) fetches its runtime from the
//! scheduler (`Cluster.GetRuntime`), checked by sha256. Recorded under
//! `runtimes/<flavor>`; one build per flavor, a push replaces it.

use localml_proto::localml::v1::RuntimeBuild;
use prost::Message;

use super::{Catalog, CatalogError};

pub const RUNTIMES: &str = "runtimes/";

/// Most files in one build (the CPU wheel has two libraries; the GPU build with NVIDIA's
/// CUDA libraries 24 for 1.31.1).
const MAX_RUNTIME_FILES: usize = 64;

/// What is wrong with a runtime build from a client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuntimeBuildError {
    #[error("runtime flavor '{0}': expected cpu or gpu")]
    Flavor(String),
    #[error("runtime version '{0}': expected a release such as 1.32.0")]
    Version(String),
    #[error("runtime file '{0}': expected a plain library file name (letters, digits, '.', '_', '-', '+'; no directories)")]
    FileName(String),
    #[error("a runtime build has 1 to {MAX_RUNTIME_FILES} files, not {0}")]
    Files(usize),
    #[error("the runtime build has no {0}: the library workers load")]
    NoLibrary(String),
    #[error("no ONNX Runtime build for {0} in the catalog; push one with `localml runtime push`")]
    Missing(String),
}

/// The file a worker loads from a build of `version`.
pub fn library_file(version: &str) -> String {
    format!("libonnxruntime.so.{version}")
}

/// Checks a build's flavor, version and file names (not its blobs).
pub fn check(r: &RuntimeBuild) -> Result<(), RuntimeBuildError> {
    check_flavor(&r.flavor)?;
    let release = (1..=32).contains(&r.version.len())
        && r.version.split('.').count() >= 2
        && r.version
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if !release {
        return Err(RuntimeBuildError::Version(r.version.clone()));
    }
    if r.files.is_empty() || r.files.len() > MAX_RUNTIME_FILES {
        return Err(RuntimeBuildError::Files(r.files.len()));
    }
    for f in &r.files {
        let plain = (1..=255).contains(&f.path.len())
            && !f.path.starts_with('.')
            && f.path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'));
        if !plain {
            return Err(RuntimeBuildError::FileName(f.path.clone()));
        }
    }
    let library = library_file(&r.version);
    if !r.files.iter().any(|f| f.path == library) {
        return Err(RuntimeBuildError::NoLibrary(library));
    }
    Ok(())
}

fn check_flavor(flavor: &str) -> Result<(), RuntimeBuildError> {
    match flavor {
        "cpu" | "gpu" => Ok(()),
        other => Err(RuntimeBuildError::Flavor(other.to_string())),
    }
}

impl From<RuntimeBuildError> for CatalogError {
    fn from(e: RuntimeBuildError) -> CatalogError {
        CatalogError::Runtime(e)
    }
}

impl Catalog {
    /// Records a runtime build whose files are uploaded blobs (replacing the flavor's
    /// build before; its blobs are collected once nothing else uses them).
    pub async fn put_runtime(&self, mut r: RuntimeBuild) -> Result<RuntimeBuild, CatalogError> {
        check(&r)?;
        self.ready_to_replicate(&r.files)?;
        self.ensure_replicated(&r.files).await?;
        let _adding = self.changing.read().await;
        self.check_blobs(&r.files)?;
        r.created_unix_ms = localml_proto::time::unix_ms();
        self.store
            .put(&format!("{RUNTIMES}{}", r.flavor), r.encode_to_vec())
            .await?;
        self.claimed_files(&r.files);
        tracing::info!(flavor = %r.flavor, version = %r.version, files = r.files.len(), "ONNX Runtime build added to the catalog");
        Ok(r)
    }

    /// Every flavor's build.
    pub async fn runtimes(&self) -> Result<Vec<RuntimeBuild>, CatalogError> {
        let (kvs, _) = self.store.list(RUNTIMES).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| RuntimeBuild::decode(kv.value.as_slice()).ok())
            .collect())
    }

    /// The build of `flavor`.
    pub async fn runtime(&self, flavor: &str) -> Result<RuntimeBuild, CatalogError> {
        check_flavor(flavor)?;
        let kv = self.store.get(&format!("{RUNTIMES}{flavor}")).await?;
        kv.and_then(|kv| RuntimeBuild::decode(kv.value.as_slice()).ok())
            .ok_or_else(|| RuntimeBuildError::Missing(flavor.to_string()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_proto::localml::v1::CatalogFile;

    fn build(flavor: &str, version: &str, files: &[&str]) -> RuntimeBuild {
        RuntimeBuild {
            flavor: flavor.into(),
            version: version.into(),
            files: files
                .iter()
                .map(|f| CatalogFile {
                    path: f.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn builds_are_checked_naming_the_problem() {
        let lib = "libonnxruntime.so.1.32.0";
        assert_eq!(check(&build("cpu", "1.32.0", &[lib])), Ok(()));
        assert_eq!(
            check(&build(
                "gpu",
                "1.32.0",
                &[lib, "libonnxruntime_providers_cuda.so"]
            )),
            Ok(())
        );
        let cases = [
            (build("tpu", "1.32.0", &[lib]), "flavor 'tpu'"),
            (
                build("cpu", "1.32", &[lib]),
                "has no libonnxruntime.so.1.32",
            ),
            (build("cpu", "latest", &[lib]), "version 'latest'"),
            (build("cpu", "1..0", &[lib]), "version '1..0'"),
            (build("cpu", "1.32.0", &[]), "1 to 64 files, not 0"),
            (build("cpu", "1.32.0", &[lib, "../x.so"]), "file '../x.so'"),
            (build("cpu", "1.32.0", &[lib, "a/b.so"]), "file 'a/b.so'"),
            (build("cpu", "1.32.0", &[lib, ".hidden"]), "file '.hidden'"),
            (
                build("cpu", "1.32.0", &["libonnxruntime.so"]),
                "has no libonnxruntime.so.1.32.0",
            ),
        ];
        for (b, text) in cases {
            let e = check(&b).expect_err(text);
            assert!(e.to_string().contains(text), "{e} / {text}");
            let status = tonic::Status::from(CatalogError::from(e));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{text}");
        }
        let missing =
            tonic::Status::from(CatalogError::from(RuntimeBuildError::Missing("gpu".into())));
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert!(missing.message().contains("localml runtime push"));
    }
}
