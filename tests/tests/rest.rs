//! The Open Inference Protocol over HTTP/REST (#15), against a real scheduler and worker:
//! Triton's unmodified `tritonclient.http` with JSON and binary tensors, keys and scopes,
//! the protocol's error bodies and statuses for HTTP-level mistakes, CORS, and TLS with
//! the cluster CA (checked with curl).

use std::process::Command;

use localml_tests::*;

/// The REST address (host:port) of a scheduler started with `--rest-listen`.
fn rest_addr(scheduler: &Scheduler) -> String {
    let url = scheduler
        .rest_url
        .clone()
        .expect("the scheduler printed its REST URL");
    url.split_once("://").expect("a URL").1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_runs_every_example_with_json_and_binary_data() {
    if !tritonclient_available() {
        return;
    }
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let addr = rest_addr(&scheduler);
    let key = scheduler.admin_key();
    let stdout = run_python_check("tritonclient_http_check.py", &addr, Some(&key), None).await;
    assert!(
        stdout.contains("6 examples OK (JSON and binary)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mistakes_get_the_protocols_json_errors_and_the_server_serves_on() {
    let scheduler = Scheduler::start_full(
        &format!(
            "{TEST_SCHEDULER_CONFIG}max_message_bytes: 100000\nrest_cors_origins: [\"http://kiosk.lan:3000\"]\n"
        ),
        &["--rest-listen", "127.0.0.1:0"],
    );
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let addr = rest_addr(&scheduler);
    let admin = format!("Bearer {}", scheduler.admin_key());
    let infer_key = localml(&[
        "keys",
        "create",
        "--server",
        &scheduler.addr,
        "--name",
        "phone-app",
        "--scope",
        "infer",
        "--models",
        "image_classifier",
    ])
    .trim()
    .to_string();
    assert!(infer_key.starts_with("lmk_"), "{infer_key}");
    let app = format!("Bearer {infer_key}");
    let infer_path = "/v2/models/image_classifier/infer";
    let image_json = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1, 3, 32, 32], "datatype": "FP32",
                    "data": vec![0.5f32; 3 * 32 * 32]}]
    })
    .to_string();
    let post = |auth: &str, path: &str, extra: &[(&str, &str)], body: &[u8]| {
        let mut headers = vec![("authorization", auth)];
        headers.extend_from_slice(extra);
        tokio::task::block_in_place(|| http(&addr, "POST", path, &headers, body))
    };
    let ok = post(&app, infer_path, &[], image_json.as_bytes());
    assert_eq!(ok.status, 200, "{:?}", String::from_utf8_lossy(&ok.body));
    let probabilities = ok.json()["outputs"][0]["data"].as_array().map(Vec::len);
    assert_eq!(probabilities, Some(10));

    // Keys: none, unknown, in the URL, lacking the model, lacking the scope.
    let cases: Vec<(&str, HttpAnswer, u16, &str)> = vec![
        (
            "no key",
            tokio::task::block_in_place(|| {
                http(&addr, "POST", infer_path, &[], image_json.as_bytes())
            }),
            401,
            "no API key",
        ),
        (
            "repository load with files and no key: the key is checked first",
            tokio::task::block_in_place(|| {
                http(
                    &addr,
                    "POST",
                    "/v2/repository/models/x/load",
                    &[],
                    br#"{"parameters": {"file:1/model.onnx": "AAAA"}}"#,
                )
            }),
            401,
            "no API key",
        ),
        (
            "unknown key",
            post(
                &format!("Bearer lmk_0123456789abcdef.{}", "ab".repeat(32)),
                infer_path,
                &[],
                image_json.as_bytes(),
            ),
            401,
            "unknown API key",
        ),
        (
            "key in the query string",
            post(
                &app,
                &format!("{infer_path}?api_key={infer_key}"),
                &[],
                image_json.as_bytes(),
            ),
            400,
            "send it in the Authorization header",
        ),
        (
            "model the key may not use",
            post(
                &app,
                "/v2/models/text_classifier/infer",
                &[],
                br#"{"inputs":[]}"#,
            ),
            403,
            "text_classifier",
        ),
        (
            "scope the key lacks",
            post(&app, "/v2/repository/index", &[], b"{}"),
            403,
            "'admin' scope",
        ),
        // The protocol's mistakes.
        (
            "malformed JSON",
            post(&app, infer_path, &[], b"{\"inputs\": [ {"),
            400,
            "invalid inference request JSON",
        ),
        (
            "JSON over the size limit",
            post(&app, infer_path, &[], &vec![b' '; 200_000]),
            413,
            "over the limit of 100000 bytes",
        ),
        (
            "binary section shorter than its header says",
            {
                let header = br#"{"inputs":[{"name":"image","shape":[1,3,32,32],"datatype":"FP32","parameters":{"binary_data_size":12288}}]}"#;
                let mut body = header.to_vec();
                body.extend_from_slice(&[0u8; 100]);
                let length = header.len().to_string();
                post(
                    &app,
                    infer_path,
                    &[("inference-header-content-length", &length)],
                    &body,
                )
            },
            400,
            "binary_data_size 12288 is past the end of the body: 100 bytes",
        ),
        (
            "header length past the body",
            post(
                &app,
                infer_path,
                &[("inference-header-content-length", "999999")],
                image_json.as_bytes(),
            ),
            400,
            "Inference-Header-Content-Length 999999 is past the end of the body",
        ),
        (
            "unknown route",
            tokio::task::block_in_place(|| {
                http(&addr, "GET", "/v3/nothing", &[("authorization", &app)], b"")
            }),
            404,
            "no route GET /v3/nothing",
        ),
        (
            "wrong method",
            tokio::task::block_in_place(|| {
                http(&addr, "GET", infer_path, &[("authorization", &app)], b"")
            }),
            405,
            "GET is not allowed",
        ),
        (
            "unknown model",
            tokio::task::block_in_place(|| {
                http(
                    &addr,
                    "GET",
                    "/v2/models/no_such_model",
                    &[("authorization", &admin)],
                    b"",
                )
            }),
            404,
            "unknown model 'no_such_model'",
        ),
        (
            "compressed body",
            post(
                &app,
                infer_path,
                &[("content-encoding", "gzip")],
                image_json.as_bytes(),
            ),
            415,
            "Content-Encoding 'gzip' is not supported",
        ),
        (
            "key in the query string, percent-encoded",
            post(
                &app,
                &format!("{infer_path}?x={}", infer_key.replacen('_', "%5F", 1)),
                &[],
                image_json.as_bytes(),
            ),
            400,
            "Authorization header",
        ),
        (
            "repository path that is not UTF-8",
            post(&admin, "/v2/repository/models/%FF/load", &[], b"{}"),
            400,
            "invalid path",
        ),
        (
            "repository load of a model the cluster does not have",
            post(&admin, "/v2/repository/models/nope/load", &[], b"{}"),
            404,
            "no model 'nope' in the catalog or in any worker's repository",
        ),
        (
            "repository load with a file that is not an ONNX model",
            post(
                &admin,
                "/v2/repository/models/nope/load",
                &[],
                br#"{"parameters": {"file:1/model.onnx": "AAAA"}}"#,
            ),
            400,
            "not an ONNX model",
        ),
        (
            "repository load with a file that is not base64",
            post(
                &admin,
                "/v2/repository/models/nope/load",
                &[],
                br#"{"parameters": {"file:1/model.onnx": "not base64!"}}"#,
            ),
            400,
            "parameter 'file:1/model.onnx' is not base64",
        ),
        (
            "repository load with a parameter of no protocol type",
            post(
                &admin,
                "/v2/repository/models/nope/load",
                &[],
                br#"{"parameters": {"config": [1]}}"#,
            ),
            400,
            "give a string, a boolean or an integer",
        ),
    ];
    let mut failures = Vec::new();
    for (name, answer, status, fragment) in &cases {
        if answer.status != *status {
            failures.push(format!(
                "{name}: expected {status}, got {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
            continue;
        }
        let message = answer.error();
        if !message.contains(fragment) {
            failures.push(format!("{name}: '{message}' lacks '{fragment}'"));
        }
        if message.contains(&infer_key) || message.contains(scheduler.admin_key().as_str()) {
            failures.push(format!("{name}: the answer holds a key: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // CORS: a listed origin is allowed (preflight and answer), another is not.
    let preflight = |origin: &str| {
        tokio::task::block_in_place(|| {
            http(
                &addr,
                "OPTIONS",
                infer_path,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization,content-type",
                    ),
                ],
                b"",
            )
        })
    };
    let allowed = preflight("http://kiosk.lan:3000");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("http://kiosk.lan:3000"),
        "{allowed:?}"
    );
    assert!(allowed
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("authorization")));
    let other = preflight("http://elsewhere.lan");
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
    let answered = post(
        &app,
        infer_path,
        &[("origin", "http://kiosk.lan:3000")],
        image_json.as_bytes(),
    );
    assert_eq!(answered.status, 200);
    assert_eq!(
        answered.header("access-control-allow-origin"),
        Some("http://kiosk.lan:3000")
    );

    // Health is public; the server still serves.
    let ready = tokio::task::block_in_place(|| http(&addr, "GET", "/v2/health/ready", &[], b""));
    assert_eq!(
        (ready.status, ready.json()),
        (200, serde_json::json!({"ready": true}))
    );
    let again = post(&app, infer_path, &[], image_json.as_bytes());
    assert_eq!(again.status, 200, "serves after every mistake");
}

/// A REST listener with TLS serves HTTPS with the cluster CA's certificate, which curl
/// verifies with `--cacert`; plain HTTP on it gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_over_tls_is_verified_with_the_cluster_ca() {
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--rest-listen", "127.0.0.1:0", "--client-tls", "required"],
    );
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let url = scheduler.rest_url.clone().expect("REST URL");
    assert!(url.starts_with("https://"), "{url}");
    let ca = scheduler.data_dir().join("ca.pem");
    read_ca_pem(&scheduler.data_dir());
    let bearer = format!("authorization: Bearer {}", scheduler.admin_key());
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30"])
            .args(args)
            .output()
            .expect("curl is installed (scripts/deps.sh --test)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca_arg = ca.to_string_lossy().into_owned();
    let (ok, body, err) = tokio::task::block_in_place(|| {
        curl(&[
            "--cacert",
            &ca_arg,
            "-H",
            &bearer,
            &format!("{url}/v2/models/image_classifier"),
        ])
    });
    assert!(ok, "{err}");
    assert!(body.contains("\"name\":\"image_classifier\""), "{body}");
    let (ok, _, err) = tokio::task::block_in_place(|| curl(&[&format!("{url}/v2/health/ready")]));
    assert!(!ok, "curl without the CA must not trust the certificate");
    assert!(err.contains("certificate"), "{err}");
    let plain = url.replacen("https://", "http://", 1);
    let (ok, body, _) =
        tokio::task::block_in_place(|| curl(&[&format!("{plain}/v2/health/ready")]));
    assert!(
        !ok || !body.contains("ready"),
        "plain HTTP answered: {body}"
    );
}

/// An open loopback listener (`localml up`: no keys) answers this PC's programs only: a
/// request addressed to another host name (DNS rebinding) or sent by a web page of
/// another origin is refused; localhost and the listed origins pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loopback_listener_refuses_web_pages_and_rebound_names() {
    let scheduler = Scheduler::start_full(
        &format!("{TEST_SCHEDULER_CONFIG}rest_cors_origins: [\"http://kiosk.lan:3000\"]\n"),
        &["--auth", "auto", "--rest-listen", "127.0.0.1:0"],
    );
    let addr = rest_addr(&scheduler);
    let get = |headers: &[(&str, &str)]| {
        tokio::task::block_in_place(|| http(&addr, "GET", "/v2", headers, b""))
    };
    let local = get(&[]);
    assert_eq!(local.status, 200, "{local:?}");
    let port = addr.rsplit(':').next().expect("port");
    let named = get(&[("host", &format!("localhost:{port}"))]);
    assert_eq!(named.status, 200, "{named:?}");
    let rebound = get(&[("host", "evil.example:8000")]);
    assert_eq!(rebound.status, 403, "{rebound:?}");
    assert!(rebound.error().contains("DNS rebinding"));
    let web_page = get(&[("origin", "http://evil.example")]);
    assert_eq!(web_page.status, 403, "{web_page:?}");
    assert!(web_page.error().contains("rest_cors_origins"));
    let listed = get(&[("origin", "http://kiosk.lan:3000")]);
    assert_eq!(listed.status, 200, "{listed:?}");
    let own = get(&[("origin", &format!("http://127.0.0.1:{port}"))]);
    assert_eq!(own.status, 200, "{own:?}");
}

fn lan_address() -> std::net::IpAddr {
    if_addrs::get_if_addrs()
        .expect("list this PC's addresses")
        .into_iter()
        .find(|i| !i.is_loopback() && !i.is_link_local() && i.ip().is_ipv4())
        .map(|i| i.ip())
        .expect("this PC has no IPv4 address but loopback")
}

/// On an address reachable from the LAN the REST listener serves HTTPS with a key
/// required, by default; without TLS and without --insecure the scheduler does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_listener_on_the_lan_requires_tls_and_keys_unless_insecure() {
    let lan = lan_address();
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--auth", "auto", "--rest-listen", &format!("{lan}:0")],
    );
    let url = scheduler.rest_url.clone().expect("REST URL");
    assert!(url.starts_with(&format!("https://{lan}:")), "{url}");
    read_ca_pem(&scheduler.data_dir());
    let ca = scheduler
        .data_dir()
        .join("ca.pem")
        .to_string_lossy()
        .into_owned();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["--silent", "--max-time", "30", "--cacert", &ca])
            .args(["--write-out", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl is installed (scripts/deps.sh --test)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The certificate covers the REST address: curl verifies it with the cluster CA.
    let no_key =
        tokio::task::block_in_place(|| curl(&[&format!("{url}/v2/models/image_classifier")]));
    assert!(
        no_key.ends_with("401"),
        "keys required on the LAN: {no_key}"
    );
    let bearer = format!("authorization: Bearer {}", scheduler.admin_key());
    let with_key = tokio::task::block_in_place(|| curl(&["-H", &bearer, &format!("{url}/v2")]));
    assert!(
        with_key.ends_with("200") && with_key.contains("binary_tensor_data"),
        "{with_key}"
    );

    let dir = TempDir::new("rest-tls-off");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(bin("localml-scheduler"))
            .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
            .args([
                "--rest-listen",
                &format!("{lan}:0"),
                "--client-tls",
                "off",
                "--data-dir",
            ])
            .arg(dir.path())
            .output(),
    )
    .await
    .expect("the scheduler refuses at once")
    .expect("run the scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a clear-text LAN REST listener"
    );
    assert!(
        stderr.contains("the REST listener") && stderr.contains("--insecure"),
        "{stderr}"
    );
}
