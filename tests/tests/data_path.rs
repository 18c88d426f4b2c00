//! Triton's own benchmark tool drives localml (#12): perf_analyzer, unmodified, runs
//! against the scheduler (with a key, over gRPC and over REST) and against a worker (with
//! an operator certificate)
//! for a few seconds and reports a throughput. It needs the statistics Triton gives: the
//! version that served, with an entry for every version before the first request.
//!
//! scripts/deps.sh --test extracts perf_analyzer into target/tools/perf_analyzer; the
//! tests fail when it is missing under scripts/test.sh (LOCALML_REQUIRE_PYTHON_CLIENT)
//! or `CI`, and skip with a message elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use localml_tests::*;

/// perf_analyzer's directory, with `bin/perf_analyzer` and `lib/libcudart.so.12`.
fn perf_analyzer_present() -> Option<PathBuf> {
    let dir = perf_analyzer_dir();
    if dir.join("bin/perf_analyzer").is_file() {
        return Some(dir);
    }
    let required = std::env::var_os("LOCALML_REQUIRE_PYTHON_CLIENT").is_some()
        || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "perf_analyzer is missing from {} (scripts/deps.sh --test installs it)",
        dir.display()
    );
    eprintln!("skipped: scripts/deps.sh --test installs perf_analyzer");
    None
}

/// Runs perf_analyzer for image_classifier against `url` with `args`, and returns the
/// throughput it reports (inferences per second); panics with its output on failure.
/// With `hosts`, perf_analyzer sees that file as /etc/hosts (a mount namespace of its
/// own: `unshare`, as root).
fn throughput(dir: &std::path::Path, url: &str, args: &[&str], hosts: Option<&Path>) -> f64 {
    let binary = dir.join("bin/perf_analyzer");
    let mut command = match hosts {
        Some(hosts) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
                .arg(hosts)
                .arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    let out = command
        .env("LD_LIBRARY_PATH", dir.join("lib"))
        .args(["-m", "image_classifier", "-u", url, "-b", "1"])
        .args(["--concurrency-range", "2"])
        // A few seconds at most: count windows of 100 requests, any spread taken as
        // stable (a shared CI machine is noisy; the figure is not what is tested).
        .args(["--measurement-mode", "count_windows"])
        .args([
            "--measurement-request-count",
            "100",
            "-s",
            "1000",
            "-r",
            "5",
        ])
        .args(args)
        .output()
        .expect("run perf_analyzer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "perf_analyzer failed against {url}:\n{stdout}\n{stderr}"
    );
    // "Concurrency: 2, throughput: 812.5 infer/sec, latency 2431 usec"
    number_after(&stdout, "Concurrency: 2, throughput: ")
        .unwrap_or_else(|| panic!("no throughput line in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_analyzer_reports_a_throughput_through_the_scheduler_and_from_a_worker() {
    let Some(dir) = perf_analyzer_present() else {
        return;
    };
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let worker = Worker::start("perf-worker", &scheduler, &[]);
    scheduler.wait_ready(&["perf-worker"]).await;

    // gRPC metadata keys are lowercase.
    let header = format!("authorization:Bearer {}", scheduler.admin_key());
    let through_scheduler = throughput(&dir, &scheduler.addr, &["-i", "grpc", "-H", &header], None);
    assert!(through_scheduler > 0.0, "{through_scheduler}");
    // The same over the REST listener (#15): JSON header, binary tensors, Triton's
    // statistics as JSON.
    let rest = scheduler.rest_url.clone().expect("REST URL");
    let rest = rest.trim_start_matches("http://");
    let over_http = throughput(&dir, rest, &["-i", "http", "-H", &header], None);
    assert!(over_http > 0.0, "{over_http}");

    // The worker's certificate names it, and perf_analyzer has no option for the TLS
    // server name: it calls the worker by name, resolved by a hosts file of its own, as
    // a LAN's DNS would resolve a PC's name.
    let scratch = TempDir::new("perf-analyzer");
    let hosts = scratch.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 perf-worker\n").expect("write hosts");
    let files = operator_certificate(&scheduler.addr);
    let port = worker.addr.rsplit(':').next().expect("worker port");
    let direct = throughput(
        &dir,
        &format!("perf-worker:{port}"),
        &[
            "-i",
            "grpc",
            "--ssl-grpc-use-ssl",
            "true",
            "--ssl-grpc-root-certifications-file",
            &files.ca.to_string_lossy(),
            "--ssl-grpc-private-key-file",
            &files.key.to_string_lossy(),
            "--ssl-grpc-certificate-chain-file",
            &files.cert.to_string_lossy(),
        ],
        Some(&hosts),
    );
    assert!(direct > 0.0, "{direct}");
    eprintln!("perf_analyzer: {through_scheduler:.0} infer/s through the scheduler, {over_http:.0} over its REST listener, {direct:.0} from the worker");
}

/// Threads in a process, from /proc.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_shares_one_onnx_runtime_thread_pool() {
    // Two workers load the same models (several sessions: image_classifier has two
    // instances, text_classifier two versions), one with 1 intra-op thread, one with 5.
    // With one pool per session the second would have 4 more threads per session; with
    // the pool shared it has 4 more in all.
    let scheduler = Scheduler::start();
    let one = Worker::start("one-thread", &scheduler, &["--intra-op-threads", "1"]);
    let five = Worker::start("five-threads", &scheduler, &["--intra-op-threads", "5"]);
    scheduler.wait_ready(&["one-thread", "five-threads"]).await;
    let sessions: u32 = scheduler
        .workers()
        .await
        .iter()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == "one-thread"))
        .and_then(|w| w.status.as_ref())
        .map(|s| s.models.iter().map(|m| m.instances).sum())
        .expect("the worker's status");
    assert!(sessions >= 4, "the example models make {sessions} sessions");
    let extra = threads(five.process.pid()) as i64 - threads(one.process.pid()) as i64;
    eprintln!("{sessions} sessions; the 5-thread worker has {extra} more threads");
    assert!(
        (2..=6).contains(&extra),
        "5 intra-op threads shared by {sessions} sessions should add about 4 threads, not {extra}"
    );
}

/// A model repository with `tensor_stats` (outputs that can be checked exactly: sum, max,
/// argmax, doubled) batching dynamically: one session, so concurrent requests queue, and
/// a delay long enough on a loaded machine for them to meet.
/// text_classifier likewise (token ids outside its vocabulary make ONNX Runtime reject a
/// request when it runs, not when it is validated).
fn batching_repository(dir: &Path) -> PathBuf {
    let repo = dir.join("models");
    for name in ["tensor_stats", "text_classifier"] {
        let model = repo.join(name);
        std::fs::create_dir_all(model.join("1")).expect("model dir");
        std::fs::copy(
            models_dir().join(name).join("1/model.onnx"),
            model.join("1/model.onnx"),
        )
        .expect("copy model");
        std::fs::write(
            model.join("config.yaml"),
            "max_batch_size: 8\ninstances: 1\n\
             dynamic_batching:\n  max_queue_delay_microseconds: 200000\n  preferred_batch_size: [8]\n",
        )
        .expect("write config");
    }
    repo
}

/// What tensor_stats answers for `rows` rows of 8 values, computed here.
fn expected_stats(values: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>, Vec<i64>, Vec<f64>) {
    let mut sum = Vec::new();
    let mut max = Vec::new();
    let mut argmax = Vec::new();
    for row in values.chunks(8).take(rows) {
        sum.push(row.iter().sum());
        let (i, m) =
            row.iter().enumerate().fold(
                (0, f32::MIN),
                |(bi, bm), (i, &v)| if v > bm { (i, v) } else { (bi, bm) },
            );
        max.push(m);
        argmax.push(i as i64);
    }
    let doubled = values.iter().map(|&v| f64::from(v) * 2.0).collect();
    (sum, max, argmax, doubled)
}

/// (inference_count, execution_count) of `model`'s first version in ModelStatistics.
async fn runs(
    mut c: localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<
        localml_cli::client::Connection,
    >,
    model: &str,
) -> (u64, u64) {
    let stats = c
        .model_statistics(localml_proto::inference::ModelStatisticsRequest {
            name: model.into(),
            version: String::new(),
        })
        .await
        .expect("statistics")
        .into_inner()
        .model_stats;
    (stats[0].inference_count, stats[0].execution_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_batching_joins_requests_and_never_mixes_their_answers() {
    use localml_cli::client::{self, Tensor};
    use localml_proto::inference::ModelConfigRequest;
    use localml_proto::tensor::TensorData;

    let dir = TempDir::new("batching");
    let repo = batching_repository(dir.path());
    let scheduler = Scheduler::start();
    let worker = Worker::start_with_models("batcher", &scheduler, &repo, &[]);
    scheduler.wait_ready(&["batcher"]).await;

    // The Triton-style config says how the model batches, through the scheduler too.
    let config = scheduler
        .inference()
        .await
        .model_config(ModelConfigRequest {
            name: "tensor_stats".into(),
            version: String::new(),
        })
        .await
        .expect("config")
        .into_inner()
        .config
        .expect("config body");
    let batching = match config.scheduling_choice {
        Some(localml_proto::inference::model_config::SchedulingChoice::DynamicBatching(b)) => b,
        other => panic!("no dynamic_batching in the config: {other:?}"),
    };
    assert_eq!(batching.max_queue_delay_microseconds, 200_000);
    assert_eq!(batching.preferred_batch_size, vec![8]);

    // 24 concurrent requests of 1 to 3 rows with distinct values; every third asks only
    // for argmax (it cannot join the others' batches), one is malformed (INT32 values).
    let c = worker.inference().await;
    let mut tasks = Vec::new();
    for i in 0..25usize {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let rows = 1 + i % 3;
            let values: Vec<f32> = (0..rows * 8)
                .map(|k| ((i * 31 + k * 7) % 97) as f32 - 40.0 + i as f32 / 8.0)
                .collect();
            let data = if i == 24 {
                TensorData::Int32(vec![1; rows * 8])
            } else {
                TensorData::Fp32(values.clone())
            };
            let mut request = client::request(
                "tensor_stats",
                "",
                &[Tensor {
                    name: "values".into(),
                    shape: vec![rows as i64, 8],
                    data,
                }],
            );
            let only_argmax = i % 3 == 2;
            if only_argmax {
                request.outputs.push(
                    localml_proto::inference::model_infer_request::InferRequestedOutputTensor {
                        name: "argmax".into(),
                        ..Default::default()
                    },
                );
            }
            (i, rows, values, only_argmax, c.model_infer(request).await)
        }));
    }
    let mut served = 0;
    for task in tasks {
        let (i, rows, values, only_argmax, answer) = task.await.expect("task");
        if i == 24 {
            let status = answer.expect_err("a malformed request fails");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            continue;
        }
        let response = answer
            .unwrap_or_else(|s| panic!("request {i}: {s:?}"))
            .into_inner();
        let outputs = client::outputs(&response).expect("decode");
        let (sum, max, argmax, doubled) = expected_stats(&values, rows);
        let get = |name: &str| {
            outputs
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("request {i}: no output {name}"))
        };
        assert_eq!(get("argmax").data, TensorData::Int64(argmax), "request {i}");
        assert_eq!(get("argmax").shape, vec![rows as i64], "request {i}");
        if only_argmax {
            assert_eq!(outputs.len(), 1, "request {i} asked for argmax only");
        } else {
            assert_eq!(get("max").data, TensorData::Fp32(max), "request {i}");
            assert_eq!(
                get("doubled").data,
                TensorData::Fp64(doubled),
                "request {i}"
            );
            assert_eq!(get("doubled").shape, vec![rows as i64, 8], "request {i}");
            match &get("sum").data {
                TensorData::Fp32(got) => {
                    assert_eq!(got.len(), sum.len(), "request {i}");
                    for (g, e) in got.iter().zip(&sum) {
                        assert!(
                            (g - e).abs() < 1e-3,
                            "request {i}: sum {got:?}, expected {sum:?}"
                        );
                    }
                }
                other => panic!("request {i}: sum is {other:?}"),
            }
        }
        served += 1;
    }
    assert_eq!(served, 24);

    // Fewer runs than requests: requests were joined.
    let (inferences, executions) = runs(worker.inference().await, "tensor_stats").await;
    eprintln!("{inferences} requests in {executions} runs");
    assert_eq!(inferences, 24);
    assert!(
        executions < inferences,
        "no request was batched: {executions} runs for {inferences} requests"
    );

    // Through the scheduler, which runs nothing itself: its execution count follows the
    // workers' ratio of runs to requests, so perf_analyzer sees the batching there too.
    let mut through = scheduler.inference().await;
    for _ in 0..6 {
        through
            .model_infer(client::request(
                "tensor_stats",
                "",
                &[Tensor {
                    name: "values".into(),
                    shape: vec![1, 8],
                    data: TensorData::Fp32(vec![0.5; 8]),
                }],
            ))
            .await
            .expect("through the scheduler");
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let batched = wait_until(SOON, || {
        let through = through.clone();
        let seen = &seen;
        async move {
            let counts = runs(through, "tensor_stats").await;
            seen.lock().expect("seen").push(counts);
            counts.0 == 6 && counts.1 < 6 && counts.1 > 0
        }
    })
    .await;
    assert!(batched, "scheduler (requests, runs) seen: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batching_queue_takes_higher_priority_first() {
    use localml_cli::client::{self, Tensor};
    use localml_proto::tensor::TensorData;

    // One session; the first request waits its full delay (1 s) for others to join it,
    // and those sent meanwhile ask for other outputs, so none can: each runs in a batch
    // of its own, in the order the queue picks them. A throttled worker holds its
    // session longer per run, so answers come back well apart.
    let dir = TempDir::new("priority");
    let repo = dir.path().join("models");
    let model = repo.join("tensor_stats");
    std::fs::create_dir_all(model.join("1")).expect("model dir");
    std::fs::copy(
        models_dir().join("tensor_stats/1/model.onnx"),
        model.join("1/model.onnx"),
    )
    .expect("copy model");
    std::fs::write(
        model.join("config.yaml"),
        "max_batch_size: 8\ninstances: 1\n\
         dynamic_batching:\n  max_queue_delay_microseconds: 1000000\n",
    )
    .expect("write config");
    let scheduler = Scheduler::start();
    let worker = Worker::start_with_models("queue", &scheduler, &repo, &["--throttle", "300"]);
    scheduler.wait_ready(&["queue"]).await;
    let c = worker.inference().await;
    let started = std::time::Instant::now();
    let send = |outputs: &[&str], priority: Option<&str>| {
        let mut c = c.clone();
        let mut request = client::request(
            "tensor_stats",
            "",
            &[Tensor {
                name: "values".into(),
                shape: vec![1, 8],
                data: TensorData::Fp32(vec![1.0; 8]),
            }],
        );
        for name in outputs {
            request.outputs.push(
                localml_proto::inference::model_infer_request::InferRequestedOutputTensor {
                    name: name.to_string(),
                    ..Default::default()
                },
            );
        }
        if let Some(p) = priority {
            request = with_param(request, "localml.priority", p);
        }
        tokio::spawn(async move {
            let answer = c.model_infer(request).await;
            (started.elapsed(), answer)
        })
    };
    let first = send(&["sum"], None);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let low: Vec<_> = [&["max"][..], &["argmax"], &["doubled"]]
        .into_iter()
        .map(|outputs| send(outputs, Some("-1")))
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let high = send(&["sum", "max"], Some("7"));

    first
        .await
        .expect("task")
        .1
        .expect("the first request is served");
    let (high_done, answer) = high.await.expect("task");
    answer.expect("the high-priority request is served");
    for (i, task) in low.into_iter().enumerate() {
        let (done, answer) = task.await.expect("task");
        answer.unwrap_or_else(|s| panic!("low-priority request {i}: {s:?}"));
        assert!(
            high_done < done,
            "low-priority request {i} (sent before it) was answered at {done:?}, before the \
             high-priority one at {high_done:?}"
        );
    }
    // A priority that is not an integer is refused, naming the parameter.
    let bad = send(&["sum"], Some("urgent"));
    let status = bad.await.expect("task").1.expect_err("bad priority");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("localml.priority") && status.message().contains("'urgent'"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_elements_carry_any_bytes_nul_included() {
    use localml_cli::client::{self, Tensor};
    use localml_proto::inference::ModelMetadataRequest;
    use localml_proto::tensor::{DataType, TensorData};

    let scheduler = Scheduler::start();
    let _worker = Worker::start("bytes", &scheduler, &[]);
    scheduler.wait_ready(&["bytes"]).await;
    let mut c = scheduler.inference().await;
    // The identity model for every datatype: random values for the others, and BYTES
    // elements that C strings and UTF-8 could not hold.
    let metadata = c
        .model_metadata(ModelMetadataRequest {
            name: "datatypes".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    let blob: Vec<u8> = (0..=255u8).collect();
    let elements: Vec<Vec<u8>> = vec![
        b"\0".to_vec(),
        b"a\0b".to_vec(),
        blob.clone(),
        Vec::new(),
        vec![0xff, 0xfe, 0x00, 0x80],
        "caf\u{e9}".as_bytes().to_vec(),
        b"trailing\0".to_vec(),
        blob.iter().rev().copied().collect(),
    ];
    let inputs: Vec<Tensor> = metadata
        .inputs
        .iter()
        .map(|input| {
            let datatype = DataType::parse(&input.datatype).expect("datatype");
            if datatype == DataType::Bytes {
                Tensor {
                    name: input.name.clone(),
                    shape: vec![2, 4],
                    data: TensorData::Bytes(elements.clone()),
                }
            } else {
                client::random_tensor(&input.name, datatype, &[2, 4])
            }
        })
        .collect();
    assert!(
        inputs
            .iter()
            .any(|t| matches!(t.data, TensorData::Bytes(_))),
        "the datatypes model has a BYTES input"
    );
    let response = c
        .model_infer(client::request("datatypes", "", &inputs))
        .await
        .expect("BYTES with NUL and non-UTF-8 bytes are served")
        .into_inner();
    let outputs = client::outputs(&response).expect("decode");
    let bytes_out = outputs
        .iter()
        .find(|t| matches!(t.data, TensorData::Bytes(_)))
        .expect("a BYTES output");
    assert_eq!(bytes_out.data, TensorData::Bytes(elements), "byte for byte");
    assert_eq!(bytes_out.shape, vec![2, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_onnx_runtime_rejects_fails_alone_in_a_batch_and_on_its_own() {
    use localml_cli::client::{self, Tensor};
    use localml_proto::tensor::TensorData;

    let dir = TempDir::new("batch-reject");
    let repo = batching_repository(dir.path());
    let scheduler = Scheduler::start();
    let worker = Worker::start_with_models("rejects", &scheduler, &repo, &[]);
    scheduler.wait_ready(&["rejects"]).await;
    let c = worker.inference().await;
    let request = |token: i64| {
        client::request(
            "text_classifier",
            "",
            &[Tensor {
                name: "token_ids".into(),
                shape: vec![1, 16],
                data: TensorData::Int64(vec![token; 16]),
            }],
        )
    };
    // Seven requests meet in a batch; the fourth has ids outside the vocabulary.
    let mut tasks = Vec::new();
    for i in 0..7i64 {
        let mut c = c.clone();
        let r = request(if i == 3 { 5000 } else { i + 1 });
        tasks.push(tokio::spawn(async move { (i, c.model_infer(r).await) }));
    }
    for task in tasks {
        let (i, answer) = task.await.expect("task");
        match answer {
            Ok(_) if i != 3 => {}
            Err(status) if i == 3 => {
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    // Alone in its batch, the same request gets the same status (not INTERNAL, which the
    // scheduler would take for the worker's failure and retry elsewhere).
    let alone = c
        .clone()
        .model_infer(request(5000))
        .await
        .expect_err("ids outside the vocabulary");
    assert_eq!(alone.code(), tonic::Code::InvalidArgument, "{alone:?}");
}

/// `--min-run-ms` (the overload benchmark's steady service time, whatever else the PC
/// runs): every run holds its session at least that long, so one request at a time
/// takes at least that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_run_ms_holds_every_run_at_least_that_long() {
    let scheduler = Scheduler::start();
    let worker = Worker::start("w1", &scheduler, &["--min-run-ms", "400"]);
    scheduler.wait_ready(&["w1"]).await;
    let mut c = worker.inference().await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        c.model_infer(image_request(1)).await.expect("served");
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(400),
            "a run took {took:?}"
        );
    }
}
