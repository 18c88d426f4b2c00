//! Backups of the cluster state, so a dead scheduler PC can be replaced
//! (`localml backup` / `localml restore`, docs/security.md).
//!
//! A backup is every key of the store that is not bound to a lease: the cluster CA with
//! its private key (`trust/ca`), join tokens and revoked workers, API key hashes, jobs
//! with their inputs and results, deployments, assignments and cordons. Leased keys
//! (worker registrations, the leader's key) belong to live processes and come back by
//! themselves when those processes run again.
//!
//! - this file: what goes into a backup ([`in_backup`]), the chunks the `Backup` RPC
//!   streams ([`chunks`]) and their reassembly ([`Assembler`]), and a summary of what a
//!   backup holds ([`Contents`]).
//! - [`file`]: the file format (versioned, with a sha256 end marker).
//! - [`restore`]: writes a verified backup into a stopped scheduler's store.

pub mod file;
pub mod restore;

use std::collections::BTreeMap;

use localml_proto::localml::v1::{BackupChunk, BackupInfo, BackupRecord, StoredCa};
use localml_store::KeyValue;
use prost::Message;

/// Values per streamed chunk, at most (a larger value is split over several records):
/// small enough for any `max_message_bytes` a scheduler runs with, large enough that
/// the per-message overhead does not matter.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Whether `kv` goes into a backup: every key not bound to a lease.
pub fn in_backup(kv: &KeyValue) -> bool {
    kv.lease == 0
}

/// The chunks the `Backup` RPC streams for a listing: `info` in the first, leased keys
/// left out, about `limit` bytes of keys and values per chunk; a value longer than
/// `limit` is split over records marked `continued`. Values are moved out of `kvs` as
/// the chunks are taken, so memory holds the listing and one chunk, never a copy of both.
pub fn chunks(
    kvs: Vec<KeyValue>,
    info: BackupInfo,
    limit: usize,
) -> impl Iterator<Item = BackupChunk> + Send {
    Chunks {
        kvs: kvs.into_iter(),
        pending: None,
        info: Some(info),
        limit: limit.max(1),
    }
}

struct Chunks {
    kvs: std::vec::IntoIter<KeyValue>,
    /// A key whose value was only partly sent: the key, the value, and how much of it
    /// was sent.
    pending: Option<(String, Vec<u8>, usize)>,
    info: Option<BackupInfo>,
    limit: usize,
}

impl Iterator for Chunks {
    type Item = BackupChunk;

    fn next(&mut self) -> Option<BackupChunk> {
        let mut chunk = BackupChunk {
            info: self.info.take(),
            records: Vec::new(),
        };
        let mut used = 0;
        loop {
            let (key, value, sent) = match self.pending.take() {
                Some(pending) => pending,
                None => match self.kvs.by_ref().find(in_backup) {
                    Some(kv) => (kv.key, kv.value, 0),
                    None => break,
                },
            };
            let size = key.len() + value.len() - sent;
            if used > 0 && used + size > self.limit {
                // Starts the next chunk rather than splitting a value that fits in one.
                self.pending = Some((key, value, sent));
                break;
            }
            let piece = self.limit.saturating_sub(key.len()).max(1);
            if size <= self.limit || value.len() - sent <= piece {
                used += size;
                let value = match sent {
                    0 => value,
                    _ => value[sent..].to_vec(),
                };
                chunk.records.push(BackupRecord {
                    key,
                    value,
                    continued: false,
                });
                continue;
            }
            chunk.records.push(BackupRecord {
                key: key.clone(),
                value: value[sent..sent + piece].to_vec(),
                continued: true,
            });
            self.pending = Some((key, value, sent + piece));
            break;
        }
        (chunk.info.is_some() || !chunk.records.is_empty()).then_some(chunk)
    }
}

/// Joins the records of a `Backup` stream back into whole records.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: Option<BackupRecord>,
}

impl Assembler {
    /// Takes the next streamed record; returns a whole record when this one completes it.
    pub fn push(&mut self, record: BackupRecord) -> Result<Option<BackupRecord>, String> {
        let mut whole = match self.partial.take() {
            Some(mut partial) => {
                if partial.key != record.key {
                    return Err(format!(
                        "the value of '{}' was cut off by '{}'",
                        partial.key, record.key
                    ));
                }
                partial.value.extend_from_slice(&record.value);
                partial.continued = record.continued;
                partial
            }
            None => record,
        };
        if whole.continued {
            self.partial = Some(whole);
            return Ok(None);
        }
        whole.continued = false;
        Ok(Some(whole))
    }

    /// Checks that the stream did not end inside a split value.
    pub fn finish(self) -> Result<(), String> {
        match self.partial {
            Some(partial) => Err(format!("the value of '{}' was cut off", partial.key)),
            None => Ok(()),
        }
    }
}

/// Kinds of records, by key prefix, as [`Contents`] counts them.
const KINDS: &[(&str, &str)] = &[
    (crate::auth::keys::KEYS, "API keys"),
    (crate::trust::TOKENS, "join tokens"),
    (crate::trust::REVOKED, "revoked workers"),
    (crate::jobs::JOBS, "jobs"),
    (crate::jobs::INPUTS, "job inputs"),
    (crate::jobs::RESULTS, "job results"),
    (crate::deployments::DEPLOYMENTS, "deployments"),
    (crate::workers::cordons::CORDONS, "cordons"),
];

/// What a backup (or a store) holds, for the operator: counts, sizes and the CA's hash.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Contents {
    pub records: u64,
    /// Keys and values together.
    pub bytes: u64,
    /// The longest value (a store may refuse values over a limit).
    pub largest_value: usize,
    /// The sha256 of the cluster CA's certificate, as join tokens pin it, when the
    /// backup holds the CA.
    pub ca_sha256: Option<String>,
    /// Records by kind ("API keys", "jobs", ...); kinds not listed count as "other".
    pub kinds: BTreeMap<&'static str, u64>,
}

impl Contents {
    pub fn add(&mut self, key: &str, value: &[u8]) {
        self.records += 1;
        self.bytes += (key.len() + value.len()) as u64;
        self.largest_value = self.largest_value.max(value.len());
        if key == crate::trust::CA_KEY {
            self.ca_sha256 = StoredCa::decode(value)
                .ok()
                .map(|ca| localml_trust::sha256_hex(ca.cert_pem.as_bytes()));
            return;
        }
        let kind = KINDS
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .map_or("other records", |(_, kind)| kind);
        *self.kinds.entry(kind).or_default() += 1;
    }
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ca_sha256 {
            Some(hash) => write!(f, "cluster CA sha256 {hash}")?,
            None => write!(f, "no cluster CA")?,
        }
        let kinds = KINDS.iter().map(|(_, kind)| *kind).chain(["other records"]);
        for kind in kinds {
            match self.kinds.get(kind) {
                Some(1) => write!(f, ", 1 {}", kind.trim_end_matches('s'))?,
                Some(n) => write!(f, ", {n} {kind}")?,
                None => {}
            }
        }
        Ok(())
    }
}

/// `n` bytes for people: `512 B`, `3.2 KiB`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, size: usize, lease: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: (0..size).map(|i| i as u8).collect(),
            create_revision: 1,
            mod_revision: 1,
            lease,
        }
    }

    #[test]
    fn chunks_leave_out_leased_keys_split_large_values_and_reassemble() {
        let kvs = vec![
            kv("a", 10, 0),
            kv("leader", 10, 7),
            kv("b", 95, 0),
            kv("c", 350, 0),
            kv("d", 0, 0),
            kv("workers/w1", 10, 9),
            kv(&"k".repeat(150), 0, 0),
            kv(&"l".repeat(150), 120, 0),
        ];
        let expected: Vec<KeyValue> = kvs.iter().filter(|kv| in_backup(kv)).cloned().collect();
        let info = BackupInfo {
            records: 6,
            ..Default::default()
        };
        let chunks: Vec<BackupChunk> = chunks(kvs, info.clone(), 100).collect();
        assert_eq!(chunks[0].info, Some(info), "info comes first");
        assert!(chunks[1..].iter().all(|c| c.info.is_none()));
        for c in &chunks {
            let size: usize = c.records.iter().map(|r| r.key.len() + r.value.len()).sum();
            // Only a key longer than the limit makes a larger chunk, with one byte of value.
            let long_key = c.records.iter().any(|r| r.key.len() > 100);
            assert!(
                size <= 100 || (long_key && size <= 151),
                "a chunk of {size} bytes"
            );
        }
        let mut assembler = Assembler::default();
        let mut whole = Vec::new();
        for record in chunks.into_iter().flat_map(|c| c.records) {
            if let Some(r) = assembler.push(record).expect("in order") {
                whole.push((r.key, r.value));
            }
        }
        assembler.finish().expect("nothing left over");
        let expected: Vec<(String, Vec<u8>)> =
            expected.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(whole, expected);
    }

    #[test]
    fn an_empty_store_streams_one_chunk_with_its_info() {
        let chunks: Vec<BackupChunk> = chunks(Vec::new(), BackupInfo::default(), 10).collect();
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].info.is_some() && chunks[0].records.is_empty());
    }

    #[test]
    fn a_split_value_that_is_cut_off_is_an_error() {
        let part = |key: &str, continued| BackupRecord {
            key: key.into(),
            value: vec![1],
            continued,
        };
        let mut a = Assembler::default();
        assert_eq!(a.push(part("x", true)), Ok(None));
        assert!(a.push(part("y", false)).is_err(), "another key");
        let mut a = Assembler::default();
        assert_eq!(a.push(part("x", true)), Ok(None));
        assert!(a.finish().is_err(), "the stream ended inside a value");
    }

    #[test]
    fn contents_count_kinds_and_hash_the_ca() {
        let ca = StoredCa {
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "secret".into(),
        };
        let mut contents = Contents::default();
        contents.add("trust/ca", &ca.encode_to_vec());
        contents.add("keys/app", b"k");
        contents.add("keys/admin", b"k");
        contents.add("jobs/1", b"j");
        contents.add("inputs/1", b"input");
        contents.add("assignments/w/d", b"model");
        assert_eq!(
            contents.ca_sha256.as_deref(),
            Some(localml_trust::sha256_hex(ca.cert_pem.as_bytes()).as_str())
        );
        assert_eq!(contents.records, 6);
        let text = contents.to_string();
        assert!(
            text.ends_with(", 2 API keys, 1 job, 1 job input, 1 other record"),
            "{text}"
        );
        assert!(!text.contains("secret"));
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
