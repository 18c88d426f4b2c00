# localml scheduler. Build from the repository root:
#   docker build -f deploy/docker/scheduler.Dockerfile -t ghcr.io/localml/localml-scheduler:0.1.0 .
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler=3.21.12-3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p localml-scheduler --bin localml-scheduler \
 && cp target/release/localml-scheduler /localml-scheduler

FROM debian:12.12-slim
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/localml localml \
 && mkdir -p /var/lib/localml && chown 10001:10001 /var/lib/localml
COPY --from=build /localml-scheduler /usr/local/bin/localml-scheduler
USER 10001:10001
# 8001 clients (OIP / Triton gRPC), 8002 workers, 9090 /metrics /healthz /readyz
EXPOSE 8000 8001 8002 9090
ENTRYPOINT ["/usr/local/bin/localml-scheduler"]
CMD ["--listen=0.0.0.0:8001", "--cluster-listen=0.0.0.0:8002", "--http-listen=0.0.0.0:9090", "--rest-listen=0.0.0.0:8000", "--data-dir=/var/lib/localml"]
