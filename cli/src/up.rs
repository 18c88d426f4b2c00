//! `localml up`: an all-in-one local cluster on one PC: the scheduler in this process and
//! N worker processes, with no external service. Ctrl-C or SIGTERM stops everything; the
//! workers also exit if this process dies (they watch their standard input).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use localml_proto::localml::v1::{ListModelsRequest, ListWorkersRequest, WorkerState};
use localml_scheduler::config::SchedulerConfig;
use localml_worker::runtime;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client;

pub struct UpOptions {
    pub models: PathBuf,
    pub workers: u32,
    pub listen: String,
    /// The REST listener's address; none: not served.
    pub rest_listen: Option<String>,
    pub onnxruntime: Option<PathBuf>,
    /// Where the scheduler keeps cluster state and jobs [default: the scheduler's].
    pub data_dir: Option<PathBuf>,
    /// `all`: workers load the repository at start; `on-demand`: only what deployments
    /// assign, from the repository or the model catalog (docs/models.md).
    pub load: localml_worker::config::LoadMode,
}

/// How long workers get to load their models and join.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a worker gets to finish in-flight requests at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Finds the ONNX Runtime library, installing it when it is missing.
pub fn ensure_runtime(flag: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    match runtime::locate(flag, None) {
        Ok((path, _)) => Ok(path),
        Err(runtime::RuntimeError::NotFound) => {
            eprintln!(
                "ONNX Runtime {} not found; installing it (once) ...",
                runtime::ORT_VERSION
            );
            Ok(runtime::install(
                runtime::Flavor::Cpu,
                runtime::Use::ThisPc,
                &mut |line| eprintln!("  {line}"),
            )?)
        }
        Err(e) => Err(e.into()),
    }
}

struct WorkerProcess {
    name: String,
    child: Child,
    /// Its `/metrics` and health address, once it printed it.
    http: tokio::sync::oneshot::Receiver<String>,
}

/// How a worker of `localml up` joins: a token, and its data directory.
struct Join<'a> {
    token: &'a str,
    data_dir: &'a std::path::Path,
}

async fn spawn_worker(
    name: &str,
    scheduler: &str,
    options: &UpOptions,
    library: &std::path::Path,
    threads: usize,
    join: &Join<'_>,
) -> anyhow::Result<WorkerProcess> {
    let exe = std::env::current_exe().context("cannot find the localml executable")?;
    let mut child = Command::new(exe)
        // The token goes through the environment, not argv (which `ps` shows).
        .env("LOCALML_TOKEN", join.token)
        .arg("worker")
        .arg("--data-dir")
        .arg(join.data_dir.join("workers").join(name))
        .args([
            "--scheduler",
            scheduler,
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--models")
        .arg(&options.models)
        .arg("--load")
        .arg(match options.load {
            localml_worker::config::LoadMode::All => "all",
            localml_worker::config::LoadMode::OnDemand => "on-demand",
        })
        .arg("--onnxruntime")
        .arg(library)
        .args([
            "--intra-op-threads",
            &threads.to_string(),
            "--exit-with-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start worker {name}"))?;
    // The first line is "localml-worker NAME listening on ADDR (http://HTTP ...)"; drain
    // the rest.
    let (tell, http) = tokio::sync::oneshot::channel();
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        tokio::spawn(async move {
            if let Ok(Some(first)) = lines.next_line().await {
                if let Some(addr) = first
                    .split("(http://")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                {
                    let _ = tell.send(addr.to_string());
                }
            }
            while let Ok(Some(_)) = lines.next_line().await {}
        });
    }
    Ok(WorkerProcess {
        name: name.to_string(),
        child,
        http,
    })
}

/// Runs the local cluster until `shutdown` completes.
pub async fn up(
    options: UpOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if options.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let sources = localml_worker::repository::scan(&options.models)?;
    // On demand, models may come from the catalog only (`localml models push`).
    if sources.is_empty() && options.load == localml_worker::config::LoadMode::All {
        bail!(
            "no models in {} (expected <dir>/<model>/<version>/model.onnx)",
            options.models.display()
        );
    }
    let library = ensure_runtime(options.onnxruntime.as_deref())?;

    let defaults = SchedulerConfig::default();
    let config = SchedulerConfig {
        listen: options.listen.clone(),
        cluster_listen: "127.0.0.1:0".into(),
        http_listen: Some("127.0.0.1:0".into()),
        rest_listen: options.rest_listen.clone(),
        data_dir: options
            .data_dir
            .clone()
            .unwrap_or(defaults.data_dir.clone()),
        ..defaults
    };
    let data_dir = config.data_dir.clone();
    let listeners = localml_scheduler::cli::bind_listeners(&config)
        .await
        .map_err(|e| match &config.rest_listen {
            Some(rest) if e.to_string().contains("REST") => anyhow::anyhow!(
                "{e}; pass --rest-listen with another address (e.g. 127.0.0.1:0), or --rest-listen off"
            )
            .context(format!("the REST listener {rest}")),
            _ => anyhow::Error::from(e),
        })?;
    let endpoint = listeners.clients.local_addr()?;
    let rest_url = match &listeners.rest {
        Some(l) => Some(localml_scheduler::cli::rest_url(&config, l)?),
        None => None,
    };
    let cluster = listeners.cluster.local_addr()?.to_string();
    let scheduler_http = match &listeners.http {
        Some(l) => l.local_addr()?.to_string(),
        None => String::new(),
    };
    let (stop_scheduler, scheduler_stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(localml_scheduler::run(config, listeners, async move {
        let _ = scheduler_stopped.await;
    }));

    // Share the cores: each worker's ONNX Runtime gets its part.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = (cores / options.workers as usize).max(1);
    // The scheduler's own admin key, for the calls `up` makes itself (needed when it
    // listens beyond loopback, where keys are required); it is written at start.
    let admin_key = data_dir.join(localml_scheduler::auth::keys::ADMIN_KEY_FILE);
    let started = std::time::Instant::now();
    while !admin_key.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::client::set_key(
        std::fs::read_to_string(&admin_key)
            .ok()
            .map(|k| k.trim().to_string()),
    );
    // A short-lived join token for our own workers (k3s's server does the same for its
    // agent); later starts reuse their certificates.
    let token = crate::trust::create_token(
        &endpoint.to_string(),
        Duration::from_secs(3600),
        "localml up",
    )
    .await
    .context("cannot create a join token for the local workers")?;
    let join = Join {
        token: &token,
        data_dir: &data_dir,
    };
    let mut workers = Vec::new();
    for i in 1..=options.workers {
        workers.push(
            spawn_worker(
                &format!("worker-{i}"),
                &cluster,
                &options,
                &library,
                threads,
                &join,
            )
            .await?,
        );
    }

    let result = async {
        let channel = client::connect(&endpoint.to_string(), Duration::from_secs(5)).await?;
        let mut admin = client::admin_client(channel);
        let started = tokio::time::Instant::now();
        let mut last = usize::MAX;
        loop {
            let list = admin
                .list_workers(ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            let ready = list
                .iter()
                .filter(|w| w.state == WorkerState::Ready as i32)
                .count();
            if ready != last {
                eprintln!("workers ready: {ready}/{}", options.workers);
                last = ready;
            }
            if ready >= options.workers as usize {
                break;
            }
            for w in &mut workers {
                if let Some(status) = w.child.try_wait()? {
                    bail!(
                        "worker {} exited during start-up ({status}); see its log above",
                        w.name
                    );
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("workers not ready after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let models = admin
            .list_models(ListModelsRequest {})
            .await?
            .into_inner()
            .models;
        println!();
        println!("localml is up: {} workers", options.workers);
        println!("  inference endpoint (Open Inference Protocol / Triton gRPC): {endpoint}");
        println!(
            "  try: localml infer --server {endpoint} --model {}",
            models.first().map(|m| m.name.as_str()).unwrap_or("MODEL")
        );
        println!("       localml workers --server {endpoint}");
        println!("       localml jobs list --server {endpoint}");
        if let Some(url) = &rest_url {
            println!("  inference over HTTP (Open Inference Protocol REST): {url}");
            println!("  web page (workers, models, try a model): {url}/");
            println!(
                "  try: curl {url}/v2/models/{}",
                models.first().map(|m| m.name.as_str()).unwrap_or("MODEL")
            );
        }
        println!(
            "  metrics and health: http://{scheduler_http}/metrics, /healthz, /readyz (scheduler)"
        );
        for w in &mut workers {
            if let Ok(addr) = (&mut w.http).await {
                println!("                      http://{addr}/metrics ({})", w.name);
            }
        }
        println!(
            "  state (jobs, cordons): {}",
            data_dir.join(localml_store::embedded::FILE_NAME).display()
        );
        println!();
        println!("{}", crate::table::models(&models));
        println!();
        println!("Press Ctrl-C to stop.");
        anyhow::Ok(())
    }
    .await;

    if result.is_ok() {
        tokio::pin!(shutdown);
        let exited = async {
            loop {
                for w in &mut workers {
                    if let Ok(Some(status)) = w.child.try_wait() {
                        return (w.name.clone(), status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            _ = &mut shutdown => eprintln!("stopping ..."),
            (name, status) = exited => eprintln!("worker {name} exited ({status}); stopping the cluster"),
        }
    }

    // Closing a worker's stdin asks it to leave and finish in-flight work.
    for w in &mut workers {
        drop(w.child.stdin.take());
    }
    for w in &mut workers {
        match tokio::time::timeout(STOP_TIMEOUT, w.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "worker {} did not stop in {STOP_TIMEOUT:?}; killing it",
                    w.name
                );
                let _ = w.child.kill().await;
            }
        }
    }
    let _ = stop_scheduler.send(());
    scheduler.await??;
    eprintln!("localml stopped");
    result
}
