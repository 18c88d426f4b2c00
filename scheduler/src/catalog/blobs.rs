//! Model files on the scheduler's disk, named by their sha256:
//! `<data_dir>/blobs/sha256/<hex>` once complete and checked, `<data_dir>/blobs/partial/<hex>`
//! while an upload is under way or was interrupted (the next upload resumes from its end).
//! A blob is renamed into place only after its bytes hashed to its name and were fsynced,
//! so a crash never leaves a wrong or half-written complete blob.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::CatalogError;

/// The largest model file the catalog takes.
pub const MAX_BLOB_BYTES: u64 = 256 << 30;

/// Checks a blob name: 64 lower-case hex digits.
pub fn check_sha256(hex: &str) -> Result<(), CatalogError> {
    if localml_trust::is_sha256_hex(hex) {
        Ok(())
    } else {
        Err(CatalogError::BadSha256(hex.chars().take(80).collect()))
    }
}

/// What the store holds of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub complete: bool,
    pub bytes: u64,
}

pub struct Blobs {
    dir: PathBuf,
    /// Blobs being uploaded now: a second upload of the same blob waits for none, it is
    /// refused (two writers would interleave their bytes).
    uploading: Mutex<HashSet<String>>,
}

impl Blobs {
    pub fn open(dir: &Path) -> std::io::Result<Blobs> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        std::fs::create_dir_all(dir.join("partial"))?;
        Ok(Blobs {
            dir: dir.to_path_buf(),
            uploading: Mutex::default(),
        })
    }

    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join("sha256").join(hex)
    }

    fn partial(&self, hex: &str) -> PathBuf {
        self.dir.join("partial").join(hex)
    }

    pub fn held(&self, hex: &str) -> std::io::Result<Held> {
        match std::fs::metadata(self.path(hex)) {
            Ok(m) => {
                return Ok(Held {
                    complete: true,
                    bytes: m.len(),
                })
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        match std::fs::metadata(self.partial(hex)) {
            Ok(m) => Ok(Held {
                complete: false,
                bytes: m.len(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Held {
                complete: false,
                bytes: 0,
            }),
            Err(e) => Err(e),
        }
    }

    /// Starts (or resumes, when `offset` is what the store holds) an upload.
    pub fn begin(
        self: &Arc<Self>,
        hex: &str,
        size: u64,
        offset: u64,
    ) -> Result<Upload, CatalogError> {
        self.start(hex, size, offset, false)
    }

    fn start(
        self: &Arc<Self>,
        hex: &str,
        size: u64,
        offset: u64,
        over: bool,
    ) -> Result<Upload, CatalogError> {
        check_sha256(hex)?;
        if size > MAX_BLOB_BYTES {
            return Err(CatalogError::TooLarge(size));
        }
        // Taken before what is held is read, so no other upload changes it meanwhile.
        if !self
            .uploading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hex.to_string())
        {
            return Err(CatalogError::Busy(hex.into()));
        }
        // Built now, so every early return below releases the blob again.
        let mut upload = Upload {
            blobs: Arc::clone(self),
            sha256: hex.to_string(),
            size,
            written: offset,
            file: None,
        };
        let mut held = self.held(hex)?;
        if held.complete {
            return Err(CatalogError::BlobExists(hex.into()));
        }
        if held.bytes > size || (over && held.bytes > 0) {
            // An earlier upload declared a larger size (its bytes cannot be this blob's),
            // or the caller sends the whole blob again.
            std::fs::remove_file(self.partial(hex))?;
            held.bytes = 0;
        }
        if offset != held.bytes {
            return Err(CatalogError::Offset {
                sha256: hex.into(),
                offset,
                held: held.bytes,
            });
        }
        upload.file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.partial(hex))?,
        );
        Ok(upload)
    }

    /// Starts an upload from byte 0, discarding what an earlier one left.
    pub fn begin_again(self: &Arc<Self>, hex: &str, size: u64) -> Result<Upload, CatalogError> {
        self.start(hex, size, 0, true)
    }

    /// Removes a complete blob; returns its size.
    pub fn remove(&self, hex: &str) -> std::io::Result<u64> {
        let path = self.path(hex);
        let size = std::fs::metadata(&path)?.len();
        std::fs::remove_file(path)?;
        Ok(size)
    }

    /// Every complete blob's name.
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("sha256"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if check_sha256(&name).is_ok() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// One upload in progress; dropping it without [`Upload::finish`] keeps the bytes written
/// so far for a later resume.
pub struct Upload {
    blobs: Arc<Blobs>,
    sha256: String,
    size: u64,
    written: u64,
    file: Option<std::fs::File>,
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> Result<(), CatalogError> {
        let after = self.written.saturating_add(data.len() as u64);
        if after > self.size {
            return Err(CatalogError::PastSize {
                offset: after,
                size: self.size,
            });
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data)?;
        self.written = after;
        Ok(())
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks length and sha256, then makes the blob durable and complete. A blob whose
    /// bytes hash to another name is deleted (a resume cannot fix it).
    pub fn finish(mut self) -> Result<Held, CatalogError> {
        if self.written != self.size {
            return Err(CatalogError::Short {
                sha256: self.sha256.clone(),
                written: self.written,
                size: self.size,
            });
        }
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let partial = self.blobs.partial(&self.sha256);
        let actual = localml_trust::sha256_file(&partial)?;
        if actual != self.sha256 {
            let _ = std::fs::remove_file(&partial);
            tracing::warn!(expected = %self.sha256, actual = %actual, "uploaded blob does not match its sha256; deleted");
            return Err(CatalogError::HashMismatch {
                expected: self.sha256.clone(),
                actual,
            });
        }
        std::fs::rename(&partial, self.blobs.path(&self.sha256))?;
        std::fs::File::open(self.blobs.dir.join("sha256"))?.sync_all()?;
        Ok(Held {
            complete: true,
            bytes: self.size,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.blobs
            .uploading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.sha256);
    }
}
