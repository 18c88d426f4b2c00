//! Answers an oversized message with RESOURCE_EXHAUSTED, as the gRPC spec asks, instead
//! of tonic's OUT_OF_RANGE. Tonic rejects the message while decoding, before any handler
//! runs, so the rewrite happens on the HTTP response, in this one small tower layer.

use std::task::{Context, Poll};

use futures::future::{FutureExt, Map};
use tonic::codegen::http;
use tonic::{Code, Status};

/// The prefix of tonic's message for a too-large message.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

fn is_size_error(code: Code, message: &str) -> bool {
    code == Code::OutOfRange && message.starts_with(TONIC_TOO_LARGE)
}

/// Converts tonic's size error to RESOURCE_EXHAUSTED; other statuses pass unchanged.
pub fn size_limit_status(status: Status) -> Status {
    if is_size_error(status.code(), status.message()) {
        Status::resource_exhausted(status.message().replacen(
            TONIC_TOO_LARGE,
            "message too large",
            1,
        ))
    } else {
        status
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SizeLimitLayer;

impl<S> tower_layer::Layer<S> for SizeLimitLayer {
    type Service = SizeLimit<S>;
    fn layer(&self, inner: S) -> SizeLimit<S> {
        SizeLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct SizeLimit<S> {
    inner: S,
}

fn rewrite<B, E>(result: Result<http::Response<B>, E>) -> Result<http::Response<B>, E> {
    result.map(|mut response| {
        let headers = response.headers_mut();
        let code = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .map(Code::from_i32);
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        if let Some(code) = code {
            if is_size_error(code, &message) {
                let status = size_limit_status(Status::new(code, message));
                headers.remove("grpc-message");
                headers.remove("grpc-status");
                let _ = status.add_header(headers);
            }
        }
        response
    })
}

/// grpc-message is percent-encoded; the size message is ASCII with spaces and digits.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type RewriteFn<B, E> = fn(Result<http::Response<B>, E>) -> Result<http::Response<B>, E>;

impl<S, Req, B> tower_service::Service<Req> for SizeLimit<S>
where
    S: tower_service::Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = Map<S::Future, RewriteFn<B, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.inner
            .call(request)
            .map(rewrite as RewriteFn<B, S::Error>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_only_tonic_size_errors() {
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        );
        let converted = size_limit_status(big);
        assert_eq!(converted.code(), Code::ResourceExhausted);
        assert!(converted
            .message()
            .contains("found 9 bytes, the limit is: 4 bytes"));
        let other = size_limit_status(Status::out_of_range("index 7"));
        assert_eq!(other.code(), Code::OutOfRange);
    }

    #[test]
    fn decodes_percent_encoding() {
        assert_eq!(percent_decode("a%20b%3A"), "a b:");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
