//! Byte-exact ONNX Runtime string tensors.
//!
//! Triton's BYTES elements are arbitrary byte strings (text, a NUL byte, an encoded
//! photo). ONNX Runtime stores string tensor elements as byte strings too, but `ort`
//! fills them through C strings (which end at the first NUL) and reads them back as UTF-8
//! `String`s. This crate makes and reads string tensors with explicit lengths through ONNX
//! Runtime's C API (`GetResizedStringTensorElementBuffer`, `GetStringTensorContent`), so
//! every byte goes through. It is the workspace's only unsafe code, kept to these two
//! functions.

use ort::value::{DynValue, Tensor, ValueType};
use ort::AsPointer;

/// A string tensor of `shape` whose elements are `elements`, byte for byte.
pub fn bytes_tensor(shape: &[usize], elements: &[Vec<u8>]) -> ort::Result<DynValue> {
    let count: usize = shape.iter().product();
    if count != elements.len() {
        return Err(ort::Error::new(format!(
            "shape {shape:?} holds {count} elements, {} given",
            elements.len()
        )));
    }
    // Empty elements first (valid C strings), then each resized to its bytes.
    let empty = vec![""; count];
    let mut value = Tensor::from_string_array((shape.to_vec(), empty.as_slice()))?.into_dyn();
    let api = ort::api();
    for (index, element) in elements.iter().enumerate() {
        let mut buffer: *mut std::ffi::c_char = std::ptr::null_mut();
        // SAFETY: `value` is a live string tensor of `count` elements and `index < count`;
        // ONNX Runtime resizes that element to `element.len()` bytes and points `buffer`
        // at its storage, or returns an error status (checked below).
        let status = unsafe {
            (api.GetResizedStringTensorElementBuffer)(
                value.ptr_mut(),
                index,
                element.len(),
                &mut buffer,
            )
        };
        // SAFETY: `status` was just returned by ONNX Runtime and is not used again.
        unsafe { ort::Error::result_from_status(status) }?;
        if element.is_empty() {
            continue;
        }
        if buffer.is_null() {
            return Err(ort::Error::new(
                "ONNX Runtime gave no buffer for a string element",
            ));
        }
        // SAFETY: `buffer` points at `element.len()` writable bytes owned by `value`, which
        // outlives this copy; the source is a distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(element.as_ptr(), buffer.cast::<u8>(), element.len())
        };
    }
    Ok(value)
}

/// The elements of the string tensor `value`, byte for byte.
pub fn tensor_bytes(value: &DynValue) -> ort::Result<Vec<Vec<u8>>> {
    let count = match value.dtype() {
        ValueType::Tensor { shape, .. } => shape.iter().map(|&d| d.max(0) as usize).product(),
        other => return Err(ort::Error::new(format!("not a tensor: {other:?}"))),
    };
    let api = ort::api();
    let mut total = 0usize;
    // SAFETY: `value` is a live tensor; ONNX Runtime writes the total length of its string
    // data into `total`, or returns an error status (checked below; a non-string tensor is
    // one).
    let status = unsafe { (api.GetStringTensorDataLength)(value.ptr(), &mut total) };
    // SAFETY: `status` was just returned by ONNX Runtime and is not used again.
    unsafe { ort::Error::result_from_status(status) }?;
    let mut data = vec![0u8; total];
    let mut offsets = vec![0usize; count];
    // SAFETY: `data` has room for `total` bytes and `offsets` for `count` offsets, the
    // sizes ONNX Runtime checks them against; it copies the elements' bytes back to back.
    let status = unsafe {
        (api.GetStringTensorContent)(
            value.ptr(),
            data.as_mut_ptr().cast(),
            total,
            offsets.as_mut_ptr(),
            count,
        )
    };
    // SAFETY: as above.
    unsafe { ort::Error::result_from_status(status) }?;
    let mut elements = Vec::with_capacity(count);
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).copied().unwrap_or(total);
        let element = data
            .get(start..end)
            .ok_or_else(|| ort::Error::new("ONNX Runtime gave string offsets out of order"))?;
        elements.push(element.to_vec());
    }
    Ok(elements)
}
