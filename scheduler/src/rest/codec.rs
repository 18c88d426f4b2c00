//! The Open Inference Protocol's HTTP/REST bodies converted to and from its gRPC messages,
//! so one implementation (validation, routing, statistics) serves both protocols.
//!
//! Requests: JSON tensors (`data` nested or flat, every datatype) and Triton's binary
//! tensor extension (`binary_data_size` on an input; the JSON header is the first
//! `Inference-Header-Content-Length` bytes of the body, the tensors follow in input
//! order). Every input becomes raw little-endian content, written straight from the JSON
//! text (no tree of JSON values) or sliced from the body without a copy.
//!
//! Responses: JSON `data` (flat, as Triton answers), or binary outputs when the request
//! asks (`binary_data` on an output, `binary_data_output` on the request).

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use half::f16;
use localml_proto::inference::infer_parameter::ParameterChoice;
use localml_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use localml_proto::inference::*;
use localml_proto::tensor::{element_count, DataType, TensorData};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// Triton's header naming the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A request the protocol cannot accept; the message names the problem (HTTP 400).
#[derive(Debug, PartialEq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(message: impl Into<String>) -> Result<T, BadRequest> {
    Err(BadRequest(message.into()))
}

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Vec<OutputJson>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Which outputs the client wants as binary sections rather than JSON `data`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BinaryOutputs {
    /// `binary_data_output` on the request: the default for every output.
    pub all: bool,
    /// Outputs with their own `binary_data` parameter.
    pub named: HashMap<String, bool>,
}

impl BinaryOutputs {
    pub fn binary(&self, output: &str) -> bool {
        self.named.get(output).copied().unwrap_or(self.all)
    }
}

/// An inference request read from HTTP: the gRPC request, and how to answer it.
#[derive(Debug)]
pub struct RestInfer {
    pub request: ModelInferRequest,
    pub binary_outputs: BinaryOutputs,
}

/// Splits a body into its JSON header and binary part by `Inference-Header-Content-Length`.
pub fn split_body(body: Bytes, header_length: Option<&str>) -> Result<(Bytes, Bytes), BadRequest> {
    let Some(text) = header_length else {
        return Ok((body, Bytes::new()));
    };
    let Ok(length) = text.trim().parse::<usize>() else {
        return bad(format!(
            "Inference-Header-Content-Length '{text}' is not a byte count"
        ));
    };
    if length > body.len() {
        return bad(format!(
            "Inference-Header-Content-Length {length} is past the end of the body ({} bytes)",
            body.len()
        ));
    }
    let binary = body.slice(length..);
    Ok((body.slice(..length), binary))
}

/// The gRPC parameter for a JSON value: booleans, integers, floats and strings.
fn parameter(context: &str, name: &str, value: &Value) -> Result<InferParameter, BadRequest> {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParameterChoice::Int64Param(i),
            (None, Some(u), _) => ParameterChoice::Uint64Param(u),
            (None, None, Some(f)) => ParameterChoice::DoubleParam(f),
            _ => return bad(format!("{context}parameter '{name}' is not a number")),
        },
        other => {
            return bad(format!(
                "{context}parameter '{name}' is {}: parameters are booleans, numbers or strings",
                kind(other)
            ))
        }
    };
    Ok(InferParameter {
        parameter_choice: Some(choice),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `parameters` without the REST-only keys in `skip`, as gRPC parameters.
fn parameters(
    context: &str,
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<HashMap<String, InferParameter>, BadRequest> {
    map.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| Ok((k.clone(), parameter(context, k, v)?)))
        .collect()
}

fn flag(context: &str, map: &Map<String, Value>, key: &str) -> Result<Option<bool>, BadRequest> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => bad(format!(
            "{context}parameter '{key}' must be a boolean, not {}",
            kind(other)
        )),
    }
}

/// Reads an inference request for `model` (and `version`, empty for the latest) from a
/// body whose JSON part ends where `header_length` says (the binary extension) or at its
/// end.
pub fn infer_request(
    model: &str,
    version: &str,
    body: Bytes,
    header_length: Option<&str>,
) -> Result<RestInfer, BadRequest> {
    let (header, binary) = split_body(body, header_length)?;
    let parsed: RequestJson = serde_json::from_slice(&header)
        .map_err(|e| BadRequest(format!("invalid inference request JSON: {e}")))?;
    let binary_outputs = BinaryOutputs {
        all: flag("", &parsed.parameters, "binary_data_output")?.unwrap_or(false),
        named: parsed
            .outputs
            .iter()
            .filter_map(|o| {
                let context = format!("output '{}': ", o.name);
                flag(&context, &o.parameters, "binary_data")
                    .map(|b| b.map(|b| (o.name.clone(), b)))
                    .transpose()
            })
            .collect::<Result<_, _>>()?,
    };
    let mut offset = 0usize;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    let mut raw = Vec::with_capacity(parsed.inputs.len());
    for input in &parsed.inputs {
        let context = format!("input '{}': ", input.name);
        let size = match input.parameters.get("binary_data_size") {
            None => None,
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    return bad(format!(
                        "{context}binary_data_size must be a non-negative integer, not {v}"
                    ))
                }
            },
        };
        let content = match (size, input.data) {
            (Some(_), Some(_)) => {
                return bad(format!(
                    "{context}has both data and binary_data_size; send one"
                ))
            }
            (None, None) => {
                return bad(format!(
                    "{context}has no data (JSON 'data', or 'binary_data_size' with the binary tensor extension)"
                ))
            }
            (Some(n), None) => {
                let end = offset.checked_add(n).filter(|&end| end <= binary.len());
                let Some(end) = end else {
                    return bad(format!(
                        "{context}binary_data_size {n} is past the end of the body: {} bytes of binary data remain",
                        binary.len() - offset
                    ));
                };
                let slice = binary.slice(offset..end);
                offset = end;
                slice
            }
            (None, Some(data)) => {
                let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
                    BadRequest(format!(
                        "{context}unknown datatype '{}'",
                        input.datatype
                    ))
                })?;
                Bytes::from(json_data(&context, datatype, &input.shape, data)?)
            }
        };
        raw.push(content);
        inputs.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape: input.shape.clone(),
            parameters: parameters(&context, &input.parameters, &["binary_data_size"])?,
            contents: None,
        });
    }
    if offset != binary.len() {
        return bad(format!(
            "{} bytes of binary data follow the inputs' binary_data_size ({offset} bytes)",
            binary.len() - offset
        ));
    }
    let outputs = parsed
        .outputs
        .iter()
        .map(|o| {
            let context = format!("output '{}': ", o.name);
            Ok(InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: parameters(&context, &o.parameters, &["binary_data"])?,
            })
        })
        .collect::<Result<_, BadRequest>>()?;
    Ok(RestInfer {
        request: ModelInferRequest {
            model_name: model.to_string(),
            model_version: version.to_string(),
            id: parsed.id,
            parameters: parameters("", &parsed.parameters, &["binary_data_output"])?,
            inputs,
            outputs,
            raw_input_contents: raw,
        },
        binary_outputs,
    })
}

/// A tensor's JSON `data` (nested arrays or flat) as raw little-endian content of
/// `datatype`, checked against `shape`.
fn json_data(
    context: &str,
    datatype: DataType,
    shape: &[i64],
    data: &RawValue,
) -> Result<Vec<u8>, BadRequest> {
    let expected = element_count(shape).map_err(|e| BadRequest(format!("{context}{e}")))?;
    let mut out = Vec::with_capacity(
        datatype
            .element_size()
            .map_or(0, |s| s.saturating_mul(expected))
            .min(data.get().len().saturating_mul(8)),
    );
    let mut count = 0usize;
    let mut reader = serde_json::Deserializer::from_str(data.get());
    Flat {
        datatype,
        out: &mut out,
        count: &mut count,
    }
    .deserialize(&mut reader)
    .map_err(|e| BadRequest(format!("{context}data: {e}")))?;
    if count != expected {
        return bad(format!(
            "{context}data has {count} elements but shape {shape:?} needs {expected}"
        ));
    }
    Ok(out)
}

/// Visits nested JSON arrays, writing each element as `datatype`'s raw form.
struct Flat<'o> {
    datatype: DataType,
    out: &'o mut Vec<u8>,
    count: &'o mut usize,
}

impl Flat<'_> {
    fn integer<E: de::Error>(&mut self, value: i128) -> Result<(), E> {
        macro_rules! put {
            ($t:ty) => {
                match <$t>::try_from(value) {
                    Ok(v) => self.out.extend_from_slice(&v.to_le_bytes()),
                    Err(_) => {
                        return Err(E::custom(format!(
                            "{value} is out of range for {}",
                            self.datatype
                        )))
                    }
                }
            };
        }
        match self.datatype {
            DataType::Uint8 => put!(u8),
            DataType::Uint16 => put!(u16),
            DataType::Uint32 => put!(u32),
            DataType::Uint64 => put!(u64),
            DataType::Int8 => put!(i8),
            DataType::Int16 => put!(i16),
            DataType::Int32 => put!(i32),
            DataType::Int64 => put!(i64),
            // Integers are valid floats.
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => {
                return self.float(value as f64);
            }
            DataType::Bool | DataType::Bytes => return Err(self.mismatch("a number")),
        }
        *self.count += 1;
        Ok(())
    }

    fn float<E: de::Error>(&mut self, value: f64) -> Result<(), E> {
        match self.datatype {
            DataType::Fp16 => self
                .out
                .extend_from_slice(&f16::from_f64(value).to_le_bytes()),
            DataType::Fp32 => self.out.extend_from_slice(&(value as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&value.to_le_bytes()),
            DataType::Bool | DataType::Bytes => return Err(self.mismatch("a number")),
            _ => {
                return Err(E::custom(format!(
                    "{value} is not an integer, as {} needs",
                    self.datatype
                )))
            }
        }
        *self.count += 1;
        Ok(())
    }

    fn mismatch<E: de::Error>(&self, got: &str) -> E {
        let want = match self.datatype {
            DataType::Bool => "booleans",
            DataType::Bytes => "strings",
            DataType::Fp16 | DataType::Fp32 | DataType::Fp64 => "numbers",
            _ => "integers",
        };
        E::custom(format!(
            "{got} where {} data needs {want} (or arrays of them)",
            self.datatype
        ))
    }
}

impl<'de> DeserializeSeed<'de> for Flat<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flat<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} data: values or arrays of them", self.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Flat {
                datatype: self.datatype,
                out: &mut *self.out,
                count: &mut *self.count,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        if self.datatype != DataType::Bool {
            return Err(self.mismatch("a boolean"));
        }
        self.out.push(u8::from(value));
        *self.count += 1;
        Ok(())
    }

    fn visit_i64<E: de::Error>(mut self, value: i64) -> Result<(), E> {
        self.integer(i128::from(value))
    }

    fn visit_u64<E: de::Error>(mut self, value: u64) -> Result<(), E> {
        self.integer(i128::from(value))
    }

    fn visit_f64<E: de::Error>(mut self, value: f64) -> Result<(), E> {
        self.float(value)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        if self.datatype != DataType::Bytes {
            return Err(self.mismatch("a string"));
        }
        let len = u32::try_from(value.len()).map_err(|_| E::custom("a string over 4 GiB"))?;
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(value.as_bytes());
        *self.count += 1;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.mismatch("null"))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.mismatch("an object"))
    }
}

/// A gRPC parameter as JSON.
fn parameter_json(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::Uint64Param(u)) => json!(u),
        Some(ParameterChoice::DoubleParam(d)) => json!(d),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        None => Value::Null,
    }
}

/// gRPC parameters as a JSON object, keys sorted.
pub fn parameters_json(map: &HashMap<String, InferParameter>) -> Map<String, Value> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| (k.clone(), parameter_json(&map[k])))
        .collect()
}

/// An encoded inference answer: the body, and the length of its JSON part when binary
/// outputs follow it (the `Inference-Header-Content-Length` to send).
#[derive(Debug)]
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

/// The JSON of an inference answer, written straight from the tensors (no tree of JSON
/// values: an output of N elements costs its text, not N boxed values).
#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    outputs: Vec<OutputJsonOut<'a>>,
}

#[derive(Serialize)]
struct OutputJsonOut<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Map::is_empty")]
    parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataJson>,
}

/// Tensor elements as a flat JSON array. BYTES elements are strings (bytes that are not
/// UTF-8 are replaced; ask for binary data to get them exactly); NaN and infinities,
/// which JSON cannot write, are null.
struct DataJson(TensorData);

impl Serialize for DataJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            TensorData::Bool(v) => s.collect_seq(v),
            TensorData::Uint8(v) => s.collect_seq(v),
            TensorData::Uint16(v) => s.collect_seq(v),
            TensorData::Uint32(v) => s.collect_seq(v),
            TensorData::Uint64(v) => s.collect_seq(v),
            TensorData::Int8(v) => s.collect_seq(v),
            TensorData::Int16(v) => s.collect_seq(v),
            TensorData::Int32(v) => s.collect_seq(v),
            TensorData::Int64(v) => s.collect_seq(v),
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| f32::from(*x))),
            // serde_json writes an f32 as its shortest text: 0.1f32 reads 0.1.
            TensorData::Fp32(v) => s.collect_seq(v),
            TensorData::Fp64(v) => s.collect_seq(v),
            TensorData::Bytes(v) => s.collect_seq(v.iter().map(|b| String::from_utf8_lossy(b))),
        }
    }
}

/// Encodes an inference response as JSON, with the outputs `binary` selects as binary
/// sections after it. An error is the server's fault (a worker's malformed answer).
pub fn infer_response(
    response: &ModelInferResponse,
    binary: &BinaryOutputs,
) -> Result<Encoded, String> {
    let raw_outputs = response.raw_output_contents.len() == response.outputs.len();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut sections: Vec<std::borrow::Cow<'_, [u8]>> = Vec::new();
    for (i, output) in response.outputs.iter().enumerate() {
        let datatype = DataType::parse(&output.datatype).ok_or_else(|| {
            format!(
                "output '{}' has an unknown datatype '{}'",
                output.name, output.datatype
            )
        })?;
        let content: std::borrow::Cow<'_, [u8]> = if raw_outputs {
            std::borrow::Cow::Borrowed(&response.raw_output_contents[i][..])
        } else if let Some(contents) = &output.contents {
            std::borrow::Cow::Owned(
                TensorData::from_contents(datatype, &output.shape, contents)
                    .map_err(|e| format!("output '{}': {e}", output.name))?
                    .to_raw(),
            )
        } else {
            return Err(format!("output '{}' came without data", output.name));
        };
        let mut parameters = parameters_json(&output.parameters);
        let data = if binary.binary(&output.name) {
            parameters.insert("binary_data_size".into(), json!(content.len()));
            sections.push(content);
            None
        } else {
            let data = TensorData::from_raw(datatype, &output.shape, &content)
                .map_err(|e| format!("output '{}': {e}", output.name))?;
            Some(DataJson(data))
        };
        outputs.push(OutputJsonOut {
            name: &output.name,
            datatype: &output.datatype,
            shape: &output.shape,
            parameters,
            data,
        });
    }
    let head = ResponseJson {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: &response.id,
        parameters: parameters_json(&response.parameters),
        outputs,
    };
    let mut body = serde_json::to_vec(&head).map_err(|e| e.to_string())?;
    if sections.is_empty() {
        return Ok(Encoded {
            body,
            header_length: None,
        });
    }
    let header_length = body.len();
    body.reserve(sections.iter().map(|s| s.len()).sum());
    for section in sections {
        body.extend_from_slice(&section);
    }
    Ok(Encoded {
        body,
        header_length: Some(header_length),
    })
}

/// ServerMetadata as the REST body of `GET /v2`.
pub fn server_metadata(m: &ServerMetadataResponse) -> Value {
    json!({"name": m.name, "version": m.version, "extensions": m.extensions})
}

fn tensors_json(t: &[model_metadata_response::TensorMetadata]) -> Value {
    Value::Array(
        t.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect(),
    )
}

/// ModelMetadata as the REST body of `GET /v2/models/{m}`.
pub fn model_metadata(m: &ModelMetadataResponse) -> Value {
    json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors_json(&m.inputs),
        "outputs": tensors_json(&m.outputs),
    })
}

fn config_datatype(code: i32) -> &'static str {
    localml_proto::inference::DataType::try_from(code)
        .unwrap_or(localml_proto::inference::DataType::TypeInvalid)
        .as_str_name()
}

/// ModelConfig as Triton's REST body of `GET /v2/models/{m}/config`: the config itself,
/// field names as in model_config.proto, enums by name.
pub fn model_config(c: &ModelConfig) -> Value {
    let tensors = |names: Vec<(&String, i32, &Vec<i64>)>| {
        Value::Array(
            names
                .into_iter()
                .map(|(name, dt, dims)| {
                    json!({"name": name, "data_type": config_datatype(dt), "dims": dims})
                })
                .collect(),
        )
    };
    let mut out = Map::new();
    out.insert("name".into(), json!(c.name));
    out.insert("platform".into(), json!(c.platform));
    out.insert("backend".into(), json!(c.backend));
    out.insert("max_batch_size".into(), json!(c.max_batch_size));
    if let Some(model_version_policy::PolicyChoice::Latest(l)) = c
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        out.insert(
            "version_policy".into(),
            json!({"latest": {"num_versions": l.num_versions}}),
        );
    }
    out.insert(
        "input".into(),
        tensors(
            c.input
                .iter()
                .map(|i| (&i.name, i.data_type, &i.dims))
                .collect(),
        ),
    );
    out.insert(
        "output".into(),
        tensors(
            c.output
                .iter()
                .map(|o| (&o.name, o.data_type, &o.dims))
                .collect(),
        ),
    );
    out.insert(
        "instance_group".into(),
        Value::Array(
            c.instance_group
                .iter()
                .map(|g| {
                    let kind = model_instance_group::Kind::try_from(g.kind)
                        .unwrap_or(model_instance_group::Kind::Auto)
                        .as_str_name();
                    json!({"count": g.count, "kind": kind})
                })
                .collect(),
        ),
    );
    if !c.parameters.is_empty() {
        let parameters: Map<String, Value> = c
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), json!({"string_value": v.string_value})))
            .collect();
        out.insert("parameters".into(), Value::Object(parameters));
    }
    out.insert(
        "default_model_filename".into(),
        json!(c.default_model_filename),
    );
    if let Some(model_config::SchedulingChoice::DynamicBatching(b)) = &c.scheduling_choice {
        out.insert(
            "dynamic_batching".into(),
            json!({
                "preferred_batch_size": b.preferred_batch_size,
                "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            }),
        );
    }
    Value::Object(out)
}

fn duration_json(d: Option<&StatisticDuration>) -> Value {
    let d = d.cloned().unwrap_or_default();
    json!({"count": d.count, "ns": d.ns})
}

/// ModelStatistics as Triton's REST body of `GET /v2/models[/{m}]/stats`.
pub fn statistics(s: &ModelStatisticsResponse) -> Value {
    let models: Vec<Value> = s
        .model_stats
        .iter()
        .map(|m| {
            let i = m.inference_stats.unwrap_or_default();
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": duration_json(i.success.as_ref()),
                    "fail": duration_json(i.fail.as_ref()),
                    "queue": duration_json(i.queue.as_ref()),
                    "compute_input": duration_json(i.compute_input.as_ref()),
                    "compute_infer": duration_json(i.compute_infer.as_ref()),
                    "compute_output": duration_json(i.compute_output.as_ref()),
                    "cache_hit": duration_json(i.cache_hit.as_ref()),
                    "cache_miss": duration_json(i.cache_miss.as_ref()),
                },
                "batch_stats": m.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": duration_json(b.compute_input.as_ref()),
                    "compute_infer": duration_json(b.compute_infer.as_ref()),
                    "compute_output": duration_json(b.compute_output.as_ref()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "model_stats": models })
}

#[cfg(test)]
mod tests;

/// The parameters of Triton's REST repository load (`{"parameters": {...}}`, or an empty
/// body): `file:<version>/<path>` values are base64 (decoded to bytes), strings stay
/// strings (`config`), booleans and integers keep their type.
pub fn repository_parameters(
    body: &[u8],
) -> Result<
    std::collections::HashMap<String, localml_proto::inference::ModelRepositoryParameter>,
    axum::response::Response,
> {
    use base64::Engine;
    use localml_proto::inference::model_repository_parameter::ParameterChoice;
    let bad = |m: String| super::error(axum::http::StatusCode::BAD_REQUEST, m);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the load request is not JSON: {e}")))?;
    let Some(parameters) = json.get("parameters") else {
        return Ok(Default::default());
    };
    let parameters = parameters
        .as_object()
        .ok_or_else(|| bad("\"parameters\" must be an object".into()))?;
    let mut out = std::collections::HashMap::new();
    for (key, value) in parameters {
        let choice = match value {
            Value::String(text) if key.starts_with("file:") => ParameterChoice::BytesParam(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| bad(format!("parameter '{key}' is not base64: {e}")))?,
            ),
            Value::String(text) => ParameterChoice::StringParam(text.clone()),
            Value::Bool(b) => ParameterChoice::BoolParam(*b),
            Value::Number(n) if n.as_i64().is_some() => {
                ParameterChoice::Int64Param(n.as_i64().unwrap_or_default())
            }
            other => {
                return Err(bad(format!(
                    "parameter '{key}' is {other}: give a string, a boolean or an integer"
                )))
            }
        };
        out.insert(
            key.clone(),
            localml_proto::inference::ModelRepositoryParameter {
                parameter_choice: Some(choice),
            },
        );
    }
    Ok(out)
}
