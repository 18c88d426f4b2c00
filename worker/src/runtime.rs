//! Finding, installing and loading the ONNX Runtime shared library.
//!
//! localml loads the official ONNX Runtime build at run time (`ort`'s `load-dynamic`),
//! because `ort`'s own binary download cannot work offline. Lookup order:
//! `--onnxruntime PATH`, `ORT_DYLIB_PATH`, localml's cache directory (filled by
//! `localml runtime install`), then the system library path.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The ONNX Runtime release localml is built and tested against (the CPU build).
pub const ORT_VERSION: &str = "1.32.0";
/// File name of the CPU library inside the `onnxruntime` wheel (`onnxruntime/capi/`).
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.32.0";
/// The newest CUDA build on PyPI (`onnxruntime-gpu` lags the CPU release): a CUDA 13 /
/// cuDNN 9 build, per the wheel's dependencies (`nvidia-cuda-runtime~=13.0`).
pub const ORT_GPU_VERSION: &str = "1.31.1";

/// ONNX Runtime's name for its default provider, which every build has.
pub const CPU_PROVIDER: &str = "CPUExecutionProvider";

/// Which ONNX Runtime build to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The `onnxruntime` wheel: CPU execution provider.
    Cpu,
    /// The `onnxruntime-gpu` wheel: CUDA and TensorRT execution providers (needs the CUDA
    /// runtime libraries on the machine).
    Gpu,
}

impl Flavor {
    fn package(self) -> &'static str {
        match self {
            Flavor::Cpu => "onnxruntime",
            Flavor::Gpu => "onnxruntime-gpu",
        }
    }

    /// The release installed for this flavor.
    pub fn version(self) -> &'static str {
        match self {
            Flavor::Cpu => ORT_VERSION,
            Flavor::Gpu => ORT_GPU_VERSION,
        }
    }

    /// The main library's file name in the wheel.
    pub fn library_file(self) -> String {
        format!("libonnxruntime.so.{}", self.version())
    }
}

/// Where a library path came from, for log messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Cache,
    System,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A path given explicitly does not exist.
    #[error("ONNX Runtime library {path} (from {origin}) does not exist; run `localml runtime install` or fix the path")]
    MissingFile { path: PathBuf, origin: &'static str },
    /// No library anywhere in the lookup order.
    #[error("ONNX Runtime library not found: run `localml runtime install` (fetches onnxruntime {ORT_VERSION} from PyPI), or pass --onnxruntime PATH, or set ORT_DYLIB_PATH")]
    NotFound,
    /// The file exists but is not a usable ONNX Runtime library.
    #[error("cannot load ONNX Runtime from {path}: {reason}; install onnxruntime {ORT_VERSION} with `localml runtime install`")]
    Load { path: PathBuf, reason: String },
    /// `localml runtime install` failed.
    #[error("installing ONNX Runtime failed: {0}")]
    Install(String),
}

/// localml's cache directory: `$LOCALML_CACHE_DIR`, else `$XDG_CACHE_HOME/localml`,
/// else `~/.cache/localml`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCALML_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("localml");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("localml")
}

/// Directory that `install` fills for a flavor.
pub fn install_dir(flavor: Flavor) -> PathBuf {
    cache_dir().join(flavor.package()).join(flavor.version())
}

/// The library path in the cache, GPU build first when both are installed.
pub fn cached_library() -> Option<PathBuf> {
    [Flavor::Gpu, Flavor::Cpu]
        .into_iter()
        .map(|f| install_dir(f).join(f.library_file()))
        .find(|p| p.is_file())
}

/// Finds the library following the documented lookup order.
pub fn locate(flag: Option<&Path>) -> Result<(PathBuf, Source), RuntimeError> {
    if let Some(path) = flag {
        return existing(path.to_path_buf(), "--onnxruntime").map(|p| (p, Source::Flag));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(PathBuf::from(path), "ORT_DYLIB_PATH").map(|p| (p, Source::Env));
    }
    if let Some(path) = cached_library() {
        return Ok((path, Source::Cache));
    }
    system_library()
        .map(|p| (p, Source::System))
        .ok_or(RuntimeError::NotFound)
}

fn existing(path: PathBuf, origin: &'static str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(RuntimeError::MissingFile { path, origin })
    }
}

/// Looks for `libonnxruntime.so*` in `LD_LIBRARY_PATH` and the usual system directories.
fn system_library() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .iter()
        .map(PathBuf::from),
    );
    dirs.into_iter().find_map(|dir| {
        let exact = dir.join("libonnxruntime.so");
        if exact.is_file() {
            return Some(exact);
        }
        let mut versioned: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so."))
            })
            .collect();
        versioned.sort();
        versioned.pop()
    })
}

/// How ONNX Runtime's threads work in a worker: one pool shared by every session of the
/// process (not one per session, so loading more models or instances adds no threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threading {
    /// Threads that split one operator's work (the calling thread among them).
    pub intra_op: usize,
    /// Threads that run independent operators side by side (models whose graph has
    /// parallel branches, with parallel execution; 1 otherwise).
    pub inter_op: usize,
    /// Whether idle pool threads spin waiting for work: a little lower latency for a core
    /// burnt while waiting. Off unless the PC is a dedicated server.
    pub spinning: bool,
}

impl Threading {
    /// The settings for this PC: `intra_op` threads, or one per core the process may use;
    /// `inter_op` threads, or 1.
    pub fn for_this_pc(
        intra_op: Option<usize>,
        inter_op: Option<usize>,
        spinning: bool,
    ) -> Threading {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Threading {
            intra_op: intra_op.unwrap_or(cores).max(1),
            inter_op: inter_op.unwrap_or(1).max(1),
            spinning,
        }
    }
}

/// Loads the library and creates the process-wide ONNX Runtime environment, with the
/// global thread pool every session of the process shares.
pub fn init(
    path: &Path,
    name: &str,
    threading: &Threading,
) -> Result<ort::environment::Environment, RuntimeError> {
    let load_error = |reason: String| RuntimeError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let builder = ort::init_from(path).map_err(|e| load_error(e.to_string()))?;
    let pool = ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(threading.intra_op)
        .and_then(|p| p.with_inter_threads(threading.inter_op))
        .and_then(|p| p.with_spin_control(threading.spinning))
        .map_err(|e| load_error(format!("thread pool: {e}")))?;
    builder
        .with_name(name)
        .with_telemetry(false)
        .with_global_thread_pool(pool)
        .build()
        .map_err(|e| load_error(e.to_string()))
}

/// Execution providers compiled into the loaded library, e.g. `CPUExecutionProvider`.
pub fn available_providers() -> Vec<String> {
    use ort::ep::ExecutionProvider;
    let mut out = Vec::new();
    type Check = fn() -> ort::Result<bool>;
    let checks: [(&str, Check); 4] = [
        ("CUDAExecutionProvider", ort::ep::CUDA::is_available),
        ("TensorrtExecutionProvider", ort::ep::TensorRT::is_available),
        ("ROCMExecutionProvider", ort::ep::ROCm::is_available),
        ("OpenVINOExecutionProvider", ort::ep::OpenVINO::is_available),
    ];
    for (name, check) in checks {
        if check().unwrap_or(false) {
            out.push(name.to_string());
        }
    }
    out.push(CPU_PROVIDER.to_string());
    out
}

/// Downloads the `onnxruntime` (or `onnxruntime-gpu`) wheel with pip and extracts its
/// shared libraries into the cache. Idempotent: an installed library is kept.
/// `log` receives one line per step.
pub fn install(flavor: Flavor, log: &mut dyn FnMut(&str)) -> Result<PathBuf, RuntimeError> {
    let dir = install_dir(flavor);
    let library = flavor.library_file();
    let version = flavor.version();
    let target = dir.join(&library);
    if target.is_file() {
        log(&format!(
            "ONNX Runtime {version} already installed at {}",
            target.display()
        ));
        return Ok(target);
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            RuntimeError::Install("python3 with pip is needed (apt-get install python3-pip)".into())
        })?;
    let download = cache_dir().join("downloads").join(flavor.package());
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)
        .map_err(|e| RuntimeError::Install(format!("{}: {e}", download.display())))?;
    let spec = format!("{}=={version}", flavor.package());
    log(&format!("downloading {spec} from PyPI with pip ..."));
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(&download)
        .arg(&spec)
        .status()
        .map_err(|e| RuntimeError::Install(format!("cannot run {python} -m pip: {e}")))?;
    if !status.success() {
        return Err(RuntimeError::Install(format!(
            "`{python} -m pip download {spec}` failed ({status})"
        )));
    }
    log(&format!(
        "extracting shared libraries into {} ...",
        dir.display()
    ));
    // Python's zipfile is always there when pip is; it spares a zip dependency here.
    let script = r#"
import glob, os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(src, "*.whl"))
if len(wheels) != 1:
    sys.exit("expected one wheel in %s, found %d" % (src, len(wheels)))
os.makedirs(dst, exist_ok=True)
with zipfile.ZipFile(wheels[0]) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            with z.open(name) as f, open(os.path.join(dst, base + ".part"), "wb") as out:
                out.write(f.read())
            os.replace(os.path.join(dst, base + ".part"), os.path.join(dst, base))
"#;
    let status = Command::new(python)
        .args(["-c", script])
        .arg(&download)
        .arg(&dir)
        .status()
        .map_err(|e| RuntimeError::Install(format!("cannot run {python}: {e}")))?;
    let _ = std::fs::remove_dir_all(&download);
    if !status.success() || !target.is_file() {
        return Err(RuntimeError::Install(format!(
            "the wheel did not contain onnxruntime/capi/{library}"
        )));
    }
    log(&format!("installed {}", target.display()));
    Ok(target)
}
