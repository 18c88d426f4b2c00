//! Building an ONNX Runtime session for a model version: execution providers in the
//! model's order with CPU fallback, threads, and the signature read from the graph.

use super::*;

pub(super) fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

pub(super) fn specs(
    outlets: &[ort::value::Outlet],
    what: &'static str,
) -> Result<Vec<TensorSpec>, LoadError> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => {
                let datatype = datatype_of(*ty).ok_or_else(|| LoadError::UnsupportedType {
                    what,
                    name: o.name().to_string(),
                    ty: *ty,
                })?;
                Ok(TensorSpec {
                    name: o.name().to_string(),
                    datatype,
                    shape: shape.iter().copied().collect(),
                })
            }
            other => Err(LoadError::NotATensor {
                what,
                name: o.name().to_string(),
                kind: format!("{other:?}"),
            }),
        })
        .collect()
}

/// Applies config overrides: `dims` exclude the batch dimension when batching.
pub(super) fn apply_overrides(
    specs: &mut [TensorSpec],
    overrides: &[TensorOverride],
    batching: bool,
) -> Result<(), LoadError> {
    for o in overrides {
        let spec = specs
            .iter_mut()
            .find(|s| s.name == o.name)
            .ok_or_else(|| LoadError::UnknownTensor(o.name.clone()))?;
        let model_dims = if batching {
            &spec.shape[1.min(spec.shape.len())..]
        } else {
            &spec.shape[..]
        };
        let compatible = model_dims.len() == o.dims.len()
            && model_dims
                .iter()
                .zip(&o.dims)
                .all(|(&m, &c)| m < 0 || m == c);
        if !compatible {
            return Err(LoadError::Dims {
                name: o.name.clone(),
                config: o.dims.clone(),
                model: model_dims.to_vec(),
            });
        }
        let mut shape = if batching { vec![-1] } else { Vec::new() };
        shape.extend_from_slice(&o.dims);
        spec.shape = shape;
    }
    Ok(())
}

/// Resident set size of this process, from /proc (0 where it cannot be read).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Creates one session, registering the preferred providers in order. Returns the session
/// and the provider it runs on.
pub(super) fn build_session(
    env: &ort::environment::Environment,
    source: &ModelSource,
    providers: &[String],
) -> Result<(Session, String), LoadError> {
    use ort::ep::ExecutionProvider;
    // Threads come from the environment's global pool (runtime::Threading).
    let mut builder = Session::builder(env)?;
    let mut chosen = CPU_PROVIDER.to_string();
    for provider in providers {
        let attempt = match provider.as_str() {
            "cuda" => Some((
                "CUDAExecutionProvider",
                ort::ep::CUDA::default().register(&mut builder),
            )),
            "tensorrt" => Some((
                "TensorrtExecutionProvider",
                ort::ep::TensorRT::default().register(&mut builder),
            )),
            "rocm" => Some((
                "ROCMExecutionProvider",
                ort::ep::ROCm::default().register(&mut builder),
            )),
            "openvino" => Some((
                "OpenVINOExecutionProvider",
                ort::ep::OpenVINO::default().register(&mut builder),
            )),
            _ => None,
        };
        match attempt {
            Some((name, Ok(()))) => {
                chosen = name.to_string();
                break;
            }
            Some((name, Err(e))) => {
                tracing::warn!(model = %source.name, provider = name, error = %e, "GPU execution provider failed to initialise; falling back");
            }
            None => break, // "cpu": nothing to register, ONNX Runtime's default.
        }
    }
    let session = builder.commit_from_file(&source.path)?;
    Ok((session, chosen))
}

/// Whether a config provider name (`cuda`) names an ONNX Runtime provider
/// (`CUDAExecutionProvider`).
pub(super) fn provider_matches(config_name: &str, ort_name: &str) -> bool {
    ort_name.to_ascii_lowercase().starts_with(config_name)
}

/// Provider names known to the config.
pub const PROVIDER_NAMES: [&str; 5] = ["cuda", "tensorrt", "rocm", "openvino", "cpu"];
