//! Client-side helpers over the Open Inference Protocol: connect, build a request from
//! tensors, decode a response. Used by the CLI, the integration tests and the benchmark.

use std::time::Duration;

use localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use localml_proto::inference::model_infer_request::InferInputTensor;
use localml_proto::inference::{ModelInferRequest, ModelInferResponse};
use localml_proto::localml::v1::admin_client::AdminClient;
use localml_proto::tensor::{DataType, TensorData, TensorError};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::{InterceptedService, Interceptor};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is neither `host:port` nor a URL tonic accepts.
    #[error("invalid server address '{address}'")]
    InvalidAddress {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The API key holds characters a header cannot carry (the key is not repeated).
    #[error("invalid API key: it must be printable ASCII (check --key, LOCALML_KEY or the credentials file)")]
    InvalidKey,
    /// A key for a plain (not `https://`) address on another host.
    #[error("not sending an API key in clear text to {address}: use --server https://{address} (a scheduler reachable from the LAN serves TLS); for one started with --insecure, send no key")]
    KeyInClear { address: String },
    /// An `https://` address, but no CA to verify the scheduler with.
    #[error("{address} serves TLS: the CLI needs the cluster CA to verify it; get it with `localml ca --server {address} > ca.pem` (compare the sha256 it prints with the scheduler's), then pass --ca ca.pem, set LOCALML_CA, or put `ca: /path/to/ca.pem` in the credentials file")]
    NoCa { address: String },
    /// Nothing accepted a connection at the address within the timeout.
    #[error("cannot connect to {address}")]
    Unreachable {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Why a response's outputs could not be decoded ([`outputs`], [`print_outputs`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OutputError {
    /// The output's datatype is not one of the Open Inference Protocol's.
    #[error("output '{name}' has unknown datatype {datatype}")]
    UnknownDatatype { name: String, datatype: String },
    /// The output has neither raw contents nor typed contents.
    #[error("output '{name}' has no data")]
    NoData { name: String },
    /// The output's data does not match its shape and datatype.
    #[error("output '{name}'")]
    Data {
        name: String,
        #[source]
        source: TensorError,
    },
}

/// A named tensor on the client side.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Largest message the client sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// A connection to the scheduler that sends the caller's API key, if any, with every
/// call (`authorization: Bearer KEY`).
pub type Connection = InterceptedService<Channel, KeyHeader>;

/// Adds `authorization: Bearer KEY` to each call; no header without a key.
#[derive(Clone, Default)]
pub struct KeyHeader(Option<MetadataValue<Ascii>>);

impl Interceptor for KeyHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The key this process sends when it connects with [`connect`] (set once by the CLI).
static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Sets the API key [`connect`] sends (first call wins).
pub fn set_key(key: Option<String>) {
    let _ = KEY.set(key);
}

/// The cluster CA (PEM) that verifies an `https://` scheduler (set once by the CLI).
static CA: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Sets the CA [`connect`] and [`connect_with_key`] verify `https://` addresses with
/// (first call wins).
pub fn set_ca(pem: Option<String>) {
    let _ = CA.set(pem);
}

/// Connects to `address` (`host:port` or a URL; `https://` for TLS), failing after
/// `timeout`, sending the key given to [`set_key`], if any.
pub async fn connect(address: &str, timeout: Duration) -> Result<Connection, ConnectError> {
    let key = KEY.get().cloned().flatten();
    connect_with_key(address, timeout, key.as_deref()).await
}

/// Connects to `address`, sending `key` with every call; an `https://` address is
/// verified with the CA given to [`set_ca`].
pub async fn connect_with_key(
    address: &str,
    timeout: Duration,
    key: Option<&str>,
) -> Result<Connection, ConnectError> {
    let ca = CA.get().cloned().flatten();
    connect_with(address, timeout, key, ca.as_deref()).await
}

/// Whether `server` (host:port or URL) names this PC.
pub fn is_local(server: &str) -> bool {
    let rest = server.split("://").last().unwrap_or(server);
    let host = rest
        .rsplit_once(':')
        .map_or(rest, |(h, _)| h)
        .trim_matches(['[', ']']);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects to `address`, sending `key` with every call; an `https://` address is
/// verified with `ca_pem` (the cluster CA, or the CA of the operator's certificate).
pub async fn connect_with(
    address: &str,
    timeout: Duration,
    key: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<Connection, ConnectError> {
    let header = match key {
        Some(k) => Some(
            MetadataValue::try_from(format!("Bearer {}", k.trim()))
                .map_err(|_| ConnectError::InvalidKey)?,
        ),
        None => None,
    };
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let invalid = |source| ConnectError::InvalidAddress {
        address: address.to_string(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(uri.clone()).map_err(invalid)?;
    // A key would cross the LAN in clear text (before any answer could say TLS is needed).
    if key.is_some() && !uri.starts_with("https://") && !is_local(address) {
        return Err(ConnectError::KeyInClear {
            address: address.to_string(),
        });
    }
    if uri.starts_with("https://") {
        let ca = ca_pem.ok_or_else(|| ConnectError::NoCa {
            address: address.to_string(),
        })?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .map_err(invalid)?;
    }
    let channel = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            address: address.to_string(),
            source,
        })?;
    Ok(InterceptedService::new(channel, KeyHeader(header)))
}

pub fn inference_client(channel: Connection) -> GrpcInferenceServiceClient<Connection> {
    GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn admin_client(channel: Connection) -> AdminClient<Connection> {
    AdminClient::new(channel)
}

/// A request carrying every input as raw bytes (what Triton's clients send).
pub fn request(model: &str, version: &str, inputs: &[Tensor]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        inputs: inputs
            .iter()
            .map(|t| InferInputTensor {
                name: t.name.clone(),
                datatype: t.data.datatype().as_str().to_string(),
                shape: t.shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|t| t.data.to_raw().into()).collect(),
        ..Default::default()
    }
}

/// Decodes a response's outputs, raw or typed.
pub fn outputs(response: &ModelInferResponse) -> Result<Vec<Tensor>, OutputError> {
    response
        .outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let datatype =
                DataType::parse(&o.datatype).ok_or_else(|| OutputError::UnknownDatatype {
                    name: o.name.clone(),
                    datatype: o.datatype.clone(),
                })?;
            let data = match (response.raw_output_contents.get(i), &o.contents) {
                (Some(raw), _) => TensorData::from_raw(datatype, &o.shape, raw),
                (None, Some(contents)) => TensorData::from_contents(datatype, &o.shape, contents),
                (None, None) => {
                    return Err(OutputError::NoData {
                        name: o.name.clone(),
                    })
                }
            }
            .map_err(|source| OutputError::Data {
                name: o.name.clone(),
                source,
            })?;
            Ok(Tensor {
                name: o.name.clone(),
                shape: o.shape.clone(),
                data,
            })
        })
        .collect()
}

pub use localml_proto::parameters::served_by;

/// Prints a response's outputs, `show` values each.
pub fn print_outputs(response: &ModelInferResponse, show: usize) -> Result<(), OutputError> {
    for out in outputs(response)? {
        println!(
            "  {} {} {:?} = {}",
            out.name,
            out.data.datatype(),
            out.shape,
            preview(&out.data, show)
        );
    }
    Ok(())
}

/// Random data for a tensor spec; dynamic dimensions become 1. Integers are kept small
/// (0..10) so index-like inputs (token ids) stay in range.
pub fn random_tensor(name: &str, datatype: DataType, shape: &[i64]) -> Tensor {
    let shape: Vec<i64> = shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
    let n = shape.iter().product::<i64>().max(0) as usize;
    let small = || fastrand::u8(0..10);
    let data = match datatype {
        DataType::Bool => TensorData::Bool((0..n).map(|_| fastrand::bool()).collect()),
        DataType::Uint8 => TensorData::Uint8((0..n).map(|_| small()).collect()),
        DataType::Uint16 => TensorData::Uint16((0..n).map(|_| u16::from(small())).collect()),
        DataType::Uint32 => TensorData::Uint32((0..n).map(|_| u32::from(small())).collect()),
        DataType::Uint64 => TensorData::Uint64((0..n).map(|_| u64::from(small())).collect()),
        DataType::Int8 => TensorData::Int8((0..n).map(|_| small() as i8).collect()),
        DataType::Int16 => TensorData::Int16((0..n).map(|_| i16::from(small())).collect()),
        DataType::Int32 => TensorData::Int32((0..n).map(|_| i32::from(small())).collect()),
        DataType::Int64 => TensorData::Int64((0..n).map(|_| i64::from(small())).collect()),
        DataType::Fp16 => TensorData::Fp16(
            (0..n)
                .map(|_| half::f16::from_f32(fastrand::f32()))
                .collect(),
        ),
        DataType::Fp32 => TensorData::Fp32((0..n).map(|_| fastrand::f32()).collect()),
        DataType::Fp64 => TensorData::Fp64((0..n).map(|_| fastrand::f64()).collect()),
        DataType::Bytes => {
            TensorData::Bytes((0..n).map(|i| format!("text-{i}").into_bytes()).collect())
        }
    };
    Tensor {
        name: name.to_string(),
        shape,
        data,
    }
}

/// A short printable summary of tensor values (first `limit` elements).
pub fn preview(data: &TensorData, limit: usize) -> String {
    let items: Vec<String> = match data {
        TensorData::Bytes(v) => v
            .iter()
            .take(limit)
            .map(|b| format!("{:?}", String::from_utf8_lossy(b)))
            .collect(),
        other => other
            .to_f64()
            .unwrap_or_default()
            .into_iter()
            .take(limit)
            .map(|x| {
                format!("{x:.6}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            })
            .collect(),
    };
    let more = if data.len() > limit {
        format!(", … ({} values)", data.len())
    } else {
        String::new()
    };
    format!("[{}{more}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip() {
        let t = Tensor {
            name: "x".into(),
            shape: vec![1, 2],
            data: TensorData::Fp32(vec![1.0, 2.0]),
        };
        let req = request("m", "", std::slice::from_ref(&t));
        assert_eq!(req.inputs[0].datatype, "FP32");
        // Echo the request as a response and decode it.
        let resp = ModelInferResponse {
            outputs: vec![
                localml_proto::inference::model_infer_response::InferOutputTensor {
                    name: "x".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 2],
                    ..Default::default()
                },
            ],
            raw_output_contents: req.raw_input_contents.clone(),
            ..Default::default()
        };
        assert_eq!(outputs(&resp).expect("decodes"), vec![t]);
        assert_eq!(served_by(&resp), None);
    }

    #[test]
    fn random_tensors_fill_dynamic_dims() {
        let t = random_tensor("ids", DataType::Int64, &[-1, 16]);
        assert_eq!(t.shape, vec![1, 16]);
        assert_eq!(t.data.len(), 16);
        assert_eq!(
            preview(&TensorData::Fp32(vec![0.5, 1.0, 2.25]), 2),
            "[0.5, 1, … (3 values)]"
        );
    }
}
