//! The inference hop without re-encoding tensors: the scheduler decodes only a request's
//! head (model, version, id, parameters: what routing and keys need) and forwards the
//! bytes it received to the worker; the worker's answer goes back to the client as the
//! bytes it sent. Inputs, requested outputs and raw contents are never decoded here.
//!
//! - [`RequestHead`]: fields 1-4 of `inference.ModelInferRequest`. Decoding a whole
//!   request as a head skips the other fields (protobuf skips fields a message does not
//!   declare: a length and a jump, not a parse).
//! - [`Forwarded`]: a request's bytes and its head. A parameter the scheduler sets (the
//!   caller's tenant) is appended as one more map entry: protobuf messages merge when
//!   concatenated, and a later map entry for a key replaces an earlier one.
//! - [`ForwardingInference`]: `inference.GRPCInferenceService` with `ModelInfer` served
//!   through [`Forwarded`]; every other method goes to the generated service.
//! - [`WorkerClient`]: the scheduler's `ModelInfer` call to a worker, with bytes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use localml_proto::inference::{InferParameter, ModelInferRequest, ModelInferResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::Status;

/// Room for what the scheduler appends to a request it forwards (a tenant parameter;
/// tenant names are far shorter).
const APPENDED_BYTES: usize = 4096;

/// The gRPC path of `ModelInfer`.
pub const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// What the scheduler reads of a `ModelInferRequest` (same field numbers; the unit tests
/// check them against the generated message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestHead {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
}

/// A request as it arrived (`parts`, concatenated, are its encoding) and its head.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub head: RequestHead,
    parts: Vec<Bytes>,
}

impl Forwarded {
    /// A request received as `bytes`: only its head is decoded.
    pub fn from_bytes(bytes: Bytes) -> Result<Forwarded, prost::DecodeError> {
        Ok(Forwarded {
            head: RequestHead::decode(bytes.clone())?,
            parts: vec![bytes],
        })
    }

    /// A request built in process (REST, jobs, streams): encoded once.
    pub fn from_request(request: &ModelInferRequest) -> Forwarded {
        Forwarded {
            head: RequestHead {
                model_name: request.model_name.clone(),
                model_version: request.model_version.clone(),
                id: request.id.clone(),
                parameters: request.parameters.clone(),
            },
            parts: vec![Bytes::from(request.encode_to_vec())],
        }
    }

    /// The size of the encoded request.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets a request parameter, in the head and in the bytes sent on (appended as a map
    /// entry, which replaces an earlier one for the same key).
    pub fn set_parameter(&mut self, key: &str, value: InferParameter) {
        let entry = RequestHead {
            parameters: HashMap::from([(key.to_string(), value.clone())]),
            ..Default::default()
        };
        self.parts.push(Bytes::from(entry.encode_to_vec()));
        self.head.parameters.insert(key.to_string(), value);
    }

    /// The whole request, decoded (tests, and where the scheduler needs the tensors).
    pub fn decode(&self) -> Result<ModelInferRequest, prost::DecodeError> {
        let mut request = ModelInferRequest::default();
        for part in &self.parts {
            request.merge(part.clone())?;
        }
        Ok(request)
    }
}

/// Decodes a worker's answer (bytes as received) for callers that need its tensors.
pub fn decode_response(bytes: Bytes) -> Result<ModelInferResponse, Status> {
    ModelInferResponse::decode(bytes).map_err(|e| {
        Status::internal(format!(
            "the worker's answer is not a valid ModelInferResponse: {e}"
        ))
    })
}

/// tonic's own code for a message that does not decode (as its prost codec answers).
fn decode_error(e: prost::DecodeError) -> Status {
    Status::internal(e.to_string())
}

/// Writes every part of a message into tonic's buffer (the one copy gRPC framing needs).
fn put_parts(parts: &[Bytes], dst: &mut EncodeBuf<'_>) {
    for part in parts {
        dst.put_slice(part);
    }
}

/// The scheduler's side of a client's `ModelInfer`: a [`Forwarded`] request in, the
/// worker's answer out, as bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCodec;

/// The scheduler's side of its call to a worker: a [`Forwarded`] request out, the
/// answer's bytes in.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientCodec;

#[derive(Debug, Default, Clone, Copy)]
pub struct BytesEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct BytesDecoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardedEncoder;

#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardedDecoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        put_parts(std::slice::from_ref(&item), dst);
        Ok(())
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        // tonic's buffer is a BytesMut: this splits it, no copy.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Encoder for ForwardedEncoder {
    type Item = Forwarded;
    type Error = Status;
    fn encode(&mut self, item: Forwarded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        put_parts(&item.parts, dst);
        Ok(())
    }
}

impl Decoder for ForwardedDecoder {
    type Item = Forwarded;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Forwarded>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Forwarded::from_bytes(bytes).map(Some).map_err(decode_error)
    }
}

impl Codec for ServerCodec {
    type Encode = Bytes;
    type Decode = Forwarded;
    type Encoder = BytesEncoder;
    type Decoder = ForwardedDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> ForwardedDecoder {
        ForwardedDecoder
    }
}

impl Codec for ClientCodec {
    type Encode = Forwarded;
    type Decode = Bytes;
    type Encoder = ForwardedEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> ForwardedEncoder {
        ForwardedEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// A worker's inference endpoint, called with bytes.
#[derive(Debug, Clone)]
pub struct WorkerClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl WorkerClient {
    pub fn new(channel: tonic::transport::Channel, max_message_bytes: usize) -> WorkerClient {
        WorkerClient {
            grpc: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(max_message_bytes)
                // A request the client port accepted, plus the parameter the scheduler
                // may append (the caller's tenant).
                .max_encoding_message_size(max_message_bytes.saturating_add(APPENDED_BYTES)),
        }
    }

    /// `ModelInfer` on the worker: the request's bytes out, the answer's bytes back.
    pub async fn model_infer(
        &mut self,
        request: tonic::Request<Forwarded>,
    ) -> Result<tonic::Response<Bytes>, Status> {
        // As tonic's generated client does.
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(MODEL_INFER);
        let mut request = request;
        request.extensions_mut().insert(tonic::GrpcMethod::new(
            "inference.GRPCInferenceService",
            "ModelInfer",
        ));
        self.grpc.unary(request, path, ClientCodec).await
    }
}

/// Serves one `ModelInfer` call with a [`Forwarded`] request (the scheduler's
/// implementation: [`crate::services::inference::SchedulerInference::forward`]).
pub trait ForwardInfer: Send + Sync + 'static {
    fn forward(
        &self,
        request: tonic::Request<Forwarded>,
    ) -> impl std::future::Future<Output = Result<tonic::Response<Bytes>, Status>> + Send;
}

struct Handler<F>(Arc<F>);

impl<F: ForwardInfer> tonic::server::UnaryService<Forwarded> for Handler<F> {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;
    fn call(&mut self, request: tonic::Request<Forwarded>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.forward(request).await })
    }
}

/// `inference.GRPCInferenceService`: `ModelInfer` through `forward`, the rest through
/// `inner` (the generated server).
pub struct ForwardingInference<S, F> {
    inner: S,
    forward: Arc<F>,
    max_message_bytes: usize,
}

impl<S: Clone, F> Clone for ForwardingInference<S, F> {
    fn clone(&self) -> Self {
        ForwardingInference {
            inner: self.inner.clone(),
            forward: Arc::clone(&self.forward),
            max_message_bytes: self.max_message_bytes,
        }
    }
}

impl<S, F> ForwardingInference<S, F> {
    pub fn new(inner: S, forward: Arc<F>, max_message_bytes: usize) -> Self {
        ForwardingInference {
            inner,
            forward,
            max_message_bytes,
        }
    }
}

impl<S, F> tonic::server::NamedService for ForwardingInference<S, F> {
    const NAME: &'static str = "inference.GRPCInferenceService";
}

impl<S, F, B> Service<http::Request<B>> for ForwardingInference<S, F>
where
    S: Service<
        http::Request<B>,
        Response = http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future = BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>,
    >,
    F: ForwardInfer,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != MODEL_INFER {
            return self.inner.call(request);
        }
        let handler = Handler(Arc::clone(&self.forward));
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ServerCodec)
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.unary(handler, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    use localml_proto::inference::model_infer_request::{
        InferInputTensor, InferRequestedOutputTensor,
    };
    use localml_proto::inference::InferTensorContents;

    use super::*;

    fn string(s: &str) -> InferParameter {
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(s.into())),
        }
    }

    fn request() -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            model_version: "2".into(),
            id: "req-1".into(),
            parameters: HashMap::from([
                ("localml.tenant".to_string(), string("asked")),
                ("other".to_string(), string("kept")),
            ]),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![1.0, 2.0],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            outputs: vec![InferRequestedOutputTensor {
                name: "y".into(),
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from_static(&[1, 2, 3, 4])],
        }
    }

    #[test]
    fn the_head_has_the_request_s_field_numbers() {
        let full = request();
        let forwarded = Forwarded::from_bytes(Bytes::from(full.encode_to_vec())).expect("decodes");
        assert_eq!(forwarded.head.model_name, "m");
        assert_eq!(forwarded.head.model_version, "2");
        assert_eq!(forwarded.head.id, "req-1");
        assert_eq!(forwarded.head.parameters, full.parameters);
        // The bytes sent on are the request, whole.
        assert_eq!(forwarded.decode().expect("whole"), full);
        assert_eq!(forwarded.len(), full.encoded_len());
        // And a head encodes as a request with only those fields.
        let as_request = ModelInferRequest::decode(forwarded.head.encode_to_vec().as_slice())
            .expect("a head is a request");
        assert_eq!(as_request.model_name, "m");
        assert_eq!(as_request.parameters, full.parameters);
        assert!(as_request.inputs.is_empty());
    }

    #[test]
    fn a_parameter_set_on_the_way_replaces_the_client_s() {
        let full = request();
        let mut forwarded = Forwarded::from_request(&full);
        forwarded.set_parameter("localml.tenant", string("bound"));
        let sent = forwarded.decode().expect("merges");
        assert_eq!(sent.parameters["localml.tenant"], string("bound"));
        assert_eq!(sent.parameters["other"], string("kept"));
        assert_eq!(sent.inputs, full.inputs);
        assert_eq!(sent.raw_input_contents, full.raw_input_contents);
        assert_eq!(forwarded.head.parameters["localml.tenant"], string("bound"));
    }

    #[test]
    fn bytes_that_are_not_a_request_are_refused() {
        let err = Forwarded::from_bytes(Bytes::from_static(&[0x0a, 0xff])).expect_err("cut");
        assert!(decode_error(err).code() == tonic::Code::Internal);
        assert!(decode_response(Bytes::from_static(&[0x0a, 0x05, b'a'])).is_err());
    }
}
