//! Restoring a backup into a store no scheduler runs on (`localml restore`): the file is
//! read and checked whole first ([`verify`]); then the store is checked (empty, or
//! `--force` to replace what it holds; no live scheduler on it) and the records are
//! written in batches, with fresh revisions.

use std::path::Path;

use localml_proto::localml::v1::BackupInfo;
use localml_store::{KeyValue, Store, StoreError, Txn};

use super::file::{BackupFileError, BackupReader};
use super::{in_backup, Contents};

/// Operations per transaction, and value bytes per transaction (a larger record goes
/// alone): under etcd's defaults, `--max-txn-ops` 128 and `--max-request-bytes` 1.5 MiB.
const BATCH_OPS: usize = 64;
const BATCH_BYTES: usize = 512 * 1024;

/// Why a backup cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The file cannot be read, or is not a whole, unaltered backup.
    #[error("{path}: {error}")]
    File {
        path: String,
        error: BackupFileError,
    },
    /// The embedded store's file is open in a running scheduler (the data directory is
    /// named).
    #[error("{0} is in use by a running scheduler: stop the scheduler using {0} first")]
    InUse(String),
    /// Keys bound to live leases: a scheduler replica runs on this etcd store.
    #[error("a scheduler is running on this store ('{0}' is held by a live lease): stop every scheduler replica using it first")]
    Live(String),
    /// The store already holds cluster state and `--force` was not given.
    #[error("the store already holds cluster state ({records} records: {0}); restore into an empty data directory, or pass --force to replace it", records = .0.records)]
    NotEmpty(Contents),
    /// A record larger than the store takes in one write (etcd's request limit).
    #[error("the backup holds a value of {size} bytes; this {backend} store takes at most {limit} bytes per write")]
    TooLarge {
        size: usize,
        limit: usize,
        backend: &'static str,
    },
    /// The store failed while being read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Maps an error opening the store: a data directory in use names the fix.
pub fn opening(error: StoreError, data_dir: &Path) -> RestoreError {
    match error {
        StoreError::InUse(_) => RestoreError::InUse(data_dir.display().to_string()),
        e => RestoreError::Store(e),
    }
}

/// Reads the backup at `path` whole and checks it; what it holds.
pub fn verify(path: &Path) -> Result<(BackupInfo, Contents), RestoreError> {
    let failed = |error| RestoreError::File {
        path: path.display().to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.into()))?;
    let mut contents = Contents::default();
    let info = super::file::read_all(std::io::BufReader::new(file), |r| {
        contents.add(&r.key, &r.value)
    })
    .map_err(failed)?;
    Ok((info, contents))
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    /// Records the store held before, deleted (`--force`).
    pub replaced: u64,
}

/// Writes the backup at `path`, checked by [`verify`] into `contents`, into `store`.
/// Refuses a store that holds state unless `force` (then deletes that state first) and
/// an etcd store with live leases (a running scheduler).
pub async fn restore(
    store: &dyn Store,
    path: &Path,
    contents: &Contents,
    force: bool,
) -> Result<Restored, RestoreError> {
    if let Some(limit) = store.max_value_bytes() {
        if contents.largest_value > limit {
            return Err(RestoreError::TooLarge {
                size: contents.largest_value,
                limit,
                backend: store.backend(),
            });
        }
    }
    let (listed, _) = store.list("").await?;
    // The embedded store's lock already proves no scheduler has it open; its leased keys
    // are left from a stopped one and expire by themselves.
    if store.backend() == "etcd" {
        if let Some(live) = listed.iter().find(|kv| !in_backup(kv)) {
            return Err(RestoreError::Live(live.key.clone()));
        }
    }
    let existing: Vec<KeyValue> = listed.into_iter().filter(in_backup).collect();
    if !existing.is_empty() && !force {
        let mut held = Contents::default();
        for kv in &existing {
            held.add(&kv.key, &kv.value);
        }
        return Err(RestoreError::NotEmpty(held));
    }
    for batch in existing.chunks(BATCH_OPS) {
        let txn = batch.iter().fold(Txn::new(), |txn, kv| txn.delete(&kv.key));
        commit(store, txn).await?;
    }

    // The file was checked whole by `verify`; it is read again here (a local file, read
    // between commits) and checked again, in case it changed since.
    let failed = |error| RestoreError::File {
        path: path.display().to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.into()))?;
    let mut reader = BackupReader::open(std::io::BufReader::new(file)).map_err(failed)?;
    let (mut txn, mut ops, mut bytes, mut records) = (Txn::new(), 0, 0, 0);
    // Keys in the batch: a key the file repeats starts a new batch (one transaction may
    // not write a key twice), so the later record wins, as it would one by one.
    let mut batch_keys = std::collections::HashSet::new();
    while let Some(record) = reader.next_record().map_err(failed)? {
        let full = ops == BATCH_OPS || bytes + record.value.len() > BATCH_BYTES;
        if ops > 0 && (full || batch_keys.contains(&record.key)) {
            commit(store, std::mem::take(&mut txn)).await?;
            (ops, bytes) = (0, 0);
            batch_keys.clear();
        }
        batch_keys.insert(record.key.clone());
        bytes += record.value.len();
        ops += 1;
        records += 1;
        txn = txn.put(&record.key, record.value, 0);
    }
    if ops > 0 {
        commit(store, txn).await?;
    }
    Ok(Restored {
        records,
        replaced: existing.len() as u64,
    })
}

async fn commit(store: &dyn Store, txn: Txn) -> Result<(), StoreError> {
    match store.commit(txn).await? {
        Some(_) => Ok(()),
        None => Err(StoreError::Unavailable(
            "a write without conditions was refused".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::file::BackupWriter;
    use localml_store::embedded::EmbeddedStore;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "localml-restore-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn write_backup(path: &Path, records: &[(&str, &[u8])]) {
        let info = BackupInfo {
            records: records.len() as u64,
            ..Default::default()
        };
        let file = std::fs::File::create(path).expect("create");
        let mut writer = BackupWriter::new(file, &info).expect("header");
        for (k, v) in records {
            writer.record(k.to_string(), v.to_vec()).expect("record");
        }
        writer.finish().expect("finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restores_into_an_empty_store_and_refuses_a_full_one_without_force() {
        let dir = temp_dir("store");
        let file = dir.join("backup");
        let many: Vec<(String, Vec<u8>)> = (0..150)
            .map(|i| (format!("jobs/{i:03}"), vec![i as u8; 10_000]))
            .collect();
        let mut records: Vec<(&str, &[u8])> = vec![("keys/app", b"hash"), ("trust/ca", b"ca")];
        records.extend(many.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        write_backup(&file, &records);
        let (_, contents) = verify(&file).expect("a whole backup");
        assert_eq!(contents.records, 152);

        let store = EmbeddedStore::open(&dir.join("state")).expect("open");
        let restored = restore(&store, &file, &contents, false)
            .await
            .expect("restore");
        assert_eq!(
            restored,
            Restored {
                records: 152,
                replaced: 0
            }
        );
        let (kvs, _) = store.list("").await.expect("list");
        let got: Vec<(&str, &[u8])> = kvs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
            .collect();
        let mut want = records.clone();
        want.sort();
        assert_eq!(got, want);

        // Again: the store holds state now.
        let refused = restore(&store, &file, &contents, false)
            .await
            .expect_err("not empty");
        assert!(
            refused.to_string().contains("--force"),
            "{refused}: names the way out"
        );
        // --force replaces it: keys the backup lacks are gone, leased keys stay.
        let lease = store
            .grant(std::time::Duration::from_secs(60))
            .await
            .expect("lease");
        store
            .commit(Txn::new().put("workers/w", b"live".to_vec(), lease))
            .await
            .expect("put");
        store
            .put("cordons/stale", b"x".to_vec())
            .await
            .expect("put");
        write_backup(&file, &[("trust/ca", b"other ca")]);
        let (_, contents) = verify(&file).expect("a whole backup");
        let restored = restore(&store, &file, &contents, true)
            .await
            .expect("forced");
        assert_eq!(restored.replaced, 153);
        let (kvs, _) = store.list("").await.expect("list");
        let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["trust/ca", "workers/w"]);
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_the_file_repeats_is_restored_with_its_last_value() {
        let dir = temp_dir("repeat");
        let file = dir.join("backup");
        write_backup(
            &file,
            &[("keys/a", b"first"), ("keys/b", b"b"), ("keys/a", b"last")],
        );
        let (_, contents) = verify(&file).expect("a whole backup");
        let store = EmbeddedStore::open(&dir.join("state")).expect("open");
        let restored = restore(&store, &file, &contents, false)
            .await
            .expect("one transaction may not write a key twice: a new batch");
        assert_eq!(restored.records, 3);
        let a = store.get("keys/a").await.expect("get").expect("a");
        assert_eq!(a.value, b"last");
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_damaged_file_is_refused_naming_the_file() {
        let dir = temp_dir("damaged");
        let file = dir.join("backup");
        write_backup(&file, &[("trust/ca", b"ca")]);
        let bytes = std::fs::read(&file).expect("read");
        std::fs::write(&file, &bytes[..bytes.len() - 3]).expect("cut");
        let error = verify(&file).expect_err("truncated").to_string();
        assert!(
            error.contains("truncated") && error.contains("backup"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
