//! Generates the gRPC code for the Open Inference Protocol (with Triton's extensions)
//! and for localml.v1. Needs `protoc` (Debian: protobuf-compiler); `scripts/deps.sh`
//! installs it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "inference/grpc_service.proto",
        "localml/v1/backup.proto",
        "localml/v1/catalog.proto",
        "localml/v1/cluster.proto",
        "localml/v1/jobs.proto",
        "localml/v1/keys.proto",
        "localml/v1/trust.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-changed=inference/model_config.proto");
    tonic_prost_build::configure()
        // Tensor payloads stay `Bytes` so the scheduler forwards them without copies.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        // Model file chunks are written to disk and read from it without a copy.
        .bytes(".localml.v1.BlobChunk.data")
        .compile_protos(&protos, &["."])?;
    Ok(())
}
