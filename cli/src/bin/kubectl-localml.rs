//! `kubectl-localml`: the operator's view of a localml cluster as a kubectl plugin
//! (`kubectl localml ...` once the binary is on PATH).
//!
//! It reaches the scheduler with `--server ADDR`, or through the current kube context:
//! `kubectl port-forward` to the chart's Service (`-n NAMESPACE`, `--release NAME`). Its
//! API key is `--key`/`LOCALML_KEY`; else, through the kube context, the chart's admin key
//! Secret (never this PC's own admin key, which must not reach a cluster through a
//! port-forward); else, with `--server`, what `localml` would send (docs/security.md).

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use localml_cli::client::Connection;
use localml_cli::{client, dashboard, jobs, table};
use localml_proto::localml::v1::admin_client::AdminClient;
use localml_proto::localml::v1::*;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(
    name = "kubectl-localml",
    version,
    about = "kubectl plugin for localml: cluster status, workers, models, jobs, a live dashboard, cordon and drain"
)]
struct Cli {
    /// Scheduler address (host:port); without it, port-forward through the kube context.
    #[arg(long, global = true, env = "LOCALML_SERVER")]
    server: Option<String>,
    /// Namespace of the localml release.
    #[arg(short = 'n', long, global = true, default_value = "localml")]
    namespace: String,
    /// Helm release name (the scheduler Service is named after it).
    #[arg(long, global = true, default_value = "localml")]
    release: String,
    /// kubeconfig context [default: the current one].
    #[arg(long, global = true)]
    context: Option<String>,
    /// API key [default: the chart's admin key Secret, read through the kube context].
    #[arg(long, global = true, env = "LOCALML_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Cluster CA (PEM file) for an `https://` --server [default: the chart's CA Secret,
    /// read through the kube context].
    #[arg(long, global = true, env = "LOCALML_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// The Service's client port (the chart's scheduler.ports.grpc).
    #[arg(long, global = true, default_value_t = 8001)]
    port: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summary: workers, models, jobs, deployments.
    Status,
    /// Workers: state, provider, RAM, power, queue, in-flight, models.
    Workers,
    /// Models and the Ready workers serving them.
    Models,
    /// Async jobs.
    Jobs {
        /// pending, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Live dashboard (per worker RAM and GPU bars, power, queue, in-flight, rate; per model
    /// rate and latency percentiles). q or Ctrl-C quits.
    Top {
        /// Seconds between frames.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Draw this many frames and exit (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        frames: u32,
    },
    /// No new work for a worker.
    Cordon { worker: String },
    /// Work again for a worker.
    Uncordon { worker: String },
    /// Cordon a worker and wait until it has no request in flight.
    Drain {
        worker: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

/// The chart's name for the release's objects (its `localml.fullname` helper): the release
/// name when it contains "localml", else "<release>-localml"; at most 50 characters,
/// without a trailing '-'.
fn service_name(release: &str) -> String {
    let name = if release.contains("localml") {
        release.to_string()
    } else {
        format!("{release}-localml")
    };
    name.chars()
        .take(50)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// A field of one of the chart's Secrets (`<release>-localml-<suffix>`), read through the
/// kube context; `None` when kubectl cannot read it (no permission to read Secrets, or a
/// release without it).
async fn chart_secret(cli: &Cli, suffix: &str, field: &str) -> Option<String> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut command = tokio::process::Command::new(&kubectl);
    if let Some(context) = &cli.context {
        command.args(["--context", context]);
    }
    let secret = format!("{}-{suffix}", service_name(&cli.release));
    let template = format!("go-template={{{{index .data \"{field}\" | base64decode}}}}");
    let out = command
        .args([
            "get",
            "secret",
            "-n",
            &cli.namespace,
            &secret,
            "-o",
            &template,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The chart's admin key, from its Secret.
async fn chart_admin_key(cli: &Cli) -> Option<String> {
    let key = chart_secret(cli, "admin-key", "key")
        .await?
        .trim()
        .to_string();
    key.starts_with("lmk_").then_some(key)
}

/// The chart's cluster CA certificate (it verifies the scheduler's TLS), from its Secret.
async fn chart_ca(cli: &Cli) -> Option<String> {
    chart_secret(cli, "ca", "tls.crt")
        .await
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
}

/// A `kubectl port-forward` kept running while the command works (killed on drop).
struct PortForward(#[allow(dead_code)] tokio::process::Child);

async fn port_forward(cli: &Cli) -> anyhow::Result<(String, PortForward)> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut command = tokio::process::Command::new(&kubectl);
    if let Some(context) = &cli.context {
        command.args(["--context", context]);
    }
    let service = format!("svc/{}", service_name(&cli.release));
    let port = format!(":{}", cli.port);
    let mut child = command
        .args(["port-forward", "-n", &cli.namespace, &service, &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot run {kubectl} for port-forward; install kubectl or pass --server ADDR")
        })?;
    let stdout = child.stdout.take().context("kubectl stdout")?;
    let stderr = child.stderr.take().context("kubectl stderr")?;
    let mut lines = BufReader::new(stdout).lines();
    // "Forwarding from 127.0.0.1:PORT -> 8001"; stderr is drained all along, so kubectl
    // never dies writing to a closed pipe.
    let (why_tx, why_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let mut why = String::new();
        let mut err = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = err.next_line().await {
            if why.len() < 2000 {
                why.push_str(line.trim());
                why.push(' ');
            }
        }
        let _ = why_tx.send(why);
    });
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("Forwarding from ") {
                if let Some(addr) = rest.split_whitespace().next() {
                    if !addr.starts_with('[') {
                        return Some(addr.to_string());
                    }
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(addr) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok((addr, PortForward(child)))
        }
        None => {
            let _ = child.kill().await;
            let why = tokio::time::timeout(Duration::from_secs(2), why_rx)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let why = why.trim();
            bail!(
                "cannot port-forward to {service} in namespace {}: {}; is localml installed there (helm install {} ./helm/localml -n {})? Or pass --server ADDR",
                cli.namespace,
                if why.is_empty() {
                    "kubectl printed no forwarding address"
                } else {
                    why
                },
                cli.release,
                cli.namespace
            )
        }
    }
}

fn failed(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

async fn reading(admin: &mut AdminClient<Connection>) -> anyhow::Result<dashboard::Reading> {
    dashboard::read(admin).await.map_err(failed)
}

async fn set_cordon(
    admin: &mut AdminClient<Connection>,
    worker: &str,
    cordoned: bool,
) -> anyhow::Result<()> {
    admin
        .set_cordon(SetCordonRequest {
            worker: worker.to_string(),
            cordoned,
        })
        .await
        .map_err(failed)?;
    Ok(())
}

async fn status(server: &str, admin: &mut AdminClient<Connection>) -> anyhow::Result<()> {
    let r = reading(admin).await?;
    let count = |state: WorkerState| r.workers.iter().filter(|w| w.state == state as i32).count();
    println!("scheduler    {server}");
    println!(
        "workers      {} ready, {} not ready, {} draining, {} cordoned",
        count(WorkerState::Ready),
        count(WorkerState::NotReady),
        count(WorkerState::Draining),
        r.workers.iter().filter(|w| w.cordoned).count()
    );
    let served = r
        .models
        .iter()
        .filter(|m| !m.ready_workers.is_empty())
        .count();
    println!(
        "models       {} versions, {served} served by a Ready worker",
        r.models.len()
    );
    let mut jobs_client = jobs::connect(server).await?;
    let mut by_state = std::collections::BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = jobs_client
            .list(ListJobsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .map_err(failed)?
            .into_inner();
        for j in &page.jobs {
            *by_state.entry(jobs::state_name(j.state)).or_insert(0usize) += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let jobs_line: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!(
        "jobs         {}",
        if jobs_line.is_empty() {
            "none".to_string()
        } else {
            jobs_line.join(", ")
        }
    );
    let deployments = admin
        .list_deployments(ListDeploymentsRequest {})
        .await
        .map_err(failed)?
        .into_inner()
        .deployments;
    let ready = deployments
        .iter()
        .filter(|d| d.ready_replicas >= d.replicas)
        .count();
    println!("deployments  {} ({ready} fully ready)", deployments.len());
    Ok(())
}

async fn drain(
    admin: &mut AdminClient<Connection>,
    worker: &str,
    timeout: u64,
) -> anyhow::Result<()> {
    set_cordon(admin, worker, true).await?;
    println!("worker {worker} cordoned; waiting for its requests to finish");
    let end = Instant::now() + Duration::from_secs(timeout);
    loop {
        let r = reading(admin).await?;
        let w = r
            .workers
            .iter()
            .find(|w| w.status.as_ref().is_some_and(|s| s.name == worker))
            .with_context(|| format!("worker {worker} is gone"))?;
        let busy = w.dispatched_in_flight
            + w.status
                .as_ref()
                .map(|s| {
                    s.models
                        .iter()
                        .map(|m| m.in_flight + m.queue_depth)
                        .sum::<u32>()
                })
                .unwrap_or(0);
        if busy == 0 {
            println!("worker {worker} drained: no request in flight");
            return Ok(());
        }
        if Instant::now() > end {
            bail!("worker {worker} still has {busy} request(s) after {timeout} s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Through the kube context the scheduler serves TLS (its pods listen on the pod
    // network) with the chart's CA; with --server, as `localml` does.
    let (server, _forward) = match &cli.server {
        Some(s) => {
            if s.starts_with("https://") {
                client::set_ca(localml_cli::keys::discover_ca(cli.ca.clone(), s)?);
            }
            (s.clone(), None)
        }
        None => {
            let (addr, forward) = port_forward(&cli).await?;
            match chart_ca(&cli).await {
                Some(ca) => {
                    client::set_ca(Some(ca));
                    (format!("https://{addr}"), Some(forward))
                }
                None => (addr, Some(forward)),
            }
        }
    };
    let key = match (&cli.key, &cli.server) {
        (Some(k), _) => Some(k.clone()),
        (None, None) => chart_admin_key(&cli).await,
        (None, Some(s)) => localml_cli::keys::discover(None, s)?,
    };
    client::set_key(key);
    let channel = client::connect(&server, Duration::from_secs(5)).await?;
    let mut admin = client::admin_client(channel);
    match cli.command {
        Command::Status => status(&server, &mut admin).await,
        Command::Workers => {
            println!("{}", table::workers(&reading(&mut admin).await?.workers));
            Ok(())
        }
        Command::Models => {
            println!("{}", table::models(&reading(&mut admin).await?.models));
            Ok(())
        }
        Command::Jobs { state, limit } => {
            let state = state.as_deref().map(jobs::parse_state).transpose()?;
            jobs::list(&server, state, String::new(), limit).await
        }
        Command::Top { interval, frames } => {
            // At most 10 frames a second; an infinite interval is refused, not a panic.
            let interval = Duration::try_from_secs_f64(interval.max(0.1))
                .with_context(|| format!("--interval {interval}"))?;
            Ok(dashboard::run(&mut admin, &server, interval, frames).await?)
        }
        Command::Cordon { worker } => {
            set_cordon(&mut admin, &worker, true).await?;
            println!("worker {worker} cordoned");
            Ok(())
        }
        Command::Uncordon { worker } => {
            set_cordon(&mut admin, &worker, false).await?;
            println!("worker {worker} uncordoned");
            Ok(())
        }
        Command::Drain { worker, timeout } => drain(&mut admin, &worker, timeout).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl-localml: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::service_name;

    #[test]
    fn service_names_follow_the_chart() {
        assert_eq!(service_name("localml"), "localml");
        assert_eq!(service_name("school"), "school-localml");
        let long = "a".repeat(49);
        assert_eq!(
            service_name(&long),
            long,
            "49 + '-' truncated to 50, trailing '-' dropped"
        );
    }
}
