//! The model catalog with a real scheduler process and the real CLI: push (resumable,
//! nothing sent twice), list, show, delete with garbage collection; the inputs and
//! outputs read from each example's ONNX file equal what ONNX Runtime reports for it on a
//! real worker; bad uploads are refused with the code and message that name the problem;
//! pushing a 300 MB model keeps the scheduler's memory flat.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use localml_cli::client::Connection;
use localml_proto::localml::v1::catalog_client::CatalogClient;
use localml_proto::localml::v1::*;
use localml_tests::*;

/// Quick reports and leadership, so workers and deployments settle fast.
const QUICK: &str =
    "report_interval_ms: 200\nworker_grace_period_ms: 3000\nleader_lease_ms: 1000\n";

/// An on-demand worker with an empty repository `repo` (it gets models from the
/// catalog) keeping its cache in `data`, with `extra` flags.
fn on_demand(
    name: &str,
    scheduler: &Scheduler,
    repo: &Path,
    data: &TempDir,
    extra: &[&str],
) -> Worker {
    let data = data.path().to_str().expect("utf-8");
    let mut flags = vec!["--load", "on-demand", "--data-dir", data];
    flags.extend_from_slice(extra);
    Worker::start_with_models(name, scheduler, repo, &flags)
}

async fn catalog(scheduler: &Scheduler) -> CatalogClient<Connection> {
    CatalogClient::new(scheduler.admin_channel().await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Runs `localml ARGS --server ADDR` with the admin key; returns (success, stdout, stderr).
fn cli(scheduler: &Scheduler, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("localml"))
        .args(args)
        .args(["--server", &scheduler.addr])
        .env("LOCALML_KEY", scheduler.admin_key())
        .env("RUST_LOG", "off")
        .output()
        .expect("run localml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asks `client` for image_classifier (no version) with examples/expected's inputs and
/// checks the answer equals onnxruntime's outputs; `what` names the case in a failure.
async fn assert_answers_image_classifier(
    client: &mut localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient<Connection>,
    what: &str,
) {
    let examples = expected_examples();
    let ex = examples
        .iter()
        .find(|e| e.model == "image_classifier")
        .expect("example");
    let response = client
        .model_infer(localml_cli::client::request(&ex.model, "", &ex.inputs))
        .await
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
        .into_inner();
    let outputs = localml_cli::client::outputs(&response).expect("outputs");
    assert_tensors_match(what, &ex.outputs, &outputs);
}

/// `localml models push FILE --name NAME`; what it prints.
fn push_named(scheduler: &Scheduler, file: &Path, name: &str) -> String {
    cli_ok(
        scheduler,
        &[
            "models",
            "push",
            file.to_str().expect("utf-8"),
            "--name",
            name,
        ],
    )
}

fn cli_ok(scheduler: &Scheduler, args: &[&str]) -> String {
    let (ok, out, err) = cli(scheduler, args);
    assert!(ok, "localml {args:?} failed: {err}");
    out
}

fn sha256(path: &Path) -> String {
    localml_trust::sha256_file(path).expect("hash")
}

fn blob_files(scheduler: &Scheduler) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scheduler.data_dir().join("blobs/sha256"))
        .expect("blob dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_list_show_and_delete_with_the_cli() {
    let scheduler = Scheduler::start();
    let image = models_dir().join("image_classifier");
    let size = std::fs::metadata(image.join("1/model.onnx"))
        .expect("model")
        .len();

    let out = cli_ok(
        &scheduler,
        &["models", "push", image.to_str().expect("utf-8")],
    );
    assert!(
        out.contains(&format!("pushed image_classifier version 1: 1 file(s), {size} bytes; sent {size} bytes (0 file(s) already")),
        "{out}"
    );
    // The same content again: the same version, nothing sent.
    let out = cli_ok(
        &scheduler,
        &["models", "push", image.to_str().expect("utf-8")],
    );
    assert!(
        out.contains("version 1: ") && out.contains("sent 0 bytes (1 file(s) already"),
        "{out}"
    );
    // Under another name it is another model, and the file is still not sent again.
    let out = cli_ok(
        &scheduler,
        &[
            "models",
            "push",
            image.join("1/model.onnx").to_str().expect("utf-8"),
            "--name",
            "copy",
            "--version",
            "7",
        ],
    );
    assert!(
        out.contains("pushed copy version 7: ") && out.contains("sent 0 bytes"),
        "{out}"
    );

    // A version number that exists with other files is refused.
    let text = models_dir().join("text_classifier");
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "models",
            "push",
            text.to_str().expect("utf-8"),
            "--name",
            "image_classifier",
            "--version",
            "1",
        ],
    );
    assert!(
        !ok && err.contains("AlreadyExists: image_classifier version 1 exists with other files"),
        "{err}"
    );

    let list = cli_ok(&scheduler, &["models", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("image_classifier") && l.contains("image FP32 [-1, 3, 32, 32]")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("copy ") && l.contains(" 7 ")),
        "{list}"
    );
    let show = cli_ok(&scheduler, &["models", "show", "image_classifier:1"]);
    assert!(
        show.contains(&format!("sha256:{}", sha256(&image.join("1/model.onnx")))),
        "{show}"
    );
    assert!(
        show.contains("config.yaml:\n  "),
        "the model's config.yaml is kept: {show}"
    );

    // A deployment naming the model protects it; --force does not care.
    scheduler
        .admin()
        .await
        .apply_deployment(Deployment {
            name: "classify".into(),
            model: "image_classifier".into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .expect("deployment");
    let (ok, _, err) = cli(&scheduler, &["models", "delete", "image_classifier"]);
    assert!(
        !ok && err.contains("deployment 'classify' uses image_classifier"),
        "{err}"
    );
    // A file uploaded for a push not finished yet is kept by the collector.
    let pending = upload_part(
        &mut catalog(&scheduler).await,
        &localml_trust::sha256_hex(b"pending"),
        7,
        0,
        b"pending".to_vec(),
    )
    .await
    .expect("uploaded");
    // The blob is shared with `copy`: deleting one model keeps it.
    let out = cli_ok(
        &scheduler,
        &["models", "delete", "image_classifier:1", "--force"],
    );
    assert!(
        out.contains("deleted image_classifier:1; removed 0 unused file(s)"),
        "{out}"
    );
    assert_eq!(
        blob_files(&scheduler).len(),
        3,
        "copy's, text_classifier's (unclaimed) and the pending one"
    );
    let out = cli_ok(&scheduler, &["models", "delete", "copy"]);
    assert!(
        out.contains(&format!(
            "deleted copy:7; removed 1 unused file(s), {}",
            localml_cli::catalog::human_bytes(size)
        )),
        "{out}"
    );
    let left = blob_files(&scheduler);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&pending.sha256), "{left:?}");
    // A deleted version's number is not given again (a worker may hold its files).
    let out = push_named(&scheduler, &image.join("1/model.onnx"), "copy");
    assert!(out.contains("pushed copy version 8: "), "{out}");
    cli_ok(&scheduler, &["models", "delete", "copy"]);
    // Pushed twice (the second time only asked about, nothing sent), then deleted: the
    // file goes with it.
    let text_file = models_dir().join("text_classifier/1/model.onnx");
    for _ in 0..2 {
        push_named(&scheduler, &text_file, "twice");
    }
    let out = cli_ok(&scheduler, &["models", "delete", "twice"]);
    assert!(
        out.contains("deleted twice:1; removed 1 unused file(s)"),
        "{out}"
    );
    let (ok, _, err) = cli(&scheduler, &["models", "show", "copy"]);
    assert!(
        !ok && err.contains("NotFound: no model 'copy' in the catalog"),
        "{err}"
    );
}

/// What the scheduler reads from each example's ONNX file equals what ONNX Runtime
/// reports for the same model on a real worker (ModelMetadata through the scheduler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_signatures_equal_onnx_runtimes() {
    let scheduler = Scheduler::start();
    let _worker = Worker::start("w1", &scheduler, &[]);
    scheduler.wait_ready(&["w1"]).await;
    let mut inference = scheduler.inference().await;
    let mut catalog = catalog(&scheduler).await;
    for name in [
        "image_classifier",
        "text_classifier",
        "datatypes",
        "tensor_stats",
    ] {
        let dir = models_dir().join(name);
        cli_ok(
            &scheduler,
            &["models", "push", dir.to_str().expect("utf-8")],
        );
        let entry = catalog
            .get_catalog_model(CatalogModelRef {
                name: name.into(),
                version: String::new(),
                variant: String::new(),
            })
            .await
            .expect("in the catalog")
            .into_inner();
        let metadata = inference
            .model_metadata(localml_proto::inference::ModelMetadataRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .expect("metadata")
            .into_inner();
        let ours = |list: &[CatalogTensor]| {
            let mut v: Vec<_> = list
                .iter()
                .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
                .collect();
            v.sort();
            v
        };
        let theirs =
            |list: &[localml_proto::inference::model_metadata_response::TensorMetadata]| {
                let mut v: Vec<_> = list
                    .iter()
                    .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
                    .collect();
                v.sort();
                v
            };
        assert_eq!(
            ours(&entry.inputs),
            theirs(&metadata.inputs),
            "{name} inputs"
        );
        assert_eq!(
            ours(&entry.outputs),
            theirs(&metadata.outputs),
            "{name} outputs"
        );
    }
}

/// Sends `data` as the start of blob `sha256` (of `size` bytes) and stops.
async fn upload_part(
    catalog: &mut CatalogClient<Connection>,
    sha256: &str,
    size: u64,
    offset: u64,
    data: Vec<u8>,
) -> Result<BlobStatusResponse, tonic::Status> {
    let chunk = BlobChunk {
        sha256: sha256.into(),
        size,
        offset,
        data: data.into(),
    };
    catalog
        .upload_blob(futures::stream::iter([chunk]))
        .await
        .map(|r| r.into_inner())
}

async fn held(catalog: &mut CatalogClient<Connection>, sha256: &str) -> BlobStatusResponse {
    catalog
        .blob_status(BlobStatusRequest {
            sha256: sha256.into(),
        })
        .await
        .expect("status")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_push_resumes_and_sends_only_the_rest() {
    let mut scheduler = Scheduler::start();
    let file = models_dir().join("text_classifier/2/model.onnx");
    let bytes = std::fs::read(&file).expect("model");
    let (size, hash) = (bytes.len() as u64, sha256(&file));
    let half = bytes.len() / 2;
    let mut catalog = catalog(&scheduler).await;
    let err = upload_part(&mut catalog, &hash, size, 0, bytes[..half].to_vec())
        .await
        .expect_err("the stream ended early");
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("ended after {half} of {size} bytes")),
        "{err:?}"
    );
    // The bytes are kept, across a crash of the scheduler too.
    scheduler.crash_and_restart();
    let mut catalog = self::catalog(&scheduler).await;
    let status = held(&mut catalog, &hash).await;
    assert_eq!((status.complete, status.received), (false, half as u64));
    // Resuming from elsewhere is refused with where to resume.
    let err = upload_part(&mut catalog, &hash, size, 0, bytes.to_vec())
        .await
        .expect_err("wrong offset");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("resume at offset {half}, not 0")),
        "{err:?}"
    );

    let out = cli_ok(
        &scheduler,
        &[
            "models",
            "push",
            models_dir()
                .join("text_classifier")
                .to_str()
                .expect("utf-8"),
        ],
    );
    let rest = size - half as u64;
    assert!(
        out.contains(&format!("{size} bytes; sent {rest} bytes")),
        "{out}"
    );
    // The blob on disk is the file, whole.
    let stored = scheduler.data_dir().join("blobs/sha256").join(&hash);
    assert_eq!(std::fs::read(&stored).expect("stored blob"), bytes);

    // FetchBlob from an offset returns the rest of the file.
    let mut stream = catalog
        .fetch_blob(FetchBlobRequest {
            sha256: hash.clone(),
            offset: 1000,
            max_chunk_bytes: 0,
        })
        .await
        .expect("fetch")
        .into_inner();
    let mut fetched = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        fetched.extend_from_slice(&chunk.data);
    }
    assert_eq!(fetched, bytes[1000..]);
    // A caller may ask for smaller chunks (a worker under --fetch-rate does).
    let mut stream = catalog
        .fetch_blob(FetchBlobRequest {
            sha256: hash.clone(),
            offset: 0,
            max_chunk_bytes: 4096,
        })
        .await
        .expect("fetch")
        .into_inner();
    let (mut fetched, mut largest) = (Vec::new(), 0);
    while let Some(chunk) = stream.message().await.expect("chunk") {
        largest = largest.max(chunk.data.len());
        fetched.extend_from_slice(&chunk.data);
    }
    assert_eq!((fetched.as_slice(), largest), (&bytes[..], 4096));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_refused_with_the_reason_and_leave_nothing() {
    let scheduler = Scheduler::start();
    let mut catalog = catalog(&scheduler).await;
    let dir = TempDir::new("catalog-bad");

    // A file that is not an ONNX model: refused at push, named.
    let text = dir.path().join("notes.onnx");
    std::fs::write(&text, "these are not weights\n").expect("write");
    let (ok, _, err) = cli(
        &scheduler,
        &["models", "push", text.to_str().expect("utf-8")],
    );
    assert!(
        !ok && err.contains("InvalidArgument: model.onnx: not an ONNX model"),
        "{err}"
    );
    let list = catalog
        .list_catalog(ListCatalogRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(list.models.is_empty(), "{list:?}");

    // Bytes that do not hash to the blob's name: refused with both hashes, discarded.
    let claimed = "0".repeat(64);
    let err = upload_part(&mut catalog, &claimed, 5, 0, b"hello".to_vec())
        .await
        .expect_err("wrong hash");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let actual = localml_trust::sha256_hex(b"hello");
    assert!(
        err.message().contains(&actual) && err.message().contains(&claimed),
        "{err:?}"
    );
    assert_eq!(held(&mut catalog, &claimed).await.received, 0);

    // An interrupted upload that declared a larger size does not block the right one.
    let err = upload_part(&mut catalog, &actual, 100, 0, b"hello, and more".to_vec())
        .await
        .expect_err("short");
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert_eq!(held(&mut catalog, &actual).await.received, 15);
    // Meanwhile a version naming it is told the blob is incomplete.
    let incomplete = CatalogModel {
        name: "m".into(),
        files: vec![CatalogFile {
            path: "model.onnx".into(),
            sha256: actual.clone(),
            size: 5,
        }],
        ..Default::default()
    };
    let err = catalog.put_model(incomplete).await.expect_err("incomplete");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("is incomplete on the scheduler (15 of 5 bytes)"),
        "{err:?}"
    );

    // More data than the declared size.
    let err = upload_part(&mut catalog, &actual, 3, 0, b"hello".to_vec())
        .await
        .expect_err("past its size");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("past the blob's size of 3 bytes"),
        "{err:?}"
    );
    // A name that is not a sha256.
    let err = catalog
        .blob_status(BlobStatusRequest {
            sha256: "../../etc/passwd".into(),
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Versions: bad names and paths, blobs not uploaded, sizes that disagree.
    let good = upload_part(&mut catalog, &actual, 5, 0, b"hello".to_vec())
        .await
        .expect("uploaded");
    assert!(good.complete);
    let file = |path: &str, sha256: &str, size| CatalogFile {
        path: path.into(),
        sha256: sha256.into(),
        size,
    };
    let cases: Vec<(CatalogModel, tonic::Code, &str)> = vec![
        (
            CatalogModel {
                name: "../up".into(),
                files: vec![file("model.onnx", &actual, 5)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "model name '../up'",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("../model.onnx", &actual, 5)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "file path '../model.onnx'",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("/etc/x", &actual, 5)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "must be relative",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("labels.txt", &actual, 5)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "needs a file named model.onnx",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![
                    file("model.onnx", &actual, 5),
                    file("a", &actual, 5),
                    file("a/b", &actual, 5),
                ],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "file path 'a/b': is inside another file's path",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("model.onnx", &"a".repeat(64), 5)],
                ..Default::default()
            },
            tonic::Code::NotFound,
            "upload it first",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("model.onnx", &actual, 6)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "is 6 bytes in the request, but blob",
        ),
        (
            CatalogModel {
                name: "m".into(),
                version: "0".into(),
                files: vec![file("model.onnx", &actual, 5)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "version '0'",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("model.onnx", &actual, 5)],
                config_yaml: "- a list".into(),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "config.yaml: must be a mapping",
        ),
        (
            CatalogModel {
                name: "m".into(),
                files: vec![file("model.onnx", &actual, 5)],
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
            "model.onnx: not an ONNX model",
        ),
    ];
    for (request, code, message) in cases {
        let err = catalog
            .put_model(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
        assert!(err.message().contains(message), "{request:?}: {err:?}");
    }
    assert!(catalog
        .list_catalog(ListCatalogRequest {})
        .await
        .expect("list")
        .into_inner()
        .models
        .is_empty());

    // Without a key: UNAUTHENTICATED, before anything is read.
    let open =
        localml_cli::client::connect_with(&scheduler.addr, Duration::from_secs(5), None, None)
            .await
            .expect("connect");
    let err = CatalogClient::new(open)
        .list_catalog(ListCatalogRequest {})
        .await
        .expect_err("no key");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
}

/// A valid ONNX file of about `mb` MB: one FP32 input and output and a large initializer
/// (hand-encoded protobuf; only the scheduler reads it, no worker loads it).
fn large_model(path: &Path, mb: usize) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    use std::io::Write;
    let field = |out: &mut Vec<u8>, number: u32, bytes: &[u8]| {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    };
    let value_info = |name: &str| {
        let mut tensor = Vec::new();
        encode_key(1, WireType::Varint, &mut tensor);
        encode_varint(1, &mut tensor);
        let mut ty = Vec::new();
        field(&mut ty, 1, &tensor);
        let mut info = Vec::new();
        field(&mut info, 1, name.as_bytes());
        field(&mut info, 2, &ty);
        info
    };
    let data_len = mb << 20;
    let mut initializer_head = Vec::new();
    field(&mut initializer_head, 8, b"weights");
    encode_key(9, WireType::LengthDelimited, &mut initializer_head);
    encode_varint(data_len as u64, &mut initializer_head);
    let initializer_len = initializer_head.len() + data_len;
    let mut tail = Vec::new();
    field(&mut tail, 11, &value_info("x"));
    field(&mut tail, 12, &value_info("y"));
    let mut graph_head = Vec::new();
    encode_key(5, WireType::LengthDelimited, &mut graph_head);
    encode_varint(initializer_len as u64, &mut graph_head);
    let graph_len = graph_head.len() + initializer_len + tail.len();
    let mut model_head = Vec::new();
    encode_key(1, WireType::Varint, &mut model_head);
    encode_varint(8, &mut model_head);
    encode_key(7, WireType::LengthDelimited, &mut model_head);
    encode_varint(graph_len as u64, &mut model_head);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    out.write_all(&model_head).expect("write");
    out.write_all(&graph_head).expect("write");
    out.write_all(&initializer_head).expect("write");
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..mb {
        out.write_all(&block).expect("write");
    }
    out.write_all(&tail).expect("write");
    out.flush().expect("flush");
}

fn memory_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_a_300_mb_model_keeps_the_schedulers_memory_flat() {
    let scheduler = Scheduler::start();
    let dir = TempDir::new("catalog-large");
    let file = dir.path().join("big.onnx");
    large_model(&file, 300);
    // Settle: the scheduler's idle size after start-up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kb = memory_kb(scheduler.process.pid(), "VmRSS:");
    let out = cli_ok(
        &scheduler,
        &["models", "push", file.to_str().expect("utf-8")],
    );
    let size = std::fs::metadata(&file).expect("file").len();
    assert!(
        out.contains(&format!(
            "pushed big version 1: 1 file(s), {size} bytes; sent {size} bytes"
        )),
        "{out}"
    );
    let peak_kb = memory_kb(scheduler.process.pid(), "VmHWM:");
    eprintln!("scheduler RSS idle {idle_kb} kB, peak while pushing {peak_kb} kB");
    assert!(
        peak_kb < idle_kb + 64 * 1024,
        "the scheduler's peak RSS {peak_kb} kB is over its idle {idle_kb} kB + 64 MiB"
    );
    let show = cli_ok(&scheduler, &["models", "show", "big"]);
    assert!(
        show.contains("input:  x FP32 []") && show.contains("output:  y FP32 []"),
        "{show}"
    );
}

async fn apply(scheduler: &Scheduler, replicas: u32) {
    scheduler
        .admin()
        .await
        .apply_deployment(Deployment {
            name: "classify".into(),
            model: "image_classifier".into(),
            replicas,
            ..Default::default()
        })
        .await
        .expect("deployment");
}

/// On-demand workers with empty repositories get a pushed model from the scheduler,
/// serve it with the outputs ONNX Runtime's Python API gave (examples/expected), and a
/// file corrupted in one worker's cache is found before the next load and fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_fetch_pushed_models_from_the_catalog_and_serve_them() {
    let scheduler = Scheduler::start_with(QUICK);
    let empty = TempDir::new("catalog-empty-repository");
    let data: Vec<TempDir> = (0..2).map(|_| TempDir::new("catalog-worker")).collect();
    let _workers: Vec<Worker> = ["c1", "c2"]
        .iter()
        .zip(&data)
        .map(|(name, dir)| on_demand(name, &scheduler, empty.path(), dir, &[]))
        .collect();
    scheduler.wait_ready(&["c1", "c2"]).await;
    let image = models_dir().join("image_classifier");
    cli_ok(
        &scheduler,
        &["models", "push", image.to_str().expect("utf-8")],
    );
    apply(&scheduler, 2).await;
    let both = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("image_classifier").await == ["c1", "c2"]
    })
    .await;
    assert!(
        both,
        "served by {:?}",
        scheduler.serving("image_classifier").await
    );

    let mut inference = scheduler.inference().await;
    for _ in 0..4 {
        assert_answers_image_classifier(&mut inference, "catalog model").await;
    }
    // The memory a worker measured when it loaded the version is kept in the catalog,
    // for placement.
    let measured = wait_until(SOON, || async {
        let (_, out, _) = cli(&scheduler, &["models", "show", "image_classifier"]);
        out.contains("memory: ") && out.contains("(measured on c")
    })
    .await;
    let (_, shown, _) = cli(&scheduler, &["models", "show", "image_classifier"]);
    assert!(measured, "{shown}");
    let record = catalog(&scheduler)
        .await
        .get_catalog_model(CatalogModelRef {
            name: "image_classifier".into(),
            version: String::new(),
            variant: String::new(),
        })
        .await
        .expect("catalog record")
        .into_inner();
    let reported: Vec<u64> = scheduler
        .workers()
        .await
        .iter()
        .filter_map(|w| w.status.as_ref())
        .flat_map(|s| s.models.iter())
        .filter(|m| m.name == "image_classifier")
        .map(|m| m.memory_bytes)
        .collect();
    assert!(
        record.measured_bytes > 0 && reported.contains(&record.measured_bytes),
        "kept {} of {reported:?}",
        record.measured_bytes
    );

    // Each worker's cached file is the pushed file, byte for byte.
    let original = std::fs::read(image.join("1/model.onnx")).expect("model");
    let hash = localml_trust::sha256_hex(&original);
    let cached: Vec<_> = data
        .iter()
        .map(|d| d.path().join("catalog/blobs").join(&hash))
        .collect();
    for file in &cached {
        assert_eq!(
            std::fs::read(file).expect("cached"),
            original,
            "{}",
            file.display()
        );
    }

    // Unassign, corrupt c1's copy, assign again: c1 finds the damage and fetches again.
    scheduler
        .admin()
        .await
        .delete_deployment(DeleteDeploymentRequest {
            name: "classify".into(),
        })
        .await
        .expect("delete");
    let gone = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("image_classifier").await.is_empty()
    })
    .await;
    assert!(
        gone,
        "still served by {:?}",
        scheduler.serving("image_classifier").await
    );
    let mut damaged = original.clone();
    damaged[100] ^= 0xff;
    std::fs::write(&cached[0], &damaged).expect("corrupt");
    apply(&scheduler, 2).await;
    let both = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("image_classifier").await == ["c1", "c2"]
    })
    .await;
    assert!(
        both,
        "served by {:?}",
        scheduler.serving("image_classifier").await
    );
    assert_eq!(
        std::fs::read(&cached[0]).expect("cached"),
        original,
        "the corrupt copy was replaced"
    );
    assert_answers_image_classifier(&mut inference, "catalog model, fetched again").await;
}

/// Triton's Python client loads a model with its files through the scheduler (into the
/// catalog, deployed on an on-demand worker), infers on it, lists the repository and
/// unloads it (tests/python/tritonclient_repository_check.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_loads_and_unloads_models_through_the_scheduler() {
    if !tritonclient_available() {
        return;
    }
    let scheduler = Scheduler::start_full(QUICK, &["--rest-listen", "127.0.0.1:0"]);
    let empty = TempDir::new("catalog-empty-repository");
    let _worker =
        Worker::start_with_models("t1", &scheduler, empty.path(), &["--load", "on-demand"]);
    scheduler.wait_ready(&["t1"]).await;
    let out = run_python_check(
        "tritonclient_repository_check.py",
        &scheduler.addr,
        Some(&scheduler.admin_key()),
        None,
    )
    .await;
    assert!(
        out.contains("tritonclient.grpc repository: load, infer, index, unload OK"),
        "{out}"
    );
    // The same over REST with tritonclient.http: the files base64 in the JSON body.
    let rest = scheduler.rest_url.clone().expect("REST URL");
    let out = run_python_check(
        "tritonclient_repository_check.py",
        &rest,
        Some(&scheduler.admin_key()),
        None,
    )
    .await;
    assert!(
        out.contains("tritonclient.http repository: load, infer, index, unload OK"),
        "{out}"
    );
    // The version is in the catalog, as `localml models push` would have put it.
    let list = cli_ok(&scheduler, &["models", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("pushed ") && l.contains("image FP32")),
        "{list}"
    );
}

/// A model too big for every worker's free RAM stays Pending with the reason, as a
/// Kubernetes pod does; a worker with room that joins then takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_too_big_for_every_worker_is_pending_with_the_reason() {
    let scheduler = Scheduler::start_with(QUICK);
    let empty = TempDir::new("catalog-empty-repository");
    // 150,000 bytes offered; text_classifier's file is 128,940 bytes (about 189 KiB needed).
    let _small = Worker::start_with_models(
        "small",
        &scheduler,
        empty.path(),
        &["--load", "on-demand", "--memory-limit", "150000"],
    );
    scheduler.wait_ready(&["small"]).await;
    let text = models_dir().join("text_classifier");
    cli_ok(
        &scheduler,
        &["models", "push", text.to_str().expect("utf-8")],
    );
    scheduler
        .admin()
        .await
        .apply_deployment(Deployment {
            name: "texts".into(),
            model: "text_classifier".into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .expect("deployment");
    let expected = "Pending: 0 of 1 replicas placed; 'text_classifier' needs about 188.9 KiB of RAM (1.5 times its files), the largest free is 146.5 KiB on small";
    let pending = wait_until(Duration::from_secs(30), || async {
        cli_ok(&scheduler, &["deployments", "list"]).contains(expected)
    })
    .await;
    assert!(pending, "{}", cli_ok(&scheduler, &["deployments", "list"]));
    assert!(scheduler.serving("text_classifier").await.is_empty());

    let _big = Worker::start_with_models("big", &scheduler, empty.path(), &["--load", "on-demand"]);
    let placed = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("text_classifier").await == ["big"]
    })
    .await;
    assert!(
        placed,
        "served by {:?}",
        scheduler.serving("text_classifier").await
    );
}

/// A worker's cache keeps to its disk budget: files of models no longer assigned go,
/// least recently used first; files of a loaded model stay even over the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_cache_evicts_unassigned_models_beyond_its_budget() {
    let scheduler = Scheduler::start_with(QUICK);
    let empty = TempDir::new("catalog-empty-repository");
    let data = TempDir::new("catalog-worker");
    // text_classifier: 128,940 bytes; image_classifier: 6,920: both do not fit in 130,000.
    let _worker = on_demand(
        "cached",
        &scheduler,
        empty.path(),
        &data,
        &["--cache-bytes", "130000"],
    );
    scheduler.wait_ready(&["cached"]).await;
    let text = models_dir().join("text_classifier/2/model.onnx");
    let image = models_dir().join("image_classifier/1/model.onnx");
    push_named(&scheduler, &text, "text");
    push_named(&scheduler, &image, "image");
    let blobs = data.path().join("catalog/blobs");
    let cached = || {
        let mut names: Vec<String> = std::fs::read_dir(&blobs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let deploy = |model: &'static str| {
        let scheduler = &scheduler;
        async move {
            scheduler
                .admin()
                .await
                .apply_deployment(Deployment {
                    name: model.into(),
                    model: model.into(),
                    replicas: 1,
                    ..Default::default()
                })
                .await
                .expect("deployment");
            let served = wait_until(Duration::from_secs(60), || async {
                scheduler.serving(model).await == ["cached"]
            })
            .await;
            assert!(served, "{model} not served");
        }
    };
    deploy("text").await;
    assert_eq!(cached(), [sha256(&text)]);
    // Both assigned: over the budget, but nothing unused to evict.
    deploy("image").await;
    let mut both = vec![sha256(&text), sha256(&image)];
    both.sort();
    assert_eq!(cached(), both);
    // text unassigned; the next fetch (image again, after it is unassigned and assigned
    // anew) makes room by evicting text's file.
    for name in ["text", "image"] {
        scheduler
            .admin()
            .await
            .delete_deployment(DeleteDeploymentRequest { name: name.into() })
            .await
            .expect("delete");
    }
    let gone = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("text").await.is_empty() && scheduler.serving("image").await.is_empty()
    })
    .await;
    assert!(gone);
    deploy("image").await;
    assert_eq!(
        cached(),
        [sha256(&image)],
        "text's file was evicted, image's kept"
    );
}

/// A full disk on the scheduler: RESOURCE_EXHAUSTED, what arrived is kept, and once there
/// is room the same push sends only the rest. The blob directory is a real tmpfs of
/// 64 KiB (the test runs as root, as CI does; it fails, not skips, without `mount`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scheduler_disk_refuses_the_push_and_keeps_what_arrived() {
    let blobs = std::sync::Mutex::new(None);
    let scheduler = Scheduler::start_prepared(TEST_SCHEDULER_CONFIG, &[], |data_dir| {
        let dir = data_dir.join("blobs");
        std::fs::create_dir_all(&dir).expect("blob dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "mount -t tmpfs failed: the test needs root"
        );
        *blobs.lock().expect("lock") = Some(dir);
    });
    let dir = blobs.lock().expect("lock").clone().expect("mounted");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());

    let file = models_dir().join("text_classifier/2/model.onnx");
    let size = std::fs::metadata(&file).expect("model").len();
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "models",
            "push",
            file.to_str().expect("utf-8"),
            "--name",
            "t",
        ],
    );
    assert!(
        !ok && err.contains("ResourceExhausted: the scheduler's disk:"),
        "{err}"
    );
    assert!(err.contains("push again to send the rest"), "{err}");
    let status = held(&mut catalog(&scheduler).await, &sha256(&file)).await;
    assert!(
        !status.complete && status.received > 0 && status.received < size,
        "{status:?}"
    );

    let grown = Command::new("mount")
        .args(["-o", "remount,size=1m"])
        .arg(&dir)
        .status()
        .expect("remount");
    assert!(grown.success());
    let out = push_named(&scheduler, &file, "t");
    let rest = size - status.received;
    assert!(
        out.contains(&format!("{size} bytes; sent {rest} bytes")),
        "{out}"
    );
}

/// `localml_worker_catalog_*` counters from a worker's /metrics.
fn catalog_bytes(worker: &Worker) -> (f64, f64, f64) {
    let addr = worker
        .http_addr
        .as_deref()
        .expect("started with --http-listen");
    let (_, text) = http_get(addr, "/metrics").expect("metrics");
    // The sample's line, not the HELP line that names the family too.
    let get = |marker: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(marker))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        get("localml_worker_catalog_received_bytes_total{source=\"scheduler\"} "),
        get("localml_worker_catalog_received_bytes_total{source=\"peer\"} "),
        get("localml_worker_catalog_sent_bytes_total "),
    )
}

/// A model spreads over the LAN: three workers with empty model directories, one of them
/// also without ONNX Runtime and without a package registry (it gets the library from the
/// scheduler's catalog); image_classifier (with a 16 MiB extra file) is pushed and
/// deployed with 3 replicas. The first worker fetches it from the scheduler, the two
/// assigned after it from that worker, so the scheduler sends one copy, not three
/// (counted by each worker, by source, on /metrics, and by the kernel for the scheduler
/// process: /proc/PID/io); each worker answers with onnxruntime's outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_fetch_from_peers_so_the_scheduler_sends_one_copy() {
    let scheduler = Scheduler::start_with(QUICK);
    let empty = TempDir::new("catalog-empty-repository");
    let scratch = TempDir::new("spread-runtime");
    let wheel = onnxruntime_wheel(scratch.path());
    cli_ok(
        &scheduler,
        &["runtime", "push", "--from", wheel.to_str().expect("utf-8")],
    );
    let flags = ["--load", "on-demand", "--http-listen", "127.0.0.1:0"];
    let mut workers: Vec<Worker> = ["p1", "p2"]
        .iter()
        .map(|name| Worker::start_with_models(name, &scheduler, empty.path(), &flags))
        .collect();
    let no_runtime = TempDir::new("spread-no-runtime-cache");
    let p3_data = TempDir::new("spread-p3-data");
    let offline = offline_env(no_runtime.path());
    let mut p3_flags = flags.to_vec();
    p3_flags.extend([
        "--data-dir",
        p3_data.path().to_str().expect("utf-8"),
        "--onnxruntime",
        "auto",
    ]);
    workers.push(Worker::start_with_env(
        "p3",
        &scheduler.cluster_addr,
        empty.path(),
        &p3_flags,
        &offline,
    ));
    scheduler.wait_ready(&["p1", "p2", "p3"]).await;
    let version = localml_worker::runtime::ORT_VERSION;
    assert!(
        p3_data
            .path()
            .join(format!(
                "runtime/onnxruntime/{version}/libonnxruntime.so.{version}"
            ))
            .is_file(),
        "p3 got ONNX Runtime from the scheduler"
    );
    // image_classifier with a 16 MiB extra file, so that one copy stands out of what else
    // the scheduler writes meanwhile (its store, its log, report answers).
    let dir = TempDir::new("spread-model");
    let model = dir.path().join("image_classifier");
    let version = model.join("1");
    std::fs::create_dir_all(&version).expect("dir");
    let source = models_dir().join("image_classifier");
    std::fs::copy(source.join("config.yaml"), model.join("config.yaml")).expect("copy");
    std::fs::copy(source.join("1/model.onnx"), version.join("model.onnx")).expect("copy");
    let extra: Vec<u8> = (0..16u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(version.join("vocabulary.bin"), &extra).expect("write");
    let size = (std::fs::metadata(version.join("model.onnx"))
        .expect("model")
        .len()
        + extra.len() as u64) as f64;
    cli_ok(
        &scheduler,
        &["models", "push", model.to_str().expect("utf-8")],
    );
    let scheduler = &scheduler;
    let deploy = |replicas: u32| async move {
        scheduler
            .admin()
            .await
            .apply_deployment(Deployment {
                name: "spread".into(),
                model: "image_classifier".into(),
                replicas,
                ..Default::default()
            })
            .await
            .expect("deployment");
        let served = wait_until(Duration::from_secs(60), || async {
            scheduler.serving("image_classifier").await.len() == replicas as usize
        })
        .await;
        assert!(
            served,
            "served by {:?}",
            scheduler.serving("image_classifier").await
        );
    };
    // What the scheduler process wrote (sockets and files), by the kernel's count: at
    // least one copy, and well under two.
    let written = || {
        let io = std::fs::read_to_string(format!("/proc/{}/io", scheduler.process.pid()))
            .expect("/proc/PID/io");
        io.lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .expect("wchar")
    };
    let before = written();
    deploy(1).await;
    let one = written() - before;
    deploy(3).await;
    let all = written() - before;
    eprintln!("scheduler wrote {one} bytes for the first replica, {all} for three");
    assert!(
        one >= size && all < 2.0 * size,
        "the scheduler wrote {one} bytes while the first worker fetched, {all} while all three did; one copy is {size}"
    );
    let counts: Vec<(f64, f64, f64)> = workers.iter().map(catalog_bytes).collect();
    let from_scheduler: f64 = counts.iter().map(|c| c.0).sum();
    let from_peers: f64 = counts.iter().map(|c| c.1).sum();
    let sent: f64 = counts.iter().map(|c| c.2).sum();
    assert_eq!(
        from_scheduler, size,
        "one copy from the scheduler: {counts:?}"
    );
    assert_eq!(
        from_peers,
        2.0 * size,
        "two copies between workers: {counts:?}"
    );
    assert_eq!(sent, from_peers, "{counts:?}");
    // Each replica answers with onnxruntime's outputs (examples/expected).
    for worker in &workers {
        assert_answers_image_classifier(&mut worker.inference().await, &worker.name).await;
    }
}

/// What a worker PC without internet has: no ONNX Runtime in localml's cache (`cache`,
/// empty) or on the library path, and a package index that cannot be reached.
fn offline_env(cache: &Path) -> Vec<(&'static str, &Path)> {
    vec![
        ("LOCALML_CACHE_DIR", cache),
        ("LD_LIBRARY_PATH", cache),
        ("PIP_INDEX_URL", Path::new("http://127.0.0.1:9/simple")),
    ]
}

/// Runs a worker (example models, data in `data`, `extra` flags, `env`) that is expected
/// to stop with exit status 1; returns what it wrote on stderr.
fn worker_that_stops(
    scheduler: &Scheduler,
    name: &str,
    data: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> String {
    let out = Command::new(bin("localml-worker"))
        .args(["--name", name, "--listen", "127.0.0.1:0", "--scheduler"])
        .arg(&scheduler.cluster_addr)
        .arg("--models")
        .arg(models_dir())
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("LOCALML_TOKEN", join_token(&scheduler.addr))
        .env("RUST_LOG", "off")
        .output()
        .expect("run worker");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// A wheel laid out as PyPI's `onnxruntime` one (`onnxruntime/capi/libonnxruntime*`),
/// made from this machine's installed ONNX Runtime libraries.
fn onnxruntime_wheel(dir: &Path) -> std::path::PathBuf {
    let library = localml_worker::runtime::cached_library()
        .expect("ONNX Runtime installed here (localml runtime install)");
    let wheel = dir.join(format!(
        "onnxruntime-{}-cp311-cp311-manylinux_2_27_x86_64.whl",
        localml_worker::runtime::ORT_VERSION
    ));
    let script = r#"
import os, sys, zipfile
lib_dir, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("onnxruntime/__init__.py", "")
    for name in sorted(os.listdir(lib_dir)):
        if name.startswith("libonnxruntime"):
            z.write(os.path.join(lib_dir, name), "onnxruntime/capi/" + name)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(library.parent().expect("library dir"))
        .arg(&wheel)
        .status()
        .expect("python3");
    assert!(status.success(), "make the wheel");
    wheel
}

/// A worker PC without ONNX Runtime and without a package registry gets the library from
/// the scheduler's catalog (`localml runtime push --from WHEEL`), checked by sha256, and
/// serves; with no build in the catalog it stops with a one-line reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_onnx_runtime_fetches_it_from_the_scheduler() {
    let scheduler = Scheduler::start();
    let scratch = TempDir::new("runtime-push");
    let empty_cache = TempDir::new("runtime-empty-cache");
    // No library in localml's cache, none on the system path, and no registry.
    let offline = offline_env(empty_cache.path());

    // Nothing in the catalog yet: a one-line error saying what to do.
    let data = TempDir::new("runtime-worker-data");
    let stderr = worker_that_stops(&scheduler, "bare", data.path(), &[], &offline);
    assert!(
        stderr.contains("none came from the scheduler")
            && stderr.contains("no ONNX Runtime build for cpu in the catalog")
            && stderr.contains("localml runtime push"),
        "{stderr}"
    );
    // It joined for its certificate only: not listed as a worker with nothing to serve.
    let listed = localml_workers(&scheduler);
    assert!(
        !listed.lines().any(|l| l.starts_with("bare")),
        "a worker that never served is listed: {listed}"
    );

    // Bad wheels are refused naming the problem.
    let not_zip = scratch.path().join("onnxruntime-1.32.0-py3-none-any.whl");
    std::fs::write(&not_zip, b"not a zip").expect("write");
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "runtime",
            "push",
            "--from",
            not_zip.to_str().expect("utf-8"),
        ],
    );
    assert!(!ok && err.contains("not a wheel (zip) file"), "{err}");
    let other = scratch.path().join("numpy-2.0.0-cp311-none-any.whl");
    std::fs::write(&other, b"").expect("write");
    let (ok, _, err) = cli(
        &scheduler,
        &["runtime", "push", "--from", other.to_str().expect("utf-8")],
    );
    assert!(!ok && err.contains("expected an onnxruntime"), "{err}");

    let wheel = onnxruntime_wheel(scratch.path());
    let wheel_arg = wheel.to_str().expect("utf-8");
    let out = cli_ok(&scheduler, &["runtime", "push", "--from", wheel_arg]);
    let version = localml_worker::runtime::ORT_VERSION;
    assert!(
        out.contains(&format!("ONNX Runtime {version} (cpu) in the catalog")),
        "{out}"
    );
    // Again: nothing sent.
    let again = cli_ok(&scheduler, &["runtime", "push", "--from", wheel_arg]);
    assert!(again.contains(", 0 B sent"), "{again}");
    let listed = cli_ok(&scheduler, &["runtime", "list"]);
    assert!(listed.starts_with(&format!("cpu {version} ")), "{listed}");
    // Deleting a model collects unused files; the runtime's stay.
    let image = models_dir().join("image_classifier");
    cli_ok(
        &scheduler,
        &["models", "push", image.to_str().expect("utf-8")],
    );
    let deleted = cli_ok(&scheduler, &["models", "delete", "image_classifier"]);
    assert!(
        deleted.contains("deleted image_classifier:1; removed 1 unused file(s)"),
        "{deleted}"
    );

    // The worker fetches it, checks it and serves.
    let worker = Worker::start_with_env(
        "bare",
        &scheduler.cluster_addr,
        &models_dir(),
        &[
            "--data-dir",
            data.path().to_str().expect("utf-8"),
            "--onnxruntime",
            "auto",
        ],
        &offline,
    );
    // Ready with the model loaded: it fetched the runtime first (its earlier join, from
    // the run that stopped, may still count as Ready).
    let serving = wait_until(SOON, || async {
        scheduler.serving("image_classifier").await == ["bare"]
    })
    .await;
    assert!(serving, "{:?}", scheduler.serving("image_classifier").await);
    let fetched = data.path().join(format!(
        "runtime/onnxruntime/{version}/libonnxruntime.so.{version}"
    ));
    let original = localml_worker::runtime::cached_library().expect("installed");
    assert_eq!(sha256(&fetched), sha256(&original), "{}", fetched.display());
    assert_answers_image_classifier(
        &mut scheduler.inference().await,
        "served by the worker that fetched its runtime",
    )
    .await;
    drop(worker);

    // `localml runtime install --from WHEEL` on a PC of its own, offline.
    let cache = TempDir::new("runtime-install-from");
    let run = |args: &[&str]| {
        Command::new(bin("localml"))
            .args(args)
            .env("LOCALML_CACHE_DIR", cache.path())
            .env("ORT_DYLIB_PATH", "")
            .output()
            .expect("run localml")
    };
    let out = run(&["runtime", "install", "--from", wheel_arg]);
    let installed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && installed.ends_with(&format!("libonnxruntime.so.{version}")),
        "{installed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(Path::new(&installed)), sha256(&original));
    let which = run(&["runtime", "which"]);
    let which = String::from_utf8_lossy(&which.stdout);
    assert!(
        which.contains(&installed) && which.contains("Cache"),
        "{which}"
    );
}

/// The GPU build and NVIDIA's CUDA runtime wheel, as `scripts/deps.sh --test` downloads
/// them (a PC with internet would bring them on a USB stick).
fn gpu_wheels() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = repo_root().join("target/tools/wheels");
    let runtime = dir.join("onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl");
    let cuda = dir.join(
        "nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    );
    for wheel in [&runtime, &cuda] {
        assert!(
            wheel.is_file(),
            "{} missing: run scripts/deps.sh --test",
            wheel.display()
        );
    }
    (runtime, cuda)
}

/// The sha256 of file `member` inside zip file `zip`.
fn sha256_in_zip(zip: &Path, member: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib, sys, zipfile; print(hashlib.sha256(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2])).hexdigest())",
        ])
        .arg(zip)
        .arg(member)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The GPU build travels with NVIDIA's CUDA libraries (here the CUDA runtime, from its
/// wheel): pushed from the wheels, fetched by a worker that has none, checked, and loaded
/// into the worker before ONNX Runtime. No GPU here: the CUDA provider cannot start (no
/// cuBLAS, no driver) and the models run on the CPU, with onnxruntime's outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_build_carries_its_cuda_libraries_to_a_worker() {
    let scheduler = Scheduler::start();
    let (runtime_wheel, cuda_wheel) = gpu_wheels();
    let scratch = TempDir::new("gpu-runtime-push");
    let empty_cache = TempDir::new("gpu-runtime-empty-cache");
    let offline = offline_env(empty_cache.path());
    let arg = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (runtime_arg, cuda_arg) = (arg(&runtime_wheel), arg(&cuda_wheel));

    // CUDA wheels beside the CPU build, or two ONNX Runtime wheels: refused, naming why.
    let cpu_wheel = onnxruntime_wheel(scratch.path());
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "runtime",
            "push",
            "--from",
            &arg(&cpu_wheel),
            "--from",
            &cuda_arg,
        ],
    );
    assert!(!ok && err.contains("go with the GPU build"), "{err}");
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "runtime",
            "push",
            "--from",
            &arg(&cpu_wheel),
            "--from",
            &runtime_arg,
        ],
    );
    assert!(
        !ok && err.contains("more than one ONNX Runtime wheel"),
        "{err}"
    );

    // A GPU build without its CUDA libraries, for a PC without CUDA: the worker says so.
    let out = cli_ok(&scheduler, &["runtime", "push", "--from", &runtime_arg]);
    assert!(
        out.contains("ONNX Runtime 1.31.1 (gpu) in the catalog: 4 file(s)"),
        "{out}"
    );
    let refused_data = TempDir::new("gpu-runtime-refused");
    let stderr = worker_that_stops(
        &scheduler,
        "no-cuda",
        refused_data.path(),
        &["--runtime-flavor", "gpu"],
        &offline,
    );
    assert!(
        stderr.contains("carries no CUDA libraries")
            && stderr.contains("localml runtime push --gpu"),
        "{stderr}"
    );

    // With the CUDA runtime's wheel, from a directory as pip downloads them (other
    // wheels passed over): only the CUDA library is sent.
    let wheels = scratch.path().join("usb-stick");
    std::fs::create_dir_all(&wheels).expect("dir");
    for wheel in [&runtime_wheel, &cuda_wheel] {
        std::os::unix::fs::symlink(wheel, wheels.join(wheel.file_name().expect("name")))
            .expect("link");
    }
    std::fs::write(
        wheels.join("numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"),
        b"",
    )
    .expect("write");
    let out = cli_ok(&scheduler, &["runtime", "push", "--from", &arg(&wheels)]);
    let cudart_bytes = 806_720;
    assert!(
        out.contains("ONNX Runtime 1.31.1 (gpu) in the catalog: 5 file(s)")
            && out.contains(&format!(
                "{} sent",
                localml_proto::units::human_bytes(cudart_bytes)
            )),
        "{out}"
    );
    let listed = cli_ok(&scheduler, &["runtime", "list"]);
    assert!(listed.contains("gpu 1.31.1 5 file(s)"), "{listed}");

    let data = TempDir::new("gpu-runtime-worker");
    let worker = Worker::start_with_env(
        "gpu-build",
        &scheduler.cluster_addr,
        &models_dir(),
        &[
            "--data-dir",
            data.path().to_str().expect("utf-8"),
            "--onnxruntime",
            "auto",
            "--runtime-flavor",
            "gpu",
        ],
        &offline,
    );
    let serving = wait_until(Duration::from_secs(120), || async {
        scheduler.serving("image_classifier").await == ["gpu-build"]
    })
    .await;
    assert!(serving, "{:?}", scheduler.serving("image_classifier").await);
    let dir = data.path().join("runtime/onnxruntime-gpu/1.31.1");
    let cudart = dir.join("libcudart.so.13");
    assert_eq!(
        sha256(&cudart),
        sha256_in_zip(&cuda_wheel, "nvidia/cu13/lib/libcudart.so.13"),
        "the CUDA runtime as in NVIDIA's wheel"
    );
    assert_eq!(
        sha256(&dir.join("libonnxruntime.so.1.31.1")),
        sha256_in_zip(&runtime_wheel, "onnxruntime/capi/libonnxruntime.so.1.31.1")
    );
    // Loaded into the worker from there, before ONNX Runtime.
    let maps =
        std::fs::read_to_string(format!("/proc/{}/maps", worker.process.pid())).expect("maps");
    for library in ["libcudart.so.13", "libonnxruntime.so.1.31.1"] {
        let path = dir.join(library);
        assert!(
            maps.contains(path.to_str().expect("utf-8")),
            "{} not loaded by the worker",
            path.display()
        );
    }
    let status = scheduler
        .workers()
        .await
        .into_iter()
        .filter_map(|w| w.status)
        .find(|s| s.name == "gpu-build")
        .expect("listed");
    assert!(
        status
            .execution_providers
            .iter()
            .any(|p| p == "CUDAExecutionProvider"),
        "the CUDA build: {:?}",
        status.execution_providers
    );
    assert_answers_image_classifier(
        &mut scheduler.inference().await,
        "served by the GPU build, on the CPU",
    )
    .await;
}

/// `--fetch-rate`: a worker on a slow link fetches a model no faster than it allows (a
/// 128,940-byte model at 20,000 bytes per second takes at least 6.4 s; unlimited, the
/// deployment served in about 3.5 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_worker_fetches_no_faster_than_its_limit() {
    let scheduler = Scheduler::start_with(QUICK);
    let empty = TempDir::new("catalog-rate-repository");
    let data = TempDir::new("catalog-rate-data");
    let _worker = on_demand(
        "slow-link",
        &scheduler,
        empty.path(),
        &data,
        &["--fetch-rate", "20000"],
    );
    scheduler.wait_ready(&["slow-link"]).await;
    let file = models_dir().join("text_classifier/2/model.onnx");
    push_named(&scheduler, &file, "slow");
    let started = std::time::Instant::now();
    scheduler
        .admin()
        .await
        .apply_deployment(Deployment {
            name: "slow".into(),
            model: "slow".into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .expect("deployment");
    // The bytes arrive spread out: the first ones on disk are a few chunks (the worker
    // asks for 5,000-byte ones), not the whole file in one burst.
    let partial = data
        .path()
        .join(format!("catalog/blobs/{}.partial", sha256(&file)));
    let mut first = 0;
    let arrived = wait_until(SOON, || {
        first = std::fs::metadata(&partial).map_or(0, |m| m.len());
        async move { first > 0 }
    })
    .await;
    assert!(arrived, "nothing arrived in {}", partial.display());
    assert!(first < 128_940 / 2, "{first} bytes arrived at once");
    let served = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("slow").await == ["slow-link"]
    })
    .await;
    let took = started.elapsed();
    assert!(served, "served by {:?}", scheduler.serving("slow").await);
    assert!(
        took >= Duration::from_millis(6_000),
        "fetched 128,940 bytes at 20,000 B/s in {took:?}"
    );
}

/// Variants: text_classifier v2 and its int8 variant (onnxruntime's dynamic quantization,
/// made by examples/make_models.py) in the catalog. A worker whose RAM holds only the
/// int8 variant's footprint gets it, one with room the version's own (fp32) files; each
/// answer names its variant (`localml.variant`) and equals onnxruntime's outputs for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_are_placed_by_memory_and_answers_name_them() {
    let scheduler = Scheduler::start_with(QUICK);
    let empty = TempDir::new("catalog-variants-repository");
    let big = Worker::start_with_models("big", &scheduler, empty.path(), &["--load", "on-demand"]);
    // 100,000 bytes: the fp32 files need about 193,000 (1.5 times 128,940), int8 50,000.
    let small = Worker::start_with_models(
        "small",
        &scheduler,
        empty.path(),
        &["--load", "on-demand", "--memory-limit", "100000"],
    );
    scheduler.wait_ready(&["big", "small"]).await;
    let root = repo_root().join("examples");
    let fp32 = models_dir().join("text_classifier/2");
    let int8 = root.join("variants/text_classifier/2/int8");
    let arg = |p: &Path| p.to_str().expect("utf-8").to_string();

    // A variant needs its version first, and the same inputs and outputs.
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "models",
            "push",
            &arg(&int8),
            "--name",
            "texts",
            "--variant",
            "int8",
        ],
    );
    assert!(
        !ok && err.contains("NotFound: no model 'texts' in the catalog"),
        "{err}"
    );
    cli_ok(
        &scheduler,
        &[
            "models",
            "push",
            &arg(&fp32),
            "--name",
            "texts",
            "--version",
            "2",
        ],
    );
    let image = models_dir().join("image_classifier/1");
    let (ok, _, err) = cli(
        &scheduler,
        &[
            "models",
            "push",
            &arg(&image),
            "--name",
            "texts",
            "--variant",
            "int8",
        ],
    );
    assert!(
        !ok && err.contains(
            "InvalidArgument: the int8 variant's inputs and outputs differ from those of texts:2"
        ),
        "{err}"
    );
    let out = cli_ok(
        &scheduler,
        &[
            "models",
            "push",
            &arg(&int8),
            "--name",
            "texts",
            "--variant",
            "int8",
        ],
    );
    assert!(
        out.contains("pushed texts version 2 (int8 variant): 1 file(s), 33504 bytes"),
        "{out}"
    );
    let again = cli_ok(
        &scheduler,
        &[
            "models",
            "push",
            &arg(&int8),
            "--name",
            "texts",
            "--variant",
            "int8",
        ],
    );
    assert!(again.contains("; sent 0 bytes"), "{again}");
    let listed = cli_ok(&scheduler, &["models", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("texts") && l.contains("fp32,int8")),
        "{listed}"
    );

    scheduler
        .admin()
        .await
        .apply_deployment(Deployment {
            name: "texts".into(),
            model: "texts".into(),
            version: "2".into(),
            replicas: 2,
            ..Default::default()
        })
        .await
        .expect("deployment");
    let both = wait_until(Duration::from_secs(60), || async {
        scheduler.serving("texts").await == ["big", "small"]
    })
    .await;
    assert!(both, "served by {:?}", scheduler.serving("texts").await);
    let table = cli_ok(&scheduler, &["models"]);
    assert!(
        table.contains("big (fp32),small (int8)"),
        "the variant each worker serves: {table}"
    );

    // Each worker's own answers: its variant, and onnxruntime's outputs for it.
    let fp32_expected = expected_examples()
        .into_iter()
        .find(|e| e.model == "text_classifier" && e.version == "2")
        .expect("v2 outputs");
    let int8_expected = expected_file(&root.join("variants/text_classifier.v2.int8.json"));
    for (worker, variant, expected) in [
        (&big, "fp32", &fp32_expected),
        (&small, "int8", &int8_expected),
    ] {
        let response = worker
            .inference()
            .await
            .model_infer(localml_cli::client::request("texts", "2", &expected.inputs))
            .await
            .expect("inference")
            .into_inner();
        let said = match response
            .parameters
            .get("localml.variant")
            .and_then(|p| p.parameter_choice.clone())
        {
            Some(localml_proto::inference::infer_parameter::ParameterChoice::StringParam(s)) => s,
            other => panic!("{}: localml.variant {other:?}", worker.name),
        };
        assert_eq!(said, variant, "{}", worker.name);
        let outputs = localml_cli::client::outputs(&response).expect("outputs");
        assert_tensors_match(
            &format!("{variant} on {}", worker.name),
            &expected.outputs,
            &outputs,
        );
    }
}
