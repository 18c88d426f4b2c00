//! The embedded store: one redb file (`state.redb`) in the scheduler's data directory.
//!
//! Every commit is durable (fsync) before it returns, so an acknowledged change survives
//! a crash. The revision counter and leases (with their expiry as wall-clock time) are
//! in the file too; a lease whose time ran out while the scheduler was down expires on
//! the next start. Watch history is kept in memory only (the events of the last
//! [`HISTORY_AGE`], at most [`HISTORY_EVENTS`] and [`HISTORY_BYTES`]): a watch from before
//! it (or from before a restart) gets `Compacted` and lists again, exactly as after an
//! etcd compaction.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use crate::*;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id -> (ttl in ms, expiry in ms since the Unix epoch).
const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");

const REVISION: &str = "revision";
const NEXT_LEASE: &str = "next_lease";

/// Events kept for watches that resume: those of the last five minutes, at most this
/// many and this many bytes. The watches are in this process and resume after a lag of
/// moments; a longer history only held memory (workers' registrations, rewritten every
/// third of a grace period, grew it by about 0.2 MiB a minute with two workers, to tens
/// of MiB over hours).
pub const HISTORY_AGE: Duration = Duration::from_secs(300);
pub const HISTORY_EVENTS: usize = 20_000;
pub const HISTORY_BYTES: usize = 16 * 1024 * 1024;
/// How often expired leases are looked for.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// The store's file name inside the data directory.
pub const FILE_NAME: &str = "state.redb";

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

struct State {
    revision: Revision,
    /// Watches may resume after any revision >= this one.
    floor: Revision,
    /// Events with when they were published.
    history: VecDeque<(std::time::Instant, Event)>,
    /// Events older than this leave the history ([`HISTORY_AGE`]).
    history_age: Duration,
    history_bytes: usize,
    /// Lease id -> (ttl, expiry in ms since the epoch).
    leases: HashMap<LeaseId, (i64, i64)>,
    /// The keys each lease holds, so expiry does not scan the file.
    lease_keys: HashMap<LeaseId, BTreeSet<String>>,
    next_lease: LeaseId,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn failed(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {}", e.into()))
}

fn event_bytes(e: &Event) -> usize {
    match e {
        Event::Put(kv) => kv.key.len() + kv.value.len() + 32,
        Event::Delete { key, .. } => key.len() + 16,
    }
}

/// Records the store's revision in the transaction.
fn set_revision(write: &redb::WriteTransaction, revision: Revision) -> Result<(), StoreError> {
    write
        .open_table(META)
        .map_err(failed)?
        .insert(REVISION, revision)
        .map_err(failed)?;
    Ok(())
}

/// Value layout: create revision, mod revision, lease (8 bytes each, LE), then the value.
fn encode(create: Revision, modified: Revision, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + value.len());
    for n in [create, modified, lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// The record's (create revision, mod revision, lease), without copying its value.
fn header(key: &str, bytes: &[u8]) -> Result<(Revision, Revision, LeaseId), StoreError> {
    let field = |i: usize| -> Result<i64, StoreError> {
        let slice = bytes.get(i * 8..i * 8 + 8).ok_or_else(|| {
            StoreError::Unavailable(format!("embedded store: record '{key}' is truncated"))
        })?;
        let mut b = [0u8; 8];
        b.copy_from_slice(slice);
        Ok(i64::from_le_bytes(b))
    };
    Ok((field(0)?, field(1)?, field(2)?))
}

fn decode(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision, lease) = header(key, bytes)?;
    Ok(KeyValue {
        key: key.to_string(),
        create_revision,
        mod_revision,
        lease,
        value: bytes[24..].to_vec(),
    })
}

impl EmbeddedStore {
    /// Keeps watch history for `age` instead of [`HISTORY_AGE`] (tests; from the next
    /// write on).
    pub fn set_history_age(&self, age: Duration) {
        self.inner.lock().history_age = age;
    }

    /// Opens (creating) `dir/state.redb`. Fails when another process has it open.
    /// The directory is made private to the scheduler's user (0700) and the file 0600:
    /// the store holds the cluster CA's key and the API keys' hashes.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        let private = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot make {} private (mode {mode:o}): {e}",
                    path.display()
                ))
            })
        };
        private(dir, 0o700)?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            e => StoreError::Unavailable(format!("cannot open {}: {e}", path.display())),
        })?;
        private(&path, 0o600)?;
        let (revision, next_lease, leases, lease_keys) = {
            let txn = db.begin_write().map_err(failed)?;
            let out = {
                let meta = txn.open_table(META).map_err(failed)?;
                let kv = txn.open_table(KV).map_err(failed)?;
                let mut lease_keys: HashMap<LeaseId, BTreeSet<String>> = HashMap::new();
                for row in kv.iter().map_err(failed)? {
                    let (k, v) = row.map_err(failed)?;
                    let (_, _, lease) = header(k.value(), v.value())?;
                    if lease != 0 {
                        lease_keys
                            .entry(lease)
                            .or_default()
                            .insert(k.value().to_string());
                    }
                }
                let table = txn.open_table(LEASES).map_err(failed)?;
                let get = |k| -> Result<i64, StoreError> {
                    Ok(meta.get(k).map_err(failed)?.map(|v| v.value()).unwrap_or(0))
                };
                let mut leases = HashMap::new();
                for row in table.iter().map_err(failed)? {
                    let (id, v) = row.map_err(failed)?;
                    leases.insert(id.value(), v.value());
                }
                (get(REVISION)?, get(NEXT_LEASE)?.max(1), leases, lease_keys)
            };
            txn.commit().map_err(failed)?;
            out
        };
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            db,
            path,
            state: Mutex::new(State {
                revision,
                floor: revision,
                history: VecDeque::new(),
                history_age: HISTORY_AGE,
                history_bytes: 0,
                leases,
                lease_keys,
                next_lease,
            }),
            events,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(EXPIRY_TICK);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    let expired: Vec<LeaseId> = {
                        let state = inner.lock();
                        let now = now_ms();
                        state
                            .leases
                            .iter()
                            .filter(|(_, (_, expiry))| *expiry <= now)
                            .map(|(id, _)| *id)
                            .collect()
                    };
                    for lease in expired {
                        let inner = Arc::clone(&inner);
                        let result =
                            tokio::task::spawn_blocking(move || inner.end_lease(lease)).await;
                        if let Ok(Err(e)) = result {
                            tracing::warn!(lease, error = %e, "cannot expire lease");
                        }
                    }
                }
            });
        }
        Ok(EmbeddedStore { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded store task failed: {e}")))?
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits under the state lock, so revisions, history and notifications stay in
    /// one order.
    fn commit(&self, txn: &Txn) -> Result<Option<Revision>, StoreError> {
        txn.check()?;
        let mut state = self.lock();
        let write = self.db.begin_write().map_err(failed)?;
        let revision = state.revision + 1;
        let mut events = Vec::new();
        // (key, lease it had, lease it has now), applied once the commit succeeded.
        let mut moves: Vec<(String, LeaseId, LeaseId)> = Vec::new();
        {
            let mut kv = write.open_table(KV).map_err(failed)?;
            for c in &txn.compares {
                let current = match kv.get(c.key.as_str()).map_err(failed)? {
                    Some(v) => header(&c.key, v.value())?.1,
                    None => 0,
                };
                if current != c.mod_revision {
                    return Ok(None);
                }
            }
            for op in &txn.ops {
                match op {
                    Op::Put { key, value, lease } => {
                        let alive = state
                            .leases
                            .get(lease)
                            .is_some_and(|(_, expiry)| *expiry > now_ms());
                        if *lease != 0 && !alive {
                            return Err(StoreError::LeaseNotFound(*lease));
                        }
                        let (create, old_lease) = match kv.get(key.as_str()).map_err(failed)? {
                            Some(v) => {
                                let (create, _, old) = header(key, v.value())?;
                                (create, old)
                            }
                            None => (revision, 0),
                        };
                        moves.push((key.clone(), old_lease, *lease));
                        kv.insert(
                            key.as_str(),
                            encode(create, revision, *lease, value).as_slice(),
                        )
                        .map_err(failed)?;
                        events.push(Event::Put(KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: create,
                            mod_revision: revision,
                            lease: *lease,
                        }));
                    }
                    Op::Delete { key } => {
                        let removed = kv.remove(key.as_str()).map_err(failed)?;
                        if let Some(old) = removed {
                            let (_, _, old_lease) = header(key, old.value())?;
                            moves.push((key.clone(), old_lease, 0));
                            events.push(Event::Delete {
                                key: key.clone(),
                                mod_revision: revision,
                            });
                        }
                    }
                }
            }
        }
        if events.is_empty() {
            // Nothing changed (deletes of absent keys): no new revision, like etcd.
            write.abort().map_err(failed)?;
            return Ok(Some(state.revision));
        }
        set_revision(&write, revision)?;
        write.commit().map_err(failed)?;
        for (key, old, new) in moves {
            if old != 0 {
                if let Some(keys) = state.lease_keys.get_mut(&old) {
                    keys.remove(&key);
                }
            }
            if new != 0 {
                state.lease_keys.entry(new).or_default().insert(key);
            }
        }
        state.revision = revision;
        self.publish(&mut state, events);
        Ok(Some(revision))
    }

    fn publish(&self, state: &mut State, events: Vec<Event>) {
        state.history_bytes += events.iter().map(event_bytes).sum::<usize>();
        let now = std::time::Instant::now();
        state
            .history
            .extend(events.iter().map(|e| (now, e.clone())));
        let too_old = |state: &State| {
            state
                .history
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > state.history_age)
        };
        while state.history.len() > HISTORY_EVENTS
            || state.history_bytes > HISTORY_BYTES
            || too_old(state)
        {
            let Some((_, old)) = state.history.pop_front() else {
                break;
            };
            state.history_bytes -= event_bytes(&old);
            // Watches from before this revision must list again.
            state.floor = state.floor.max(old.revision());
        }
        let _ = self.events.send(Arc::new(events));
    }

    /// Removes a lease and deletes its keys in one revision.
    fn end_lease(&self, lease: LeaseId) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if !state.leases.contains_key(&lease) {
            return Ok(false);
        }
        let write = self.db.begin_write().map_err(failed)?;
        let revision = state.revision + 1;
        let mut events = Vec::new();
        {
            let mut kv = write.open_table(KV).map_err(failed)?;
            let doomed = state.lease_keys.get(&lease).cloned().unwrap_or_default();
            for key in doomed {
                if kv.remove(key.as_str()).map_err(failed)?.is_some() {
                    events.push(Event::Delete {
                        key,
                        mod_revision: revision,
                    });
                }
            }
            write
                .open_table(LEASES)
                .map_err(failed)?
                .remove(lease)
                .map_err(failed)?;
            if !events.is_empty() {
                set_revision(&write, revision)?;
            }
        }
        write.commit().map_err(failed)?;
        state.leases.remove(&lease);
        state.lease_keys.remove(&lease);
        if !events.is_empty() {
            state.revision = revision;
            self.publish(&mut state, events);
        }
        Ok(true)
    }

    fn set_lease(&self, state: &mut State, lease: LeaseId, ttl_ms: i64) -> Result<(), StoreError> {
        let expiry = now_ms() + ttl_ms;
        let write = self.db.begin_write().map_err(failed)?;
        write
            .open_table(LEASES)
            .map_err(failed)?
            .insert(lease, (ttl_ms, expiry))
            .map_err(failed)?;
        write
            .open_table(META)
            .map_err(failed)?
            .insert(NEXT_LEASE, state.next_lease.max(lease + 1))
            .map_err(failed)?;
        write.commit().map_err(failed)?;
        state.next_lease = state.next_lease.max(lease + 1);
        state.leases.insert(lease, (ttl_ms, expiry));
        Ok(())
    }

    /// Events under `prefix` after `after`, or `Compacted` when history is gone.
    fn history_after(&self, prefix: &str, after: Revision) -> Result<Vec<Event>, StoreError> {
        let state = self.lock();
        if after < state.floor {
            return Err(StoreError::Compacted(state.floor + 1));
        }
        Ok(state
            .history
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.revision() > after && e.key().starts_with(prefix))
            .cloned()
            .collect())
    }
}

struct Watching {
    inner: Arc<Inner>,
    rx: broadcast::Receiver<Arc<Vec<Event>>>,
    prefix: String,
    last: Revision,
    backlog: Vec<Event>,
    done: bool,
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let read = inner.db.begin_read().map_err(failed)?;
            let kv = read.open_table(KV).map_err(failed)?;
            let value = kv.get(key.as_str()).map_err(failed)?;
            value.map(|v| decode(&key, v.value())).transpose()
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            // The revision and the read come from one point: commits hold the lock.
            let state = inner.lock();
            let read = inner.db.begin_read().map_err(failed)?;
            let revision = state.revision;
            drop(state);
            let kv = read.open_table(KV).map_err(failed)?;
            let mut out = Vec::new();
            for row in kv.range(prefix.as_str()..).map_err(failed)? {
                let (k, v) = row.map_err(failed)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                out.push(decode(k.value(), v.value())?);
            }
            Ok((out, revision))
        })
        .await
    }

    async fn list_last(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let prefix = prefix.to_string();
        // The first string after every key starting with `prefix` (its last character
        // plus one; ASCII prefixes), else no upper bound (a filter instead).
        let end = match prefix.as_bytes().last() {
            Some(&last) if last < 0x7f => Some(format!(
                "{}{}",
                &prefix[..prefix.len() - 1],
                char::from(last + 1)
            )),
            _ => None,
        };
        let upper = match (before.map(str::to_string), end) {
            (Some(b), Some(e)) => Some(b.min(e)),
            (b, e) => b.or(e),
        };
        if limit == 0 || upper.as_deref().is_some_and(|u| u <= prefix.as_str()) {
            return Ok(Vec::new());
        }
        self.blocking(move |inner| {
            let read = inner.db.begin_read().map_err(failed)?;
            let kv = read.open_table(KV).map_err(failed)?;
            let rows = match &upper {
                Some(u) => kv.range(prefix.as_str()..u.as_str()),
                None => kv.range(prefix.as_str()..),
            }
            .map_err(failed)?;
            let mut out = Vec::new();
            for row in rows.rev() {
                let (k, v) = row.map_err(failed)?;
                if k.value().starts_with(&prefix) {
                    out.push(decode(k.value(), v.value())?);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn commit(&self, txn: Txn) -> Result<Option<Revision>, StoreError> {
        self.blocking(move |inner| inner.commit(&txn)).await
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl_ms = ttl.as_millis().max(1) as i64;
        self.blocking(move |inner| {
            let mut state = inner.lock();
            let lease = state.next_lease;
            inner.set_lease(&mut state, lease, ttl_ms)?;
            Ok(lease)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            let mut state = inner.lock();
            match state.leases.get(&lease).copied() {
                Some((ttl, expiry)) if expiry > now_ms() => inner.set_lease(&mut state, lease, ttl),
                _ => Err(StoreError::LeaseNotFound(lease)),
            }
        })
        .await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.blocking(move |inner| inner.end_lease(lease)).await? {
            true => Ok(()),
            false => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history so nothing falls between the two; the
        // revision filter drops what both deliver.
        let rx = self.inner.events.subscribe();
        let (backlog, done) = match self.inner.history_after(prefix, after) {
            Ok(backlog) => (backlog, false),
            Err(e) => {
                return Ok(Box::pin(futures::stream::once(async move { Err(e) })));
            }
        };
        let state = Watching {
            inner: Arc::clone(&self.inner),
            rx,
            prefix: prefix.to_string(),
            last: after,
            backlog,
            done,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_batch)))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = self.inner.lock();
        if revision > state.revision {
            return Err(StoreError::Unavailable(format!(
                "cannot compact at future revision {revision} (current {})",
                state.revision
            )));
        }
        let floor = revision - 1;
        state.history.retain(|(_, e)| e.revision() > floor);
        state.history_bytes = state.history.iter().map(|(_, e)| event_bytes(e)).sum();
        state.floor = state.floor.max(floor);
        Ok(())
    }
}

async fn next_batch(mut w: Watching) -> Option<(Result<Vec<Event>, StoreError>, Watching)> {
    if w.done {
        return None;
    }
    let batch = std::mem::take(&mut w.backlog);
    if let Some(last) = batch.last() {
        w.last = last.revision();
        return Some((Ok(batch), w));
    }
    loop {
        match w.rx.recv().await {
            Ok(batch) => {
                let events: Vec<Event> = batch
                    .iter()
                    .filter(|e| e.revision() > w.last && e.key().starts_with(&w.prefix))
                    .cloned()
                    .collect();
                if let Some(last) = events.last() {
                    w.last = last.revision();
                    return Some((Ok(events), w));
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                match w.inner.history_after(&w.prefix, w.last) {
                    Ok(events) => {
                        if let Some(last) = events.last() {
                            w.last = last.revision();
                            return Some((Ok(events), w));
                        }
                    }
                    Err(e) => {
                        w.done = true;
                        return Some((Err(e), w));
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                w.done = true;
                return Some((Err(StoreError::Unavailable("store closed".into())), w));
            }
        }
    }
}
