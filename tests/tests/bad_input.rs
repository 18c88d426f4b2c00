//! Malformed requests against a real scheduler and worker (#11): every field and
//! constraint of the Open Inference Protocol request and localml's parameters, typed and
//! raw contents, BYTES framing, shapes, batch limits, names. Each gets its exact status
//! code and a message that names the problem, and the cluster still serves afterwards.

use localml_cli::client::{self, Tensor};
use localml_proto::inference::infer_parameter::ParameterChoice;
use localml_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use localml_proto::inference::*;
use localml_proto::tensor::TensorData;
use localml_tests::*;
use tonic::Code;

/// One image for image_classifier (FP32 [1, 3, 32, 32], raw contents).
fn image() -> ModelInferRequest {
    image_request(1)
}

/// `request` with the parameter `key` set to `value`.
fn param(mut request: ModelInferRequest, key: &str, value: ParameterChoice) -> ModelInferRequest {
    request.parameters.insert(
        key.into(),
        InferParameter {
            parameter_choice: Some(value),
        },
    );
    request
}

fn text(value: &str) -> ParameterChoice {
    ParameterChoice::StringParam(value.into())
}

/// `request` with its first input changed by `change`.
fn input(
    mut request: ModelInferRequest,
    change: impl FnOnce(&mut InferInputTensor),
) -> ModelInferRequest {
    change(&mut request.inputs[0]);
    request
}

/// `request` with its first raw content replaced by `bytes`.
fn raw(mut request: ModelInferRequest, bytes: Vec<u8>) -> ModelInferRequest {
    request.raw_input_contents[0] = bytes.into();
    request
}

/// image_classifier's input sent as typed contents instead of raw.
fn typed_image(
    contents: InferTensorContents,
    shape: Vec<i64>,
    datatype: &str,
) -> ModelInferRequest {
    let mut request = image();
    request.raw_input_contents.clear();
    request.inputs[0].contents = Some(contents);
    request.inputs[0].shape = shape;
    request.inputs[0].datatype = datatype.into();
    request
}

/// The datatypes identity model with every input but `name` random, and `name` as given.
fn datatypes_with(
    name: &str,
    datatype: &str,
    raw_bytes: Option<Vec<u8>>,
    contents: Option<InferTensorContents>,
) -> ModelInferRequest {
    use localml_proto::tensor::DataType;
    let inputs: Vec<Tensor> = DataType::ALL
        .iter()
        .map(|dt| {
            let suffix = match dt.as_str() {
                "BYTES" => "string".to_string(),
                other => other.to_ascii_lowercase(),
            };
            client::random_tensor(&format!("in_{suffix}"), *dt, &[1, 4])
        })
        .collect();
    let mut request = client::request("datatypes", "", &inputs);
    let i = request
        .inputs
        .iter()
        .position(|t| t.name == name)
        .unwrap_or_else(|| panic!("datatypes has no input {name}"));
    request.inputs[i].datatype = datatype.into();
    match (raw_bytes, contents) {
        (Some(bytes), _) => request.raw_input_contents[i] = bytes.into(),
        (None, Some(contents)) => {
            // Typed contents for every input (raw for some and typed for others is refused
            // on its own); FP16 has no typed field, so its input fails when validation
            // reaches it: the cases use inputs validated before it.
            let all = client::request("datatypes", "", &inputs);
            request = all;
            request.raw_input_contents.clear();
            for (k, t) in inputs.iter().enumerate() {
                request.inputs[k].contents = t.data.to_contents();
            }
            request.inputs[i].datatype = datatype.into();
            request.inputs[i].contents = Some(contents);
        }
        (None, None) => {}
    }
    request
}

/// BYTES raw framing: each element a 4-byte little-endian length, then the bytes.
fn framed(elements: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

fn text_classifier(ids: Vec<i64>, shape: Vec<i64>) -> ModelInferRequest {
    client::request(
        "text_classifier",
        "1",
        &[Tensor {
            name: "token_ids".into(),
            shape,
            data: TensorData::Int64(ids),
        }],
    )
}

fn output(mut request: ModelInferRequest, name: &str) -> ModelInferRequest {
    request.outputs.push(InferRequestedOutputTensor {
        name: name.into(),
        ..Default::default()
    });
    request
}

/// One malformed request: its name, the request, the gRPC code and fragments of the
/// message it must get.
type Case = (&'static str, ModelInferRequest, Code, Vec<&'static str>);

/// The malformed requests, for a scheduler with `max_message_bytes: 200000`.
fn cases() -> Vec<Case> {
    let image_bytes = 3 * 32 * 32 * 4;
    let mut duplicate = image();
    duplicate.inputs.push(duplicate.inputs[0].clone());
    duplicate
        .raw_input_contents
        .push(duplicate.raw_input_contents[0].clone());
    let mut extra_input = image();
    extra_input.inputs.push(InferInputTensor {
        name: "bogus".into(),
        datatype: "FP32".into(),
        shape: vec![1],
        ..Default::default()
    });
    extra_input.raw_input_contents.push(vec![0u8; 4].into());
    let mut no_inputs = image();
    no_inputs.inputs.clear();
    no_inputs.raw_input_contents.clear();
    let mut extra_raw = image();
    extra_raw.raw_input_contents.push(vec![0u8; 4].into());
    let mut no_data = image();
    no_data.raw_input_contents.clear();
    let mut many_parameters = image();
    for i in 0..1000 {
        many_parameters.parameters.insert(
            format!("client.{i}"),
            InferParameter {
                parameter_choice: Some(text("x")),
            },
        );
    }
    let mut empty_name = image();
    empty_name.model_name.clear();
    let mut long_name = image();
    long_name.model_name = "m".repeat(10_000);
    let with_version = |v: &str| {
        let mut r = image();
        r.model_version = v.into();
        r
    };
    let fp32 = |n: usize| InferTensorContents {
        fp32_contents: vec![0.5; n],
        ..Default::default()
    };

    use Code::*;
    vec![
        // Names and versions.
        (
            "empty model name",
            empty_name,
            NotFound,
            vec!["unknown model ''"],
        ),
        (
            "unknown model",
            {
                let mut r = image();
                r.model_name = "no_such_model".into();
                r
            },
            NotFound,
            vec!["unknown model 'no_such_model'"],
        ),
        (
            "10,000-character model name",
            long_name,
            NotFound,
            vec!["unknown model"],
        ),
        (
            "unknown version",
            with_version("7"),
            NotFound,
            vec!["no version '7'", "available: 1"],
        ),
        (
            "version that is not a number",
            with_version("latest"),
            NotFound,
            vec!["no version 'latest'"],
        ),
        (
            "negative version",
            with_version("-1"),
            NotFound,
            vec!["no version '-1'"],
        ),
        // localml's parameters.
        (
            "priority not a number",
            param(image(), "localml.priority", text("high")),
            InvalidArgument,
            vec!["localml.priority", "'high'", "integer"],
        ),
        (
            "priority a boolean",
            param(
                image(),
                "localml.priority",
                ParameterChoice::BoolParam(true),
            ),
            InvalidArgument,
            vec!["localml.priority", "integer"],
        ),
        (
            "priority a double",
            param(
                image(),
                "localml.priority",
                ParameterChoice::DoubleParam(1.5),
            ),
            InvalidArgument,
            vec!["localml.priority", "integer"],
        ),
        (
            "profile unknown",
            param(image(), "localml.profile", text("nope")),
            InvalidArgument,
            vec!["unknown profile 'nope'"],
        ),
        (
            "profile not a string",
            param(image(), "localml.profile", ParameterChoice::Int64Param(3)),
            InvalidArgument,
            vec!["localml.profile", "must be a string"],
        ),
        (
            "provider unknown",
            param(image(), "localml.provider", text("tpu")),
            InvalidArgument,
            vec!["'tpu'", "gpu, cpu or any"],
        ),
        (
            "provider not a string",
            param(
                image(),
                "localml.provider",
                ParameterChoice::BoolParam(false),
            ),
            InvalidArgument,
            vec!["localml.provider", "must be a string"],
        ),
        (
            "selector without '='",
            param(image(), "localml.selector", text("novalue")),
            InvalidArgument,
            vec!["'novalue'", "key=value"],
        ),
        (
            "selector matching no worker",
            param(image(), "localml.selector", text("site=mars")),
            FailedPrecondition,
            vec!["image_classifier"],
        ),
        (
            "power unknown",
            param(image(), "localml.power", text("solar")),
            InvalidArgument,
            vec!["'solar'", "prefer_mains"],
        ),
        (
            "min_battery over 100",
            param(image(), "localml.min_battery", text("150")),
            InvalidArgument,
            vec!["'150'", "0 to 100"],
        ),
        (
            "min_battery negative",
            param(
                image(),
                "localml.min_battery",
                ParameterChoice::DoubleParam(-5.0),
            ),
            InvalidArgument,
            vec!["localml.min_battery", "0 to 100"],
        ),
        (
            "min_battery not a number",
            param(image(), "localml.min_battery", text("full")),
            InvalidArgument,
            vec!["'full'", "0 to 100"],
        ),
        (
            "tenant not a string",
            param(image(), "localml.tenant", ParameterChoice::Int64Param(7)),
            InvalidArgument,
            vec!["localml.tenant", "must be a string"],
        ),
        (
            "a thousand unknown parameters are ignored",
            many_parameters,
            Ok,
            vec![],
        ),
        // Inputs.
        (
            "no inputs",
            no_inputs,
            InvalidArgument,
            vec!["needs input(s) image"],
        ),
        (
            "duplicate input",
            duplicate,
            InvalidArgument,
            vec!["'image' appears more than once"],
        ),
        (
            "unexpected input",
            extra_input,
            InvalidArgument,
            vec!["unexpected input 'bogus'", "has inputs: image"],
        ),
        (
            "unknown datatype",
            input(image(), |i| i.datatype = "FLOAT".into()),
            InvalidArgument,
            vec!["unknown datatype 'FLOAT'"],
        ),
        (
            "lowercase datatype",
            input(image(), |i| i.datatype = "fp32".into()),
            InvalidArgument,
            vec!["unknown datatype 'fp32'"],
        ),
        (
            "empty datatype",
            input(image(), |i| i.datatype.clear()),
            InvalidArgument,
            vec!["unknown datatype ''"],
        ),
        (
            "wrong datatype",
            raw(
                input(image(), |i| i.datatype = "INT64".into()),
                vec![0u8; image_bytes * 2],
            ),
            InvalidArgument,
            vec!["expected datatype FP32, got INT64"],
        ),
        (
            "rank 3",
            input(image(), |i| i.shape = vec![3, 32, 32]),
            InvalidArgument,
            vec!["expected rank 4", "got rank 3"],
        ),
        (
            "rank 0",
            input(image(), |i| i.shape = vec![]),
            InvalidArgument,
            vec!["expected rank 4", "got rank 0"],
        ),
        (
            "rank 5",
            input(image(), |i| i.shape = vec![1, 1, 3, 32, 32]),
            InvalidArgument,
            vec!["expected rank 4", "got rank 5"],
        ),
        (
            "wrong dimension",
            input(image(), |i| i.shape = vec![1, 3, 32, 31]),
            InvalidArgument,
            vec!["dimension 3 is 31", "expects 32"],
        ),
        (
            "negative dimension",
            input(image(), |i| i.shape = vec![1, 3, -32, 32]),
            InvalidArgument,
            vec!["'image'", "-32"],
        ),
        (
            "negative batch",
            input(image(), |i| i.shape = vec![-1, 3, 32, 32]),
            InvalidArgument,
            vec!["'image'", "-1"],
        ),
        (
            "batch over max_batch_size",
            image_request(9),
            InvalidArgument,
            vec!["batch size 9", "max_batch_size 8"],
        ),
        (
            "batch near i64::MAX",
            input(image(), |i| i.shape = vec![i64::MAX, 3, 32, 32]),
            InvalidArgument,
            vec!["exceeds the model's max_batch_size 8"],
        ),
        // Contents.
        (
            "raw contents short",
            raw(image(), vec![0u8; 100]),
            InvalidArgument,
            vec!["'image'", "100 bytes", "needs 12288"],
        ),
        (
            "raw contents long",
            raw(image(), vec![0u8; image_bytes + 4]),
            InvalidArgument,
            vec!["'image'", "12292 bytes", "needs 12288"],
        ),
        (
            "raw contents empty",
            raw(image(), Vec::new()),
            InvalidArgument,
            vec!["'image'", "0 bytes", "needs 12288"],
        ),
        (
            "more raw contents than inputs",
            extra_raw,
            InvalidArgument,
            vec!["raw_input_contents has 2 entries but the request has 1 inputs"],
        ),
        (
            "no data at all",
            no_data,
            InvalidArgument,
            vec!["'image' has no data"],
        ),
        (
            "typed contents too few",
            typed_image(fp32(5), vec![1, 3, 32, 32], "FP32"),
            InvalidArgument,
            vec!["'image'", "has 5 elements", "needs 3072"],
        ),
        (
            "typed contents too many",
            typed_image(fp32(3073), vec![1, 3, 32, 32], "FP32"),
            InvalidArgument,
            vec!["'image'", "has 3073 elements", "needs 3072"],
        ),
        (
            "typed contents in the wrong field",
            typed_image(
                InferTensorContents {
                    int64_contents: vec![1; 3072],
                    ..Default::default()
                },
                vec![1, 3, 32, 32],
                "FP32",
            ),
            InvalidArgument,
            vec!["'image'", "has 0 elements"],
        ),
        (
            "typed FP16",
            datatypes_with(
                "in_fp16",
                "FP16",
                None,
                Some(InferTensorContents {
                    fp32_contents: vec![1.0; 4],
                    ..Default::default()
                }),
            ),
            InvalidArgument,
            vec!["'in_fp16'", "FP16 data must be sent in raw_input_contents"],
        ),
        (
            "typed INT8 out of range",
            datatypes_with(
                "in_int8",
                "INT8",
                None,
                Some(InferTensorContents {
                    int_contents: vec![1000, 0, 0, 0],
                    ..Default::default()
                }),
            ),
            InvalidArgument,
            vec!["'in_int8'", "value 1000 is out of range for INT8"],
        ),
        (
            "typed UINT8 out of range",
            datatypes_with(
                "in_uint8",
                "UINT8",
                None,
                Some(InferTensorContents {
                    uint_contents: vec![300, 0, 0, 0],
                    ..Default::default()
                }),
            ),
            InvalidArgument,
            vec!["'in_uint8'", "value 300 is out of range for UINT8"],
        ),
        (
            "typed BOOL count",
            datatypes_with(
                "in_bool",
                "BOOL",
                None,
                Some(InferTensorContents {
                    bool_contents: vec![true; 3],
                    ..Default::default()
                }),
            ),
            InvalidArgument,
            vec!["'in_bool'", "has 3 elements", "needs 4"],
        ),
        (
            "BYTES length past the end",
            datatypes_with(
                "in_string",
                "BYTES",
                Some({
                    let mut b = framed(&[b"a", b"b", b"c"]);
                    b.extend_from_slice(&100u32.to_le_bytes());
                    b.extend_from_slice(b"xyz");
                    b
                }),
                None,
            ),
            InvalidArgument,
            vec!["'in_string'", "malformed"],
        ),
        (
            "BYTES length prefix cut short",
            datatypes_with(
                "in_string",
                "BYTES",
                Some({
                    let mut b = framed(&[b"a", b"b", b"c"]);
                    b.extend_from_slice(&[1, 0]);
                    b
                }),
                None,
            ),
            InvalidArgument,
            vec!["'in_string'", "malformed"],
        ),
        (
            "BYTES with one element too few",
            datatypes_with(
                "in_string",
                "BYTES",
                Some(framed(&[b"a", b"b", b"c"])),
                None,
            ),
            InvalidArgument,
            vec!["'in_string'"],
        ),
        (
            "BYTES with bytes after the last element",
            datatypes_with(
                "in_string",
                "BYTES",
                Some({
                    let mut b = framed(&[b"a", b"b", b"c", b"d"]);
                    b.push(0);
                    b
                }),
                None,
            ),
            InvalidArgument,
            vec!["'in_string'"],
        ),
        (
            "BYTES length of 4 GiB",
            datatypes_with(
                "in_string",
                "BYTES",
                Some({
                    let mut b = framed(&[b"a", b"b", b"c"]);
                    b.extend_from_slice(&u32::MAX.to_le_bytes());
                    b
                }),
                None,
            ),
            InvalidArgument,
            vec!["'in_string'", "malformed"],
        ),
        // What ONNX Runtime itself refuses.
        (
            "token ids outside the vocabulary",
            text_classifier(vec![5000; 16], vec![1, 16]),
            InvalidArgument,
            vec!["text_classifier", "out of"],
        ),
        (
            "sequence length 15",
            text_classifier(vec![1; 15], vec![1, 15]),
            InvalidArgument,
            vec!["'token_ids'", "dimension 1 is 15", "expects 16"],
        ),
        // Outputs.
        (
            "unknown requested output",
            output(image(), "z"),
            InvalidArgument,
            vec!["unknown requested output 'z'", "probabilities"],
        ),
        (
            "empty requested output name",
            output(image(), ""),
            InvalidArgument,
            vec!["unknown requested output ''"],
        ),
        // Size.
        (
            "message over the limit",
            image_request(20),
            ResourceExhausted,
            vec!["200000"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_its_status_and_the_cluster_serves_on() {
    let scheduler = Scheduler::start_with(&format!(
        "{TEST_SCHEDULER_CONFIG}max_message_bytes: 200000\n"
    ));
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let mut c = scheduler.inference().await;
    c.model_infer(image()).await.expect("a valid request works");

    let cases = cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, request, code, fragments) in cases {
        let status = match c.model_infer(request).await {
            Result::Ok(_) => tonic::Status::ok(""),
            Err(status) => status,
        };
        if status.code() != code {
            failures.push(format!(
                "{name}: expected {code:?}, got {:?}: {}",
                status.code(),
                status.message()
            ));
            continue;
        }
        for fragment in fragments {
            if !status.message().contains(fragment) {
                failures.push(format!("{name}: '{}' lacks '{fragment}'", status.message()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    c.model_infer(image())
        .await
        .expect("the cluster serves after all of that");
    // Nothing was counted against the worker: it is still Ready.
    assert_eq!(
        scheduler.worker_state("w").await,
        Some(localml_proto::localml::v1::WorkerState::Ready)
    );
}

/// The HTTP status the issue (#15) and Triton give each gRPC code.
fn expected_http(code: Code) -> u16 {
    use Code::*;
    match code {
        Ok => 200,
        InvalidArgument | FailedPrecondition => 400,
        Unauthenticated => 401,
        PermissionDenied => 403,
        NotFound => 404,
        AlreadyExists => 409,
        ResourceExhausted => 429,
        Cancelled => 499,
        Internal => 500,
        Unimplemented => 501,
        Unavailable => 503,
        DeadlineExceeded => 504,
        other => panic!("no HTTP status listed for {other:?}"),
    }
}

/// A URL path segment, percent-encoded.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scheduler's own encoding of parameters: what the REST form of a request is made
/// of is not under test here, the answers are.
use localml_scheduler::rest::codec::parameters_json;

/// Typed contents as JSON `data`, when they are in the field the datatype reads (else
/// the request has no JSON form: its gRPC error is about the field).
fn contents_json(datatype: &str, c: &InferTensorContents) -> Option<serde_json::Value> {
    use serde_json::json;
    let fields = [
        ("BOOL", !c.bool_contents.is_empty(), json!(c.bool_contents)),
        ("INT", !c.int_contents.is_empty(), json!(c.int_contents)),
        (
            "INT64",
            !c.int64_contents.is_empty(),
            json!(c.int64_contents),
        ),
        ("UINT", !c.uint_contents.is_empty(), json!(c.uint_contents)),
        (
            "UINT64",
            !c.uint64_contents.is_empty(),
            json!(c.uint64_contents),
        ),
        ("FP32", !c.fp32_contents.is_empty(), json!(c.fp32_contents)),
        ("FP64", !c.fp64_contents.is_empty(), json!(c.fp64_contents)),
        (
            "BYTES",
            !c.bytes_contents.is_empty(),
            json!(c
                .bytes_contents
                .iter()
                .map(|b| String::from_utf8(b.clone()).ok())
                .collect::<Option<Vec<_>>>()?),
        ),
    ];
    let field = match datatype {
        "INT8" | "INT16" | "INT32" => "INT",
        "UINT8" | "UINT16" | "UINT32" => "UINT",
        other => other,
    };
    let used: Vec<&(&str, bool, serde_json::Value)> = fields.iter().filter(|f| f.1).collect();
    match used.as_slice() {
        [] => fields.iter().find(|f| f.0 == field).map(|f| f.2.clone()),
        [(name, _, data)] if *name == field => Some(data.clone()),
        _ => None,
    }
}

/// The REST form of `r`: its path, and its body with the JSON header's length when
/// binary tensors follow; `Err` with why when the request has no REST form.
fn rest_form(r: &ModelInferRequest) -> Result<(String, Vec<u8>, usize), &'static str> {
    use serde_json::{json, Value};
    let raw = &r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err("raw contents that do not pair with inputs");
    }
    let mut binary = Vec::new();
    let mut inputs = Vec::new();
    for (i, input) in r.inputs.iter().enumerate() {
        let mut t = serde_json::Map::new();
        t.insert("name".into(), json!(input.name));
        t.insert("shape".into(), json!(input.shape));
        t.insert("datatype".into(), json!(input.datatype));
        let mut params = parameters_json(&input.parameters);
        match (raw.get(i), &input.contents) {
            (Some(_), Some(_)) => return Err("raw and typed contents together"),
            (Some(bytes), None) => {
                params.insert("binary_data_size".into(), json!(bytes.len()));
                binary.extend_from_slice(bytes);
            }
            (None, Some(c)) => {
                let data = contents_json(&input.datatype, c)
                    .ok_or("typed contents in a field the datatype does not read")?;
                t.insert("data".into(), data);
            }
            (None, None) => return Err("an input without data"),
        }
        if !params.is_empty() {
            t.insert("parameters".into(), Value::Object(params));
        }
        inputs.push(Value::Object(t));
    }
    let outputs: Vec<Value> = r
        .outputs
        .iter()
        .map(|o| json!({"name": o.name, "parameters": parameters_json(&o.parameters)}))
        .collect();
    let header = json!({
        "id": r.id,
        "parameters": parameters_json(&r.parameters),
        "inputs": inputs,
        "outputs": outputs,
    });
    let mut body = serde_json::to_vec(&header).expect("JSON");
    let header_length = body.len();
    body.extend_from_slice(&binary);
    let mut path = format!("/v2/models/{}", segment(&r.model_name));
    if !r.model_version.is_empty() {
        path.push_str(&format!("/versions/{}", segment(&r.model_version)));
    }
    path.push_str("/infer");
    Ok((path, body, header_length))
}

/// The same malformed requests over the REST listener (#15): each with a REST form gets
/// the HTTP status of its gRPC code and the same message (one implementation behind
/// both); a body over the size limit is 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_the_matching_http_status_over_rest() {
    let scheduler = Scheduler::start_full(
        &format!("{TEST_SCHEDULER_CONFIG}max_message_bytes: 200000\n"),
        &["--rest-listen", "127.0.0.1:0"],
    );
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let url = scheduler.rest_url.clone().expect("REST listener");
    let addr = url.trim_start_matches("http://").to_string();
    let bearer = format!("Bearer {}", scheduler.admin_key());
    let send = |request: &ModelInferRequest| {
        let (path, body, length) = rest_form(request).expect("a REST form");
        let length = length.to_string();
        http(
            &addr,
            "POST",
            &path,
            &[
                ("authorization", &bearer),
                ("inference-header-content-length", &length),
            ],
            &body,
        )
    };
    let valid = tokio::task::block_in_place(|| send(&image()));
    assert_eq!(
        valid.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&valid.body)
    );

    let mut failures = Vec::new();
    let mut sent = 0;
    let mut without_form = Vec::new();
    for (name, request, code, fragments) in cases() {
        if let Err(why) = rest_form(&request) {
            without_form.push(format!("{name} ({why})"));
            continue;
        }
        sent += 1;
        let answer = tokio::task::block_in_place(|| send(&request));
        let want = if name == "message over the limit" {
            413
        } else {
            expected_http(code)
        };
        if answer.status != want {
            failures.push(format!(
                "{name}: expected {want}, got {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
            continue;
        }
        if want == 200 {
            continue;
        }
        let message = answer.json()["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{name}: no error message"));
        for fragment in fragments {
            if !message.contains(fragment) {
                failures.push(format!("{name}: '{message}' lacks '{fragment}'"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{sent} cases sent over REST; without a REST form: {without_form:?}");
    assert!(
        sent >= 45,
        "only {sent} cases have a REST form; without one: {without_form:#?}"
    );
    let after = tokio::task::block_in_place(|| send(&image()));
    assert_eq!(
        after.status, 200,
        "the REST listener serves after all of that"
    );
}
