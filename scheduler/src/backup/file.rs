//! The backup file: the line `localml-backup v1`, then length-delimited `BackupFrame`s
//! (protobuf, `proto/localml/v1/backup.proto`): `info` first, one `record` per key, `end`
//! last, then nothing. `end` holds the number of records and the sha256 of every byte
//! before it, so a truncated, cut or altered file is refused before anything is restored
//! from it. Both sides stream: neither the writer nor the reader holds more than one
//! record.

use std::io::{Read, Write};

use localml_proto::localml::v1::backup_frame::Frame;
use localml_proto::localml::v1::{BackupEnd, BackupFrame, BackupInfo, BackupRecord};
use localml_trust::Sha256Stream;
use prost::Message;

/// The first line of every backup file.
pub const MAGIC: &[u8] = b"localml-backup v1\n";
/// What every version's first line starts with.
const MAGIC_PREFIX: &[u8] = b"localml-backup v";
/// Largest frame a reader takes: a corrupted length cannot make it read more than this
/// into memory. Far above any record: values reach the store through gRPC messages
/// (`max_message_bytes`, 64 MiB by default).
pub const MAX_FRAME_BYTES: u64 = 1 << 30;

/// Why a backup file cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    /// Reading or writing the file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is not a localml backup.
    #[error("not a localml backup (it does not start with 'localml-backup v1')")]
    NotABackup,
    /// A backup in a format this localml does not read (a newer one).
    #[error("a backup in format v{0}: this localml reads format v1 only")]
    Version(String),
    /// The file ends before its end marker (an interrupted copy, a full disk).
    #[error("the backup is truncated: it ends after {records} records without its end marker (an interrupted copy or a full disk?)")]
    Truncated { records: u64 },
    /// The bytes are not the ones written.
    #[error("the backup is corrupted: {0}")]
    Corrupted(String),
}

fn frame(frame: Frame) -> Vec<u8> {
    BackupFrame { frame: Some(frame) }.encode_length_delimited_to_vec()
}

/// What [`BackupWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub records: u64,
    /// The file's size.
    pub bytes: u64,
}

/// Writes a backup file record by record.
pub struct BackupWriter<W: Write> {
    out: W,
    hash: Sha256Stream,
    records: u64,
    bytes: u64,
}

impl<W: Write> BackupWriter<W> {
    /// Writes the first line and `info`.
    pub fn new(out: W, info: &BackupInfo) -> std::io::Result<BackupWriter<W>> {
        let mut writer = BackupWriter {
            out,
            hash: Sha256Stream::default(),
            records: 0,
            bytes: 0,
        };
        writer.write(MAGIC)?;
        writer.write(&frame(Frame::Info(info.clone())))?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends one whole record.
    pub fn record(&mut self, key: String, value: Vec<u8>) -> std::io::Result<()> {
        self.write(&frame(Frame::Record(BackupRecord {
            key,
            value,
            continued: false,
        })))?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end marker and flushes; returns the output and what was written.
    pub fn finish(mut self) -> std::io::Result<(W, Written)> {
        let end = frame(Frame::End(BackupEnd {
            records: self.records,
            sha256: self.hash.hex(),
        }));
        self.out.write_all(&end)?;
        self.out.flush()?;
        let written = Written {
            records: self.records,
            bytes: self.bytes + end.len() as u64,
        };
        Ok((self.out, written))
    }
}

/// A reader that hashes what it reads and counts it.
struct Hashing<R> {
    inner: R,
    hash: Sha256Stream,
    offset: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

/// Reads up to `buf.len()` bytes; fewer only at the end of the input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads a backup file record by record, checking it as it goes; the last record is
/// only trustworthy once [`BackupReader::next_record`] returned `None` (the end marker
/// and the hash were checked).
pub struct BackupReader<R: Read> {
    src: Hashing<R>,
    info: BackupInfo,
    records: u64,
    ended: bool,
}

impl<R: Read> BackupReader<R> {
    /// Checks the first line and reads `info`.
    pub fn open(inner: R) -> Result<BackupReader<R>, BackupFileError> {
        let mut src = Hashing {
            inner,
            hash: Sha256Stream::default(),
            offset: 0,
        };
        let mut first = vec![0u8; MAGIC.len()];
        let n = read_full(&mut src, &mut first)?;
        first.truncate(n);
        if first != MAGIC {
            if MAGIC.starts_with(&first) {
                return Err(BackupFileError::Truncated { records: 0 });
            }
            if let Some(rest) = first.strip_prefix(MAGIC_PREFIX) {
                let version = rest.split(|b| *b == b'\n').next().unwrap_or_default();
                return Err(BackupFileError::Version(
                    String::from_utf8_lossy(version).into_owned(),
                ));
            }
            return Err(BackupFileError::NotABackup);
        }
        let mut reader = BackupReader {
            src,
            info: BackupInfo::default(),
            records: 0,
            ended: false,
        };
        match reader.frame()? {
            Some(Frame::Info(info)) => reader.info = info,
            None => return Err(BackupFileError::Truncated { records: 0 }),
            Some(_) => {
                return Err(BackupFileError::Corrupted(
                    "it does not start with its info frame".into(),
                ))
            }
        }
        Ok(reader)
    }

    pub fn info(&self) -> &BackupInfo {
        &self.info
    }

    /// The next frame; `None` at the end of the input, between frames.
    fn frame(&mut self) -> Result<Option<Frame>, BackupFileError> {
        let at = self.src.offset;
        let truncated = BackupFileError::Truncated {
            records: self.records,
        };
        // The length: a protobuf varint, at most 10 bytes.
        let mut length: u64 = 0;
        for i in 0..10 {
            let mut byte = [0u8; 1];
            if read_full(&mut self.src, &mut byte)? == 0 {
                return if i == 0 { Ok(None) } else { Err(truncated) };
            }
            length |= u64::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                break;
            }
            if i == 9 {
                return Err(BackupFileError::Corrupted(format!(
                    "invalid frame length at byte {at}"
                )));
            }
        }
        if length > MAX_FRAME_BYTES {
            return Err(BackupFileError::Corrupted(format!(
                "a frame of {length} bytes at byte {at}"
            )));
        }
        let mut body = Vec::new();
        (&mut self.src).take(length).read_to_end(&mut body)?;
        if (body.len() as u64) < length {
            return Err(truncated);
        }
        let frame = BackupFrame::decode(body.as_slice()).map_err(|e| {
            BackupFileError::Corrupted(format!("the frame at byte {at} does not decode: {e}"))
        })?;
        frame
            .frame
            .map(Some)
            .ok_or_else(|| BackupFileError::Corrupted(format!("an unknown frame at byte {at}")))
    }

    /// The next record; `None` once the end marker was read and the file checked whole.
    pub fn next_record(&mut self) -> Result<Option<BackupRecord>, BackupFileError> {
        if self.ended {
            return Ok(None);
        }
        let before = self.src.hash.clone();
        let corrupted = |why: String| Err(BackupFileError::Corrupted(why));
        match self.frame()? {
            None => Err(BackupFileError::Truncated {
                records: self.records,
            }),
            Some(Frame::Record(record)) if !record.continued => {
                self.records += 1;
                Ok(Some(record))
            }
            Some(Frame::Record(record)) => corrupted(format!("a split record ('{}')", record.key)),
            Some(Frame::Info(_)) => corrupted("a second info frame".into()),
            Some(Frame::End(end)) => {
                let actual = before.hex();
                if end.sha256 != actual {
                    return corrupted(format!(
                        "its bytes hash to sha256 {actual}, the end marker says {}",
                        end.sha256
                    ));
                }
                if end.records != self.records {
                    return corrupted(format!(
                        "{} records, the end marker says {}",
                        self.records, end.records
                    ));
                }
                let mut more = [0u8; 1];
                if read_full(&mut self.src, &mut more)? != 0 {
                    return corrupted("bytes after the end marker".into());
                }
                self.ended = true;
                Ok(None)
            }
        }
    }
}

/// Reads a whole backup and checks it; calls `each` with every record. Nothing from
/// the records can be trusted unless this returns `Ok`.
pub fn read_all(
    input: impl Read,
    mut each: impl FnMut(&BackupRecord),
) -> Result<BackupInfo, BackupFileError> {
    let mut reader = BackupReader::open(input)?;
    while let Some(record) = reader.next_record()? {
        each(&record);
    }
    Ok(reader.info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let info = BackupInfo {
            revision: 42,
            backend: "embedded".into(),
            created_unix_ms: 1_700_000_000_000,
            records: 3,
            version: "0.1.0".into(),
        };
        let mut writer = BackupWriter::new(Vec::new(), &info).expect("header");
        writer
            .record("trust/ca".into(), b"ca".to_vec())
            .expect("write");
        writer
            .record("keys/app".into(), vec![7u8; 300])
            .expect("write");
        writer
            .record("jobs/empty".into(), Vec::new())
            .expect("write");
        let (bytes, written) = writer.finish().expect("finish");
        assert_eq!(
            written,
            Written {
                records: 3,
                bytes: bytes.len() as u64
            }
        );
        bytes
    }

    type Records = Vec<(String, Vec<u8>)>;

    fn read(bytes: &[u8]) -> Result<(BackupInfo, Records), BackupFileError> {
        let mut records = Vec::new();
        let info = read_all(bytes, |r| records.push((r.key.clone(), r.value.clone())))?;
        Ok((info, records))
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert!(bytes.starts_with(MAGIC));
        let (info, records) = read(&bytes).expect("reads back");
        assert_eq!((info.revision, info.backend.as_str()), (42, "embedded"));
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["trust/ca", "keys/app", "jobs/empty"]);
        assert_eq!(records[1].1, vec![7u8; 300]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            match read(&bytes[..cut]) {
                Err(BackupFileError::Truncated { .. }) => {}
                other => panic!("cut at {cut} of {}: {other:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let bytes = sample();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(read(&flipped).is_err(), "bit {bit} flipped went unnoticed");
        }
    }

    #[test]
    fn other_files_and_versions_say_what_they_are() {
        let mut bytes = sample();
        bytes.extend_from_slice(b"x");
        assert!(
            matches!(read(&bytes), Err(BackupFileError::Corrupted(m)) if m.contains("after the end")),
            "trailing bytes"
        );
        assert!(matches!(
            read(b"{\"not\": \"a backup at all\"}"),
            Err(BackupFileError::NotABackup)
        ));
        let newer = [b"localml-backup v2\n".as_slice(), &sample()[MAGIC.len()..]].concat();
        match read(&newer) {
            Err(e @ BackupFileError::Version(_)) => {
                assert!(e.to_string().contains("format v2"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let huge = [MAGIC, &[0xff, 0xff, 0xff, 0xff, 0x7f]].concat();
        assert!(
            matches!(read(&huge), Err(BackupFileError::Corrupted(_))),
            "a length over the limit is refused before reading"
        );
    }
}
