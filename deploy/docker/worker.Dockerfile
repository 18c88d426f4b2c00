# localml CPU worker with ONNX Runtime 1.32.0 (the library from the onnxruntime wheel).
#   docker build -f deploy/docker/worker.Dockerfile -t ghcr.io/localml/localml-worker:0.1.0 .
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler=3.21.12-3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p localml-worker --bin localml-worker \
 && cp target/release/localml-worker /localml-worker

FROM python:3.11.11-slim-bookworm AS onnxruntime
RUN pip download --no-deps --only-binary=:all: --dest /wheels onnxruntime==1.32.0 \
 && python -c "import zipfile, glob; zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).extractall('/wheel')" \
 && mkdir -p /opt/onnxruntime/lib \
 && cp /wheel/onnxruntime/capi/libonnxruntime.so.1.32.0 /opt/onnxruntime/lib/

FROM debian:12.12-slim
RUN useradd --uid 10001 --user-group --no-create-home localml
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY --from=build /localml-worker /usr/local/bin/localml-worker
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.32.0
USER 10001:10001
# 8101 inference (OIP gRPC, from the scheduler), 9091 /metrics /healthz /readyz
EXPOSE 8101 9091
ENTRYPOINT ["/usr/local/bin/localml-worker"]
CMD ["--listen=0.0.0.0:8101", "--http-listen=0.0.0.0:9091", "--models=/models"]
