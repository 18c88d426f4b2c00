# localml GPU worker: ONNX Runtime's CUDA build (the onnxruntime-gpu 1.31.1 wheel, the newest
# on PyPI; a CUDA 13 build per its dependencies) on the CUDA 13 runtime with cuDNN 9.
# Needs an NVIDIA driver recent enough for CUDA 13 on the host. The NVIDIA driver comes from the
# host (NVIDIA container toolkit; `runtimeClassName: nvidia` on k3s).
# Ubuntu 24.04 (glibc 2.39) runs the binary built on Debian 12 (glibc 2.36).
#   docker build -f deploy/docker/worker-gpu.Dockerfile -t ghcr.io/localml/localml-worker-gpu:0.1.0 .
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler=3.21.12-3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p localml-worker --bin localml-worker \
 && cp target/release/localml-worker /localml-worker

FROM python:3.11.11-slim-bookworm AS onnxruntime
RUN pip download --no-deps --only-binary=:all: --dest /wheels onnxruntime-gpu==1.31.1 \
 && python -c "import zipfile, glob; zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).extractall('/wheel')" \
 && mkdir -p /opt/onnxruntime/lib \
 && cp /wheel/onnxruntime/capi/libonnxruntime*.so* /opt/onnxruntime/lib/

FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
RUN useradd --uid 10001 --user-group --no-create-home localml
COPY --from=onnxruntime /opt/onnxruntime /opt/onnxruntime
COPY --from=build /localml-worker /usr/local/bin/localml-worker
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.31.1 \
    LD_LIBRARY_PATH=/opt/onnxruntime/lib:/usr/local/cuda/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
EXPOSE 8101 9091
ENTRYPOINT ["/usr/local/bin/localml-worker"]
CMD ["--listen=0.0.0.0:8101", "--http-listen=0.0.0.0:9091", "--models=/models"]
