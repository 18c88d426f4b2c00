//! `localml backup FILE` and `localml restore FILE`: the cluster state (CA, API keys,
//! join tokens, jobs, deployments) saved into one file and written back into a new
//! scheduler's data directory or store, so a dead scheduler PC can be replaced. The format
//! and the rules are `localml_scheduler::backup`; this module is the files and the words.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use localml_proto::localml::v1::backup_client::BackupClient;
use localml_proto::localml::v1::{BackupChunk, BackupInfo, BackupRequest};
use localml_scheduler::backup::file::{BackupWriter, Written};
use localml_scheduler::backup::{self, human_bytes, restore, Assembler, Contents};
use localml_store::StoreAddress;

use crate::client;

/// Where `localml backup` reads the state.
pub enum Source {
    /// A running scheduler (`--server`), through `localml.v1.Backup` (admin scope).
    Server(String),
    /// A store no scheduler runs on (`--data-dir`, `--store`).
    Store(StoreAddress),
}

/// The warning every backup prints: what the file gives whoever reads it.
pub const WARNING: &str = "the backup holds the cluster CA's private key: whoever reads it can issue certificates your workers trust. Keep it like a password (it is written readable by you only, mode 0600; store it offline or encrypted)";

/// `localml backup FILE`: writes the state into `path` (mode 0600, complete or not at
/// all), refusing to replace an existing file unless `force`.
pub async fn backup(source: Source, path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        bail!(
            "{} exists: choose another name, or pass --force to replace it",
            path.display()
        );
    }
    let (info, contents, written) = match source {
        Source::Server(server) => from_server(&server, path, force).await?,
        Source::Store(address) => from_store(&address, path, force).await?,
    };
    println!(
        "wrote {}: {} records, {} (revision {} of the {} store)",
        path.display(),
        written.records,
        human_bytes(written.bytes),
        info.revision,
        info.backend
    );
    println!("it holds: {contents}");
    eprintln!("warning: {WARNING}");
    Ok(())
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

async fn from_server(
    server: &str,
    path: &Path,
    force: bool,
) -> anyhow::Result<(BackupInfo, Contents, Written)> {
    let channel = client::connect(server, Duration::from_secs(10)).await?;
    let mut stream = BackupClient::new(channel)
        .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
        .backup(BackupRequest {})
        .await
        .map_err(status)?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(status)?
        .context("the scheduler sent no backup")?;
    let mut sink = Sink::create(path, first.info.clone())?;
    let mut next = Some(first);
    while let Some(chunk) = next {
        sink.chunk(chunk)?;
        next = stream.message().await.map_err(status)?;
    }
    sink.finish(force)
}

async fn from_store(
    address: &StoreAddress,
    path: &Path,
    force: bool,
) -> anyhow::Result<(BackupInfo, Contents, Written)> {
    if let StoreAddress::Embedded(dir) = address {
        let file = dir.join(localml_store::embedded::FILE_NAME);
        if !file.exists() {
            bail!(
                "no cluster state in {} (no {})",
                dir.display(),
                file.display()
            );
        }
    }
    let store = address.open().await.map_err(|e| match (e, address) {
        (localml_store::StoreError::InUse(_), StoreAddress::Embedded(dir)) => anyhow::anyhow!(
            "{} is in use by a running scheduler: back it up through the scheduler (localml backup FILE --server ADDR), or stop it first",
            dir.display()
        ),
        (e, _) => e.into(),
    })?;
    let (kvs, revision) = store.list("").await?;
    let info = BackupInfo {
        revision,
        backend: store.backend().to_string(),
        created_unix_ms: localml_proto::time::unix_ms(),
        records: kvs.iter().filter(|kv| backup::in_backup(kv)).count() as u64,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut sink = Sink::create(path, Some(info.clone()))?;
    for chunk in backup::chunks(kvs, info, backup::CHUNK_BYTES) {
        sink.chunk(chunk)?;
    }
    sink.finish(force)
}

/// A backup being written: chunks in, whole records out into a private file that gets
/// its name only once complete.
struct Sink {
    file: PendingFile,
    writer: BackupWriter<BufWriter<File>>,
    assembler: Assembler,
    contents: Contents,
    info: BackupInfo,
}

impl Sink {
    fn create(path: &Path, info: Option<BackupInfo>) -> anyhow::Result<Sink> {
        let info = info.context("the scheduler's backup does not start with its info")?;
        let (file, out) = PendingFile::create(path)?;
        let writer = BackupWriter::new(BufWriter::new(out), &info)
            .with_context(|| format!("cannot write {}", file.tmp.display()))?;
        Ok(Sink {
            file,
            writer,
            assembler: Assembler::default(),
            contents: Contents::default(),
            info,
        })
    }

    fn chunk(&mut self, chunk: BackupChunk) -> anyhow::Result<()> {
        for record in chunk.records {
            let whole = self
                .assembler
                .push(record)
                .map_err(|e| anyhow::anyhow!("the backup stream is broken: {e}"))?;
            if let Some(r) = whole {
                self.contents.add(&r.key, &r.value);
                self.writer
                    .record(r.key, r.value)
                    .with_context(|| format!("cannot write {}", self.file.tmp.display()))?;
            }
        }
        Ok(())
    }

    fn finish(self, force: bool) -> anyhow::Result<(BackupInfo, Contents, Written)> {
        self.assembler
            .finish()
            .map_err(|e| anyhow::anyhow!("the backup stream is broken: {e}"))?;
        if self.contents.records != self.info.records {
            bail!(
                "the backup stream ended after {} of {} records; nothing was written",
                self.contents.records,
                self.info.records
            );
        }
        let tmp = self.file.tmp.clone();
        let (out, written) = self
            .writer
            .finish()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        let out = out
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", tmp.display(), e.error()))?;
        self.file.commit(out, force)?;
        Ok((self.info, self.contents, written))
    }
}

/// A file written under a temporary name beside its final one (mode 0600, created new)
/// and renamed to it once complete and synced, so a failed backup never leaves a partial
/// file under the name; removed if never committed.
struct PendingFile {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl PendingFile {
    fn create(target: &Path) -> anyhow::Result<(PendingFile, File)> {
        use std::os::unix::fs::OpenOptionsExt;
        let name = target
            .file_name()
            .with_context(|| format!("{} is not a file name", target.display()))?;
        let tmp = target.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let pending = PendingFile {
            tmp,
            target: target.to_path_buf(),
            committed: false,
        };
        Ok((pending, file))
    }

    fn commit(mut self, file: File, force: bool) -> anyhow::Result<()> {
        file.sync_all()
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        drop(file);
        // Checked again: the file may have appeared while the backup was streaming.
        if !force && self.target.exists() {
            bail!(
                "{} appeared while the backup was written: choose another name, or pass --force to replace it",
                self.target.display()
            );
        }
        std::fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        self.committed = true;
        // The rename is durable once the directory is synced (best effort: not every
        // file system lets a directory be opened for that).
        if let Some(dir) = self.target.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// `localml restore FILE`: checks the file whole, then writes it into the store at
/// `address` (a stopped scheduler's), refusing one that holds state unless `force`.
pub async fn restore(path: &Path, address: &StoreAddress, force: bool) -> anyhow::Result<()> {
    let (info, contents) = restore::verify(path)?;
    // RFC 3339 has four-digit years; a file may claim any time.
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    let when = if info.created_unix_ms < YEAR_10000_MS {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(info.created_unix_ms),
        )
        .to_string()
    } else {
        format!("at unix time {} ms", info.created_unix_ms)
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or_default();
    println!(
        "{}: a whole backup of {} records, {}, taken {} from revision {} of an {} store",
        path.display(),
        contents.records,
        human_bytes(size),
        when,
        info.revision,
        info.backend
    );
    println!("it holds: {contents}");
    if contents.ca_sha256.is_none() {
        eprintln!("warning: the backup holds no cluster CA: the scheduler will create a new one, and every worker must join again with a new token");
    }
    let store = address.open().await.map_err(|e| match address {
        StoreAddress::Embedded(dir) => restore::opening(e, dir),
        _ => restore::RestoreError::Store(e),
    })?;
    let restored = restore::restore(store.as_ref(), path, &contents, force).await?;
    let replaced = match restored.replaced {
        0 => String::new(),
        n => format!(", replacing the {n} it held"),
    };
    println!(
        "restored {} records into {address}{replaced}",
        restored.records
    );
    if restored.replaced > 0 {
        set_aside_admin_key(address)?;
    }
    println!("next:");
    match address {
        StoreAddress::Embedded(dir) => println!(
            "  1. start the scheduler on this data directory: localml scheduler --data-dir {0} (or localml up --data-dir {0})",
            dir.display()
        ),
        StoreAddress::Etcd { .. } => {
            println!("  1. start the scheduler replicas with --store {address}")
        }
    }
    println!("  2. workers keep their certificates (the cluster CA is the same) and rejoin by themselves; if the scheduler's address changed, give them the new one (--scheduler HOST:PORT)");
    println!("  3. admin.key is not in the backup: the scheduler writes a new admin key into its data directory at first start; the API keys and join tokens in the backup keep working");
    Ok(())
}

/// After a forced restore, an `admin.key` written by the replaced state may name a key
/// that is gone, and the scheduler writes a new one only when the file is absent: the file
/// is renamed `admin.key.before-restore`.
fn set_aside_admin_key(address: &StoreAddress) -> anyhow::Result<()> {
    use localml_scheduler::auth::keys::ADMIN_KEY_FILE;
    let StoreAddress::Embedded(dir) = address else {
        println!("note: {ADMIN_KEY_FILE} files the schedulers wrote before may name keys the restore deleted: remove them, and each scheduler writes a new one at start");
        return Ok(());
    };
    let file = dir.join(ADMIN_KEY_FILE);
    if !file.exists() {
        return Ok(());
    }
    let aside = dir.join(format!("{ADMIN_KEY_FILE}.before-restore"));
    std::fs::rename(&file, &aside)
        .with_context(|| format!("cannot rename {} to {}", file.display(), aside.display()))?;
    println!(
        "{} named a key of the replaced state: renamed to {}",
        file.display(),
        aside.display()
    );
    Ok(())
}
