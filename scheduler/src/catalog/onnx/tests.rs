use super::*;
use std::io::Cursor;

/// Protobuf wire encoding for hand-made models.
fn key(out: &mut Vec<u8>, number: u32, wire: prost::encoding::WireType) {
    prost::encoding::encode_key(number, wire, out);
}

fn varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    key(out, number, prost::encoding::WireType::Varint);
    prost::encoding::encode_varint(value, out);
}

fn bytes_field(out: &mut Vec<u8>, number: u32, value: &[u8]) {
    key(out, number, prost::encoding::WireType::LengthDelimited);
    prost::encoding::encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// ValueInfoProto of a tensor with `elem_type` and dims (-1: a named dynamic dim).
fn value_info(name: &str, elem_type: u64, dims: &[i64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        if d < 0 {
            bytes_field(&mut dim, 2, b"batch");
        } else {
            varint_field(&mut dim, 1, d as u64);
        }
        bytes_field(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    varint_field(&mut tensor, 1, elem_type);
    bytes_field(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes_field(&mut ty, 1, &tensor);
    let mut info = Vec::new();
    bytes_field(&mut info, 1, name.as_bytes());
    bytes_field(&mut info, 2, &ty);
    info
}

/// A model whose graph has a 1 MB initializer `w` listed among the inputs (as IR 3 files
/// do), an input `x` and an output `y`.
fn model() -> Vec<u8> {
    let mut initializer = Vec::new();
    varint_field(&mut initializer, 2, 1);
    bytes_field(&mut initializer, 9, &vec![7u8; 1 << 20]);
    bytes_field(&mut initializer, 8, b"w");
    let mut graph = Vec::new();
    bytes_field(&mut graph, 1, b"a node, skipped");
    bytes_field(&mut graph, 5, &initializer);
    bytes_field(&mut graph, 11, &value_info("x", 1, &[-1, 3]));
    bytes_field(&mut graph, 11, &value_info("w", 1, &[4]));
    bytes_field(&mut graph, 12, &value_info("y", 7, &[-1]));
    let mut opset = Vec::new();
    bytes_field(&mut opset, 1, b"");
    varint_field(&mut opset, 2, 17);
    let mut model = Vec::new();
    varint_field(&mut model, 1, 3);
    bytes_field(&mut model, 2, b"producer");
    bytes_field(&mut model, 7, &graph);
    bytes_field(&mut model, 8, &opset);
    model
}

fn tensor(name: &str, datatype: &str, shape: &[i64]) -> CatalogTensor {
    CatalogTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
    }
}

#[test]
fn reads_inputs_and_outputs_and_leaves_out_initializers() {
    let signature = read_signature(Cursor::new(model())).expect("a valid model");
    assert_eq!(
        signature,
        OnnxSignature {
            ir_version: 3,
            opset: 17,
            inputs: vec![tensor("x", "FP32", &[-1, 3])],
            outputs: vec![tensor("y", "INT64", &[-1])],
        }
    );
}

#[test]
fn reads_the_example_models() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let file = std::fs::File::open(dir.join("image_classifier/1/model.onnx")).expect("example");
    let signature = read_signature(std::io::BufReader::new(file)).expect("example model");
    assert_eq!(signature.inputs.len(), 1, "{signature:?}");
    assert_eq!(signature.inputs[0].name, "image");
    assert_eq!(signature.inputs[0].datatype, "FP32");
    assert_eq!(signature.inputs[0].shape[1..], [3, 32, 32]);
    assert!(
        signature.ir_version > 0 && signature.opset > 0,
        "{signature:?}"
    );
}

#[test]
fn every_truncation_is_refused_with_a_reason() {
    let model = model();
    // Cut inside the graph (the initializer's data) and at a few other places.
    for cut in [1, 3, 10, 100, 1000, model.len() / 2, model.len() - 1] {
        let err = read_signature(Cursor::new(&model[..cut])).expect_err("truncated");
        let text = err.to_string();
        assert!(text.starts_with("not an ONNX model: "), "cut {cut}: {text}");
    }
}

#[test]
fn files_that_are_not_models_are_refused() {
    let cases: [(&[u8], &str); 4] = [
        (b"", "the file has no graph"),
        (b"hello, this is text\n", "not an ONNX model"),
        (&[0x0f, 1, 2], "wire type 7"),
        (&[0x3a, 0xff, 0xff, 0xff, 0x0f], "runs past the end"),
    ];
    for (bytes, expected) in cases {
        let err = read_signature(Cursor::new(bytes)).expect_err("not a model");
        assert!(err.to_string().contains(expected), "{bytes:?}: {err}");
    }
    // A graph without outputs.
    let mut model = Vec::new();
    varint_field(&mut model, 1, 8);
    bytes_field(&mut model, 7, &[]);
    let err = read_signature(Cursor::new(model)).expect_err("no outputs");
    assert!(err.to_string().contains("no outputs"), "{err}");
}

#[test]
fn a_huge_value_description_is_refused_before_it_is_read() {
    let mut graph = Vec::new();
    key(&mut graph, 11, prost::encoding::WireType::LengthDelimited);
    prost::encoding::encode_varint(64 << 20, &mut graph);
    graph.extend(std::iter::repeat_n(0u8, 64 << 20));
    let mut model = Vec::new();
    bytes_field(&mut model, 7, &graph);
    let err = read_signature(Cursor::new(model)).expect_err("too big");
    assert!(err.to_string().contains("at most"), "{err}");
}
