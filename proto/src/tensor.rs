//! Open Inference Protocol tensors as plain data: datatypes, decoding from typed
//! `contents` or from raw little-endian bytes, and encoding back. No I/O and no ONNX
//! Runtime here, so the worker, the CLI and the tests share one codec.

use std::fmt;

use half::f16;

use crate::inference::InferTensorContents;

/// The Open Inference Protocol datatypes that ONNX Runtime can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    /// Variable-length byte strings (ONNX `string`).
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// Parses the protocol's name for a datatype, e.g. `"FP32"`.
    pub fn parse(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|dt| dt.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in raw form; `None` for variable-length BYTES.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why tensor data could not be decoded. The caller adds the tensor's name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    /// A dimension is negative or the element count overflows.
    #[error("invalid shape {0:?}: dimensions must be non-negative and the element count must fit in memory")]
    InvalidShape(Vec<i64>),
    /// Raw bytes do not match `shape x element size`.
    #[error("raw content has {actual} bytes but shape {shape:?} of {datatype} needs {expected}")]
    RawLength {
        datatype: DataType,
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    /// BYTES raw content is not a sequence of 4-byte-length-prefixed elements.
    #[error("raw BYTES content is malformed at byte {offset}: each element needs a 4-byte little-endian length followed by that many bytes")]
    MalformedBytes { offset: usize },
    /// The number of elements does not match the shape.
    #[error("has {actual} elements but shape {shape:?} needs {expected}")]
    ElementCount {
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    /// FP16 has no typed contents field in the protocol.
    #[error("FP16 data must be sent in raw_input_contents (the protocol has no typed FP16 field)")]
    NoTypedField,
    /// A typed value does not fit the narrower datatype (e.g. 300 for INT8).
    #[error("value {value} is out of range for {datatype}")]
    OutOfRange { datatype: DataType, value: i64 },
}

/// Tensor elements, one variant per datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the vector inside any fixed-size variant, binding it to `$v`.
macro_rules! each_numeric {
    ($data:expr, $v:ident => $body:expr, bytes $b:ident => $bytes_body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($b) => $bytes_body,
        }
    };
}

/// Little-endian fixed-size element conversion (the protocol's raw layout).
pub trait Element: Sized + Copy {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! impl_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(bytes: &[u8]) -> Self {
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                buf.copy_from_slice(bytes);
                <$t>::from_le_bytes(buf)
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
impl_element!(u8, u16, u32, u64, i8, i16, i32, i64, f16, f32, f64);

impl Element for bool {
    const SIZE: usize = 1;
    fn read(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn write(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
}

fn read_all<T: Element>(raw: &[u8]) -> Vec<T> {
    raw.chunks_exact(T::SIZE).map(T::read).collect()
}

/// `values` as raw little-endian content, in one pass (an output written straight from
/// ONNX Runtime's buffer into the response).
pub fn le_bytes<T: Element>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    for &v in values {
        v.write(&mut out);
    }
    out
}

/// Walks raw BYTES content (4-byte little-endian length, then that many bytes, per
/// element), calling `each` with every element; fails where the framing breaks.
fn walk_bytes<'a>(raw: &'a [u8], mut each: impl FnMut(&'a [u8])) -> Result<(), TensorError> {
    let mut offset = 0;
    while offset < raw.len() {
        let header = raw
            .get(offset..offset.saturating_add(4))
            .ok_or(TensorError::MalformedBytes { offset })?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = offset + 4;
        let body = raw
            .get(start..start.saturating_add(len))
            .ok_or(TensorError::MalformedBytes { offset })?;
        each(body);
        offset = start + len;
    }
    Ok(())
}

/// The byte offsets in raw BYTES content where each of its elements starts, and its end:
/// `elements + 1` offsets (for splitting a batch's output without decoding it).
pub fn bytes_boundaries(raw: &[u8]) -> Result<Vec<usize>, TensorError> {
    let mut boundaries = vec![0];
    let base = raw.as_ptr() as usize;
    walk_bytes(raw, |body| {
        boundaries.push(body.as_ptr() as usize - base + body.len());
    })?;
    Ok(boundaries)
}

/// Number of elements of `shape`, checking for negative dims and overflow.
pub fn element_count(shape: &[i64]) -> Result<usize, TensorError> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| TensorError::InvalidShape(shape.to_vec()))
    })
}

/// Splits raw BYTES content into its elements.
fn split_bytes(raw: &[u8]) -> Result<Vec<Vec<u8>>, TensorError> {
    let mut out = Vec::new();
    walk_bytes(raw, |body| out.push(body.to_vec()))?;
    Ok(out)
}

fn narrow<T: TryFrom<i64>>(datatype: DataType, values: &[i64]) -> Result<Vec<T>, TensorError> {
    values
        .iter()
        .map(|&value| T::try_from(value).map_err(|_| TensorError::OutOfRange { datatype, value }))
        .collect()
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    pub fn len(&self) -> usize {
        each_numeric!(self, v => v.len(), bytes b => b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks raw little-endian content for a tensor of `shape` without decoding it:
    /// its length, or for BYTES its framing and element count (headers only).
    pub fn check_raw(datatype: DataType, shape: &[i64], raw: &[u8]) -> Result<(), TensorError> {
        let count = element_count(shape)?;
        let Some(size) = datatype.element_size() else {
            let mut actual = 0usize;
            walk_bytes(raw, |_| actual += 1)?;
            if actual != count {
                return Err(TensorError::ElementCount {
                    shape: shape.to_vec(),
                    expected: count,
                    actual,
                });
            }
            return Ok(());
        };
        let expected = count
            .checked_mul(size)
            .ok_or_else(|| TensorError::InvalidShape(shape.to_vec()))?;
        if raw.len() != expected {
            return Err(TensorError::RawLength {
                datatype,
                shape: shape.to_vec(),
                expected,
                actual: raw.len(),
            });
        }
        Ok(())
    }

    /// Decodes raw little-endian content for a tensor of `shape`, checking its length.
    pub fn from_raw(
        datatype: DataType,
        shape: &[i64],
        raw: &[u8],
    ) -> Result<TensorData, TensorError> {
        if datatype == DataType::Bytes {
            let count = element_count(shape)?;
            return check_count(TensorData::Bytes(split_bytes(raw)?), shape, count);
        }
        Self::check_raw(datatype, shape, raw)?;
        Ok(Self::decode_checked(datatype, raw))
    }

    /// An empty tensor of `datatype` with room for `elements`.
    pub fn with_capacity(datatype: DataType, elements: usize) -> TensorData {
        let mut data = Self::decode_checked(datatype, &[]);
        each_numeric!(&mut data, v => v.reserve(elements), bytes b => b.reserve(elements));
        data
    }

    /// Appends raw content already checked ([`TensorData::check_raw`]) for this datatype
    /// (joining requests into one batch in one pass over their bytes).
    pub fn extend_from_raw(&mut self, raw: &[u8]) -> Result<(), TensorError> {
        fn extend<T: Element>(into: &mut Vec<T>, raw: &[u8]) {
            into.extend(raw.chunks_exact(T::SIZE).map(T::read));
        }
        match self {
            TensorData::Uint8(v) => v.extend_from_slice(raw),
            TensorData::Bytes(b) => walk_bytes(raw, |body| b.push(body.to_vec()))?,
            TensorData::Bool(v) => extend(v, raw),
            TensorData::Uint16(v) => extend(v, raw),
            TensorData::Uint32(v) => extend(v, raw),
            TensorData::Uint64(v) => extend(v, raw),
            TensorData::Int8(v) => extend(v, raw),
            TensorData::Int16(v) => extend(v, raw),
            TensorData::Int32(v) => extend(v, raw),
            TensorData::Int64(v) => extend(v, raw),
            TensorData::Fp16(v) => extend(v, raw),
            TensorData::Fp32(v) => extend(v, raw),
            TensorData::Fp64(v) => extend(v, raw),
        }
        Ok(())
    }

    /// Appends `other`'s elements when it has the same datatype; false (nothing appended)
    /// when it does not.
    pub fn append(&mut self, other: TensorData) -> bool {
        macro_rules! join {
            ($($variant:ident),*) => {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(b)) => { a.extend(b); true })*
                    _ => false,
                }
            };
        }
        join!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Fp32, Fp64, Bytes
        )
    }

    /// Decodes raw content whose length was checked (BYTES: use [`TensorData::from_raw`]).
    fn decode_checked(datatype: DataType, raw: &[u8]) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(read_all(raw)),
            DataType::Uint8 => TensorData::Uint8(raw.to_vec()),
            DataType::Uint16 => TensorData::Uint16(read_all(raw)),
            DataType::Uint32 => TensorData::Uint32(read_all(raw)),
            DataType::Uint64 => TensorData::Uint64(read_all(raw)),
            DataType::Int8 => TensorData::Int8(read_all(raw)),
            DataType::Int16 => TensorData::Int16(read_all(raw)),
            DataType::Int32 => TensorData::Int32(read_all(raw)),
            DataType::Int64 => TensorData::Int64(read_all(raw)),
            DataType::Fp16 => TensorData::Fp16(read_all(raw)),
            DataType::Fp32 => TensorData::Fp32(read_all(raw)),
            DataType::Fp64 => TensorData::Fp64(read_all(raw)),
            // Only ever called with no bytes for BYTES (an empty tensor).
            DataType::Bytes => TensorData::Bytes(Vec::new()),
        }
    }

    /// Decodes typed `contents` for a tensor of `shape`, checking the element count.
    pub fn from_contents(
        datatype: DataType,
        shape: &[i64],
        contents: &InferTensorContents,
    ) -> Result<TensorData, TensorError> {
        let count = element_count(shape)?;
        let c = contents;
        let widen = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
        let ints = |v: &[i32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
        let data = match datatype {
            DataType::Bool => TensorData::Bool(c.bool_contents.clone()),
            DataType::Uint8 => TensorData::Uint8(narrow(datatype, &widen(&c.uint_contents))?),
            DataType::Uint16 => TensorData::Uint16(narrow(datatype, &widen(&c.uint_contents))?),
            DataType::Uint32 => TensorData::Uint32(c.uint_contents.clone()),
            DataType::Uint64 => TensorData::Uint64(c.uint64_contents.clone()),
            DataType::Int8 => TensorData::Int8(narrow(datatype, &ints(&c.int_contents))?),
            DataType::Int16 => TensorData::Int16(narrow(datatype, &ints(&c.int_contents))?),
            DataType::Int32 => TensorData::Int32(c.int_contents.clone()),
            DataType::Int64 => TensorData::Int64(c.int64_contents.clone()),
            DataType::Fp16 => return Err(TensorError::NoTypedField),
            DataType::Fp32 => TensorData::Fp32(c.fp32_contents.clone()),
            DataType::Fp64 => TensorData::Fp64(c.fp64_contents.clone()),
            DataType::Bytes => TensorData::Bytes(c.bytes_contents.clone()),
        };
        check_count(data, shape, count)
    }

    /// Encodes as raw little-endian content (BYTES with 4-byte length prefixes).
    pub fn to_raw(&self) -> Vec<u8> {
        each_numeric!(self, v => le_bytes(v), bytes b => {
            let mut out = Vec::with_capacity(b.iter().map(|e| e.len() + 4).sum());
            for element in b {
                // Elements over 4 GiB cannot be framed; the message limit stops them long before.
                out.extend_from_slice(&(element.len() as u32).to_le_bytes());
                out.extend_from_slice(element);
            }
            out
        })
    }

    /// Encodes as typed contents; `None` for FP16, which has no typed field.
    pub fn to_contents(&self) -> Option<InferTensorContents> {
        let mut c = InferTensorContents::default();
        match self {
            TensorData::Bool(v) => c.bool_contents = v.clone(),
            TensorData::Uint8(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
            TensorData::Uint16(v) => c.uint_contents = v.iter().map(|&x| u32::from(x)).collect(),
            TensorData::Uint32(v) => c.uint_contents = v.clone(),
            TensorData::Uint64(v) => c.uint64_contents = v.clone(),
            TensorData::Int8(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
            TensorData::Int16(v) => c.int_contents = v.iter().map(|&x| i32::from(x)).collect(),
            TensorData::Int32(v) => c.int_contents = v.clone(),
            TensorData::Int64(v) => c.int64_contents = v.clone(),
            TensorData::Fp16(_) => return None,
            TensorData::Fp32(v) => c.fp32_contents = v.clone(),
            TensorData::Fp64(v) => c.fp64_contents = v.clone(),
            TensorData::Bytes(v) => c.bytes_contents = v.clone(),
        }
        Some(c)
    }

    /// Numeric elements as f64 (BYTES: `None`), for comparisons and display.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            TensorData::Bool(v) => v.iter().map(|&x| f64::from(u8::from(x))).collect(),
            TensorData::Uint8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Uint16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Uint32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            // Display and tolerance checks only: values above 2^53 lose precision.
            TensorData::Uint64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Int8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Fp16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            TensorData::Bytes(_) => return None,
        })
    }
}

fn check_count(
    data: TensorData,
    shape: &[i64],
    expected: usize,
) -> Result<TensorData, TensorError> {
    if data.len() != expected {
        return Err(TensorError::ElementCount {
            shape: shape.to_vec(),
            expected,
            actual: data.len(),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
        }
        assert_eq!(DataType::parse("FLOAT"), None);
        assert_eq!(DataType::parse("fp32"), None);
    }

    #[test]
    fn raw_round_trip_for_every_datatype() {
        let cases = vec![
            TensorData::Bool(vec![true, false, true, true]),
            TensorData::Uint8(vec![0, 1, 254, 255]),
            TensorData::Uint16(vec![0, 1, 65534, 65535]),
            TensorData::Uint32(vec![0, 1, u32::MAX - 1, u32::MAX]),
            TensorData::Uint64(vec![0, 1, u64::MAX - 1, u64::MAX]),
            TensorData::Int8(vec![i8::MIN, -1, 0, i8::MAX]),
            TensorData::Int16(vec![i16::MIN, -1, 0, i16::MAX]),
            TensorData::Int32(vec![i32::MIN, -1, 0, i32::MAX]),
            TensorData::Int64(vec![i64::MIN, -1, 0, i64::MAX]),
            TensorData::Fp16(vec![
                f16::from_f32(-1.5),
                f16::ZERO,
                f16::from_f32(0.25),
                f16::MAX,
            ]),
            TensorData::Fp32(vec![-1.5, 0.0, f32::MIN_POSITIVE, f32::MAX]),
            TensorData::Fp64(vec![-1.5, 0.0, f64::MIN_POSITIVE, f64::MAX]),
            TensorData::Bytes(vec![
                b"".to_vec(),
                "héllo".as_bytes().to_vec(),
                vec![0, 255],
                b"x".to_vec(),
            ]),
        ];
        for data in cases {
            let raw = data.to_raw();
            let back = TensorData::from_raw(data.datatype(), &[2, 2], &raw).expect("decodes");
            assert_eq!(back, data, "{}", data.datatype());
            // Checked without decoding, then decoded into a joined tensor (a batch).
            TensorData::check_raw(data.datatype(), &[2, 2], &raw).expect("checks");
            let mut joined = TensorData::with_capacity(data.datatype(), 8);
            joined.extend_from_raw(&raw).expect("extends");
            assert!(joined.append(data.clone()), "{}", data.datatype());
            let mut twice = TensorData::from_raw(data.datatype(), &[2, 2], &raw).expect("again");
            twice.extend_from_raw(&raw).expect("extends");
            assert_eq!(joined, twice, "{}", data.datatype());
            assert_eq!(joined.len(), 8, "{}", data.datatype());
        }
        assert!(!TensorData::Fp32(vec![1.0]).append(TensorData::Fp64(vec![1.0])));
        let bytes = TensorData::Bytes(vec![b"ab".to_vec(), Vec::new(), b"c\0d".to_vec()]);
        assert_eq!(bytes_boundaries(&bytes.to_raw()), Ok(vec![0, 6, 10, 17]));
        assert_eq!(
            bytes_boundaries(&[3, 0, 0, 0, b'a']),
            Err(TensorError::MalformedBytes { offset: 0 })
        );
    }

    #[test]
    fn typed_round_trip_except_fp16() {
        let cases = vec![
            TensorData::Bool(vec![true, false]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![7, 65535]),
            TensorData::Int8(vec![-128, 127]),
            TensorData::Int16(vec![-32768, 32767]),
            TensorData::Int64(vec![i64::MIN, i64::MAX]),
            TensorData::Fp64(vec![1e300, -2.0]),
            TensorData::Bytes(vec![b"a".to_vec(), b"bc".to_vec()]),
        ];
        for data in cases {
            let contents = data.to_contents().expect("typed field exists");
            let back =
                TensorData::from_contents(data.datatype(), &[2], &contents).expect("decodes");
            assert_eq!(back, data);
        }
        assert_eq!(TensorData::Fp16(vec![f16::ONE]).to_contents(), None);
    }

    #[test]
    fn decoding_errors_name_the_problem() {
        struct Case {
            name: &'static str,
            result: Result<TensorData, TensorError>,
            expected: TensorError,
        }
        let int_contents = InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        let three_floats = InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        let cases = [
            Case {
                name: "raw length short",
                result: TensorData::from_raw(DataType::Fp32, &[1, 3], &[0; 8]),
                expected: TensorError::RawLength {
                    datatype: DataType::Fp32,
                    shape: vec![1, 3],
                    expected: 12,
                    actual: 8,
                },
            },
            Case {
                name: "negative dim",
                result: TensorData::from_raw(DataType::Fp32, &[-1, 3], &[]),
                expected: TensorError::InvalidShape(vec![-1, 3]),
            },
            Case {
                name: "overflowing shape",
                result: TensorData::from_raw(DataType::Fp64, &[i64::MAX, i64::MAX], &[]),
                expected: TensorError::InvalidShape(vec![i64::MAX, i64::MAX]),
            },
            Case {
                name: "truncated bytes element",
                result: TensorData::from_raw(DataType::Bytes, &[1], &[5, 0, 0, 0, b'a']),
                expected: TensorError::MalformedBytes { offset: 0 },
            },
            Case {
                name: "bytes count",
                result: TensorData::from_raw(DataType::Bytes, &[2], &[1, 0, 0, 0, b'a']),
                expected: TensorError::ElementCount {
                    shape: vec![2],
                    expected: 2,
                    actual: 1,
                },
            },
            Case {
                name: "typed count",
                result: TensorData::from_contents(DataType::Fp32, &[2, 2], &three_floats),
                expected: TensorError::ElementCount {
                    shape: vec![2, 2],
                    expected: 4,
                    actual: 3,
                },
            },
            Case {
                name: "int8 out of range",
                result: TensorData::from_contents(DataType::Int8, &[2], &int_contents),
                expected: TensorError::OutOfRange {
                    datatype: DataType::Int8,
                    value: 300,
                },
            },
            Case {
                name: "fp16 typed",
                result: TensorData::from_contents(DataType::Fp16, &[2], &three_floats),
                expected: TensorError::NoTypedField,
            },
        ];
        for case in cases {
            assert_eq!(case.result, Err(case.expected), "{}", case.name);
        }
        // Checking raw content without decoding it finds the same faults.
        let raw_cases: [(DataType, &[i64], &[u8]); 5] = [
            (DataType::Fp32, &[1, 3], &[0; 8]),
            (DataType::Fp32, &[-1, 3], &[]),
            (DataType::Fp64, &[i64::MAX, i64::MAX], &[]),
            (DataType::Bytes, &[1], &[5, 0, 0, 0, b'a']),
            (DataType::Bytes, &[2], &[1, 0, 0, 0, b'a']),
        ];
        for (datatype, shape, raw) in raw_cases {
            assert_eq!(
                TensorData::check_raw(datatype, shape, raw),
                TensorData::from_raw(datatype, shape, raw).map(|_| ()),
                "{datatype} {shape:?}"
            );
            assert!(TensorData::check_raw(datatype, shape, raw).is_err());
        }
    }

    #[test]
    fn error_messages_are_readable() {
        let err = TensorData::from_raw(DataType::Fp32, &[1, 3], &[0; 8]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "raw content has 8 bytes but shape [1, 3] of FP32 needs 12"
        );
    }
}
