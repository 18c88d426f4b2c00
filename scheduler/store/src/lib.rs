//! localml-store: cluster state behind one [`Store`] abstraction, with two backends that
//! pass the same conformance suite.
//!
//! # Layout
//! - this file: the [`Store`] trait (etcd's model, below), its types ([`KeyValue`],
//!   [`Txn`], [`Event`]), [`StoreError`], [`StoreAddress`] (`embedded` or `etcd://...`),
//!   and helpers every user needs ([`follow`], [`escape_segment`]).
//! - `conformance` (feature `conformance`, for the backends' tests only, never in a
//!   release build): the suite both backends pass.
//! - [`embedded`]: a file in the scheduler's data directory (redb), the default for a
//!   single PC; no external service.
//! - [`etcd`]: an etcd cluster (`--store etcd://host:port,...`), every key under a prefix
//!   (default `/localml/`); what scheduler replicas share.
//!
//! The model is etcd's: a key-value map with one revision counter for the whole store,
//! every key carrying the revision that created and last modified it; transactions that
//! compare modification revisions; leases that delete their keys when they expire; and
//! watches over a prefix that resume after a given revision, or report that the history
//! they need was compacted (the watcher then lists again).

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod etcd;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

/// The store's logical clock: every committed change gets the next revision.
pub type Revision = i64;
/// A lease's id; 0 is "no lease".
pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// The lease that deletes this key when it expires; 0 when none.
    pub lease: LeaseId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, mod_revision: Revision },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A condition of a [`Txn`]: the key's modification revision equals `mod_revision`
/// (0: the key does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
}

/// All of `ops` happen at one revision if every compare holds; otherwise nothing does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Holds when `key` was last modified at `mod_revision` (0: it does not exist).
    pub fn when(mut self, key: &str, mod_revision: Revision) -> Txn {
        self.compares.push(Compare {
            key: key.to_string(),
            mod_revision,
        });
        self
    }

    pub fn put(mut self, key: &str, value: Vec<u8>, lease: LeaseId) -> Txn {
        self.ops.push(Op::Put {
            key: key.to_string(),
            value,
            lease,
        });
        self
    }

    pub fn delete(mut self, key: &str) -> Txn {
        self.ops.push(Op::Delete {
            key: key.to_string(),
        });
        self
    }

    /// etcd refuses a transaction that puts one key twice, or puts and deletes it
    /// ("duplicate key given in txn request"; deleting it twice is allowed); both backends
    /// check it here, so a caller that does it fails alike on each.
    pub fn check(&self) -> Result<(), StoreError> {
        let (mut put, mut deleted) = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        for op in &self.ops {
            let twice = match op {
                Op::Put { key, .. } => !put.insert(key.as_str()) || deleted.contains(key.as_str()),
                Op::Delete { key } => {
                    deleted.insert(key.as_str());
                    put.contains(key.as_str())
                }
            };
            if twice {
                let (Op::Put { key, .. } | Op::Delete { key }) = op;
                return Err(StoreError::DuplicateKey(key.clone()));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The store cannot be reached or failed; the operation may be retried.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history older than the store keeps: list again.
    #[error("the store's history before revision {0} was compacted")]
    Compacted(Revision),
    #[error("lease {0} not found (it expired or was revoked)")]
    LeaseNotFound(LeaseId),
    #[error("invalid store address '{0}': {1}")]
    Address(String, String),
    /// The embedded store's file (named) is open in another process: a scheduler runs on
    /// this data directory.
    #[error("{0} is in use by another scheduler; give each scheduler its own --data-dir")]
    InUse(String),
    /// A transaction put one key twice, or put and deleted it (a caller's bug; etcd
    /// refuses it).
    #[error("a store transaction writes key '{0}' twice")]
    DuplicateKey(String),
}

/// Batches of events in revision order; ends with `Err(Compacted)` when the history the
/// watch needs is gone, or `Err(Unavailable)` when the store went away.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<Event>, StoreError>> + Send>>;

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// `"embedded"` or `"etcd"`.
    fn backend(&self) -> &'static str;

    /// Largest value the backend stores in one write, when it has a limit (etcd refuses
    /// requests over `--max-request-bytes`, 1.5 MiB by default).
    fn max_value_bytes(&self) -> Option<usize> {
        None
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, in key order, and the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;

    /// The keys starting with `prefix` and below `before` (when given), highest first, at
    /// most `limit`: the newest of keys that sort by time (jobs), a page at a time,
    /// without handing over the rest. (This default reads the whole prefix; the backends
    /// read less.)
    async fn list_last(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let (kvs, _) = self.list(prefix).await?;
        Ok(kvs
            .into_iter()
            .rev()
            .filter(|kv| before.is_none_or(|b| kv.key.as_str() < b))
            .take(limit)
            .collect())
    }

    /// Commits `txn`: `Some(revision)` when its compares held, `None` otherwise.
    async fn commit(&self, txn: Txn) -> Result<Option<Revision>, StoreError>;

    /// A lease that expires `ttl` after its grant or last keep-alive.
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease; `LeaseNotFound` when it already expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends a lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Changes under `prefix` after revision `after`.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// Drops the history before `revision` (watches from before it get `Compacted`).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Writes `value` under `key` unconditionally.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let revision = self.commit(Txn::new().put(key, value, 0)).await?;
        revision.ok_or_else(|| StoreError::Unavailable("unconditional put was refused".into()))
    }

    /// Deletes `key` unconditionally.
    async fn delete(&self, key: &str) -> Result<Revision, StoreError> {
        let revision = self.commit(Txn::new().delete(key)).await?;
        revision.ok_or_else(|| StoreError::Unavailable("unconditional delete was refused".into()))
    }
}

/// Makes a name safe as one key segment: `/` and `%` are escaped, so names from clients
/// and workers cannot reach into other keys.
pub fn escape_segment(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// The inverse of [`escape_segment`].
pub fn unescape_segment(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%25", "%")
}

/// Keeps an in-memory view of `prefix` current until `stop`: `reset` gets a listing,
/// `apply` every change after it. After a disconnect the watch resumes from the last
/// revision seen (nothing is listed again, nothing is missed); only when that history was
/// compacted does it list again. Retries wait 0.5 s.
pub async fn follow(
    store: Arc<dyn Store>,
    prefix: &str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut reset: impl FnMut(Vec<KeyValue>) + Send,
    mut apply: impl FnMut(Event) + Send,
) {
    use futures::StreamExt;
    let mut resume: Option<Revision> = None;
    loop {
        let followed = async {
            let mut at = match resume {
                Some(revision) => revision,
                None => match store.list(prefix).await {
                    Ok((kvs, revision)) => {
                        reset(kvs);
                        revision
                    }
                    Err(e) => return (None, e),
                },
            };
            let mut events = match store.watch(prefix, at).await {
                Ok(events) => events,
                Err(e) => return (Some(at), e),
            };
            while let Some(batch) = events.next().await {
                match batch {
                    Ok(batch) => {
                        for event in batch {
                            at = at.max(event.revision());
                            apply(event);
                        }
                    }
                    Err(e) => return (Some(at), e),
                }
            }
            (Some(at), StoreError::Unavailable("the watch ended".into()))
        };
        let (seen, error) = tokio::select! {
            ended = followed => ended,
            _ = stop.wait_for(|s| *s) => return,
        };
        resume = match error {
            StoreError::Compacted(_) => None,
            _ => seen,
        };
        tracing::debug!(prefix, error = %error, resume = ?resume, "watch interrupted");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Where state lives, from `--store`: `embedded` (or `embedded:DIR`) or
/// `etcd://host:port[,host:port...][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAddress {
    /// A file in this directory.
    Embedded(std::path::PathBuf),
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// The default key prefix in etcd.
pub const DEFAULT_ETCD_PREFIX: &str = "/localml/";

impl StoreAddress {
    /// Parses `--store`; `data_dir` is where `embedded` without a directory keeps its file.
    pub fn parse(text: &str, data_dir: &std::path::Path) -> Result<StoreAddress, StoreError> {
        let bad = |why: &str| StoreError::Address(text.to_string(), why.to_string());
        if text == "embedded" {
            return Ok(StoreAddress::Embedded(data_dir.to_path_buf()));
        }
        if let Some(dir) = text.strip_prefix("embedded:") {
            if dir.is_empty() {
                return Err(bad("expected embedded:DIRECTORY"));
            }
            return Ok(StoreAddress::Embedded(dir.into()));
        }
        let Some(rest) = text.strip_prefix("etcd://") else {
            return Err(bad(
                "expected 'embedded', 'embedded:DIR' or 'etcd://host:port,...'",
            ));
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, "")) => (hosts, DEFAULT_ETCD_PREFIX.to_string()),
            Some((hosts, prefix)) => (hosts, format!("/{}/", prefix.trim_matches('/'))),
            None => (rest, DEFAULT_ETCD_PREFIX.to_string()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad("no etcd endpoint"));
        }
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(_, p)| p);
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(bad(&format!("endpoint '{e}' is not host:port")));
            }
        }
        Ok(StoreAddress::Etcd { endpoints, prefix })
    }

    /// Opens the store (connecting to etcd, or opening the embedded file).
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreAddress::Embedded(dir) => Arc::new(embedded::EmbeddedStore::open(dir)?),
            StoreAddress::Etcd { endpoints, prefix } => {
                Arc::new(etcd::EtcdStore::connect(endpoints, prefix).await?)
            }
        })
    }
}

impl std::fmt::Display for StoreAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreAddress::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
            StoreAddress::Etcd { endpoints, prefix } => {
                write!(
                    f,
                    "etcd://{}{}",
                    endpoints.join(","),
                    prefix.trim_end_matches('/')
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn addresses() {
        let dir = Path::new("/var/lib/localml");
        assert_eq!(
            StoreAddress::parse("embedded", dir),
            Ok(StoreAddress::Embedded(dir.into()))
        );
        assert_eq!(
            StoreAddress::parse("embedded:/tmp/x", dir),
            Ok(StoreAddress::Embedded("/tmp/x".into()))
        );
        assert_eq!(
            StoreAddress::parse("etcd://a:2379,b:2379", dir),
            Ok(StoreAddress::Etcd {
                endpoints: vec!["a:2379".into(), "b:2379".into()],
                prefix: "/localml/".into()
            })
        );
        assert_eq!(
            StoreAddress::parse("etcd://a:2379/site1", dir),
            Ok(StoreAddress::Etcd {
                endpoints: vec!["a:2379".into()],
                prefix: "/site1/".into()
            })
        );
        for bad in ["", "redis://a:1", "etcd://", "etcd://host", "embedded:"] {
            let e = StoreAddress::parse(bad, dir).unwrap_err();
            assert!(
                e.to_string().contains("invalid store address"),
                "{bad}: {e}"
            );
        }
    }
}
