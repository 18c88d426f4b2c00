//! End-to-end latency and throughput benchmark for the FP32 example model at batch 1:
//! in-process ONNX Runtime (the baseline), client -> worker, client -> scheduler ->
//! worker, and the same through a scheduler that requires API keys and TLS on its
//! client port (as one reachable from the LAN does: TLS from the cluster CA, the key
//! checked on every call), each at concurrency 1 and 32, in one run, with ratios.
//!
//! Run: `cargo build --release --workspace --bins && target/release/localml-bench`
//! Options: `--seconds N` per measurement (default 3), `--model NAME` (default
//! image_classifier), `--models DIR` (default examples/models; `scripts/bench-models.sh`
//! makes a repository of full-size models from the onnx wheel).
//!
//! `--batching --models DIR` (a repository from `scripts/bench-models.sh DIR`) measures
//! dynamic batching instead: Triton's perf_analyzer at concurrency 32 through the
//! scheduler, each model without and with `dynamic_batching`, next to the in-process gain
//! of batch 8 over batch 1 (the bound).
//!
//! `--peer PYTHON` (a Python with `kserve` and `onnxruntime`, e.g. a venv's) compares
//! localml with a peer in the same run: KServe's Python ModelServer serving the same
//! ONNX file with onnxruntime (tests/python/kserve_onnx_server.py), driven by the same
//! gRPC client at 1 and 8 in flight: p50, throughput and server CPU per inference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use localml_cli::client::{self, Tensor};
use localml_proto::inference::ModelInferRequest;
use localml_proto::tensor::TensorData;
use localml_tests::{cpu_time, Scheduler, Worker, TEST_SCHEDULER_CONFIG};
use localml_worker::model::{Input, InputData, LoadOptions, LoadedModel, NamedTensor};

struct Measurement {
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time (user + system) of each process watched, over the measurement.
    cpu: Vec<Duration>,
}

impl Measurement {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per request of the `i`th process watched.
    fn cpu_us(&self, i: usize) -> f64 {
        self.cpu[i].as_secs_f64() * 1e6 / self.latencies.len().max(1) as f64
    }
}

/// Runs `call` from `concurrency` tasks for `duration` after a short warm-up.
async fn measure<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Measurement
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    measure_cpu(concurrency, duration, &[], call).await
}

/// [`measure`], also taking the CPU time the processes `pids` use while it runs.
async fn measure_cpu<F, Fut>(
    concurrency: usize,
    duration: Duration,
    pids: &[u32],
    call: F,
) -> Measurement
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let run = |length: Duration| {
        let call = Arc::clone(&call);
        async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let call = Arc::clone(&call);
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        while started.elapsed() < length {
                            let t = Instant::now();
                            call().await;
                            latencies.push(t.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("task"));
            }
            Measurement {
                latencies: all,
                elapsed: started.elapsed(),
                cpu: Vec::new(),
            }
        }
    };
    run(duration / 5).await; // warm-up
    let before: Vec<Duration> = pids.iter().map(|&p| cpu_time(p)).collect();
    let mut m = run(duration).await;
    m.cpu = pids
        .iter()
        .zip(before)
        .map(|(&p, b)| cpu_time(p).saturating_sub(b))
        .collect();
    m
}

fn row(name: &str, concurrency: usize, m: &Measurement) -> String {
    format!(
        "| {name:<28} | {concurrency:>3} | {:>9.3} | {:>9.3} | {:>10.0} |",
        m.percentile(0.5).as_secs_f64() * 1e3,
        m.percentile(0.99).as_secs_f64() * 1e3,
        m.throughput()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = localml_tests::option;
    let seconds: f64 = arg("--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let model_name = arg("--model").unwrap_or_else(|| "image_classifier".into());
    let models = arg("--models")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(localml_tests::models_dir);
    let duration = Duration::from_secs_f64(seconds);
    if args.iter().any(|a| a == "--batching") {
        return batching(&models).await;
    }
    if let Some(python) = arg("--peer") {
        return peer(&python, duration).await;
    }

    // In-process baseline: the worker's own model code, with its config (2 instances).
    let library = localml_cli::up::ensure_runtime(None)?;
    // The same threads as the harness's workers (--intra-op-threads 1).
    let threading = localml_worker::runtime::Threading::for_this_pc(Some(1), Some(1), false);
    let env = localml_worker::runtime::init(&library, "localml-bench", &threading)?;
    let sources = localml_worker::repository::scan(&models)?;
    let source = sources
        .into_iter()
        .rfind(|s| s.name == model_name)
        .ok_or_else(|| anyhow::anyhow!("model {model_name} not in {}", models.display()))?;
    let options = LoadOptions::default();
    let model = Arc::new(LoadedModel::load(
        &env,
        &source,
        &["CPUExecutionProvider".into()],
        &options,
    )?);
    let spec = model.inputs[0].clone();
    let input = client::random_tensor(&spec.name, spec.datatype, &spec.shape);
    assert!(
        matches!(input.data, TensorData::Fp32(_)),
        "the benchmark model takes FP32"
    );
    // As a request carries it: raw bytes, decoded when the model runs.
    let named = Input {
        name: input.name.clone(),
        shape: input.shape.clone(),
        datatype: input.data.datatype(),
        data: InputData::Raw(input.data.to_raw().into()),
    };
    println!(
        "model {model_name} v{} input {:?}, {} instances, 1 intra-op thread each, {seconds}s per measurement",
        model.version, input.shape, model.instances
    );

    // Two schedulers, the second requiring API keys and TLS; the worker reports to both,
    // so the two paths differ only in the client port's TLS and key check. They share one cluster CA and join token
    // (as replicas do), made here and given to both as files.
    let trust_dir = localml_tests::TempDir::new("bench-trust");
    let ca = localml_trust::ca::ClusterCa::generate(std::time::SystemTime::now())?;
    let token = localml_trust::token::JoinToken::generate(&ca.hash())?.reveal();
    let file = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = trust_dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let (cert, key_file, token_file) = (
        file("ca.pem", ca.cert_pem())?,
        file("ca.key", ca.key_pem())?,
        file("token", &token)?,
    );
    let shared = [
        "--ca-cert-file",
        cert.as_str(),
        "--ca-key-file",
        key_file.as_str(),
        "--join-token-file",
        token_file.as_str(),
    ];
    let mut open_flags = shared.to_vec();
    open_flags.extend(["--auth", "auto"]);
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &open_flags);
    let mut keyed_flags = shared.to_vec();
    keyed_flags.extend(["--auth", "required", "--client-tls", "required"]);
    let keyed = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &keyed_flags);
    let both = format!("{},{}", scheduler.cluster_addr, keyed.cluster_addr);
    let worker = Worker::start_reporting_to("bench-worker", &both, &models, &["--token", &token]);
    scheduler.wait_ready(&["bench-worker"]).await;
    keyed.wait_ready(&["bench-worker"]).await;
    let key = keyed.admin_key();
    let request: ModelInferRequest = client::request(&model_name, "", &[Tensor { ..input }]);

    let mut results = Vec::new();
    let mut keyed_results = Vec::new();
    for concurrency in [1usize, 32] {
        let (m, n) = (Arc::clone(&model), named.clone());
        let in_process = measure_cpu(concurrency, duration, &[std::process::id()], move || {
            let (m, n) = (Arc::clone(&m), n.clone());
            async move {
                m.run(vec![n], Vec::new(), 0)
                    .await
                    .expect("in-process inference");
            }
        })
        .await;
        let mut clients = Vec::new();
        // The worker's port takes only clients with a certificate from the cluster CA.
        let direct_client = worker.inference().await;
        // The open path sends no key (one that is sent is always checked).
        let open_client = client::inference_client(
            client::connect_with_key(&scheduler.addr, Duration::from_secs(10), None).await?,
        );
        let (worker_pid, scheduler_pid) = (worker.process.pid(), scheduler.process.pid());
        for (c, pids) in [
            (direct_client, vec![worker_pid]),
            (open_client, vec![worker_pid, scheduler_pid]),
        ] {
            let r = request.clone();
            clients.push(
                measure_cpu(concurrency, duration, &pids, move || {
                    let (mut c, r) = (c.clone(), r.clone());
                    async move {
                        c.model_infer(r).await.expect("inference");
                    }
                })
                .await,
            );
        }
        let c = client::inference_client(
            client::connect_with(
                &format!("https://{}", keyed.addr),
                Duration::from_secs(10),
                Some(&key),
                Some(ca.cert_pem()),
            )
            .await?,
        );
        let r = request.clone();
        let with_key = measure(concurrency, duration, move || {
            let (mut c, r) = (c.clone(), r.clone());
            async move {
                c.model_infer(r)
                    .await
                    .expect("inference over TLS with a key");
            }
        })
        .await;
        let via_scheduler = clients.pop().expect("scheduler");
        let direct = clients.pop().expect("worker");
        results.push((concurrency, in_process, direct, via_scheduler));
        keyed_results.push(with_key);
    }

    println!();
    println!("| path                         | conc | p50 ms    | p99 ms    | req/s      |");
    println!("|------------------------------|-----:|----------:|----------:|-----------:|");
    for ((c, a, b, s), k) in results.iter().zip(&keyed_results) {
        println!("{}", row("in-process ONNX Runtime", *c, a));
        println!("{}", row("client -> worker", *c, b));
        println!("{}", row("client -> scheduler -> worker", *c, s));
        println!("{}", row("  ... over TLS with a key", *c, k));
    }
    println!();
    for ((c, _, _, s), k) in results.iter().zip(&keyed_results) {
        println!(
            "concurrency {c:>2}: TLS + API key / open: p50 {:.2}x, throughput {:.2}x",
            k.percentile(0.5).as_secs_f64() / s.percentile(0.5).as_secs_f64(),
            k.throughput() / s.throughput()
        );
    }
    for (c, a, b, s) in &results {
        let p50 = |m: &Measurement| m.percentile(0.5).as_secs_f64();
        println!(
            "concurrency {c:>2}: scheduler/worker p50 {:.2}x, throughput {:.2}x; worker/in-process p50 {:.2}x, throughput {:.2}x",
            p50(s) / p50(b),
            s.throughput() / b.throughput(),
            p50(b) / p50(a),
            b.throughput() / a.throughput()
        );
    }
    println!();
    println!("CPU per request, from /proc (user + system):");
    for (c, a, b, s) in &results {
        let worker_own = b.cpu_us(0) - a.cpu_us(0);
        println!(
            "concurrency {c:>2}: in-process {:.0} us; worker {:.0} us direct, {:.0} us through the scheduler; scheduler {:.0} us; worker's own overhead (worker - in-process) {worker_own:.0} us",
            a.cpu_us(0),
            b.cpu_us(0),
            s.cpu_us(0),
            s.cpu_us(1),
        );
    }
    spinning(&models, &model_name, &token, &scheduler, &request, duration).await?;
    let (_, _, b1, s1) = &results[0];
    let (_, _, b32, s32) = &results[1];
    let p50_ratio = s1.percentile(0.5).as_secs_f64() / b1.percentile(0.5).as_secs_f64();
    let tput_ratio = s32.throughput() / b32.throughput();
    println!();
    println!(
        "target 1: scheduler p50 <= 1.5x worker p50 at concurrency 1: {p50_ratio:.2}x {}",
        if p50_ratio <= 1.5 { "MET" } else { "NOT MET" }
    );
    println!(
        "target 2: scheduler throughput >= 0.7x worker throughput at concurrency 32: {tput_ratio:.2}x {}",
        if tput_ratio >= 0.7 { "MET" } else { "NOT MET" }
    );
    Ok(())
}

/// ONNX Runtime's threads spinning or not (#12): two workers with the default threads
/// (one per core, in the shared pool), one started with `--thread-spinning`, driven
/// directly at concurrency 1 and 8; CPU per inference, p50 and throughput, with ratios.
async fn spinning(
    models: &std::path::Path,
    model_name: &str,
    token: &str,
    scheduler: &Scheduler,
    request: &ModelInferRequest,
    duration: Duration,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.to_string();
    let flags = ["--token", token, "--intra-op-threads", threads.as_str()];
    let quiet = Worker::start_reporting_to("bench-quiet", &scheduler.cluster_addr, models, &flags);
    let mut spin_flags = flags.to_vec();
    spin_flags.push("--thread-spinning");
    let spinning = Worker::start_reporting_to(
        "bench-spinning",
        &scheduler.cluster_addr,
        models,
        &spin_flags,
    );
    scheduler
        .wait_ready(&["bench-quiet", "bench-spinning"])
        .await;
    println!();
    println!(
        "ONNX Runtime threads: {model_name}, {cores} intra-op threads in the shared pool, straight to the worker"
    );
    println!("| spinning | conc | p50 ms    | req/s      | worker CPU us/inference |");
    println!("|----------|-----:|----------:|-----------:|------------------------:|");
    for concurrency in [1usize, 8] {
        let mut pair = Vec::new();
        for worker in [&quiet, &spinning] {
            let c = worker.inference().await;
            let r = request.clone();
            let m = measure_cpu(concurrency, duration, &[worker.process.pid()], move || {
                let (mut c, r) = (c.clone(), r.clone());
                async move {
                    c.model_infer(r).await.expect("inference");
                }
            })
            .await;
            println!(
                "| {:<8} | {concurrency:>4} | {:>9.3} | {:>10.0} | {:>23.0} |",
                if std::ptr::eq(worker, &spinning) {
                    "on"
                } else {
                    "off"
                },
                m.percentile(0.5).as_secs_f64() * 1e3,
                m.throughput(),
                m.cpu_us(0)
            );
            pair.push(m);
        }
        println!(
            "concurrency {concurrency}: spinning off / on: CPU per inference {:.2}x, p50 {:.2}x, throughput {:.2}x",
            pair[0].cpu_us(0) / pair[1].cpu_us(0),
            pair[0].percentile(0.5).as_secs_f64() / pair[1].percentile(0.5).as_secs_f64(),
            pair[0].throughput() / pair[1].throughput()
        );
    }
    Ok(())
}

/// One perf_analyzer run: throughput (inferences per second) and p95 latency.
struct PerfResult {
    throughput: f64,
    p95_us: f64,
}

/// Runs perf_analyzer (scripts/deps.sh --test puts it in target/tools) against the
/// open scheduler at `addr` for `model` at concurrency 32.
fn perf_analyzer(addr: &str, model: &str) -> anyhow::Result<PerfResult> {
    let dir = localml_tests::perf_analyzer_dir();
    let out = std::process::Command::new(dir.join("bin/perf_analyzer"))
        .env("LD_LIBRARY_PATH", dir.join("lib"))
        .args(["-m", model, "-u", addr, "-i", "grpc", "-b", "1"])
        .args([
            "--concurrency-range",
            "32",
            "--measurement-mode",
            "count_windows",
        ])
        .args([
            "--measurement-request-count",
            "3000",
            "-s",
            "50",
            "-r",
            "10",
        ])
        .output()
        .map_err(|e| {
            anyhow::anyhow!("run perf_analyzer (scripts/deps.sh --test installs it): {e}")
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "perf_analyzer failed for {model}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number_after = |marker: &str| {
        localml_tests::number_after(&stdout, marker)
            .ok_or_else(|| anyhow::anyhow!("no '{marker}' in perf_analyzer's output:\n{stdout}"))
    };
    Ok(PerfResult {
        throughput: number_after("throughput: ")?,
        p95_us: number_after("p95 latency: ")?,
    })
}

/// Dynamic batching on vs off (#12), with the in-process bound.
async fn batching(models: &std::path::Path) -> anyhow::Result<()> {
    let library = localml_cli::up::ensure_runtime(None)?;
    let threading = localml_worker::runtime::Threading::for_this_pc(Some(1), Some(1), false);
    let env = localml_worker::runtime::init(&library, "localml-bench", &threading)?;
    let sources = localml_worker::repository::scan(models)?;
    let scheduler = Scheduler::start_open();
    let _worker = Worker::start_with_models("bench-batching", &scheduler, models, &[]);
    scheduler.wait_ready(&["bench-batching"]).await;
    // Worker memory per loaded model next to its file: the figure the worker reports
    // (its RSS growth while loading the model, at least the file's size).
    println!("| model                    | file MiB | worker memory_bytes MiB |");
    println!("|--------------------------|---------:|------------------------:|");
    for w in scheduler.workers().await {
        for m in w.status.map(|s| s.models).unwrap_or_default() {
            let file = sources
                .iter()
                .find(|s| s.name == m.name)
                .and_then(|s| std::fs::metadata(&s.path).ok())
                .map_or(0, |md| md.len());
            println!(
                "| {:<24} | {:>8.1} | {:>23.1} |",
                m.name,
                file as f64 / 1048576.0,
                m.memory_bytes as f64 / 1048576.0
            );
        }
    }
    println!();
    println!("dynamic batching: perf_analyzer -i grpc -b 1 --concurrency-range 32 through the scheduler; one worker, one session, 1 intra-op thread");
    println!();
    println!("| model            | batching | infer/s    | p95 ms    | in-process us/sample batch 1 -> 8 |");
    println!("|------------------|----------|-----------:|----------:|-----------------------------------|");
    for model in ["dense", "image_classifier"] {
        // The bound: one session running batch 1 and batch 8 back to back, per sample.
        let source = sources.iter().find(|s| s.name == model).ok_or_else(|| {
            anyhow::anyhow!(
                "{model} is not in {} (scripts/bench-models.sh)",
                models.display()
            )
        })?;
        let loaded = Arc::new(LoadedModel::load(
            &env,
            source,
            &["CPUExecutionProvider".into()],
            &LoadOptions::default(),
        )?);
        let spec = loaded.inputs[0].clone();
        let mut per_sample = Vec::new();
        for batch in [1i64, 8] {
            let mut shape = spec.shape.clone();
            shape[0] = batch;
            let t = client::random_tensor(&spec.name, spec.datatype, &shape);
            let input = NamedTensor {
                name: t.name,
                shape: t.shape,
                data: t.data,
            };
            let runs = 400 / batch as usize;
            let started = Instant::now();
            for _ in 0..runs {
                loaded
                    .run(vec![input.clone().into()], Vec::new(), 0)
                    .await?;
            }
            per_sample.push(started.elapsed().as_secs_f64() * 1e6 / (runs as f64 * batch as f64));
        }
        let off = perf_analyzer(&scheduler.addr, model)?;
        let on = perf_analyzer(&scheduler.addr, &format!("{model}_batched"))?;
        println!(
            "| {model:<16} | off      | {:>10.0} | {:>9.2} | {:>6.0} -> {:<6.0} ({:.2}x)           |",
            off.throughput,
            off.p95_us / 1e3,
            per_sample[0],
            per_sample[1],
            per_sample[0] / per_sample[1]
        );
        println!(
            "| {model:<16} | on       | {:>10.0} | {:>9.2} |                                   |",
            on.throughput,
            on.p95_us / 1e3
        );
        println!(
            "{model}: batching on / off: throughput {:.2}x, p95 {:.2}x (in-process bound {:.2}x)",
            on.throughput / off.throughput,
            on.p95_us / off.p95_us,
            per_sample[0] / per_sample[1]
        );
    }
    Ok(())
}

/// Kills the peer server when the benchmark ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// localml (scheduler + worker) against KServe's Python ModelServer (#12).
async fn peer(python: &str, duration: Duration) -> anyhow::Result<()> {
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (grpc_port, http_port) = (free_port()?, free_port()?);
    let model_file = localml_tests::models_dir().join("image_classifier/1/model.onnx");
    let kserve = KillOnDrop(
        std::process::Command::new(python)
            .arg(localml_tests::repo_root().join("tests/python/kserve_onnx_server.py"))
            .arg(&model_file)
            .arg("image_classifier")
            .arg(grpc_port.to_string())
            .arg(http_port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("start KServe with {python}: {e}"))?,
    );
    let kserve_addr = format!("127.0.0.1:{grpc_port}");
    let started = Instant::now();
    let kserve_client = loop {
        if let Ok(channel) =
            client::connect_with_key(&kserve_addr, Duration::from_secs(2), None).await
        {
            let mut c = client::inference_client(channel);
            let ready = c
                .server_ready(localml_proto::inference::ServerReadyRequest {})
                .await
                .is_ok_and(|r| r.into_inner().ready);
            if ready {
                break c;
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "KServe did not become ready on {kserve_addr}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let scheduler = Scheduler::start_open();
    let worker = Worker::start("bench-peer", &scheduler, &[]);
    scheduler.wait_ready(&["bench-peer"]).await;
    let localml_client = client::inference_client(
        client::connect_with_key(&scheduler.addr, Duration::from_secs(10), None).await?,
    );
    let input = client::random_tensor(
        "image",
        localml_proto::tensor::DataType::Fp32,
        &[1, 3, 32, 32],
    );
    let request = client::request("image_classifier", "", &[input]);
    println!("image_classifier at batch 1, one intra-op thread on both sides, the same tonic client, {}s per measurement", duration.as_secs_f64());
    println!();
    println!("| server                        | conc | p50 ms    | req/s      | server CPU us/inference |");
    println!("|-------------------------------|-----:|----------:|-----------:|------------------------:|");
    for concurrency in [1usize, 8] {
        let mut pair = Vec::new();
        for (name, c, pids) in [
            (
                "KServe 0.21 ModelServer",
                kserve_client.clone(),
                vec![kserve.0.id()],
            ),
            (
                "localml scheduler + worker",
                localml_client.clone(),
                vec![scheduler.process.pid(), worker.process.pid()],
            ),
        ] {
            let r = request.clone();
            let m = measure_cpu(concurrency, duration, &pids, move || {
                let (mut c, r) = (c.clone(), r.clone());
                async move {
                    c.model_infer(r).await.expect("inference");
                }
            })
            .await;
            let cpu: f64 = (0..pids.len()).map(|i| m.cpu_us(i)).sum();
            println!(
                "| {name:<29} | {concurrency:>4} | {:>9.3} | {:>10.0} | {cpu:>23.0} |",
                m.percentile(0.5).as_secs_f64() * 1e3,
                m.throughput()
            );
            pair.push((m, cpu));
        }
        let (k, l) = (&pair[0], &pair[1]);
        println!(
            "concurrency {concurrency}: localml / KServe: server CPU per inference {:.2}x, p50 {:.2}x, throughput {:.2}x",
            l.1 / k.1,
            l.0.percentile(0.5).as_secs_f64() / k.0.percentile(0.5).as_secs_f64(),
            l.0.throughput() / k.0.throughput()
        );
    }
    Ok(())
}
