//! GPU path: on a PC with an NVIDIA GPU and the CUDA build of ONNX Runtime
//! (`localml runtime install --gpu`), models run on the CUDA execution provider and the
//! worker reports its GPU memory. Skips cleanly where there is no GPU (CI never has one);
//! set LOCALML_REQUIRE_GPU=1 to make a missing GPU or library a failure.

use localml_cli::client;
use localml_tests::*;

fn skip(reason: &str) {
    assert!(
        std::env::var_os("LOCALML_REQUIRE_GPU").is_none(),
        "LOCALML_REQUIRE_GPU is set but {reason}"
    );
    eprintln!("skipped: {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_run_on_cuda_and_gpu_memory_is_reported() {
    let has_gpu = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_gpu {
        return skip("no NVIDIA GPU (nvidia-smi missing or failing)");
    }
    let flavor = localml_worker::runtime::Flavor::Gpu;
    let library = localml_worker::runtime::install_dir(flavor).join(flavor.library_file());
    if !library.is_file() {
        return skip("the CUDA build is not installed (localml runtime install --gpu)");
    }
    let scheduler = Scheduler::start();
    let lib = library.to_string_lossy().to_string();
    let _gpu = Worker::start("gpu", &scheduler, &["--onnxruntime", &lib]);
    scheduler.wait_ready(&["gpu"]).await;
    let status = scheduler.workers().await[0].status.clone().expect("status");
    assert!(
        status
            .execution_providers
            .iter()
            .any(|p| p == "CUDAExecutionProvider"),
        "{:?}",
        status.execution_providers
    );
    // GPUs are read through NVML every 10 reports; wait for the first reading.
    let reported = wait_until(SOON, || async {
        let s = scheduler.workers().await[0].status.clone().expect("status");
        s.gpus.first().is_some_and(|g| {
            g.memory_total_bytes > 0 && g.memory_free_bytes <= g.memory_total_bytes
        })
    })
    .await;
    assert!(reported, "GPU memory reported");
    let image = status
        .models
        .iter()
        .find(|m| m.name == "image_classifier")
        .expect("loaded");
    assert_eq!(
        image.execution_provider, "CUDAExecutionProvider",
        "config.yaml prefers cuda"
    );
    let mut c = scheduler.inference().await;
    for ex in expected_examples()
        .iter()
        .filter(|e| e.model == "image_classifier")
    {
        let response = c
            .model_infer(client::request(&ex.model, "", &ex.inputs))
            .await
            .expect("infer")
            .into_inner();
        assert_tensors_match(
            "cuda",
            &ex.outputs,
            &client::outputs(&response).expect("decode"),
        );
    }
}
