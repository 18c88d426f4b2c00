//! Tensor decoding and validation: an `ModelInferRequest` as a client sends it (protobuf
//! bytes) checked against model signatures as the worker does, and raw tensor content
//! decoded directly. Properties: no panic; what validation accepts decodes (the worker
//! relies on it); `check_raw` and `from_raw` agree; raw content round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use localml_proto::inference::ModelInferRequest;
use localml_proto::tensor::{DataType, TensorData};
use localml_worker::model::TensorSpec;
use localml_worker::validate::{decode_request, Signature};
use prost::Message;

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: shape.to_vec(),
    }
}

/// Raw content for `datatype` and `shape`: the two checks agree, and what decodes encodes
/// back to the same bytes (BOOL aside: any non-zero byte reads as true).
fn raw_properties(datatype: DataType, shape: &[i64], raw: &[u8]) {
    let checked = TensorData::check_raw(datatype, shape, raw);
    let decoded = TensorData::from_raw(datatype, shape, raw);
    assert_eq!(
        checked.is_ok(),
        decoded.is_ok(),
        "check_raw {checked:?} and from_raw disagree for {datatype:?} {shape:?}"
    );
    if let Ok(data) = decoded {
        assert_eq!(data.datatype(), datatype);
        if datatype != DataType::Bool {
            assert_eq!(data.to_raw(), raw, "round trip of {datatype:?}");
        }
        let mut joined = TensorData::with_capacity(datatype, data.len());
        joined
            .extend_from_raw(raw)
            .expect("checked content extends");
        // Compared as bytes: NaN is not equal to itself.
        assert_eq!(joined.len(), data.len());
        assert_eq!(
            joined.to_raw(),
            data.to_raw(),
            "extend_from_raw and from_raw agree"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // Direct: [datatype, rank, rank dims as i8, raw...].
    if data.len() >= 2 {
        let datatype = DataType::ALL[usize::from(data[0]) % DataType::ALL.len()];
        let rank = usize::from(data[1] % 5).min(data.len() - 2);
        let shape: Vec<i64> = data[2..2 + rank]
            .iter()
            .map(|&d| i64::from(d as i8))
            .collect();
        raw_properties(datatype, &shape, &data[2 + rank..]);
    }
    // As a client sends it, against three signatures.
    let Ok(request) = ModelInferRequest::decode(data) else {
        return;
    };
    let inputs = [
        spec("image", DataType::Fp32, &[-1, 3, 4, 4]),
        spec("text", DataType::Bytes, &[-1]),
        spec("ids", DataType::Int64, &[2, -1]),
        spec("mask", DataType::Bool, &[-1, 2]),
        spec("half", DataType::Fp16, &[-1]),
    ];
    let outputs = [spec("out", DataType::Fp32, &[-1, 10])];
    for (inputs, max_batch_size) in [(&inputs[..], 8), (&inputs[..1], 0), (&inputs[1..3], 2)] {
        let sig = Signature {
            model: "fuzz",
            inputs,
            outputs: &outputs,
            max_batch_size,
        };
        if let Ok(decoded) = decode_request(&sig, &request) {
            for input in decoded.inputs {
                let name = input.name.clone();
                if let Err(e) = input.decode() {
                    panic!("input '{name}' passed validation but does not decode: {e}");
                }
            }
        }
    }
});
