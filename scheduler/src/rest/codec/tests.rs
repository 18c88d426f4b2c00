use super::*;

fn read(body: &str) -> Result<RestInfer, BadRequest> {
    infer_request("m", "", Bytes::from(body.to_string()), None)
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn nested_and_flat_json_data_give_the_same_raw_content() {
    let nested = read(
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,-4]]}]}"#,
    )
    .expect("nested");
    let flat =
        read(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,-4]}]}"#)
            .expect("flat");
    assert_eq!(
        f32s(&nested.request.raw_input_contents[0]),
        vec![1.0, 2.5, 3.0, -4.0]
    );
    assert_eq!(
        nested.request.raw_input_contents,
        flat.request.raw_input_contents
    );
    let r = &nested.request;
    assert_eq!((r.model_name.as_str(), r.model_version.as_str()), ("m", ""));
    assert_eq!(r.inputs[0].shape, vec![2, 2]);
    assert!(r.inputs[0].contents.is_none(), "raw content only");
}

#[test]
fn every_datatype_reads_from_json() {
    let cases: &[(&str, &str, Vec<u8>)] = &[
        ("BOOL", "[true,false]", vec![1, 0]),
        ("UINT8", "[0,255]", vec![0, 255]),
        ("INT8", "[-128,127]", vec![0x80, 0x7f]),
        ("UINT16", "[1,65535]", vec![1, 0, 0xff, 0xff]),
        ("INT16", "[-1,2]", vec![0xff, 0xff, 2, 0]),
        ("UINT32", "[1,2]", vec![1, 0, 0, 0, 2, 0, 0, 0]),
        ("INT32", "[-1,2]", vec![0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0]),
        (
            "UINT64",
            "[18446744073709551615,0]",
            [u64::MAX.to_le_bytes(), 0u64.to_le_bytes()].concat(),
        ),
        (
            "INT64",
            "[-9223372036854775808,1]",
            [i64::MIN.to_le_bytes(), 1i64.to_le_bytes()].concat(),
        ),
        (
            "FP16",
            "[1.5,-2]",
            [
                f16::from_f32(1.5).to_le_bytes(),
                f16::from_f32(-2.0).to_le_bytes(),
            ]
            .concat(),
        ),
        (
            "FP64",
            "[0.1,3]",
            [0.1f64.to_le_bytes(), 3f64.to_le_bytes()].concat(),
        ),
        (
            "BYTES",
            r#"["ab",""]"#,
            vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0],
        ),
    ];
    for (datatype, data, want) in cases {
        let body = format!(
            r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{datatype}","data":{data}}}]}}"#
        );
        let got = read(&body).unwrap_or_else(|e| panic!("{datatype}: {e}"));
        assert_eq!(
            &got.request.raw_input_contents[0][..],
            &want[..],
            "{datatype}"
        );
    }
}

#[test]
fn json_data_errors_name_the_input_and_the_problem() {
    let input = |datatype: &str, shape: &str, data: &str| {
        read(&format!(
            r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
        ))
        .expect_err("refused")
        .0
    };
    let cases = [
        (
            input("INT8", "[1]", "[300]"),
            "300 is out of range for INT8",
        ),
        (input("INT32", "[1]", "[1.5]"), "1.5 is not an integer"),
        (
            input("FP32", "[1]", r#"["a"]"#),
            "a string where FP32 data needs numbers",
        ),
        (
            input("BOOL", "[1]", "[1]"),
            "a number where BOOL data needs booleans",
        ),
        (
            input("BYTES", "[1]", "[1]"),
            "a number where BYTES data needs strings",
        ),
        (input("FP32", "[1]", "[null]"), "null where FP32"),
        (input("FP32", "[1]", r#"[{"a":1}]"#), "an object where FP32"),
        (
            input("FP32", "[2,2]", "[1,2,3]"),
            "data has 3 elements but shape [2, 2] needs 4",
        ),
        (input("FP32", "[-1]", "[1]"), "invalid shape [-1]"),
        (input("FP9", "[1]", "[1]"), "unknown datatype 'FP9'"),
    ];
    for (message, want) in cases {
        assert!(message.starts_with("input 'x': "), "{message}");
        assert!(message.contains(want), "{message:?} lacks {want:?}");
    }
    let malformed = read(r#"{"inputs":[{"name":"x""#).expect_err("bad JSON").0;
    assert!(
        malformed.starts_with("invalid inference request JSON: EOF"),
        "{malformed}"
    );
    let missing = read(r#"{"outputs":[]}"#).expect_err("no inputs").0;
    assert!(missing.contains("missing field `inputs`"), "{missing}");
    let no_data = read(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#)
        .expect_err("no data")
        .0;
    assert!(no_data.contains("input 'x': has no data"), "{no_data}");
    let param = read(r#"{"parameters":{"p":[1]},"inputs":[]}"#)
        .expect_err("array parameter")
        .0;
    assert_eq!(
        param,
        "parameter 'p' is an array: parameters are booleans, numbers or strings"
    );
}

#[test]
fn binary_tensors_are_sliced_from_the_body_in_input_order() {
    let header = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"INT64","data":[7]},{"name":"c","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":1}}],"outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z","parameters":{"classification":2}}],"parameters":{"binary_data_output":false,"localml.priority":5}}"#;
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&1f32.to_le_bytes());
    body.extend_from_slice(&2f32.to_le_bytes());
    body.push(9);
    let length = header.len().to_string();
    let got = infer_request("m", "2", Bytes::from(body.clone()), Some(&length)).expect("valid");
    let r = &got.request;
    assert_eq!(f32s(&r.raw_input_contents[0]), vec![1.0, 2.0]);
    assert_eq!(&r.raw_input_contents[1][..], &7i64.to_le_bytes()[..]);
    assert_eq!(&r.raw_input_contents[2][..], &[9u8][..]);
    assert!(
        r.inputs[0].parameters.is_empty(),
        "binary_data_size stays in HTTP"
    );
    assert!(r.outputs[0].parameters.is_empty(), "binary_data too");
    assert_eq!(
        r.outputs[1].parameters["classification"].parameter_choice,
        Some(ParameterChoice::Int64Param(2))
    );
    assert!(!r.parameters.contains_key("binary_data_output"));
    assert_eq!(
        r.parameters["localml.priority"].parameter_choice,
        Some(ParameterChoice::Int64Param(5))
    );
    assert!(got.binary_outputs.binary("y") && !got.binary_outputs.binary("z"));

    let refuse = |body: Vec<u8>, length: &str| {
        infer_request("m", "", Bytes::from(body), Some(length))
            .expect_err("refused")
            .0
    };
    let short = refuse(body[..body.len() - 1].to_vec(), &length);
    assert!(
        short.contains("input 'c': binary_data_size 1 is past the end of the body: 0 bytes"),
        "{short}"
    );
    let mut long = body.clone();
    long.extend_from_slice(&[0, 0, 0]);
    let extra = refuse(long, &length);
    assert!(
        extra.starts_with("3 bytes of binary data follow"),
        "{extra}"
    );
    let past = refuse(body.clone(), "100000");
    assert!(
        past.contains("Inference-Header-Content-Length 100000 is past the end of the body"),
        "{past}"
    );
    assert!(refuse(body, "-1").contains("is not a byte count"));
}

fn response(outputs: Vec<(&str, &str, Vec<i64>, Vec<u8>)>) -> ModelInferResponse {
    ModelInferResponse {
        model_name: "m".into(),
        model_version: "1".into(),
        id: "r1".into(),
        parameters: HashMap::from([(
            "localml.worker".to_string(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::StringParam("w1".into())),
            },
        )]),
        outputs: outputs
            .iter()
            .map(
                |(name, datatype, shape, _)| model_infer_response::InferOutputTensor {
                    name: name.to_string(),
                    datatype: datatype.to_string(),
                    shape: shape.clone(),
                    ..Default::default()
                },
            )
            .collect(),
        raw_output_contents: outputs
            .into_iter()
            .map(|(_, _, _, raw)| Bytes::from(raw))
            .collect(),
    }
}

#[test]
fn responses_are_json_with_binary_sections_where_asked() {
    let probabilities: Vec<u8> = [0.1f32, 0.9].iter().flat_map(|x| x.to_le_bytes()).collect();
    let r = response(vec![
        ("p", "FP32", vec![1, 2], probabilities.clone()),
        (
            "label",
            "BYTES",
            vec![1],
            vec![3, 0, 0, 0, b'c', b'a', b't'],
        ),
    ]);
    let json_only = infer_response(&r, &BinaryOutputs::default()).expect("encodes");
    assert_eq!(json_only.header_length, None);
    let v: Value = serde_json::from_slice(&json_only.body).expect("JSON");
    assert_eq!(
        v,
        json!({
            "model_name": "m", "model_version": "1", "id": "r1",
            "parameters": {"localml.worker": "w1"},
            "outputs": [
                {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.9]},
                {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["cat"]},
            ]
        })
    );
    let binary = BinaryOutputs {
        all: false,
        named: HashMap::from([("p".to_string(), true)]),
    };
    let mixed = infer_response(&r, &binary).expect("encodes");
    let length = mixed.header_length.expect("binary part");
    let head: Value = serde_json::from_slice(&mixed.body[..length]).expect("JSON head");
    assert_eq!(
        head["outputs"][0]["parameters"]["binary_data_size"],
        json!(8)
    );
    assert!(head["outputs"][0].get("data").is_none());
    assert_eq!(head["outputs"][1]["data"], json!(["cat"]));
    assert_eq!(&mixed.body[length..], &probabilities[..]);

    let broken = response(vec![("p", "FP32", vec![1, 2], vec![0; 3])]);
    let err = infer_response(&broken, &BinaryOutputs::default()).expect_err("short");
    assert!(err.contains("output 'p'"), "{err}");
}

#[test]
fn statistics_use_tritons_field_names() {
    let s = ModelStatisticsResponse {
        model_stats: vec![ModelStatistics {
            name: "m".into(),
            version: "1".into(),
            inference_count: 3,
            execution_count: 2,
            inference_stats: Some(InferStatistics {
                success: Some(StatisticDuration { count: 3, ns: 300 }),
                queue: Some(StatisticDuration { count: 3, ns: 30 }),
                ..Default::default()
            }),
            ..Default::default()
        }],
    };
    let v = statistics(&s);
    let m = &v["model_stats"][0];
    assert_eq!(m["inference_count"], json!(3));
    assert_eq!(m["execution_count"], json!(2));
    assert_eq!(
        m["inference_stats"]["success"],
        json!({"count": 3, "ns": 300})
    );
    assert_eq!(
        m["inference_stats"]["compute_infer"],
        json!({"count": 0, "ns": 0})
    );
}
