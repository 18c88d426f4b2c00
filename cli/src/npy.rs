//! Reading NumPy `.npy` files (format 1.0-3.0, little-endian, C order) into tensors.

use localml_proto::tensor::{DataType, TensorData};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NpyError {
    #[error("not a .npy file (bad magic)")]
    Magic,
    #[error("truncated .npy file")]
    Truncated,
    #[error("unsupported .npy header: {0}")]
    Header(String),
    #[error("unsupported dtype '{0}' (supported: bool, u1-u8, i1-i8, f2, f4, f8 little-endian)")]
    Dtype(String),
    #[error("{0}")]
    Data(String),
}

/// Parses a .npy file into (shape, data).
pub fn parse(bytes: &[u8]) -> Result<(Vec<i64>, TensorData), NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(NpyError::Magic);
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or(NpyError::Truncated)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(NpyError::Header(format!("format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or(NpyError::Truncated)?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::Header("not text".into()))?;
    let descr = field(header, "descr")
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
        .ok_or_else(|| NpyError::Header("no descr".into()))?;
    if field(header, "fortran_order").as_deref() == Some("True") {
        return Err(NpyError::Header(
            "fortran_order arrays are not supported; save with C order".into(),
        ));
    }
    let shape_text = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| NpyError::Header("no shape".into()))?;
    let shape: Vec<i64> = shape_text
        .trim()
        .trim_start_matches('(')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map_err(|_| NpyError::Header(format!("bad shape '{shape_text}'")))
        })
        .collect::<Result<_, _>>()?;
    let datatype = match descr.as_str() {
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
    let data = TensorData::from_raw(datatype, &shape, &bytes[start + header_len..])
        .map_err(|e| NpyError::Data(e.to_string()))?;
    Ok((shape, data))
}

/// NumPy's name for a datatype (`None` for BYTES, which .npy cannot hold as raw bytes).
fn descr(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "|b1",
        DataType::Uint8 => "|u1",
        DataType::Uint16 => "<u2",
        DataType::Uint32 => "<u4",
        DataType::Uint64 => "<u8",
        DataType::Int8 => "|i1",
        DataType::Int16 => "<i2",
        DataType::Int32 => "<i4",
        DataType::Int64 => "<i8",
        DataType::Fp16 => "<f2",
        DataType::Fp32 => "<f4",
        DataType::Fp64 => "<f8",
        DataType::Bytes => return None,
    })
}

/// Writes a tensor as a .npy file (format 1.0); `None` for BYTES tensors.
pub fn write(shape: &[i64], data: &TensorData) -> Option<Vec<u8>> {
    let descr = descr(data.datatype())?;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let trailing = if dims.len() == 1 { "," } else { "" };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}{trailing}), }}",
        dims.join(", ")
    );
    // The header is padded so the data starts on a 64-byte boundary.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data.to_raw());
    Some(out)
}

/// Extracts the value of `'key': value` from the header dict (up to the next comma at
/// depth 0).
fn field(header: &str, key: &str) -> Option<String> {
    let rest = header.split(&format!("'{key}':")).nth(1)?;
    let mut depth = 0;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0 && (c == ',' || c == '}')
        })
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
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
        assert_eq!(write(&[1], &TensorData::Bytes(vec![b"x".to_vec()])), None);
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
    }
}
