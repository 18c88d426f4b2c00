//! Tensors from JSON: a nested array (shape from the nesting), or an object
//! `{"shape": [...], "data": [...]}` with flat data. The datatype comes from the model.

use localml_proto::tensor::{DataType, TensorData};
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JsonError {
    #[error("ragged array: rows of different lengths")]
    Ragged,
    #[error("element {index}: {value} is not a valid {datatype}")]
    Element {
        index: usize,
        value: String,
        datatype: DataType,
    },
    #[error("expected an array or an object with \"shape\" and \"data\"")]
    Form,
}

fn flatten<'a>(
    value: &'a Value,
    depth: usize,
    shape: &mut Vec<i64>,
    out: &mut Vec<&'a Value>,
) -> Result<(), JsonError> {
    match value {
        Value::Array(items) => {
            let len = items.len() as i64;
            if shape.len() == depth {
                shape.push(len);
            } else if shape[depth] != len {
                return Err(JsonError::Ragged);
            }
            for item in items {
                flatten(item, depth + 1, shape, out)?;
            }
            Ok(())
        }
        scalar => {
            if shape.len() != depth {
                return Err(JsonError::Ragged);
            }
            out.push(scalar);
            Ok(())
        }
    }
}

/// Parses a JSON tensor for a model input of `datatype`.
pub fn parse(value: &Value, datatype: DataType) -> Result<(Vec<i64>, TensorData), JsonError> {
    let (shape, flat): (Vec<i64>, Vec<&Value>) = match value {
        Value::Object(map) => {
            let shape = map
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|s| s.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
                .ok_or(JsonError::Form)?;
            let data = map
                .get("data")
                .and_then(Value::as_array)
                .ok_or(JsonError::Form)?;
            (shape, data.iter().collect())
        }
        Value::Array(_) => {
            let mut shape = Vec::new();
            let mut flat = Vec::new();
            flatten(value, 0, &mut shape, &mut flat)?;
            (shape, flat)
        }
        _ => return Err(JsonError::Form),
    };
    Ok((shape, values(&flat, datatype)?))
}

/// Converts flat JSON scalars to tensor data of `datatype`.
pub fn values(flat: &[&Value], datatype: DataType) -> Result<TensorData, JsonError> {
    let bad = |index: usize, v: &Value| JsonError::Element {
        index,
        value: v.to_string(),
        datatype,
    };
    macro_rules! ints {
        ($t:ty, $variant:ident) => {
            TensorData::$variant(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .and_then(|x| <$t>::try_from(x).ok())
                            .or_else(|| v.as_u64().and_then(|x| <$t>::try_from(x).ok()))
                            .ok_or_else(|| bad(i, v))
                    })
                    .collect::<Result<_, _>>()?,
            )
        };
    }
    let floats = || -> Result<Vec<f64>, JsonError> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, v)))
            .collect()
    };
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_bool()
                        .or_else(|| v.as_i64().map(|x| x != 0))
                        .ok_or_else(|| bad(i, v))
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => ints!(u8, Uint8),
        DataType::Uint16 => ints!(u16, Uint16),
        DataType::Uint32 => ints!(u32, Uint32),
        DataType::Uint64 => ints!(u64, Uint64),
        DataType::Int8 => ints!(i8, Int8),
        DataType::Int16 => ints!(i16, Int16),
        DataType::Int32 => ints!(i32, Int32),
        DataType::Int64 => ints!(i64, Int64),
        DataType::Fp16 => {
            TensorData::Fp16(floats()?.into_iter().map(half::f16::from_f64).collect())
        }
        DataType::Fp32 => TensorData::Fp32(floats()?.into_iter().map(|x| x as f32).collect()),
        DataType::Fp64 => TensorData::Fp64(floats()?),
        DataType::Bytes => TensorData::Bytes(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(|s| s.as_bytes().to_vec())
                        .ok_or_else(|| bad(i, v))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_object_forms() {
        let (shape, data) = parse(&json!([[1, 2, 3], [4, 5, 6]]), DataType::Int64).expect("nested");
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data, TensorData::Int64(vec![1, 2, 3, 4, 5, 6]));
        let (shape, data) = parse(
            &json!({"shape": [1, 2], "data": [0.5, 1.5]}),
            DataType::Fp32,
        )
        .expect("object");
        assert_eq!(shape, vec![1, 2]);
        assert_eq!(data, TensorData::Fp32(vec![0.5, 1.5]));
        let (_, data) = parse(&json!(["héllo", ""]), DataType::Bytes).expect("strings");
        assert_eq!(
            data,
            TensorData::Bytes(vec!["héllo".as_bytes().to_vec(), vec![]])
        );
        let (_, data) =
            parse(&json!([18446744073709551615u64]), DataType::Uint64).expect("u64 max");
        assert_eq!(data, TensorData::Uint64(vec![u64::MAX]));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&json!([[1, 2], [3]]), DataType::Int64),
            Err(JsonError::Ragged)
        );
        assert!(matches!(
            parse(&json!([300]), DataType::Int8),
            Err(JsonError::Element { index: 0, .. })
        ));
        assert!(matches!(
            parse(&json!(["x"]), DataType::Fp32),
            Err(JsonError::Element { .. })
        ));
        assert_eq!(parse(&json!(5), DataType::Fp32), Err(JsonError::Form));
    }
}
