//! Integration test harness: starts the real `localml-scheduler`, `localml-worker` and
//! `localml` binaries on loopback with port 0, and cleans them up.
//!
//! The binaries come from the same target directory as the test executable (cargo builds
//! them for `cargo test --workspace`), or from `LOCALML_BIN_DIR`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use localml_cli::client::Connection;
use localml_cli::client::{self, Tensor};
use localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use localml_proto::localml::v1::admin_client::AdminClient;
use localml_proto::localml::v1::{ListWorkersRequest, WorkerInfo, WorkerState};
use localml_proto::tensor::{DataType, TensorData};

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn models_dir() -> PathBuf {
    repo_root().join("examples/models")
}

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCALML_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, binaries (the benchmark) from target/<profile>/.
    let dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins) or set LOCALML_BIN_DIR",
        path.display()
    );
    path
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal with the `kill` command (the workspace forbids unsafe code).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SIGCONT first, in case a test stopped it.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a test process's log goes: the test's stderr, or a file (at debug level).
static LOG_FILE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Spawns `command` and reads its first stdout line, which names its addresses.
fn spawn_and_read_line(mut command: Command, name: &str) -> (Process, String) {
    command.stdout(Stdio::piped()).stdin(Stdio::null());
    let log = LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match log {
        Some(path) => {
            // Another test may have set the file and removed its directory since.
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(file) => {
                    command.stderr(file).env("RUST_LOG", "debug");
                }
                Err(_) => {
                    command.stderr(Stdio::inherit());
                }
            }
        }
        None => {
            command.stderr(Stdio::inherit());
            if std::env::var_os("RUST_LOG").is_none() {
                command.env("RUST_LOG", "warn");
            }
        }
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().expect("stdout piped");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read first line");
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    assert!(
        !line.is_empty(),
        "{name} exited before printing its address"
    );
    (
        Process {
            child,
            name: name.to_string(),
        },
        line,
    )
}

/// Extracts the `host:port` after `marker` in `line`.
fn address_after(line: &str, marker: &str) -> String {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address after '{marker}' in {line:?}"))
        .to_string()
}

pub struct Scheduler {
    pub process: Process,
    /// Client address.
    pub addr: String,
    /// Worker (cluster) address.
    pub cluster_addr: String,
    /// `/metrics` and health address, when started with `--http-listen`.
    pub http_addr: Option<String>,
    /// The REST listener's URL (`http://` or `https://`), when started with
    /// `--rest-listen`.
    pub rest_url: Option<String>,
    extra: Vec<String>,
    dir: TempDir,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
}

/// Scheduler settings for tests: fast reports, a grace period long enough for a busy
/// machine.
pub const TEST_SCHEDULER_CONFIG: &str = "report_interval_ms: 200\nworker_grace_period_ms: 3000\n";

impl Scheduler {
    pub fn start() -> Scheduler {
        Scheduler::start_with(TEST_SCHEDULER_CONFIG)
    }

    pub fn start_with(yaml: &str) -> Scheduler {
        Scheduler::start_full(yaml, &[])
    }

    /// Starts a scheduler with `yaml` and extra flags (e.g. `--store etcd://...`); its
    /// embedded state lives in a temporary directory kept across [`Scheduler::restart`].
    pub fn start_full(yaml: &str, extra: &[&str]) -> Scheduler {
        Scheduler::start_prepared(yaml, extra, |_| {})
    }

    /// As [`Scheduler::start_full`], after `prepare` was given the (not yet created) data
    /// directory, e.g. to restore a backup into it.
    pub fn start_prepared(yaml: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Scheduler {
        Scheduler::start_inner(yaml, extra, prepare, None)
    }

    /// As [`Scheduler::start_full`], in network namespace `net`: its client (TLS), cluster
    /// and (with `--http-listen`, given as a port) metrics listeners on the first link's
    /// address.
    pub fn start_in_netns(yaml: &str, extra: &[&str], net: &Netns) -> Scheduler {
        let ip = net.ns_ip();
        let listen = format!("{ip}:{}", free_port());
        let cluster = format!("{ip}:{}", free_port());
        let mut all: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(i) = all.iter().position(|a| a == "--http-listen") {
            if let Some(port) = all.get_mut(i + 1) {
                *port = format!("{ip}:{port}");
            }
        }
        all.extend([
            "--listen".into(),
            listen,
            "--cluster-listen".into(),
            cluster,
        ]);
        // A client port on a LAN address serves TLS (the scheduler's default for one).
        if !all.iter().any(|a| a == "--client-tls") {
            all.extend(["--client-tls".into(), "required".into()]);
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Scheduler::start_inner(yaml, &all, |_| {}, Some(net.name.clone()))
    }

    fn start_inner(
        yaml: &str,
        extra: &[&str],
        prepare: impl FnOnce(&Path),
        netns: Option<String>,
    ) -> Scheduler {
        let dir = TempDir::new("scheduler");
        prepare(&dir.path().join("state"));
        std::fs::write(dir.path().join("scheduler.yaml"), yaml).expect("write config");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // `--listen ADDR` in `extra` replaces the loopback default.
        let mut listen = format!("127.0.0.1:{}", free_port());
        if let Some(i) = extra.iter().position(|a| a == "--listen") {
            if i + 1 < extra.len() {
                listen = extra.remove(i + 1);
                extra.remove(i);
            }
        }
        // `--cluster-listen ADDR` likewise (a network namespace's address).
        let mut cluster = format!("127.0.0.1:{}", free_port());
        if let Some(i) = extra.iter().position(|a| a == "--cluster-listen") {
            if i + 1 < extra.len() {
                cluster = extra.remove(i + 1);
                extra.remove(i);
            }
        }
        // Keys are required unless a test says otherwise (`--auth auto`, `--insecure`): every
        // test's requests pass the key check, as a LAN deployment's do.
        if !extra.iter().any(|a| a == "--auth" || a == "--insecure") {
            extra.extend(["--auth".to_string(), "required".to_string()]);
        }
        let (process, addr, cluster_addr, http_addr, rest_url) =
            Scheduler::spawn(&dir, &extra, &listen, &cluster, netns.as_deref());
        admin_keys()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.clone(), dir.path().join("state/admin.key"));
        Scheduler {
            process,
            addr,
            cluster_addr,
            http_addr,
            rest_url,
            extra,
            dir,
            netns,
        }
    }

    fn spawn(
        dir: &TempDir,
        extra: &[String],
        listen: &str,
        cluster: &str,
        netns: Option<&str>,
    ) -> (Process, String, String, Option<String>, Option<String>) {
        let mut command = match netns {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name])
                    .arg(bin("localml-scheduler"));
                c
            }
            None => Command::new(bin("localml-scheduler")),
        };
        command
            .args(["--listen", listen, "--cluster-listen", cluster, "--config"])
            .arg(dir.path().join("scheduler.yaml"))
            .arg("--data-dir")
            .arg(dir.path().join("state"))
            .args(extra);
        let (process, line) = spawn_and_read_line(command, "scheduler");
        let addr = address_after(&line, "listening on ");
        let cluster_addr = address_after(&line, "and ");
        let client_url = if serves_tls(extra) {
            format!("https://{addr}")
        } else {
            addr.clone()
        };
        remember_scheduler(&cluster_addr, &client_url);
        let http_addr = line
            .contains(", http://")
            .then(|| address_after(&line, ", http://"));
        let rest_url = line
            .contains(", REST ")
            .then(|| address_after(&line, ", REST "));
        (process, addr, cluster_addr, http_addr, rest_url)
    }

    /// Kills the scheduler with SIGKILL and starts it again on the same addresses with
    /// the same state (a crash and a restart by systemd or Kubernetes).
    pub fn crash_and_restart(&mut self) {
        self.process.kill9();
        let start = Instant::now();
        loop {
            // The old process's sockets may take a moment to be released.
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Scheduler::spawn(
                    &self.dir,
                    &self.extra,
                    &self.addr,
                    &self.cluster_addr,
                    self.netns.as_deref(),
                )
            }));
            match attempt {
                Ok((process, _, _, _, _)) => {
                    self.process = process;
                    return;
                }
                Err(_) if start.elapsed() < SOON => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// The first admin key the scheduler wrote into its data directory (it writes it
    /// right after printing its addresses).
    pub fn admin_key(&self) -> String {
        read_admin_key(&self.dir.path().join("state/admin.key"))
    }

    /// The scheduler's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// An inference client with the scheduler's first admin key.
    pub async fn inference(&self) -> GrpcInferenceServiceClient<Connection> {
        inference_client(&self.addr).await
    }

    /// A scheduler whose loopback client port is open (no key needed), as `localml up`'s.
    pub fn start_open() -> Scheduler {
        Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "auto"])
    }

    /// The Ready workers that serve `model` now, by name.
    pub async fn serving(&self, model: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .workers()
            .await
            .into_iter()
            .filter(|w| w.state == WorkerState::Ready as i32)
            .filter_map(|w| w.status)
            .filter(|s| s.models.iter().any(|m| m.name == model))
            .map(|s| s.name)
            .collect();
        names.sort();
        names
    }

    /// An Admin client with the scheduler's first admin key (so it works whether or not
    /// the scheduler requires keys).
    pub async fn admin(&self) -> AdminClient<Connection> {
        client::admin_client(self.admin_channel().await)
    }

    /// A connection to the client port that sends the scheduler's first admin key.
    pub async fn admin_channel(&self) -> Connection {
        let key = self.admin_key();
        let ca = serves_tls(&self.extra).then(|| read_ca_pem(&self.data_dir()));
        client::connect_with(
            &self.client_url(),
            Duration::from_secs(10),
            Some(&key),
            ca.as_deref(),
        )
        .await
        .expect("connect")
    }

    /// The client address as the CLI takes it: `https://ADDR` when the scheduler was
    /// started with `--client-tls required`.
    pub fn client_url(&self) -> String {
        if serves_tls(&self.extra) {
            format!("https://{}", self.addr)
        } else {
            self.addr.clone()
        }
    }

    pub async fn workers(&self) -> Vec<WorkerInfo> {
        self.admin()
            .await
            .list_workers(ListWorkersRequest {})
            .await
            .expect("list workers")
            .into_inner()
            .workers
    }

    /// State of the worker named `name`, if listed.
    pub async fn worker_state(&self, name: &str) -> Option<WorkerState> {
        self.workers()
            .await
            .into_iter()
            .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
            .and_then(|w| WorkerState::try_from(w.state).ok())
    }

    /// Waits until `names` are all Ready.
    pub async fn wait_ready(&self, names: &[&str]) {
        let ok = wait_until(SOON, || async {
            let workers = self.workers().await;
            names.iter().all(|n| {
                workers.iter().any(|w| {
                    w.status.as_ref().is_some_and(|s| s.name == *n)
                        && w.state == WorkerState::Ready as i32
                })
            })
        })
        .await;
        assert!(
            ok,
            "workers {names:?} not Ready within {SOON:?}: {:?}",
            self.workers().await
        );
    }
}

/// Client address of the scheduler serving each cluster address started by this test
/// process, so workers started with only a cluster address get a join token.
fn schedulers() -> &'static std::sync::Mutex<std::collections::HashMap<String, String>> {
    static MAP: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// Whether a scheduler started with `extra` serves TLS on its loopback client port.
fn serves_tls(extra: &[String]) -> bool {
    extra
        .windows(2)
        .any(|w| w[0] == "--client-tls" && w[1] == "required")
}

fn remember_scheduler(cluster: &str, client: &str) {
    schedulers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(cluster.to_string(), client.to_string());
}

/// The client address of the scheduler whose cluster address is `cluster`.
pub fn client_address_of(cluster: &str) -> Option<String> {
    schedulers()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(cluster)
        .cloned()
}

/// Runs `localml ARGS` and returns its standard output; panics when it fails.
/// The first admin key file of each scheduler this test process started, by client
/// address: the harness's own `localml` calls use it, so they work whether or not the
/// scheduler requires API keys.
fn admin_keys() -> &'static std::sync::Mutex<std::collections::HashMap<String, PathBuf>> {
    static KEYS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default)
}

/// Reads an admin key file, waiting for the scheduler to write it.
fn read_admin_key(path: &Path) -> String {
    read_when(path, |text| text.ends_with('\n'))
        .trim()
        .to_string()
}

/// Reads `path` once `complete` holds for its text, waiting (bounded) for the process
/// that writes it.
fn read_when(path: &Path, complete: fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        match std::fs::read_to_string(path) {
            Ok(text) if complete(&text) => return text,
            _ if start.elapsed() < SOON => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("read {}: {other:?}", path.display()),
        }
    }
}

/// The cluster CA's certificate the scheduler writes into `data_dir` at start.
pub fn read_ca_pem(data_dir: &Path) -> String {
    read_when(&data_dir.join("ca.pem"), |text| {
        text.contains("-----END CERTIFICATE-----")
    })
}

/// Runs `localml` with `args` (which name `--server`); with the admin key of the
/// scheduler at `server` when this process started it.
pub fn localml(args: &[&str]) -> String {
    let server = args
        .iter()
        .position(|a| *a == "--server")
        .and_then(|i| args.get(i + 1));
    let key_file = server.and_then(|s| {
        admin_keys()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(s.trim_start_matches("https://"))
            .cloned()
    });
    let mut command = Command::new(bin("localml"));
    command.args(args).env("RUST_LOG", "off");
    if let Some(file) = key_file {
        command.env("LOCALML_KEY", read_admin_key(&file));
        // The CA the scheduler writes next to its admin key, for `https://` addresses.
        if let Some(dir) = file
            .parent()
            .filter(|_| server.is_some_and(|s| s.starts_with("https://")))
        {
            read_ca_pem(dir);
            command.env("LOCALML_CA", dir.join("ca.pem"));
        }
    }
    let out = command.output().expect("run localml");
    assert!(
        out.status.success(),
        "localml {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A join token from the scheduler at `client` (created once per scheduler and test
/// process, never expiring).
pub fn join_token(client: &str) -> String {
    static TOKENS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, String>>,
    > = std::sync::OnceLock::new();
    let tokens = TOKENS.get_or_init(Default::default);
    let mut tokens = tokens.lock().unwrap_or_else(|e| e.into_inner());
    tokens
        .entry(client.to_string())
        .or_insert_with(|| {
            localml(&["token", "create", "--ttl", "0", "--server", client])
                .trim()
                .to_string()
        })
        .clone()
}

/// An operator certificate (`localml certs issue`) from the scheduler at `client`, for
/// calling workers directly; issued once per scheduler and test process.
pub fn operator_certificate(client: &str) -> localml_cli::trust::CertFiles {
    static DIRS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        std::sync::OnceLock::new();
    let dirs = DIRS.get_or_init(Default::default);
    let mut dirs = dirs.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dirs
        .entry(client.to_string())
        .or_insert_with(|| {
            let dir = scratch_dir(&format!("operator-{}", client.replace([':', '.'], "-")));
            let out = dir.to_string_lossy().into_owned();
            localml(&[
                "certs",
                "issue",
                "--name",
                "test-operator",
                "--out",
                &out,
                "--server",
                client,
            ]);
            dir
        })
        .clone();
    localml_cli::trust::CertFiles::in_dir(&dir, "test-operator")
}

/// A directory under this test process's scratch directory (kept for the process's life,
/// so a worker restarted under the same name finds its certificate).
fn scratch_dir(name: &str) -> PathBuf {
    static ROOT: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| TempDir::new("scratch"));
    let dir = root.path().join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub struct Worker {
    pub process: Process,
    pub addr: String,
    /// `/metrics` and health address, when started with `--http-listen`.
    pub http_addr: Option<String>,
    pub name: String,
    /// Client address of the scheduler it joined, when the harness knows it.
    pub scheduler: Option<String>,
}

impl Worker {
    /// Starts a worker serving the example models, with extra flags.
    pub fn start(name: &str, scheduler: &Scheduler, extra: &[&str]) -> Worker {
        Worker::start_with_models(name, scheduler, &models_dir(), extra)
    }

    /// Starts a worker serving the model repository `models`.
    pub fn start_with_models(
        name: &str,
        scheduler: &Scheduler,
        models: &Path,
        extra: &[&str],
    ) -> Worker {
        Worker::start_reporting_to(name, &scheduler.cluster_addr, models, extra)
    }

    /// Starts a worker reporting to `schedulers` (one cluster address, or several
    /// separated by commas for scheduler replicas).
    pub fn start_reporting_to(
        name: &str,
        schedulers: &str,
        models: &Path,
        extra: &[&str],
    ) -> Worker {
        Worker::start_with_env(name, schedulers, models, extra, &[])
    }

    /// As [`Worker::start_reporting_to`], with `env` set for the worker process.
    pub fn start_with_env(
        name: &str,
        schedulers: &str,
        models: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Worker {
        Worker::start_command(
            Command::new(bin("localml-worker")),
            name,
            schedulers,
            models,
            extra,
            env,
        )
    }

    /// A worker in network namespace `netns` (`ip netns exec`), listening on `ip`,
    /// reporting to `schedulers` (comma-separated cluster addresses).
    pub fn start_in_netns_reporting_to(
        name: &str,
        schedulers: &str,
        netns: &str,
        ip: &str,
        extra: &[&str],
    ) -> Worker {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(bin("localml-worker"));
        let listen = format!("{ip}:0");
        let mut args = vec!["--listen", listen.as_str()];
        args.extend_from_slice(extra);
        Worker::start_command(command, name, schedulers, &models_dir(), &args, &[])
    }

    fn start_command(
        mut command: Command,
        name: &str,
        schedulers: &str,
        models: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Worker {
        for (key, value) in env {
            command.env(key, value);
        }
        // Workers join as an operator would set them up: a token from the scheduler (in
        // the environment, as systemd passes it), a data directory per name.
        let first = schedulers.split(',').next().unwrap_or_default().trim();
        let scheduler = client_address_of(first);
        if !extra.contains(&"--data-dir") {
            let tag = format!("worker-{name}-{}", schedulers.replace([':', '.', ','], "-"));
            command.arg("--data-dir").arg(scratch_dir(&tag));
        }
        if !extra
            .iter()
            .any(|a| *a == "--token" || *a == "--token-file")
        {
            if let Some(client) = &scheduler {
                command.env("LOCALML_TOKEN", join_token(client));
            }
        }
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--name", name, "--scheduler", schedulers])
            .arg("--models")
            .arg(models)
            .args(extra);
        // One intra-op thread unless the test says otherwise: tests run side by side.
        if !extra.contains(&"--intra-op-threads") {
            command.args(["--intra-op-threads", "1"]);
        }
        let (process, line) = spawn_and_read_line(command, name);
        let addr = address_after(&line, "listening on ");
        let http_addr = line
            .contains("http://")
            .then(|| address_after(&line, "http://"));
        Worker {
            process,
            addr,
            http_addr,
            name: name.to_string(),
            scheduler,
        }
    }

    /// An inference client for this worker's own port, with an operator certificate
    /// from its scheduler (the port accepts no one else).
    pub async fn inference(&self) -> GrpcInferenceServiceClient<Connection> {
        let scheduler = self
            .scheduler
            .as_deref()
            .expect("the worker's scheduler was started by this harness");
        let files = operator_certificate(scheduler);
        let channel = localml_cli::trust::connect_worker(&self.addr, &self.name, &files)
            .await
            .expect("connect to the worker with an operator certificate");
        client::inference_client(channel)
    }
}

/// An inference client for the scheduler at `addr`, with its first admin key when this
/// process started it.
pub async fn inference_client(addr: &str) -> GrpcInferenceServiceClient<Connection> {
    let key = admin_key_of(addr);
    let channel = client::connect_with_key(addr, Duration::from_secs(10), key.as_deref())
        .await
        .expect("connect");
    client::inference_client(channel)
}

/// The first admin key of the scheduler at `addr` (client address), if this process
/// started it.
pub fn admin_key_of(addr: &str) -> Option<String> {
    admin_keys()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(addr.trim_start_matches("https://"))
        .cloned()
        .map(|file| read_admin_key(&file))
}

/// Polls `condition` until it holds or `timeout` passes; true if it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The `localml workers` table of `scheduler`, as an operator sees it.
pub fn localml_workers(scheduler: &Scheduler) -> String {
    let out = Command::new(bin("localml"))
        .args(["workers", "--server", &scheduler.addr])
        .env("LOCALML_KEY", scheduler.admin_key())
        .output()
        .expect("run localml workers");
    assert!(
        out.status.success(),
        "localml workers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where scripts/deps.sh --test puts Triton's perf_analyzer: `bin/perf_analyzer`, and
/// `lib/` for LD_LIBRARY_PATH (libcudart.so.12, which it loads even without a GPU).
pub fn perf_analyzer_dir() -> PathBuf {
    repo_root().join("target/tools/perf_analyzer")
}

/// The first number after `marker` in `text` (perf_analyzer's "throughput: " and
/// "p95 latency: " lines), if any.
pub fn number_after(text: &str, marker: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.split(marker).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
}

/// Whether Triton's Python client can run here; fails instead when
/// `LOCALML_REQUIRE_PYTHON_CLIENT` is set (CI installs it: scripts/test.sh).
pub fn tritonclient_available() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import tritonclient.grpc, tritonclient.http, numpy"])
        .output();
    if probe.is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("LOCALML_REQUIRE_PYTHON_CLIENT").is_none(),
        "tritonclient is not installed but LOCALML_REQUIRE_PYTHON_CLIENT is set (scripts/test.sh installs it)"
    );
    eprintln!("skipped: python3 -m pip install 'tritonclient[grpc,http]' numpy to run this test");
    false
}

/// Runs tests/python/tritonclient_check.py (Triton's unmodified Python client) against
/// `addr`, with `key` in `headers=` when given; panics with its output when it fails.
pub async fn check_with_tritonclient(addr: &str, key: Option<&str>) {
    check_with_tritonclient_tls(addr, key, None).await
}

/// As [`check_with_tritonclient`], over TLS verified with the CA in `ca` (PEM) when given
/// (`ssl=True, root_certificates=...`).
pub async fn check_with_tritonclient_tls(addr: &str, key: Option<&str>, ca: Option<&Path>) {
    let stdout = run_python_check("tritonclient_check.py", addr, key, ca).await;
    assert!(stdout.contains("examples OK"), "{stdout}");
}

/// Runs `tests/python/SCRIPT ADDR examples/expected` with `LOCALML_KEY` and `LOCALML_CA`
/// set from `key` and `ca`; its standard output, or a panic with its output when it
/// fails.
pub async fn run_python_check(
    script: &str,
    addr: &str,
    key: Option<&str>,
    ca: Option<&Path>,
) -> String {
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(repo_root().join("tests/python").join(script))
        .arg(addr)
        .arg(repo_root().join("examples/expected"))
        .env_remove("LOCALML_KEY")
        .env_remove("LOCALML_CA");
    if let Some(key) = key {
        command.env("LOCALML_KEY", key);
    }
    if let Some(ca) = ca {
        command.env("LOCALML_CA", ca);
    }
    let out = command.output().await.expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} (key: {}) failed:\n{stdout}\n{}",
        key.is_some(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Sends the log of every process this test binary starts from now on to `path`, at
/// debug level (the secrets tests grep it); `None` goes back to the test's stderr.
pub fn log_processes_to(path: Option<PathBuf>) {
    *LOG_FILE.lock().unwrap_or_else(|e| e.into_inner()) = path;
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("localml-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stored example: inputs and the outputs onnxruntime's Python API computed for them.
#[derive(Clone)]
pub struct Expected {
    pub model: String,
    pub version: String,
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

fn tensors(value: &serde_json::Value) -> Vec<Tensor> {
    value
        .as_array()
        .expect("tensor list")
        .iter()
        .map(|t| {
            let datatype =
                DataType::parse(t["datatype"].as_str().expect("datatype")).expect("known datatype");
            let shape: Vec<i64> = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dim"))
                .collect();
            let flat: Vec<&serde_json::Value> =
                t["data"].as_array().expect("data").iter().collect();
            Tensor {
                name: t["name"].as_str().expect("name").to_string(),
                shape,
                data: localml_cli::json::values(&flat, datatype).expect("data matches datatype"),
            }
        })
        .collect()
}

/// Every file under examples/expected.
pub fn expected_examples() -> Vec<Expected> {
    let dir = repo_root().join("examples/expected");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/expected")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files.iter().map(|path| expected_file(path)).collect()
}

/// One file of expected outputs (examples/expected's schema).
pub fn expected_file(path: &Path) -> Expected {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    Expected {
        model: json["model"].as_str().expect("model").to_string(),
        version: json["version"].as_str().expect("version").to_string(),
        inputs: tensors(&json["inputs"]),
        outputs: tensors(&json["outputs"]),
    }
}

/// Asserts that `actual` matches `expected`: integers, bools and strings exactly,
/// floating point within a small relative tolerance (different CPUs round differently).
pub fn assert_tensors_match(context: &str, expected: &[Tensor], actual: &[Tensor]) {
    assert_eq!(
        expected.iter().map(|t| &t.name).collect::<Vec<_>>(),
        actual.iter().map(|t| &t.name).collect::<Vec<_>>(),
        "{context}: output names"
    );
    for (e, a) in expected.iter().zip(actual) {
        assert_eq!(e.shape, a.shape, "{context}: shape of {}", e.name);
        assert_eq!(
            e.data.datatype(),
            a.data.datatype(),
            "{context}: datatype of {}",
            e.name
        );
        match (&e.data, &a.data) {
            (TensorData::Fp16(_) | TensorData::Fp32(_) | TensorData::Fp64(_), _) => {
                let (ev, av) = (
                    e.data.to_f64().expect("numeric"),
                    a.data.to_f64().expect("numeric"),
                );
                for (i, (x, y)) in ev.iter().zip(&av).enumerate() {
                    let tolerance = 1e-5 + 1e-4 * x.abs();
                    assert!(
                        (x - y).abs() <= tolerance,
                        "{context}: {}[{i}] expected {x}, got {y}",
                        e.name
                    );
                }
            }
            _ => assert_eq!(e.data, a.data, "{context}: values of {}", e.name),
        }
    }
}

/// A batch of constant-ish images for the `image_classifier` example model.
pub fn image_request(batch: i64) -> localml_proto::inference::ModelInferRequest {
    let n = (batch * 3 * 32 * 32) as usize;
    client::request(
        "image_classifier",
        "",
        &[Tensor {
            name: "image".into(),
            shape: vec![batch, 3, 32, 32],
            data: TensorData::Fp32((0..n).map(|i| (i % 7) as f32 / 7.0).collect()),
        }],
    )
}

/// A fake sysfs power_supply tree of a laptop: AC online or not, and BAT0 at `capacity`
/// percent, charging on mains and discharging on battery, with `extra` files.
pub fn laptop_sysfs(tag: &str, on_mains: bool, capacity: &str, extra: &[(&str, &str)]) -> TempDir {
    let sysfs = TempDir::new(tag);
    let online = if on_mains { "1" } else { "0" };
    write_power_supply(sysfs.path(), "AC", &[("type", "Mains"), ("online", online)]);
    let status = if on_mains { "Charging" } else { "Discharging" };
    let mut files = vec![
        ("type", "Battery"),
        ("capacity", capacity),
        ("status", status),
    ];
    files.extend_from_slice(extra);
    write_power_supply(sysfs.path(), "BAT0", &files);
    sysfs
}

/// Writes files of a fake sysfs power supply `name` under `root`, each atomically (write
/// then rename), as a reader of sysfs never sees half a value.
pub fn write_power_supply(root: &Path, name: &str, files: &[(&str, &str)]) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (file, value) in files {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, format!("{value}\n")).expect("write");
        std::fs::rename(&tmp, dir.join(file)).expect("rename");
    }
}

/// A real etcd server (Debian's `etcd-server`) on loopback with random ports and a
/// temporary data directory; killed and removed on drop.
pub struct Etcd {
    pub process: Process,
    /// `host:port` for clients.
    pub endpoint: String,
    dir: TempDir,
}

/// An HTTP answer: status, header block, body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// The header lines, as sent (names lowercased by the server).
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The value of header `name` (case-insensitive), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The protocol's error message, `{"error": "..."}` (panics when there is none).
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {self:?}"))
            .to_string()
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `request` (raw bytes: a test sends malformed HTTP on purpose, which an HTTP
/// client library would refuse to) to `addr` and reads the answer until the server
/// closes the connection (ask with HTTP/1.0 or `Connection: close`).
pub fn http_raw(addr: &str, request: &[u8]) -> HttpAnswer {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let headers = head
        .split_once("\r\n")
        .map(|(_, h)| h)
        .unwrap_or("")
        .to_string();
    HttpAnswer {
        status,
        headers,
        body: answer[split + 4..].to_vec(),
    }
}

/// An HTTP/1.0 request with `headers` and `body` (Content-Length added; `Host` too unless
/// `headers` has one).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpAnswer {
    let mut request = format!("{method} {path} HTTP/1.0\r\n");
    // `Host: addr` unless the caller names its own.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(addr, &bytes)
}

/// A plain HTTP/1.0 GET: the status code and the body; None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// A free loopback port for a server the harness starts, below Linux's ephemeral range
/// (32768-60999), never the same twice within one test process (test binaries run one
/// after another; two at once could still meet, as with port 0). A port bound with 0 comes
/// from the ephemeral range, where a scheduler killed by `crash_and_restart` could find
/// its port taken (by another test's server or an outgoing connection) and a worker
/// would reach the wrong server; these ports are handed out by this counter only.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    // Test binaries run one after another; each starts elsewhere in the span.
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = FIRST + start.wrapping_add(n) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_also_on(None)
    }

    /// As [`Etcd::start`], serving clients on `ip` too (a namespace's link) at the same
    /// port; [`Etcd::endpoint`] stays the loopback one.
    pub fn start_also_on(ip: Option<&str>) -> Etcd {
        let etcd = std::env::var_os("LOCALML_ETCD").unwrap_or_else(|| "etcd".into());
        let dir = TempDir::new("etcd");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let (client, peer) = (free_port(), free_port());
        let mut client_url = format!("http://127.0.0.1:{client}");
        if let Some(ip) = ip {
            client_url.push_str(&format!(",http://{ip}:{client}"));
        }
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(&etcd)
            .args(["--name", "test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({}): {e}; install it with `scripts/deps.sh --test` (Debian package etcd-server)",
                    etcd.to_string_lossy()
                )
            });
        let mut etcd = Etcd {
            process: Process {
                child,
                name: "etcd".into(),
            },
            endpoint: format!("127.0.0.1:{client}"),
            dir,
        };
        let start = Instant::now();
        while start.elapsed() < SOON {
            if etcd.healthy() {
                return etcd;
            }
            if let Ok(Some(status)) = etcd.process.child.try_wait() {
                panic!(
                    "etcd exited ({status}) before it was healthy:\n{}",
                    etcd.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd.process.kill9();
        panic!("etcd not healthy within {SOON:?}:\n{}", etcd.log());
    }

    /// GET /health answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        http_get(&self.endpoint, "/health")
            .is_some_and(|(_, body)| body.contains("\"health\":\"true\""))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The `--store` value for schedulers using this etcd.
    pub fn store_address(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoint)
    }
}

/// Sends `total` copies of `request` from `concurrency` tasks; counts who served them.
pub async fn served_by(
    scheduler: &Scheduler,
    request: &localml_proto::inference::ModelInferRequest,
    total: usize,
    concurrency: usize,
) -> std::collections::HashMap<String, usize> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut c, next, request) = (scheduler.inference().await, next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut names = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < total {
                let response = c
                    .model_infer(request.clone())
                    .await
                    .expect("served")
                    .into_inner();
                names.push(client::served_by(&response).expect("worker"));
            }
            names
        }));
    }
    let mut counts = std::collections::HashMap::new();
    for t in tasks {
        for name in t.await.expect("task") {
            *counts.entry(name).or_insert(0) += 1;
        }
    }
    counts
}

/// The power source `name` last reported to `scheduler` (a `PowerSource` value).
pub async fn reported_power(scheduler: &Scheduler, name: &str) -> Option<i32> {
    scheduler.workers().await.into_iter().find_map(|w| {
        w.status
            .filter(|s| s.name == name)
            .and_then(|s| s.power)
            .map(|p| p.source)
    })
}

/// Debian's NUT for tests: the `dummy-ups` driver reading a `.dev` file the test rewrites,
/// and `upsd` answering on a loopback port, both in a temporary directory.
pub struct Upsd {
    pub port: u16,
    /// When the `.dev` file was last written: dummy-ups notices a change by its mtime,
    /// which has whole-second resolution.
    written: std::sync::Mutex<Instant>,
    dir: TempDir,
    driver: Process,
    upsd: Process,
}

const NUT_BIN: &str = "/lib/nut";

impl Upsd {
    /// Starts a UPS named `test` on line power, full, with an hour of runtime.
    pub fn start() -> Upsd {
        let dir = TempDir::new("nut");
        let port = free_port();
        let path = dir.path();
        std::fs::write(
            path.join("ups.conf"),
            format!(
                "[test]\n  driver = dummy-ups\n  port = {}\n  pollinterval = 1\n  desc = \"localml test UPS\"\n",
                path.join("test.dev").display()
            ),
        )
        .expect("ups.conf");
        std::fs::write(path.join("upsd.conf"), format!("LISTEN 127.0.0.1 {port}\n"))
            .expect("upsd.conf");
        std::fs::write(path.join("upsd.users"), "").expect("upsd.users");
        std::fs::write(path.join("nut.conf"), "MODE=standalone\n").expect("nut.conf");
        Upsd::write_dev(path, "OL", "100", "3600");
        let spawn = |program: &str, args: &[&str], name: &str| {
            let binary = Path::new(NUT_BIN).join(program);
            assert!(
                binary.is_file(),
                "{} is missing: install Debian's nut-server (scripts/deps.sh --test does)",
                binary.display()
            );
            let child = Command::new(binary)
                .args(args)
                .env("NUT_CONFPATH", path)
                .env("NUT_STATEPATH", path)
                .env("NUT_ALTPIDPATH", path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {program}: {e}"));
            Process {
                child,
                name: name.to_string(),
            }
        };
        // Foreground (-F, -D) so the test owns the processes; as root they need -u root.
        let driver = spawn(
            "dummy-ups",
            &["-a", "test", "-u", "root", "-D"],
            "dummy-ups",
        );
        // upsd refuses to start before the driver's socket exists.
        let socket = path.join("dummy-ups-test");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "dummy-ups did not start (no socket {})",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = spawn("upsd", &["-u", "root", "-F"], "upsd");
        let start = Instant::now();
        // Our upsd answers VER with its name (the port was free when probed, but another
        // process could have taken it since).
        let answers = || -> Option<String> {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            stream.write_all(b"VER\n").ok()?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).ok()?;
            Some(line)
        };
        loop {
            match answers() {
                Some(line) if line.contains("upsd") => break,
                Some(other) if !other.is_empty() => {
                    panic!("127.0.0.1:{port} is not our upsd: {other}")
                }
                _ => {}
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "upsd did not answer on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Upsd {
            port,
            written: std::sync::Mutex::new(Instant::now()),
            dir,
            driver,
            upsd: server,
        }
    }

    fn write_dev(path: &Path, status: &str, charge: &str, runtime: &str) {
        // Written aside and renamed, so the driver never reads half a file.
        let next = path.join("test.dev.next");
        std::fs::write(
            &next,
            format!("ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: {runtime}\n"),
        )
        .expect("write test.dev");
        std::fs::rename(&next, path.join("test.dev")).expect("rename test.dev");
    }

    /// `NAME@HOST:PORT` for `--ups`.
    pub fn target(&self) -> String {
        format!("test@127.0.0.1:{}", self.port)
    }

    /// Changes what the UPS reports (the driver rereads the file within a second or two).
    pub fn set(&self, status: &str, charge: &str, runtime: &str) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        // A new mtime second, or the driver would not see the change.
        let since = written.elapsed();
        if since < Duration::from_millis(1100) {
            std::thread::sleep(Duration::from_millis(1100) - since);
        }
        Upsd::write_dev(self.dir.path(), status, charge, runtime);
        *written = Instant::now();
    }

    /// Stops upsd (the driver keeps running): the UPS no longer answers.
    pub fn stop_server(&mut self) {
        self.upsd.kill9();
    }
}

impl Drop for Upsd {
    fn drop(&mut self) {
        self.upsd.kill9();
        self.driver.kill9();
    }
}

/// `request` with the string parameter `key` set to `value`.
pub fn with_param(
    mut request: localml_proto::inference::ModelInferRequest,
    key: &str,
    value: &str,
) -> localml_proto::inference::ModelInferRequest {
    request.parameters.insert(
        key.into(),
        localml_proto::inference::InferParameter {
            parameter_choice: Some(
                localml_proto::inference::infer_parameter::ParameterChoice::StringParam(
                    value.into(),
                ),
            ),
        },
    );
    request
}

/// One veth pair between this namespace and a [`Netns`]: the host side `host_ip/30` on
/// `host_if`, the namespace side `ns_ip/30`.
pub struct Link {
    pub host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

/// A network namespace joined to this one by one or more veth pairs ([`Link`]s), so a
/// process in it is a PC on its own link(s): link `k` uses `10.(231+k).N.M/30`. Removed on
/// drop.
pub struct Netns {
    pub name: String,
    pub links: Vec<Link>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A namespace with one link; None (the test skips, saying why) where namespaces
    /// cannot be made: not root, or no `ip`. Under CI=true that is a failure.
    pub fn create() -> Option<Netns> {
        Netns::with_links(1)
    }

    /// A namespace with `count` links (e.g. one to the cluster, one to the store).
    pub fn with_links(count: usize) -> Option<Netns> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let has_ip = Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !root || !has_ip {
            let why =
                format!("network namespaces need root and iproute2 (root: {root}, ip: {has_ip})");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("skipped: {why}");
            return None;
        }
        assert!(count <= 4, "at most four links");
        let pid = std::process::id();
        // Tests of one binary share the pid: each namespace takes the next /30 blocks.
        let j = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 60;
        let n = pid % 250 + 1;
        let name = format!("lml{pid}-{j}");
        ip(&["netns", "add", &name]);
        let mut net = Netns {
            name,
            links: Vec::new(),
        };
        for k in 0..count {
            let link = Link {
                host_if: format!("lh{pid}-{j}{k}"),
                host_ip: format!("10.{}.{n}.{}", 231 + k, 4 * j + 1),
                ns_ip: format!("10.{}.{n}.{}", 231 + k, 4 * j + 2),
            };
            let ns_if = format!("lw{pid}-{j}{k}");
            ip(&[
                "link",
                "add",
                &link.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ]);
            // Pushed at once, so a failure below still removes the pair on drop.
            net.links.push(link);
            let link = &net.links[k];
            ip(&["link", "set", &ns_if, "netns", &net.name]);
            ip(&[
                "addr",
                "add",
                &format!("{}/30", link.host_ip),
                "dev",
                &link.host_if,
            ]);
            ip(&["link", "set", &link.host_if, "up"]);
            net.inside(&["addr", "add", &format!("{}/30", link.ns_ip), "dev", &ns_if]);
            net.inside(&["link", "set", &ns_if, "up"]);
        }
        net.inside(&["link", "set", "lo", "up"]);
        Some(net)
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The host side's address of the first link.
    pub fn host_ip(&self) -> &str {
        &self.links[0].host_ip
    }

    /// The namespace side's address of the first link.
    pub fn ns_ip(&self) -> &str {
        &self.links[0].ns_ip
    }

    /// Cuts (or restores) every link, as a pulled cable or a dead switch port.
    pub fn set_link(&self, up: bool) {
        for k in 0..self.links.len() {
            self.set_link_n(k, up);
        }
    }

    /// Cuts (or restores) link `k` only.
    pub fn set_link_n(&self, k: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.links[k].host_if,
            if up { "up" } else { "down" },
        ]);
    }

    /// `command` run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for link in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", &link.host_if])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The value of `series` (a metric name with its labels, as written) in a Prometheus
/// text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value after `name` (e.g. `--seconds`) on this process's command line: the
/// benchmarks' options.
pub fn option(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// CPU time (user + system) a process has used, from /proc/PID/stat (the benchmarks').
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3);
    // utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}
