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

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_float_and_int_arrays() {
        let floats: Vec<u8> = [1.0f32, 2.5, -3.0, 4.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let (shape, data) = parse(&npy("<f4", "(2, 2)", &floats)).expect("parses");
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(data, TensorData::Fp32(vec![1.0, 2.5, -3.0, 4.0]));
        let ints: Vec<u8> = [7i64, 8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (shape, data) = parse(&npy("<i8", "(3,)", &ints)).expect("parses");
        assert_eq!(shape, vec![3]);
        assert_eq!(data, TensorData::Int64(vec![7, 8, 9]));
        let (shape, _) = parse(&npy("<f8", "()", &1.0f64.to_le_bytes())).expect("scalar");
        assert!(shape.is_empty());
    }

    #[test]
    fn rejects_bad_files() {
        assert_eq!(parse(b"hello world"), Err(NpyError::Magic));
        assert!(matches!(
            parse(&npy(">f4", "(1,)", &[0; 4])),
            Err(NpyError::Dtype(_))
        ));
        assert!(matches!(
            parse(&npy("<f4", "(2,)", &[0; 4])),
            Err(NpyError::Data(_))
        ));
    }
}
