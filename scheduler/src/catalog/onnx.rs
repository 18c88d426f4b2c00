//! Reads an ONNX model's graph inputs and outputs from its file without loading the
//! weights: a walk over the protobuf wire format that seeks past every field it does not
//! need (initializers' data, nodes), so a 2 GB model costs a few reads, not 2 GB of memory.
//!
//! Hand-written rather than prost-generated ONNX types because prost decodes a message
//! whole (the graph field holds every weight); this walks only the few fields below.
//! Field numbers are those of onnx.proto: ModelProto (ir_version 1, graph 7, opset_import
//! 8), GraphProto (initializer 5, input 11, output 12), TensorProto (name 8),
//! ValueInfoProto (name 1, type 2), TypeProto (tensor_type 1), TypeProto.Tensor
//! (elem_type 1, shape 2), TensorShapeProto (dim 1), Dimension (dim_value 1).

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use localml_proto::localml::v1::CatalogTensor;

/// A value description (ValueInfoProto) larger than this is refused: real ones are bytes.
const MAX_VALUE_INFO_BYTES: u64 = 1 << 20;

/// The part of an ONNX model the catalog keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxSignature {
    pub ir_version: i64,
    /// The default domain's opset (0 when the file names none).
    pub opset: i64,
    pub inputs: Vec<CatalogTensor>,
    pub outputs: Vec<CatalogTensor>,
}

/// Why a file is not an ONNX model we can read; the message says where.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model: {reason} (at byte {offset})")]
    Malformed { offset: u64, reason: String },
    #[error("not an ONNX model: {0}")]
    Incomplete(&'static str),
    #[error("reading the model: {0}")]
    Io(#[from] std::io::Error),
}

/// A protobuf field's header: number and wire type.
#[derive(Debug, Clone, Copy)]
struct Field {
    number: u64,
    wire: u8,
}

/// A reader over protobuf wire data that knows its position and the end of the message
/// it is in.
struct Wire<R> {
    inner: R,
    pos: u64,
}

impl<R: Read + Seek> Wire<R> {
    fn malformed(&self, reason: impl Into<String>) -> OnnxError {
        OnnxError::Malformed {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn byte(&mut self) -> Result<u8, OnnxError> {
        let mut b = [0u8; 1];
        match self.inner.read_exact(&mut b) {
            Ok(()) => {
                self.pos += 1;
                Ok(b[0])
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.malformed("the file ends inside a field"))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed("a varint longer than 10 bytes"))
    }

    /// The next field's header, or None at `end`.
    fn field(&mut self, end: u64) -> Result<Option<Field>, OnnxError> {
        if self.pos == end {
            return Ok(None);
        }
        if self.pos > end {
            return Err(self.malformed("a field runs past the end of its message"));
        }
        let tag = self.varint()?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        if number == 0 || !matches!(wire, 0 | 1 | 2 | 5) {
            return Err(self.malformed(format!("field {number} with wire type {wire}")));
        }
        Ok(Some(Field { number, wire }))
    }

    /// The length of a length-delimited field, checked against the enclosing `end`.
    fn length(&mut self, end: u64) -> Result<u64, OnnxError> {
        let len = self.varint()?;
        if len > end.saturating_sub(self.pos) {
            return Err(self.malformed(format!(
                "a field of {len} bytes runs past the end of its message"
            )));
        }
        Ok(len)
    }

    fn skip(&mut self, field: Field, end: u64) -> Result<(), OnnxError> {
        let n = match field.wire {
            0 => return self.varint().map(drop),
            1 => 8,
            5 => 4,
            _ => self.length(end)?,
        };
        if n > end.saturating_sub(self.pos) {
            return Err(self.malformed("a field runs past the end of its message"));
        }
        self.inner.seek(SeekFrom::Current(n as i64))?;
        self.pos += n;
        Ok(())
    }

    fn bytes(&mut self, end: u64, limit: u64) -> Result<Vec<u8>, OnnxError> {
        let len = self.length(end)?;
        if len > limit {
            return Err(self.malformed(format!("a {len}-byte field where at most {limit} fit")));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner.read_exact(&mut buf)?;
        self.pos += len;
        Ok(buf)
    }

    fn string(&mut self, end: u64) -> Result<String, OnnxError> {
        let bytes = self.bytes(end, MAX_VALUE_INFO_BYTES)?;
        String::from_utf8(bytes).map_err(|_| self.malformed("a name that is not UTF-8"))
    }

    fn expect(&self, field: Field, wire: u8, what: &str) -> Result<(), OnnxError> {
        if field.wire == wire {
            Ok(())
        } else {
            Err(self.malformed(format!("{what} has wire type {}", field.wire)))
        }
    }
}

/// Reads the signature of the ONNX model in `file` (any `Read + Seek`; a `BufReader`
/// over a file is the usual one).
pub fn read_signature<R: Read + Seek>(file: R) -> Result<OnnxSignature, OnnxError> {
    let mut w = Wire {
        inner: file,
        pos: 0,
    };
    let end = w.inner.seek(SeekFrom::End(0))?;
    w.inner.seek(SeekFrom::Start(0))?;
    let mut signature = OnnxSignature::default();
    let mut graph = None;
    while let Some(f) = w.field(end)? {
        match f.number {
            1 => {
                w.expect(f, 0, "ir_version")?;
                signature.ir_version = w.varint()? as i64;
            }
            7 => {
                w.expect(f, 2, "graph")?;
                let len = w.length(end)?;
                graph = Some(read_graph(&mut w, len)?);
            }
            8 => {
                w.expect(f, 2, "opset_import")?;
                let len = w.length(end)?;
                let (domain, version) = read_opset(&mut w, len)?;
                if domain.is_empty() || domain == "ai.onnx" {
                    signature.opset = version;
                }
            }
            _ => w.skip(f, end)?,
        }
    }
    let (inputs, outputs) = graph.ok_or(OnnxError::Incomplete("the file has no graph"))?;
    if signature.ir_version <= 0 {
        return Err(OnnxError::Incomplete("the file has no ir_version"));
    }
    if outputs.is_empty() {
        return Err(OnnxError::Incomplete("the graph has no outputs"));
    }
    signature.inputs = inputs;
    signature.outputs = outputs;
    Ok(signature)
}

fn read_opset<R: Read + Seek>(w: &mut Wire<R>, len: u64) -> Result<(String, i64), OnnxError> {
    let end = w.pos + len;
    let (mut domain, mut version) = (String::new(), 0);
    while let Some(f) = w.field(end)? {
        match (f.number, f.wire) {
            (1, 2) => domain = w.string(end)?,
            (2, 0) => version = w.varint()? as i64,
            _ => w.skip(f, end)?,
        }
    }
    Ok((domain, version))
}

type Tensors = (Vec<CatalogTensor>, Vec<CatalogTensor>);

/// GraphProto: inputs that are not initializers (older files list weights as inputs too)
/// and outputs.
fn read_graph<R: Read + Seek>(w: &mut Wire<R>, len: u64) -> Result<Tensors, OnnxError> {
    let end = w.pos + len;
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    let mut initializers = HashSet::new();
    while let Some(f) = w.field(end)? {
        match (f.number, f.wire) {
            (5, 2) => {
                let len = w.length(end)?;
                if let Some(name) = read_initializer_name(w, len)? {
                    initializers.insert(name);
                }
            }
            (11, 2) | (12, 2) => {
                let bytes = w.bytes(end, MAX_VALUE_INFO_BYTES)?;
                let offset = w.pos;
                let tensor = read_value_info(&bytes).map_err(|reason| OnnxError::Malformed {
                    offset,
                    reason: format!(
                        "graph {}: {reason}",
                        if f.number == 11 { "input" } else { "output" }
                    ),
                })?;
                if f.number == 11 {
                    inputs.push(tensor);
                } else {
                    outputs.push(tensor);
                }
            }
            _ => w.skip(f, end)?,
        }
    }
    inputs.retain(|t| !initializers.contains(&t.name));
    Ok((inputs, outputs))
}

/// TensorProto's name, seeking past its data.
fn read_initializer_name<R: Read + Seek>(
    w: &mut Wire<R>,
    len: u64,
) -> Result<Option<String>, OnnxError> {
    let end = w.pos + len;
    let mut name = None;
    while let Some(f) = w.field(end)? {
        match (f.number, f.wire) {
            (8, 2) => name = Some(w.string(end)?),
            _ => w.skip(f, end)?,
        }
    }
    Ok(name)
}

/// ValueInfoProto, already in memory (small).
fn read_value_info(bytes: &[u8]) -> Result<CatalogTensor, String> {
    let mut w = Wire {
        inner: std::io::Cursor::new(bytes),
        pos: 0,
    };
    let end = bytes.len() as u64;
    let mut tensor = CatalogTensor::default();
    let mut typed = false;
    let text = |e: OnnxError| e.to_string();
    while let Some(f) = w.field(end).map_err(text)? {
        match (f.number, f.wire) {
            (1, 2) => tensor.name = w.string(end).map_err(text)?,
            (2, 2) => {
                let len = w.length(end).map_err(text)?;
                let type_end = w.pos + len;
                while let Some(t) = w.field(type_end).map_err(text)? {
                    match (t.number, t.wire) {
                        (1, 2) => {
                            let len = w.length(type_end).map_err(text)?;
                            read_tensor_type(&mut w, len, &mut tensor).map_err(text)?;
                            typed = true;
                        }
                        _ => w.skip(t, type_end).map_err(text)?,
                    }
                }
            }
            _ => w.skip(f, end).map_err(text)?,
        }
    }
    if tensor.name.is_empty() {
        return Err("a value without a name".into());
    }
    if !typed {
        return Err(format!("'{}' is not a tensor", tensor.name));
    }
    Ok(tensor)
}

fn read_tensor_type<R: Read + Seek>(
    w: &mut Wire<R>,
    len: u64,
    tensor: &mut CatalogTensor,
) -> Result<(), OnnxError> {
    let end = w.pos + len;
    while let Some(f) = w.field(end)? {
        match (f.number, f.wire) {
            (1, 0) => tensor.datatype = datatype(w.varint()?),
            (2, 2) => {
                let len = w.length(end)?;
                let shape_end = w.pos + len;
                while let Some(d) = w.field(shape_end)? {
                    match (d.number, d.wire) {
                        (1, 2) => {
                            let len = w.length(shape_end)?;
                            let dim_end = w.pos + len;
                            let mut value = -1i64;
                            while let Some(v) = w.field(dim_end)? {
                                match (v.number, v.wire) {
                                    (1, 0) => value = w.varint()? as i64,
                                    _ => w.skip(v, dim_end)?,
                                }
                            }
                            tensor.shape.push(value);
                        }
                        _ => w.skip(d, shape_end)?,
                    }
                }
            }
            _ => w.skip(f, end)?,
        }
    }
    Ok(())
}

/// The protocol's name for an ONNX element type (TensorProto.DataType).
fn datatype(elem_type: u64) -> String {
    match elem_type {
        1 => "FP32",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "BYTES",
        9 => "BOOL",
        10 => "FP16",
        11 => "FP64",
        12 => "UINT32",
        13 => "UINT64",
        16 => "BF16",
        other => return other.to_string(),
    }
    .to_string()
}

#[cfg(test)]
mod tests;
