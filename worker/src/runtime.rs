//! Finding, installing and loading the ONNX Runtime shared library.
//!
//! localml loads the official ONNX Runtime build at run time (`ort`'s `load-dynamic`),
//! because `ort`'s own binary download cannot work offline. Lookup order:
//! `--onnxruntime PATH`, `ORT_DYLIB_PATH`, localml's cache directory (filled by
//! `localml runtime install`), a worker's copy fetched from the scheduler
//! (`<data_dir>/runtime`), then the system library path. A worker that finds none fetches
//! the build the scheduler's catalog holds (`localml runtime push`).

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
    pub fn package(self) -> &'static str {
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

    /// The catalog's name for it (`RuntimeBuild.flavor`).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Cpu => "cpu",
            Flavor::Gpu => "gpu",
        }
    }

    /// The flavor the catalog names `name`.
    pub fn from_name(name: &str) -> Option<Flavor> {
        match name {
            "cpu" => Some(Flavor::Cpu),
            "gpu" => Some(Flavor::Gpu),
            _ => None,
        }
    }
}

/// Where a library path came from, for log messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Cache,
    /// A copy fetched from the scheduler earlier (`<data_dir>/runtime`).
    Fetched,
    System,
    /// Fetched from the scheduler at this start.
    Scheduler,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A path given explicitly does not exist.
    #[error("ONNX Runtime library {path} (from {origin}) does not exist; run `localml runtime install` or fix the path")]
    MissingFile { path: PathBuf, origin: &'static str },
    /// No library anywhere in the lookup order.
    #[error("ONNX Runtime library not found: run `localml runtime install` (fetches onnxruntime {ORT_VERSION} from PyPI, or --from a wheel file), or pass --onnxruntime PATH, or set ORT_DYLIB_PATH")]
    NotFound,
    /// None here, and the scheduler could not provide one.
    #[error("ONNX Runtime library not found here, and none came from the scheduler: {0}. Run `localml runtime push` where the scheduler can be reached (or `localml runtime install` on this PC, or pass --onnxruntime PATH)")]
    NotFetched(String),
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
    installed_in(&cache_dir())
}

/// A library installed under `root` as `<package>/<version>/libonnxruntime.so.<version>`:
/// the GPU build first, and of each the release localml is built against, else the
/// highest one there.
pub fn installed_in(root: &Path) -> Option<PathBuf> {
    [Flavor::Gpu, Flavor::Cpu].into_iter().find_map(|f| {
        let expected = root
            .join(f.package())
            .join(f.version())
            .join(f.library_file());
        if expected.is_file() {
            return Some(expected);
        }
        let mut others: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(root.join(f.package()))
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version = e.file_name().to_str()?.to_string();
                let library = e.path().join(format!("libonnxruntime.so.{version}"));
                let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
                Some((parts?, library)).filter(|(_, l)| l.is_file())
            })
            .collect();
        others.sort();
        others.pop().map(|(_, path)| path)
    })
}

/// Finds the library following the documented lookup order; `fetched` is where a worker
/// keeps the copy it fetched from the scheduler.
pub fn locate(
    flag: Option<&Path>,
    fetched: Option<&Path>,
) -> Result<(PathBuf, Source), RuntimeError> {
    // `auto` (for a systemd environment file, which needs a value): the lookup order.
    if let Some(path) = flag.filter(|p| *p != Path::new("auto")) {
        return existing(path.to_path_buf(), "--onnxruntime").map(|p| (p, Source::Flag));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(PathBuf::from(path), "ORT_DYLIB_PATH").map(|p| (p, Source::Env));
    }
    if let Some(path) = cached_library() {
        return Ok((path, Source::Cache));
    }
    if let Some(path) = fetched.and_then(installed_in) {
        return Ok((path, Source::Fetched));
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
    find_library("libonnxruntime.so")
}

/// Whether the CUDA runtime library (`libcudart.so*`) is on the library path, as the GPU
/// build needs where its CUDA libraries did not come with it.
pub fn cuda_runtime_present() -> bool {
    find_library("libcudart.so").is_some()
}

/// Names of NVIDIA's CUDA libraries that travel with the GPU build (from the `nvidia-*`
/// wheels): the CUDA runtime, cuBLAS(Lt), cuFFT, cuRAND, cuSPARSE, cuSOLVER, cuDNN,
/// NVRTC, nvJitLink, NVBLAS, and TensorRT's where given.
const CUDA_LIBRARY_PREFIXES: [&str; 12] = [
    "libcudart.so",
    "libcublas",
    "libcufft",
    "libcurand",
    "libcusparse",
    "libcusolver",
    "libcudnn",
    "libnvrtc",
    "libnvJitLink",
    "libnvblas",
    "libnvinfer",
    "libnvonnxparser",
];

/// Whether a build's file is one of NVIDIA's CUDA libraries (see
/// [`CUDA_LIBRARY_PREFIXES`]), not ONNX Runtime's own.
pub fn is_cuda_library(file_name: &str) -> bool {
    file_name.contains(".so")
        && CUDA_LIBRARY_PREFIXES
            .iter()
            .any(|p| file_name.starts_with(p))
}

/// Whether directory `dir` holds the CUDA runtime (`libcudart.so*`).
fn cuda_in(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("libcudart.so"))
    })
}

/// Whether a GPU build made of `files` (names) can run here: it carries the CUDA runtime
/// (`libcudart.so*`), or the PC has it. Err says why not.
pub fn gpu_build_usable(files: &[&str], cuda_on_this_pc: bool) -> Result<(), String> {
    if cuda_on_this_pc || files.iter().any(|f| f.starts_with("libcudart.so")) {
        return Ok(());
    }
    Err("the GPU build carries no CUDA libraries and this PC has no CUDA runtime (libcudart); push the GPU build with them: `localml runtime push --gpu`, or --from onnxruntime-gpu's wheel with NVIDIA's nvidia-* wheels".into())
}

/// What [`preload_cuda`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Preloaded {
    /// Libraries loaded, by file name.
    pub loaded: Vec<String>,
    /// Libraries that would not load, with the loader's reason.
    pub failed: Vec<(String, String)>,
}

/// Loads the CUDA libraries that came with a GPU build (`dir`, the build's directory:
/// one that holds ONNX Runtime's CUDA provider and the CUDA runtime), before ONNX Runtime: its CUDA provider library names them (libcudart.so.13,
/// libcublasLt.so.13, ...) without a search path of its own, and cuDNN's parts are
/// opened later by name; a library loaded once, globally, is found by name by both. (As
/// onnxruntime's Python `preload_dlls` does for the same wheels, through `ort`'s
/// `preload_dylib`, which keeps each loaded for the process's life.) Libraries that need
/// another are retried once that one is loaded; those that never load are reported, not
/// fatal: the CUDA provider then fails to start and models run on the CPU.
pub fn preload_cuda(dir: &Path) -> Preloaded {
    // Only a GPU build that carries its CUDA libraries: ONNX Runtime's CUDA provider and
    // the CUDA runtime beside the library (not, say, a system directory that happens to
    // hold ONNX Runtime among other libraries).
    let carries_cuda = dir.join("libonnxruntime_providers_cuda.so").is_file() && cuda_in(dir);
    if !carries_cuda {
        return Preloaded::default();
    }
    let mut pending: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
                .filter(|(name, path)| is_cuda_library(name) && path.is_file())
                .collect()
        })
        .unwrap_or_default();
    pending.sort();
    let mut done = Preloaded::default();
    loop {
        let before = pending.len();
        let mut failed = Vec::new();
        pending.retain(|(name, path)| match ort::util::preload_dylib(path) {
            Ok(()) => {
                done.loaded.push(name.clone());
                false
            }
            Err(e) => {
                // The loader's own words are in the error's source ("libcuda.so.1:
                // cannot open shared object file").
                let reason = std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
                failed.push((name.clone(), reason));
                true
            }
        });
        if pending.is_empty() || pending.len() == before {
            done.failed = failed;
            return done;
        }
    }
}

/// `<name>` or the highest `<name>.<version>` in `LD_LIBRARY_PATH`, the usual system
/// directories and CUDA's.
fn find_library(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/lib",
            "/usr/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/local/cuda/lib64",
        ]
        .iter()
        .map(PathBuf::from),
    );
    let versioned_prefix = format!("{name}.");
    dirs.into_iter().find_map(|dir| {
        let exact = dir.join(name);
        if exact.is_file() {
            return Some(exact);
        }
        let mut versioned: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&versioned_prefix))
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
    if let Some(dir) = path.parent() {
        let cuda = preload_cuda(dir);
        if !cuda.loaded.is_empty() {
            tracing::info!(dir = %dir.display(), libraries = cuda.loaded.len(), "loaded the CUDA libraries that came with the GPU build");
        }
        for (library, reason) in &cuda.failed {
            tracing::warn!(%library, %reason, "a CUDA library of the GPU build does not load; models that ask for CUDA run on the CPU");
        }
    }
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

/// Whom a build is installed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// This PC (`localml runtime install`, `localml up`).
    ThisPc,
    /// Workers elsewhere (`localml runtime push`): a GPU build must carry its CUDA
    /// libraries.
    OtherPcs,
}

/// Downloads the `onnxruntime` wheel with pip (or `onnxruntime-gpu` with NVIDIA's CUDA
/// wheels it names: `onnxruntime-gpu[cuda,cudnn]`) and extracts the shared libraries
/// into the cache. Idempotent: an installed library is kept (a GPU build, once it has
/// its CUDA runtime beside it, or for `Use::ThisPc` where this PC has CUDA itself).
/// `log` receives one line per step.
pub fn install(
    flavor: Flavor,
    purpose: Use,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, RuntimeError> {
    let target = install_dir(flavor).join(flavor.library_file());
    let version = flavor.version();
    let carries_cuda = || cuda_in(&install_dir(flavor));
    // A GPU build without its CUDA libraries (installed before they travelled with it)
    // does for this PC where it has the CUDA runtime itself, never for other PCs.
    let whole = match (flavor, purpose) {
        (Flavor::Cpu, _) => true,
        (Flavor::Gpu, Use::ThisPc) => cuda_runtime_present() || carries_cuda(),
        (Flavor::Gpu, Use::OtherPcs) => carries_cuda(),
    };
    if target.is_file() && whole {
        log(&format!(
            "ONNX Runtime {version} already installed at {}",
            target.display()
        ));
        return Ok(target);
    }
    let python = python()?;
    let download = cache_dir().join("downloads").join(flavor.package());
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)
        .map_err(|e| RuntimeError::Install(format!("{}: {e}", download.display())))?;
    // The GPU build's CUDA libraries come from the wheels its `cuda` and `cudnn` extras
    // name (pip also brings numpy and the like, passed over).
    let (spec, deps): (String, &[&str]) = match flavor {
        Flavor::Cpu => (format!("{}=={version}", flavor.package()), &["--no-deps"]),
        Flavor::Gpu => (format!("{}[cuda,cudnn]=={version}", flavor.package()), &[]),
    };
    log(&format!("downloading {spec} from PyPI with pip ..."));
    let status = Command::new(python)
        .args(["-m", "pip", "download"])
        .args(deps)
        .args(["--only-binary=:all:", "--progress-bar", "on", "-d"])
        .arg(&download)
        .arg(&spec)
        .status()
        .map_err(|e| RuntimeError::Install(format!("cannot run {python} -m pip: {e}")))?;
    if !status.success() {
        return Err(RuntimeError::Install(format!(
            "`{python} -m pip download {spec}` failed ({status})"
        )));
    }
    let installed = install_wheels(std::slice::from_ref(&download), &cache_dir(), log);
    let _ = std::fs::remove_dir_all(&download);
    Ok(installed?.library)
}

/// A build extracted from a wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub flavor: Flavor,
    /// ONNX Runtime's release, from the library's file name.
    pub version: String,
    /// The directory holding the libraries.
    pub dir: PathBuf,
    /// The library workers load (`libonnxruntime.so.<version>`).
    pub library: PathBuf,
}

impl Installed {
    /// The build's files: every `libonnxruntime*` library in its directory, and the CUDA
    /// libraries beside the GPU build's, by name.
    pub fn files(&self) -> std::io::Result<Vec<(String, PathBuf)>> {
        let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
            .filter(|(name, path)| {
                (name.starts_with("libonnxruntime")
                    || (self.flavor == Flavor::Gpu && is_cuda_library(name)))
                    && path.is_file()
            })
            .collect();
        files.sort();
        Ok(files)
    }
}

fn python() -> Result<&'static str, RuntimeError> {
    ["python3", "python"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            RuntimeError::Install(
                "python3 is needed to read the wheel (apt-get install python3)".into(),
            )
        })
}

/// What a wheel holds for a build, by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WheelKind {
    /// ONNX Runtime itself, of a flavor.
    Runtime(Flavor),
    /// One of NVIDIA's CUDA library wheels (`nvidia_cuda_runtime`, `nvidia_cublas`,
    /// `nvidia_cudnn_cu13`, ...), which the GPU build needs.
    Cuda,
}

fn wheel_kind(file_name: &str) -> Option<WheelKind> {
    let name = file_name.to_ascii_lowercase();
    if !name.ends_with(".whl") {
        None
    } else if name.starts_with("onnxruntime_gpu-") {
        Some(WheelKind::Runtime(Flavor::Gpu))
    } else if name.starts_with("onnxruntime-") {
        Some(WheelKind::Runtime(Flavor::Cpu))
    } else if name.starts_with("nvidia_") {
        Some(WheelKind::Cuda)
    } else {
        None
    }
}

/// The wheels of `sources` (wheel files, or directories whose wheels are taken, such as
/// `pip download 'onnxruntime-gpu[cuda,cudnn]'`'s), checked: one ONNX Runtime wheel, and
/// NVIDIA's CUDA wheels only beside the GPU one. Other wheels in a directory (numpy, ...)
/// are passed over.
fn sort_wheels(
    sources: &[PathBuf],
    log: &mut dyn FnMut(&str),
) -> Result<(Flavor, Vec<(WheelKind, PathBuf)>), RuntimeError> {
    let fail = |what: String| RuntimeError::Install(what);
    let mut wheels = Vec::new();
    for source in sources {
        if source.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(source)
                .map_err(|e| fail(format!("{}: {e}", source.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "whl"))
                .collect();
            found.sort();
            for wheel in found {
                let name = wheel.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match wheel_kind(name) {
                    Some(kind) => wheels.push((kind, wheel.clone())),
                    None => log(&format!(
                        "passing over {name}: neither ONNX Runtime nor NVIDIA's CUDA libraries"
                    )),
                }
            }
        } else if !source.is_file() {
            return Err(fail(format!("{}: no such file", source.display())));
        } else {
            let name = source.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let kind = wheel_kind(name).ok_or_else(|| {
                fail(format!("{}: expected an onnxruntime or onnxruntime_gpu wheel (onnxruntime-1.32.0-...whl), or NVIDIA's CUDA wheels (nvidia_*.whl) beside onnxruntime_gpu's", source.display()))
            })?;
            wheels.push((kind, source.clone()));
        }
    }
    let runtimes: Vec<(Flavor, &PathBuf)> = wheels
        .iter()
        .filter_map(|(kind, path)| match kind {
            WheelKind::Runtime(flavor) => Some((*flavor, path)),
            WheelKind::Cuda => None,
        })
        .collect();
    let flavor = match runtimes.as_slice() {
        [(flavor, _)] => *flavor,
        [] => {
            return Err(fail(
                "expected an onnxruntime or onnxruntime_gpu wheel among the files given".into(),
            ))
        }
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect();
            return Err(fail(format!(
                "more than one ONNX Runtime wheel ({}): give one",
                names.join(", ")
            )));
        }
    };
    if flavor == Flavor::Cpu && wheels.iter().any(|(k, _)| *k == WheelKind::Cuda) {
        return Err(fail(
            "NVIDIA's CUDA wheels (nvidia_*.whl) go with the GPU build (onnxruntime_gpu's wheel), not the CPU build".into(),
        ));
    }
    Ok((flavor, wheels))
}

/// Extracts a build from wheels into `<root>/<package>/<version>/`: the ONNX Runtime
/// libraries of an `onnxruntime` or `onnxruntime-gpu` wheel
/// (`onnxruntime/capi/libonnxruntime*`), and for the GPU build the libraries of
/// NVIDIA's CUDA wheels given beside it (`nvidia/.../lib/lib*.so*`: the CUDA runtime,
/// cuBLAS, cuDNN, ..., so that a PC with only NVIDIA's driver runs on its GPU). The
/// version is read from the main library's name and the flavor from the wheel's (a USB
/// stick's wheels, or pip's download). Idempotent: files already there are kept.
pub fn install_wheels(
    sources: &[PathBuf],
    root: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Installed, RuntimeError> {
    let (flavor, wheels) = sort_wheels(sources, log)?;
    let fail = |what: String| RuntimeError::Install(what);
    let python = python()?;
    let staging = root.join(format!(".extract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    log(&format!(
        "extracting the libraries of {} wheel(s) ...",
        wheels.len()
    ));
    // Python's zipfile is always there when pip is; it spares a zip dependency here.
    // Arguments: the directory to fill, the CUDA library names' prefixes, then
    // `runtime:PATH` or `cuda:PATH` per wheel.
    let script = r#"
import os, sys, zipfile
dst = sys.argv[1]
cuda_prefixes = tuple(sys.argv[2].split(","))
os.makedirs(dst, exist_ok=True)
origin = {}
for arg in sys.argv[3:]:
    kind, src = arg.split(":", 1)
    try:
        z = zipfile.ZipFile(src)
    except Exception as e:
        sys.exit("%s: not a wheel (zip) file: %s" % (src, e))
    taken = 0
    with z:
        for name in z.namelist():
            base = os.path.basename(name)
            if kind == "runtime":
                wanted = name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime")
            else:
                wanted = (name.startswith("nvidia/") and "/lib/" in name
                          and base.startswith(cuda_prefixes) and ".so" in base)
            if wanted:
                if base in origin and origin[base] != src:
                    sys.exit("both %s and %s hold %s: give one" % (origin[base], src, base))
                origin[base] = src
                taken += 1
                with z.open(name) as f, open(os.path.join(dst, base), "wb") as out:
                    while True:
                        piece = f.read(1 << 20)
                        if not piece:
                            break
                        out.write(piece)
    if taken == 0 and kind == "cuda":
        print("passing over %s: no nvidia/.../lib/lib*.so* library inside" % src)
"#;
    let mut command = Command::new(python);
    command
        .args(["-c", script])
        .arg(&staging)
        .arg(CUDA_LIBRARY_PREFIXES.join(","));
    for (kind, wheel) in &wheels {
        let kind = match kind {
            WheelKind::Runtime(_) => "runtime",
            WheelKind::Cuda => "cuda",
        };
        let mut arg = std::ffi::OsString::from(format!("{kind}:"));
        arg.push(wheel);
        command.arg(arg);
    }
    let out = command
        .output()
        .map_err(|e| RuntimeError::Install(format!("cannot run {python}: {e}")))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        log(line);
    }
    let result = (|| {
        if !out.status.success() {
            let reason = String::from_utf8_lossy(&out.stderr);
            return Err(fail(reason.trim().lines().last().unwrap_or("").to_string()));
        }
        let version = std::fs::read_dir(&staging)
            .map_err(|e| fail(e.to_string()))?
            .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
            .find_map(|n| {
                let v = n.strip_prefix("libonnxruntime.so.")?;
                v.split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
                    .then(|| v.to_string())
            })
            .ok_or_else(|| {
                let wheel = wheels
                    .iter()
                    .find(|(k, _)| matches!(k, WheelKind::Runtime(_)))
                    .map(|(_, p)| p.display().to_string())
                    .unwrap_or_default();
                fail(format!(
                    "{wheel}: no onnxruntime/capi/libonnxruntime.so.<version> inside"
                ))
            })?;
        let dir = root.join(flavor.package()).join(&version);
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        for entry in std::fs::read_dir(&staging).map_err(|e| fail(e.to_string()))? {
            let entry = entry.map_err(|e| fail(e.to_string()))?;
            let target = dir.join(entry.file_name());
            if !target.is_file() {
                std::fs::rename(entry.path(), &target)
                    .map_err(|e| fail(format!("{}: {e}", target.display())))?;
            }
        }
        let library = dir.join(format!("libonnxruntime.so.{version}"));
        log(&format!("installed {}", library.display()));
        let cuda = std::fs::read_dir(&dir)
            .map_err(|e| fail(e.to_string()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(is_cuda_library))
            .count();
        if flavor == Flavor::Gpu && !cuda_in(&dir) {
            log("this GPU build has no CUDA runtime (libcudart) beside it: workers need CUDA on their own PCs; give NVIDIA's nvidia_* wheels too (pip download 'onnxruntime-gpu[cuda,cudnn]')");
        }
        if cuda > 0 {
            log(&format!(
                "with {cuda} CUDA librar{} beside it",
                if cuda == 1 { "y" } else { "ies" }
            ));
        }
        Ok(Installed {
            flavor,
            version,
            dir,
            library,
        })
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_build_runs_where_it_carries_the_cuda_runtime_or_the_pc_has_it() {
        let with = [
            "libonnxruntime.so.1.31.1",
            "libcudart.so.13",
            "libcublas.so.13",
        ];
        let without = [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so",
        ];
        assert_eq!(gpu_build_usable(&with, false), Ok(()));
        assert_eq!(gpu_build_usable(&without, true), Ok(()));
        let why = gpu_build_usable(&without, false).expect_err("no CUDA anywhere");
        assert!(why.contains("localml runtime push --gpu"), "{why}");
        for ours in [
            "libcudnn_graph.so.9",
            "libnvrtc-builtins.so.13.5",
            "libcublasLt.so.13",
        ] {
            assert!(is_cuda_library(ours), "{ours}");
        }
        for other in [
            "libonnxruntime_providers_cuda.so",
            "LICENSE",
            "libcuda.so.1",
            "libnvidia-ml.so.1",
            "libz.so.1",
        ] {
            assert!(!is_cuda_library(other), "{other}");
        }
    }

    #[test]
    fn wheels_are_sorted_one_runtime_and_cuda_only_beside_the_gpu_build() {
        let dir = std::env::temp_dir().join(format!("localml-wheels-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let put = |name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, b"").expect("write");
            path
        };
        let gpu = put("onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl");
        let cuda = put("nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.whl");
        put("numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl");
        let mut said = Vec::new();
        let (flavor, wheels) = sort_wheels(std::slice::from_ref(&dir), &mut |l| {
            said.push(l.to_string())
        })
        .expect("a directory of wheels");
        assert_eq!(flavor, Flavor::Gpu);
        assert_eq!(
            wheels,
            vec![
                (WheelKind::Cuda, cuda.clone()),
                (WheelKind::Runtime(Flavor::Gpu), gpu.clone())
            ]
        );
        assert!(
            said.iter().any(|l| l.contains("passing over numpy")),
            "{said:?}"
        );
        let cpu = put("onnxruntime-1.32.0-cp311-cp311-manylinux_2_27_x86_64.whl");
        let quiet = &mut |_: &str| {};
        let e =
            sort_wheels(&[cpu.clone(), cuda.clone()], quiet).expect_err("CUDA with the CPU build");
        assert!(e.to_string().contains("go with the GPU build"), "{e}");
        let e = sort_wheels(&[cpu.clone(), gpu], quiet).expect_err("two runtimes");
        assert!(
            e.to_string().contains("more than one ONNX Runtime wheel"),
            "{e}"
        );
        let e = sort_wheels(&[cuda], quiet).expect_err("no runtime");
        assert!(e.to_string().contains("expected an onnxruntime"), "{e}");
        assert_eq!(sort_wheels(&[cpu], quiet).expect("cpu").0, Flavor::Cpu);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_installed_build_is_found_the_expected_release_first_else_the_highest() {
        let root =
            std::env::temp_dir().join(format!("localml-installed-in-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let put = |package: &str, version: &str| {
            let dir = root.join(package).join(version);
            std::fs::create_dir_all(&dir).expect("dir");
            let file = dir.join(format!("libonnxruntime.so.{version}"));
            std::fs::write(&file, b"x").expect("write");
            file
        };
        assert_eq!(installed_in(&root), None);
        put("onnxruntime", "1.9.0");
        let highest = put("onnxruntime", "1.10.0");
        // A directory that is not a release, or lacks its library, is passed over.
        std::fs::create_dir_all(root.join("onnxruntime/9.9.9")).expect("dir");
        std::fs::create_dir_all(root.join("onnxruntime/latest")).expect("dir");
        assert_eq!(installed_in(&root), Some(highest), "1.10.0 over 1.9.0");
        let expected = put("onnxruntime", ORT_VERSION);
        assert_eq!(installed_in(&root), Some(expected));
        let gpu = put("onnxruntime-gpu", "1.2.3");
        assert_eq!(installed_in(&root), Some(gpu), "the GPU build first");
        let _ = std::fs::remove_dir_all(&root);
    }
}
