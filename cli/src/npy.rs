//! NumPy `.npy` files (format 1.0-3.0, little-endian, C order) to and from tensors, through
//! npyz. Only the dtypes that map one-to-one onto an OIP datatype are accepted, so a file
//! the model would see differently (big-endian, Fortran order, strings) is refused by name
//! instead of being converted behind the user's back.

use std::io;

use localml_proto::tensor::{DataType, TensorData};
use npyz::{NpyFile, NpyHeader, Order, WriterBuilder};

/// The first bytes of every `.npy` file (the format's magic string).
const MAGIC: &[u8] = b"\x93NUMPY";

/// numpy pads the header so the data starts on a multiple of 64 bytes (its `ARRAY_ALIGN`),
/// which lets a reader memory-map the data for any dtype; npyz pads to 16 only.
const DATA_ALIGN: usize = 64;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NpyError {
    /// The file does not start with the `.npy` magic string.
    #[error("not a .npy file (bad magic)")]
    Magic,
    /// The file ends inside its header.
    #[error("truncated .npy file")]
    Truncated,
    /// The header is not one this reader accepts (format version, syntax, Fortran order).
    #[error("unsupported .npy header: {0}")]
    Header(String),
    /// The array's dtype has no OIP datatype (or is not little-endian).
    #[error("unsupported dtype '{0}' (supported: bool, u1-u8, i1-i8, f2, f4, f8 little-endian)")]
    Dtype(String),
    /// The data does not match the header's shape and dtype.
    #[error("{0}")]
    Data(String),
    /// The tensor cannot be written as `.npy`: BYTES elements have no fixed size.
    #[error("{0} tensors cannot be written as .npy")]
    Unwritable(DataType),
    /// The shape and the data disagree, so npyz refused to write them.
    #[error("cannot write .npy: {0}")]
    Write(String),
}

/// Parses a .npy file into (shape, data).
pub fn parse(bytes: &[u8]) -> Result<(Vec<i64>, TensorData), NpyError> {
    if !bytes.starts_with(MAGIC) {
        return Err(NpyError::Magic);
    }
    check_element_count(bytes)?;
    // Reading from a slice advances it, so what is left afterwards is what follows the data.
    let mut rest = bytes;
    let header = NpyHeader::from_reader(&mut rest).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => NpyError::Truncated,
        _ => NpyError::Header(e.to_string()),
    })?;
    if header.order() == Order::Fortran {
        return Err(NpyError::Header(
            "fortran_order arrays are not supported; save with C order".into(),
        ));
    }
    let shape = header
        .shape()
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|_| NpyError::Header(format!("bad shape {:?}", header.shape())))?;
    // `descr()` quotes the type string as Python does: '<f4'.
    let descr = header.dtype().descr();
    let datatype = match descr.trim_matches('\'') {
        "|b1" => DataType::Bool,
        "|u1" | "<u1" => DataType::Uint8,
        "<u2" => DataType::Uint16,
        "<u4" => DataType::Uint32,
        "<u8" => DataType::Uint64,
        "|i1" | "<i1" => DataType::Int8,
        "<i2" => DataType::Int16,
        "<i4" => DataType::Int32,
        "<i8" => DataType::Int64,
        "<f2" => DataType::Fp16,
        "<f4" => DataType::Fp32,
        "<f8" => DataType::Fp64,
        other => return Err(NpyError::Dtype(other.to_string())),
    };
    let file = NpyFile::with_header(header, &mut rest);
    let data = match datatype {
        DataType::Bool => TensorData::Bool(values(file)?),
        DataType::Uint8 => TensorData::Uint8(values(file)?),
        DataType::Uint16 => TensorData::Uint16(values(file)?),
        DataType::Uint32 => TensorData::Uint32(values(file)?),
        DataType::Uint64 => TensorData::Uint64(values(file)?),
        DataType::Int8 => TensorData::Int8(values(file)?),
        DataType::Int16 => TensorData::Int16(values(file)?),
        DataType::Int32 => TensorData::Int32(values(file)?),
        DataType::Int64 => TensorData::Int64(values(file)?),
        DataType::Fp16 => TensorData::Fp16(values(file)?),
        DataType::Fp32 => TensorData::Fp32(values(file)?),
        DataType::Fp64 => TensorData::Fp64(values(file)?),
        DataType::Bytes => return Err(NpyError::Dtype(descr)),
    };
    // npyz stops after shape x item size bytes; bytes after that mean the header and the
    // data disagree, which the raw decoder this replaced refused too.
    if !rest.is_empty() {
        return Err(NpyError::Data(format!(
            "{} bytes after the data of shape {shape:?} {datatype}",
            rest.len()
        )));
    }
    Ok((shape, data))
}

/// Checks the header's shape before npyz sees it: npyz multiplies the dimensions without
/// overflow checks (a crafted header would panic a debug build and wrap in a release
/// one), and a shape with more elements than the file has bytes cannot be right.
fn check_element_count(bytes: &[u8]) -> Result<(), NpyError> {
    // Magic (6 bytes), version (2), header length: 2 bytes in version 1, 4 after.
    let (start, len): (usize, usize) = match bytes.get(6) {
        Some(1) => match bytes.get(8..10) {
            Some(b) => (10, usize::from(u16::from_le_bytes([b[0], b[1]]))),
            None => return Err(NpyError::Truncated),
        },
        Some(2 | 3) => match bytes.get(8..12) {
            Some(b) => (
                12,
                usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .map_err(|_| NpyError::Truncated)?,
            ),
            None => return Err(NpyError::Truncated),
        },
        // Another version: npyz names it.
        _ => return Ok(()),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or(NpyError::Truncated)?;
    let text = String::from_utf8_lossy(header);
    let Some(tuple) = text
        .find("'shape'")
        .and_then(|at| text[at..].split_once('('))
        .and_then(|(_, after)| after.split_once(')'))
        .map(|(inside, _)| inside)
    else {
        // No shape: npyz refuses the header with its own message.
        return Ok(());
    };
    let mut count: u64 = 1;
    for dim in tuple.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let dim: u64 = dim
            .parse()
            .map_err(|_| NpyError::Header(format!("bad shape ({tuple})")))?;
        count = count.checked_mul(dim).ok_or_else(|| {
            NpyError::Header(format!(
                "shape ({tuple}) has more elements than fit in memory"
            ))
        })?;
    }
    let data = bytes.len().saturating_sub(start.saturating_add(len)) as u64;
    if count > data {
        return Err(NpyError::Data(format!(
            "shape ({tuple}) needs {count} elements, and the file has {data} bytes of data"
        )));
    }
    Ok(())
}

/// Reads every element of `file` as `T`; npyz checks that `T` matches the dtype.
fn values<T: npyz::Deserialize>(file: NpyFile<&mut &[u8]>) -> Result<Vec<T>, NpyError> {
    file.into_vec()
        .map_err(|e| NpyError::Data(format!("array data: {e}")))
}

/// Writes a tensor as a .npy file with numpy's 64-byte data alignment.
pub fn write(shape: &[i64], data: &TensorData) -> Result<Vec<u8>, NpyError> {
    let dims = shape
        .iter()
        .map(|&d| u64::try_from(d))
        .collect::<Result<Vec<u64>, _>>()
        .map_err(|_| NpyError::Write(format!("negative dimension in shape {shape:?}")))?;
    let file = match data {
        TensorData::Bool(v) => encode(&dims, v),
        TensorData::Uint8(v) => encode(&dims, v),
        TensorData::Uint16(v) => encode(&dims, v),
        TensorData::Uint32(v) => encode(&dims, v),
        TensorData::Uint64(v) => encode(&dims, v),
        TensorData::Int8(v) => encode(&dims, v),
        TensorData::Int16(v) => encode(&dims, v),
        TensorData::Int32(v) => encode(&dims, v),
        TensorData::Int64(v) => encode(&dims, v),
        TensorData::Fp16(v) => encode(&dims, v),
        TensorData::Fp32(v) => encode(&dims, v),
        TensorData::Fp64(v) => encode(&dims, v),
        TensorData::Bytes(_) => return Err(NpyError::Unwritable(DataType::Bytes)),
    }
    .map_err(|e| NpyError::Write(e.to_string()))?;
    align_data(file)
}

/// `values` as a C-order array of `shape`, in the dtype npyz picks for `T` (little-endian
/// on the machines localml runs on, `|` for one-byte types: the same strings numpy uses).
fn encode<T: npyz::AutoSerialize + Copy>(shape: &[u64], values: &[T]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut out)
        .begin_nd()?;
    writer.extend(values.iter().copied())?;
    writer.finish()?;
    Ok(out)
}

/// Widens npyz's header padding so the data starts on a multiple of [`DATA_ALIGN`].
///
/// The header is the magic, two version bytes, the header length (u16 in format 1.0, u32
/// in 2.0 and 3.0) and the header text, which ends in '\n'; spaces before that '\n' are
/// padding, as the format allows.
fn align_data(mut file: Vec<u8>) -> Result<Vec<u8>, NpyError> {
    let bad = || NpyError::Write("npyz wrote an unexpected header".into());
    let (prefix, text_len) = match file.get(MAGIC.len()).copied() {
        Some(1) => (
            10,
            file.get(8..10)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize),
        ),
        Some(2 | 3) => (
            12,
            file.get(8..12)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
        ),
        _ => return Err(bad()),
    };
    let text_len = text_len.ok_or_else(bad)?;
    let newline = prefix + text_len - 1;
    if file.get(newline) != Some(&b'\n') {
        return Err(bad());
    }
    let pad = (DATA_ALIGN - (prefix + text_len) % DATA_ALIGN) % DATA_ALIGN;
    file.splice(newline..newline, std::iter::repeat_n(b' ', pad));
    let text_len = text_len + pad;
    if prefix == 10 {
        let len = u16::try_from(text_len).map_err(|_| bad())?;
        file[8..10].copy_from_slice(&len.to_le_bytes());
    } else {
        let len = u32::try_from(text_len).map_err(|_| bad())?;
        file[8..12].copy_from_slice(&len.to_le_bytes());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_parse_round_trips() {
        let cases = [
            (vec![2, 2], TensorData::Fp32(vec![1.0, 2.5, -3.0, 4.0])),
            (vec![3], TensorData::Int64(vec![7, 8, 9])),
            (vec![], TensorData::Fp64(vec![1.0])),
            (vec![1, 2], TensorData::Bool(vec![true, false])),
            (
                vec![2],
                TensorData::Fp16(vec![half::f16::ONE, half::f16::ZERO]),
            ),
            (vec![2], TensorData::Uint8(vec![0, 255])),
            (vec![2], TensorData::Uint16(vec![1, u16::MAX])),
            (vec![2], TensorData::Uint32(vec![1, u32::MAX])),
            (vec![2], TensorData::Uint64(vec![1, u64::MAX])),
            (vec![2], TensorData::Int8(vec![-1, i8::MAX])),
            (vec![2], TensorData::Int16(vec![-1, i16::MAX])),
            (vec![2, 1], TensorData::Int32(vec![-1, i32::MAX])),
            (vec![0, 3], TensorData::Fp32(vec![])),
        ];
        for (shape, data) in cases {
            let bytes = write(&shape, &data).expect("writable");
            assert_eq!(
                (bytes.len() - data.to_raw().len()) % 64,
                0,
                "aligned header"
            );
            assert_eq!(parse(&bytes), Ok((shape, data)));
        }
        assert_eq!(
            write(&[1], &TensorData::Bytes(vec![b"x".to_vec()])),
            Err(NpyError::Unwritable(DataType::Bytes))
        );
    }

    /// What `numpy.save("x.npy", numpy.array([[1, 2]], dtype="<i2"))` writes.
    #[test]
    fn reads_what_numpy_writes() {
        let mut header = "{'descr': '<i2', 'fortran_order': False, 'shape': (1, 2), }".to_string();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        file.extend_from_slice(&(header.len() as u16).to_le_bytes());
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&[1, 0, 2, 0]);
        assert_eq!(
            parse(&file),
            Ok((vec![1, 2], TensorData::Int16(vec![1, 2])))
        );
        // Format 2.0 has a 4-byte header length.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v2.extend_from_slice(header.as_bytes());
        v2.extend_from_slice(&[1, 0, 2, 0]);
        assert_eq!(parse(&v2), Ok((vec![1, 2], TensorData::Int16(vec![1, 2]))));
    }

    #[test]
    fn rejects_bad_files() {
        assert_eq!(parse(b"hello world"), Err(NpyError::Magic));
        let good = write(&[1], &TensorData::Fp32(vec![0.0])).expect("writable");
        let replace = |from: &[u8], to: &[u8]| {
            let at = good
                .windows(from.len())
                .position(|w| w == from)
                .expect("present");
            let mut out = good.clone();
            out[at..at + from.len()].copy_from_slice(to);
            out
        };
        assert!(matches!(
            parse(&replace(b"<f4", b">f4")),
            Err(NpyError::Dtype(_))
        ));
        assert!(matches!(
            parse(&replace(b"False", b"True ")),
            Err(NpyError::Header(_))
        ));
        assert!(matches!(
            parse(&good[..good.len() - 2]),
            Err(NpyError::Data(_))
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(
            matches!(parse(&longer), Err(NpyError::Data(_))),
            "extra data"
        );
        assert_eq!(parse(&good[..20]), Err(NpyError::Truncated));
        assert!(matches!(
            parse(&replace(b"\x93NUMPY\x01", b"\x93NUMPY\x09")),
            Err(NpyError::Header(_))
        ));
        assert!(matches!(
            parse(&replace(b"<f4", b"|S4")),
            Err(NpyError::Dtype(_))
        ));
        assert!(matches!(
            write(&[-1], &TensorData::Fp32(vec![0.0])),
            Err(NpyError::Write(_))
        ));
        assert!(matches!(
            write(&[3], &TensorData::Fp32(vec![0.0])),
            Err(NpyError::Write(_))
        ));
    }

    #[test]
    fn shapes_that_overflow_or_exceed_the_data_are_refused() {
        let header = |shape: &str| {
            let mut dict =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            while (10 + dict.len() + 1) % 64 != 0 {
                dict.push(' ');
            }
            dict.push('\n');
            let mut file = MAGIC.to_vec();
            file.extend([1, 0]);
            file.extend(
                u16::try_from(dict.len())
                    .expect("short header")
                    .to_le_bytes(),
            );
            file.extend(dict.as_bytes());
            file
        };
        let mut huge = header("(4294967296, 4294967296, 4294967296)");
        huge.extend([0u8; 16]);
        let e = parse(&huge).expect_err("overflowing shape");
        assert!(e.to_string().contains("more elements than fit"), "{e}");
        let mut short = header("(1000,)");
        short.extend([0u8; 16]);
        let e = parse(&short).expect_err("too little data");
        assert!(e.to_string().contains("needs 1000 elements"), "{e}");
        let mut fine = header("(4,)");
        fine.extend(1.5f32.to_le_bytes().repeat(4));
        assert_eq!(parse(&fine).expect("valid").0, vec![4]);
    }
}
