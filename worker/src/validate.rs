//! Checks an inference request against a model's signature before ONNX Runtime sees any
//! data: names, datatypes, shapes, and raw contents' lengths (BYTES: their framing) are
//! checked here, on the async runtime, without decoding the data; raw bytes are decoded
//! later, once, on the thread that runs the model ([`crate::model::Input`]). Every error
//! names the tensor, what was expected and what arrived; they become INVALID_ARGUMENT.

use std::collections::HashSet;

use localml_proto::inference::ModelInferRequest;
use localml_proto::tensor::{DataType, TensorData, TensorError};

use crate::model::{Input, InputData, TensorSpec};

/// Why a request does not fit its model. Every variant becomes INVALID_ARGUMENT; the
/// texts are what clients see, so they name the tensor, what was expected and what came.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ValidateError {
    /// `localml.priority` is not an integer.
    #[error("parameter '{name}' is {0}; expected an integer", name = localml_proto::parameters::PRIORITY_PARAMETER)]
    Priority(String),
    /// Raw contents must cover every input or none (the protocol's rule).
    #[error("raw_input_contents has {raw} entries but the request has {inputs} inputs; send raw data for every input or for none")]
    RawCount { raw: usize, inputs: usize },
    /// An input the model does not have.
    #[error("unexpected input '{input}': model '{model}' has inputs: {expected}")]
    UnexpectedInput {
        input: String,
        model: String,
        /// The model's input names, comma separated.
        expected: String,
    },
    /// The same input twice.
    #[error("input '{0}' appears more than once")]
    DuplicateInput(String),
    /// A datatype name the protocol does not define.
    #[error("input '{input}': unknown datatype '{datatype}' (expected {expected})")]
    UnknownDatatype {
        input: String,
        datatype: String,
        expected: DataType,
    },
    /// A datatype other than the model's.
    #[error("input '{input}': expected datatype {expected}, got {got}")]
    WrongDatatype {
        input: String,
        expected: DataType,
        got: DataType,
    },
    /// A shape with a different number of dimensions than the model's.
    #[error("input '{input}': expected rank {} (shape {expected:?}), got rank {} (shape {got:?})", .expected.len(), .got.len())]
    Rank {
        input: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    /// A negative dimension, or one that differs from a fixed dimension of the model.
    #[error("input '{input}': dimension {index} is {got_dim} but the model expects {} (model shape {expected:?}, request shape {got:?})", expected_size(*.want))]
    Dimension {
        input: String,
        index: usize,
        got_dim: i64,
        /// The model's size for this dimension; negative: dynamic.
        want: i64,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    /// A batch larger than the model's `max_batch_size`.
    #[error("input '{input}': batch size {batch} exceeds the model's max_batch_size {max}")]
    BatchTooLarge { input: String, batch: i64, max: u32 },
    /// Neither typed nor raw contents.
    #[error("input '{0}' has no data: fill `contents` or `raw_input_contents`")]
    NoData(String),
    /// The contents do not match the shape and datatype.
    #[error("input '{input}': {source}")]
    Contents { input: String, source: TensorError },
    /// Inputs of the model the request leaves out.
    #[error("model '{model}' needs input(s) {} that the request does not have", .missing.join(", "))]
    MissingInputs { model: String, missing: Vec<String> },
    /// An output the model does not have.
    #[error("unknown requested output '{output}': model '{model}' has outputs: {expected}")]
    UnknownOutput {
        output: String,
        model: String,
        /// The model's output names, comma separated.
        expected: String,
    },
}

/// How [`ValidateError::Dimension`] states the model's size.
fn expected_size(want: i64) -> String {
    if want < 0 {
        "a non-negative size".to_string()
    } else {
        want.to_string()
    }
}

/// What a request is checked against.
pub struct Signature<'a> {
    pub model: &'a str,
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
    pub max_batch_size: u32,
}

/// A checked request: inputs in the model's order, and the outputs asked for (empty: all).
#[derive(Debug)]
pub struct Decoded {
    pub inputs: Vec<Input>,
    pub requested_outputs: Vec<String>,
    /// `localml.priority` (higher first), for the batching queue.
    pub priority: i64,
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the shape of one input against its spec.
fn check_shape(sig: &Signature<'_>, spec: &TensorSpec, shape: &[i64]) -> Result<(), ValidateError> {
    if shape.len() != spec.shape.len() {
        return Err(ValidateError::Rank {
            input: spec.name.clone(),
            expected: spec.shape.clone(),
            got: shape.to_vec(),
        });
    }
    for (i, (&want, &got)) in spec.shape.iter().zip(shape).enumerate() {
        if got < 0 || (want >= 0 && want != got) {
            return Err(ValidateError::Dimension {
                input: spec.name.clone(),
                index: i,
                got_dim: got,
                want,
                expected: spec.shape.clone(),
                got: shape.to_vec(),
            });
        }
    }
    if sig.max_batch_size > 0 {
        if let Some(&batch) = shape.first() {
            if batch > i64::from(sig.max_batch_size) {
                return Err(ValidateError::BatchTooLarge {
                    input: spec.name.clone(),
                    batch,
                    max: sig.max_batch_size,
                });
            }
        }
    }
    Ok(())
}

/// Validates `request` for the model described by `sig`. Raw contents are checked and
/// kept as they came (no copy); typed `contents` are converted (prost decoded them already).
pub fn decode_request(
    sig: &Signature<'_>,
    request: &ModelInferRequest,
) -> Result<Decoded, ValidateError> {
    let priority = localml_proto::parameters::priority(&request.parameters).map_err(|e| {
        ValidateError::Priority(
            e.map_or_else(|| "not a string or an integer".into(), |s| format!("'{s}'")),
        )
    })?;
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(ValidateError::RawCount {
            raw: raw.len(),
            inputs: request.inputs.len(),
        });
    }
    let mut seen = HashSet::new();
    let mut decoded: Vec<Option<Input>> = vec![None; sig.inputs.len()];
    for (i, input) in request.inputs.iter().enumerate() {
        let Some(pos) = sig.inputs.iter().position(|s| s.name == input.name) else {
            return Err(ValidateError::UnexpectedInput {
                input: input.name.clone(),
                model: sig.model.to_string(),
                expected: names(sig.inputs),
            });
        };
        if !seen.insert(input.name.as_str()) {
            return Err(ValidateError::DuplicateInput(input.name.clone()));
        }
        let spec = &sig.inputs[pos];
        let datatype =
            DataType::parse(&input.datatype).ok_or_else(|| ValidateError::UnknownDatatype {
                input: input.name.clone(),
                datatype: input.datatype.clone(),
                expected: spec.datatype,
            })?;
        if datatype != spec.datatype {
            return Err(ValidateError::WrongDatatype {
                input: input.name.clone(),
                expected: spec.datatype,
                got: datatype,
            });
        }
        check_shape(sig, spec, &input.shape)?;
        let data = if let Some(bytes) = raw.get(i) {
            TensorData::check_raw(datatype, &input.shape, bytes)
                .map(|()| InputData::Raw(bytes.clone()))
        } else if let Some(contents) = &input.contents {
            TensorData::from_contents(datatype, &input.shape, contents).map(InputData::Decoded)
        } else {
            return Err(ValidateError::NoData(input.name.clone()));
        }
        .map_err(|source| ValidateError::Contents {
            input: input.name.clone(),
            source,
        })?;
        decoded[pos] = Some(Input {
            name: input.name.clone(),
            shape: input.shape.clone(),
            datatype,
            data,
        });
    }
    let missing: Vec<String> = sig
        .inputs
        .iter()
        .zip(&decoded)
        .filter(|(_, d)| d.is_none())
        .map(|(s, _)| s.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ValidateError::MissingInputs {
            model: sig.model.to_string(),
            missing,
        });
    }
    let mut requested_outputs = Vec::new();
    for output in &request.outputs {
        if !sig.outputs.iter().any(|s| s.name == output.name) {
            return Err(ValidateError::UnknownOutput {
                output: output.name.clone(),
                model: sig.model.to_string(),
                expected: names(sig.outputs),
            });
        }
        requested_outputs.push(output.name.clone());
    }
    Ok(Decoded {
        inputs: decoded.into_iter().flatten().collect(),
        requested_outputs,
        priority,
    })
}

#[cfg(test)]
mod tests {
    use localml_proto::inference::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use localml_proto::inference::InferTensorContents;

    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    fn input(
        name: &str,
        datatype: &str,
        shape: &[i64],
        fp32: Option<Vec<f32>>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            contents: fp32.map(|v| InferTensorContents {
                fp32_contents: v,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn table_of_requests() {
        let inputs = [
            spec("x", DataType::Fp32, &[-1, 2]),
            spec("s", DataType::Bytes, &[-1]),
        ];
        let outputs = [spec("y", DataType::Fp32, &[-1])];
        let sig = Signature {
            model: "m",
            inputs: &inputs,
            outputs: &outputs,
            max_batch_size: 4,
        };
        let strings = |v: Vec<&[u8]>| {
            let mut i = input("s", "BYTES", &[v.len() as i64], None);
            i.contents = Some(InferTensorContents {
                bytes_contents: v.into_iter().map(<[u8]>::to_vec).collect(),
                ..Default::default()
            });
            i
        };
        let good_x = || input("x", "FP32", &[1, 2], Some(vec![1.0, 2.0]));
        let req = |inputs: Vec<InferInputTensor>| ModelInferRequest {
            model_name: "m".into(),
            inputs,
            ..Default::default()
        };
        let raw_req = |raw: Vec<u8>| ModelInferRequest {
            inputs: vec![input("x", "FP32", &[1, 2], None), strings(vec![b"a"])],
            raw_input_contents: vec![raw.into(), vec![1, 0, 0, 0, b'a'].into()],
            ..Default::default()
        };
        let mut unknown_output = req(vec![good_x(), strings(vec![b"a"])]);
        unknown_output.outputs.push(InferRequestedOutputTensor {
            name: "z".into(),
            ..Default::default()
        });

        // (case, request, Ok(()) or the expected error substring)
        let cases: Vec<(&str, ModelInferRequest, Result<(), &str>)> = vec![
            (
                "valid typed",
                req(vec![good_x(), strings(vec![b"a"])]),
                Ok(()),
            ),
            ("valid raw", raw_req(vec![0; 8]), Ok(())),
            (
                "raw length",
                raw_req(vec![0; 7]),
                Err("input 'x': raw content has 7 bytes but shape [1, 2] of FP32 needs 8"),
            ),
            (
                "wrong datatype",
                req(vec![
                    input("x", "INT64", &[1, 2], None),
                    strings(vec![b"a"]),
                ]),
                Err("input 'x': expected datatype FP32, got INT64"),
            ),
            (
                "unknown datatype",
                req(vec![
                    input("x", "FLOAT", &[1, 2], None),
                    strings(vec![b"a"]),
                ]),
                Err("unknown datatype 'FLOAT'"),
            ),
            (
                "wrong rank",
                req(vec![
                    input("x", "FP32", &[2], Some(vec![1.0, 2.0])),
                    strings(vec![b"a"]),
                ]),
                Err("input 'x': expected rank 2"),
            ),
            (
                "wrong dim",
                req(vec![
                    input("x", "FP32", &[1, 3], Some(vec![1.0; 3])),
                    strings(vec![b"a"]),
                ]),
                Err("input 'x': dimension 1 is 3 but the model expects 2"),
            ),
            (
                "batch too large",
                req(vec![
                    input("x", "FP32", &[5, 2], Some(vec![1.0; 10])),
                    strings(vec![b"a"; 5]),
                ]),
                Err("batch size 5 exceeds the model's max_batch_size 4"),
            ),
            (
                "element count",
                req(vec![
                    input("x", "FP32", &[1, 2], Some(vec![1.0])),
                    strings(vec![b"a"]),
                ]),
                Err("input 'x': has 1 elements but shape [1, 2] needs 2"),
            ),
            (
                "missing input",
                req(vec![good_x()]),
                Err("needs input(s) s"),
            ),
            (
                "unknown input",
                req(vec![
                    good_x(),
                    strings(vec![b"a"]),
                    input("q", "FP32", &[1], Some(vec![1.0])),
                ]),
                Err("unexpected input 'q': model 'm' has inputs: x, s"),
            ),
            (
                "duplicate input",
                req(vec![good_x(), good_x()]),
                Err("appears more than once"),
            ),
            (
                "no data",
                req(vec![input("x", "FP32", &[1, 2], None), strings(vec![b"a"])]),
                Err("has no data"),
            ),
            (
                // BYTES are byte strings, not text: any bytes go through.
                "bytes that are not UTF-8",
                req(vec![good_x(), strings(vec![&[0xff, 0x00, 0xfe]])]),
                Ok(()),
            ),
            (
                "unknown output",
                unknown_output,
                Err("unknown requested output 'z'"),
            ),
        ];
        for (name, request, expected) in cases {
            let result = decode_request(&sig, &request);
            match (expected, result) {
                (Ok(()), Ok(d)) => assert_eq!(d.inputs.len(), 2, "{name}"),
                (Err(want), Err(got)) => {
                    let got = got.to_string();
                    assert!(got.contains(want), "{name}: {got}");
                }
                (want, got) => panic!("{name}: expected {want:?}, got {got:?}"),
            }
        }
    }
}
