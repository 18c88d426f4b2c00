//! Decoded tensors to ONNX Runtime values and back, copying once each way.

use super::*;

pub(super) fn usize_shape(shape: &[i64]) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

/// Converts decoded tensor data into an ONNX Runtime value.
pub(super) fn to_value(t: NamedTensor) -> ort::Result<DynValue> {
    let shape = usize_shape(&t.shape);
    Ok(match t.data {
        TensorData::Bool(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Uint8(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Uint16(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Uint32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Uint64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int8(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int16(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp16(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp32(v) => Tensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp64(v) => Tensor::from_array((shape, v))?.into_dyn(),
        // Any bytes, NUL included (Triton's BYTES are byte strings, not text).
        TensorData::Bytes(v) => localml_ort_bytes::bytes_tensor(&shape, &v)?,
    })
}

/// Converts an ONNX Runtime output into tensor data.
pub(super) fn from_value(name: &str, value: &DynValue) -> Result<NamedTensor, RunError> {
    let err = |source: ort::Error| RunError::Extract {
        name: name.to_string(),
        source,
    };
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(RunError::OutputNotATensor {
                name: name.to_string(),
                kind: format!("{other:?}"),
            })
        }
    };
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (
                shape.iter().copied().collect::<Vec<i64>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => extract!(bool, Bool),
        TensorElementType::Uint8 => extract!(u8, Uint8),
        TensorElementType::Uint16 => extract!(u16, Uint16),
        TensorElementType::Uint32 => extract!(u32, Uint32),
        TensorElementType::Uint64 => extract!(u64, Uint64),
        TensorElementType::Int8 => extract!(i8, Int8),
        TensorElementType::Int16 => extract!(i16, Int16),
        TensorElementType::Int32 => extract!(i32, Int32),
        TensorElementType::Int64 => extract!(i64, Int64),
        TensorElementType::Float16 => extract!(half::f16, Fp16),
        TensorElementType::Float32 => extract!(f32, Fp32),
        TensorElementType::Float64 => extract!(f64, Fp64),
        TensorElementType::String => {
            let shape = match value.dtype() {
                ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
                _ => Vec::new(),
            };
            let elements = localml_ort_bytes::tensor_bytes(value).map_err(err)?;
            (shape, TensorData::Bytes(elements))
        }
        other => {
            return Err(RunError::UnsupportedOutput {
                name: name.to_string(),
                ty: other,
            })
        }
    };
    Ok(NamedTensor {
        name: name.to_string(),
        shape,
        data,
    })
}
