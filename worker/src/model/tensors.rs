//! Request tensors to ONNX Runtime values and back, copying once each way: a raw input
//! is decoded from the request's bytes into the vector ONNX Runtime takes (on the thread
//! that runs the model, not the async runtime's); an output is written from ONNX
//! Runtime's buffer into the raw bytes the response carries.

use bytes::Bytes;
use localml_proto::tensor::{le_bytes, TensorError};

use super::*;

/// An input checked against the model's signature ([`crate::validate`]) whose data is
/// decoded only when the model runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    pub data: InputData,
}

/// An input's data: the request's raw bytes (length or framing checked), or elements
/// already decoded (typed `contents`, tensors built in process).
#[derive(Debug, Clone, PartialEq)]
pub enum InputData {
    Raw(Bytes),
    Decoded(TensorData),
}

impl From<NamedTensor> for Input {
    fn from(t: NamedTensor) -> Input {
        Input {
            name: t.name,
            shape: t.shape,
            datatype: t.data.datatype(),
            data: InputData::Decoded(t.data),
        }
    }
}

impl Input {
    /// The tensor to run: raw bytes decoded in one pass (the only copy).
    pub fn decode(self) -> Result<NamedTensor, TensorError> {
        let data = match self.data {
            InputData::Raw(raw) => TensorData::from_raw(self.datatype, &self.shape, &raw)?,
            InputData::Decoded(data) => data,
        };
        Ok(NamedTensor {
            name: self.name,
            shape: self.shape,
            data,
        })
    }
}

/// An output as the response carries it: raw little-endian content (BYTES framed with
/// 4-byte lengths).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    pub raw: Bytes,
}

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

/// Writes an ONNX Runtime output into raw content: one pass from its buffer.
pub(super) fn from_value(name: &str, value: &DynValue) -> Result<Output, RunError> {
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
                DataType::$variant,
                le_bytes(data),
            )
        }};
    }
    let (shape, datatype, raw) = match ty {
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
            (shape, DataType::Bytes, TensorData::Bytes(elements).to_raw())
        }
        other => {
            return Err(RunError::UnsupportedOutput {
                name: name.to_string(),
                ty: other,
            })
        }
    };
    Ok(Output {
        name: name.to_string(),
        shape,
        datatype,
        raw: Bytes::from(raw),
    })
}
