//! Streaming a model file in chunks, for whoever serves the catalog's files (the
//! scheduler to workers and the CLI, a worker to its peers): read on a blocking thread a
//! few chunks ahead of the client, so memory stays a few chunks whatever the file's size.

use localml_proto::localml::v1::BlobChunk;
use tokio_stream::wrappers::ReceiverStream;

/// The chunk size to send: what the caller asked for (`FetchBlobRequest.max_chunk_bytes`,
/// at least 4 KiB), when it is smaller than the server's own; 0: the server's.
pub fn chunk_size(asked: u32, own: usize) -> usize {
    match asked {
        0 => own,
        n => (n as usize).clamp(4096, own.max(4096)),
    }
}

/// Chunks of `file` (of `size` bytes, named `sha256`) from `offset`; the first chunk
/// carries the name. Stops early when the client goes away.
pub fn file_chunks(
    file: std::fs::File,
    sha256: String,
    offset: u64,
    size: u64,
    chunk_bytes: usize,
) -> ReceiverStream<std::io::Result<BlobChunk>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut at = offset;
        while at < size {
            let n = usize::try_from((size - at).min(chunk_bytes as u64)).unwrap_or(chunk_bytes);
            let mut buf = vec![0u8; n];
            if let Err(e) = file.read_exact(&mut buf) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            let chunk = BlobChunk {
                sha256: if at == offset {
                    sha256.clone()
                } else {
                    String::new()
                },
                size,
                offset: at,
                data: buf.into(),
            };
            at += n as u64;
            if tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}
