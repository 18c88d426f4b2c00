//! Real inference through a real scheduler and real workers: every example model against
//! outputs computed independently by onnxruntime's Python API. Error statuses: bad_input.rs.

use std::time::Duration;

use localml_cli::client::{self, Tensor};
use localml_proto::inference::*;
use localml_tests::*;
use tonic::Code;

async fn infer(
    client: &mut grpc_inference_service_client::GrpcInferenceServiceClient<
        localml_cli::client::Connection,
    >,
    request: ModelInferRequest,
) -> Result<ModelInferResponse, tonic::Status> {
    client.model_infer(request).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_model_matches_onnxruntime_python_through_scheduler_and_worker() {
    let scheduler = Scheduler::start();
    let w1 = Worker::start("w1", &scheduler, &[]);
    let _w2 = Worker::start("w2", &scheduler, &[]);
    scheduler.wait_ready(&["w1", "w2"]).await;
    let mut via_scheduler = scheduler.inference().await;
    let mut direct = w1.inference().await;
    let examples = expected_examples();
    assert!(examples.len() >= 5, "expected files missing");
    let mut served_by = std::collections::HashSet::new();
    for ex in &examples {
        for (route, client) in [("scheduler", &mut via_scheduler), ("worker", &mut direct)] {
            let context = format!("{} v{} via {route}", ex.model, ex.version);
            // Raw contents, as Triton's clients send them.
            let response = infer(client, client::request(&ex.model, &ex.version, &ex.inputs))
                .await
                .unwrap_or_else(|s| panic!("{context}: {s:?}"));
            assert_eq!(response.model_version, ex.version, "{context}");
            assert_tensors_match(
                &context,
                &ex.outputs,
                &client::outputs(&response).expect("decode"),
            );
            served_by.insert(client::served_by(&response).expect("worker parameter"));
            // Typed contents (every datatype but FP16 has a typed field).
            if ex.inputs.iter().all(|t| t.data.to_contents().is_some()) {
                let mut typed = client::request(&ex.model, &ex.version, &ex.inputs);
                typed.raw_input_contents.clear();
                for (input, tensor) in typed.inputs.iter_mut().zip(&ex.inputs) {
                    input.contents = tensor.data.to_contents();
                }
                let response = infer(client, typed)
                    .await
                    .unwrap_or_else(|s| panic!("{context} typed: {s:?}"));
                assert_tensors_match(
                    &format!("{context} typed"),
                    &ex.outputs,
                    &client::outputs(&response).expect("decode"),
                );
            }
        }
    }
    assert!(
        served_by.contains("w1") && served_by.contains("w2"),
        "both workers served: {served_by:?}"
    );

    // Requested-outputs subset.
    let stats = examples
        .iter()
        .find(|e| e.model == "tensor_stats")
        .expect("tensor_stats example");
    let mut request = client::request("tensor_stats", "", &stats.inputs);
    request.outputs = vec![model_infer_request::InferRequestedOutputTensor {
        name: "argmax".into(),
        ..Default::default()
    }];
    let response = infer(&mut via_scheduler, request).await.expect("subset");
    let outputs = client::outputs(&response).expect("decode");
    let want: Vec<Tensor> = stats
        .outputs
        .iter()
        .filter(|t| t.name == "argmax")
        .cloned()
        .collect();
    assert_tensors_match("requested subset", &want, &outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_config_stream_and_statistics() {
    let scheduler = Scheduler::start();
    let _w = Worker::start("solo", &scheduler, &[]);
    scheduler.wait_ready(&["solo"]).await;
    let mut c = scheduler.inference().await;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .expect("ready")
            .into_inner()
            .ready
    );
    let md = c
        .model_metadata(ModelMetadataRequest {
            name: "image_classifier".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(md.platform, "onnxruntime_onnx");
    assert_eq!(md.inputs[0].name, "image");
    assert_eq!(md.inputs[0].shape, vec![-1, 3, 32, 32]);
    let cfg = c
        .model_config(ModelConfigRequest {
            name: "image_classifier".into(),
            version: String::new(),
        })
        .await
        .expect("config")
        .into_inner()
        .config
        .expect("config body");
    assert_eq!(
        cfg.max_batch_size, 8,
        "from examples/models/image_classifier/config.yaml"
    );
    assert_eq!(cfg.input[0].dims, vec![3, 32, 32]);
    assert_eq!(cfg.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(cfg.instance_group[0].count, 2);
    let versions = c
        .model_metadata(ModelMetadataRequest {
            name: "text_classifier".into(),
            version: String::new(),
        })
        .await
        .expect("metadata")
        .into_inner()
        .versions;
    assert_eq!(versions, vec!["1", "2"]);
    // Before any request, every version has an entry with zero counts (as in Triton).
    let before = c
        .model_statistics(ModelStatisticsRequest {
            name: "text_classifier".into(),
            version: String::new(),
        })
        .await
        .expect("statistics")
        .into_inner()
        .model_stats;
    let listed: Vec<(&str, u64)> = before
        .iter()
        .map(|s| (s.version.as_str(), s.inference_count))
        .collect();
    assert_eq!(listed, [("1", 0), ("2", 0)], "{before:?}");

    // A stream of requests with ids; one bad request in the middle gets an error message
    // without ending the stream.
    let examples = expected_examples();
    let ex = examples
        .iter()
        .find(|e| e.model == "image_classifier")
        .expect("example");
    let mut requests = Vec::new();
    for i in 0..5 {
        let mut r = client::request(&ex.model, "", &ex.inputs);
        r.id = format!("req-{i}");
        if i == 2 {
            r.model_name = "no_such_model".into();
        }
        requests.push(r);
    }
    let mut stream = c
        .model_stream_infer(futures::stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut ok = 0;
    let mut errors = Vec::new();
    while let Some(message) = stream.message().await.expect("stream message") {
        let response = message.infer_response.expect("response");
        if message.error_message.is_empty() {
            assert_tensors_match(
                &response.id,
                &ex.outputs,
                &client::outputs(&response).expect("decode"),
            );
            ok += 1;
        } else {
            errors.push((response.id, message.error_message));
        }
    }
    assert_eq!(ok, 4);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "req-2");
    assert!(errors[0].1.contains("no_such_model"), "{errors:?}");

    let stats = c
        .model_statistics(ModelStatisticsRequest {
            name: "image_classifier".into(),
            version: String::new(),
        })
        .await
        .expect("statistics")
        .into_inner();
    let success: u64 = stats
        .model_stats
        .iter()
        .filter_map(|s| {
            s.inference_stats
                .as_ref()?
                .success
                .as_ref()
                .map(|d| d.count)
        })
        .sum();
    assert_eq!(success, 4);
    // Counted under the version that served, as Triton does (perf_analyzer looks it up).
    let versions: Vec<&str> = stats
        .model_stats
        .iter()
        .map(|s| s.version.as_str())
        .collect();
    assert_eq!(versions, ["1"], "{stats:?}");
    // Triton's split of the time: each success has a queue and a compute duration
    // (perf_analyzer finds the version that served by the queue count that grew).
    let split = stats.model_stats[0]
        .inference_stats
        .as_ref()
        .map(|s| (s.queue.map(|d| d.count), s.compute_infer.map(|d| d.count)));
    assert_eq!(split, Some((Some(4), Some(4))), "{stats:?}");

    // Triton's repository index lists what the workers serve (and the catalog holds).
    let index = c
        .repository_index(RepositoryIndexRequest::default())
        .await
        .expect("repository index")
        .into_inner();
    let image = index
        .models
        .iter()
        .find(|m| m.name == "image_classifier" && m.version == "1")
        .unwrap_or_else(|| panic!("{index:?}"));
    assert_eq!(image.state, "READY", "{index:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_no_ready_worker() {
    let scheduler = Scheduler::start();
    // Absurd but well-formed deadlines (`grpc-timeout` allows 8 digits and hours) are
    // capped at a day, not an overflow that panics the request's task (#11).
    {
        let _w = Worker::start("quick", &scheduler, &[]);
        scheduler.wait_ready(&["quick"]).await;
        let mut c = scheduler.inference().await;
        for timeout in ["99999999H", "99999999S", "18446744073709551615S"] {
            let mut request = tonic::Request::new(image_request(1));
            request
                .metadata_mut()
                .insert("grpc-timeout", timeout.parse().expect("ascii"));
            c.model_infer(request)
                .await
                .unwrap_or_else(|s| panic!("grpc-timeout {timeout}: {s:?}"));
        }
    }
    let gone = wait_until(SOON, || async {
        scheduler.worker_state("quick").await
            != Some(localml_proto::localml::v1::WorkerState::Ready)
    })
    .await;
    assert!(gone, "{:?}", scheduler.workers().await);
    // A worker 5000x slower: one inference takes seconds.
    let mut slow = Worker::start("slow", &scheduler, &["--throttle", "5000"]);
    scheduler.wait_ready(&["slow"]).await;
    let mut c = scheduler.inference().await;
    let mut request = tonic::Request::new(image_request(1));
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = c.model_infer(request).await.expect_err("deadline passes");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered near the deadline, not after the work"
    );

    // With the only worker gone, the model is known but nobody can serve it.
    slow.process.kill9();
    let ok = wait_until(SOON, || {
        let mut c = c.clone();
        async move {
            match c.model_infer(image_request(1)).await {
                Err(s) if s.code() == Code::Unavailable => {
                    assert!(s.message().contains("image_classifier"), "{}", s.message());
                    true
                }
                _ => false,
            }
        }
    })
    .await;
    assert!(ok, "UNAVAILABLE once no Ready worker has the model");
}
