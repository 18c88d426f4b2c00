//! The etcd backend (`etcd-client`): every key lives under a prefix (default
//! `/localml/`), so several localml clusters, or other users, can share one etcd.
//!
//! Leases are etcd leases (whole seconds, and etcd raises very short TTLs to its minimum,
//! about 2 s with default settings); watches are etcd watches from a start revision, and a
//! compacted start revision ends the stream with `Compacted`.

use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    SortOrder, SortTarget, Txn as EtcdTxn, TxnOp, WatchOptions,
};

use crate::*;

/// Keys per page when listing.
const LIST_PAGE: i64 = 500;

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Largest value written to etcd in one put.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Requests that take longer fail with UNAVAILABLE instead of hanging the caller.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdStore {
    client: Client,
    prefix: String,
}

fn failed(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn lease_error(lease: LeaseId, e: etcd_client::Error) -> StoreError {
    match &e {
        etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound => {
            StoreError::LeaseNotFound(lease)
        }
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            StoreError::LeaseNotFound(lease)
        }
        _ => failed(e),
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (host:port); fails with a message naming them when none
    /// answers within a few seconds.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore, StoreError> {
        let urls: Vec<String> = endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let unreachable = |e: etcd_client::Error| {
            StoreError::Unavailable(format!("cannot reach etcd at {}: {e}", endpoints.join(",")))
        };
        let mut client = Client::connect(&urls, Some(options))
            .await
            .map_err(unreachable)?;
        // Connecting is lazy: ask once so a wrong address fails here, with its name.
        client
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(unreachable)?;
        Ok(EtcdStore {
            client,
            prefix: prefix.to_string(),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        Some(KeyValue {
            key: key.strip_prefix(&self.prefix)?.to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn max_value_bytes(&self) -> Option<usize> {
        // etcd's default --max-request-bytes is 1.5 MiB; leave room for the transaction.
        Some(MAX_VALUE_BYTES)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self
            .client
            .clone()
            .get(self.full(key), None)
            .await
            .map_err(failed)?;
        Ok(response.kvs().first().and_then(|kv| self.to_kv(kv)))
    }

    async fn list_last(
        &self,
        prefix: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let full = self.full(prefix);
        let mut end = prefix_end(full.as_bytes());
        if let Some(before) = before {
            end = end.min(self.full(before).into_bytes());
        }
        if limit == 0 || end.as_slice() <= full.as_bytes() {
            return Ok(Vec::new());
        }
        // etcd sorts the range server-side; only `limit` keys come over the network.
        let options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let response = self
            .client
            .clone()
            .get(full, Some(options))
            .await
            .map_err(failed)?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| self.to_kv(kv))
            .collect())
    }

    /// Pages of [`LIST_PAGE`] keys, all read at the first page's revision, so a large
    /// prefix (thousands of jobs) stays under the client's 4 MiB message limit and the
    /// listing is still one consistent snapshot.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let full = self.full(prefix);
        let end = prefix_end(full.as_bytes());
        let mut client = self.client.clone();
        let mut kvs = Vec::new();
        let mut from = full.clone().into_bytes();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let response = client
                .get(from.clone(), Some(options))
                .await
                .map_err(failed)?;
            if revision == 0 {
                revision = response.header().map(|h| h.revision()).unwrap_or(0);
            }
            kvs.extend(response.kvs().iter().filter_map(|kv| self.to_kv(kv)));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok((kvs, revision))
    }

    async fn commit(&self, txn: Txn) -> Result<Option<Revision>, StoreError> {
        txn.check()?;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| EtcdCompare::mod_revision(self.full(&c.key), CompareOp::Equal, c.mod_revision))
            .collect();
        let mut leases = Vec::new();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = (*lease != 0).then(|| {
                        leases.push(*lease);
                        PutOptions::new().with_lease(*lease)
                    });
                    TxnOp::put(self.full(key), value.clone(), options)
                }
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let response = self
            .client
            .clone()
            .txn(EtcdTxn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| match (&e, leases.first()) {
                (etcd_client::Error::GRpcStatus(s), Some(lease))
                    if s.message().contains("lease not found") =>
                {
                    StoreError::LeaseNotFound(*lease)
                }
                _ => failed(e),
            })?;
        Ok(response
            .succeeded()
            .then(|| response.header().map(|h| h.revision()).unwrap_or(0)))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let response = self
            .client
            .clone()
            .lease_grant(seconds, None)
            .await
            .map_err(failed)?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let (mut keeper, mut responses) = self
            .client
            .clone()
            .lease_keep_alive(lease)
            .await
            .map_err(|e| lease_error(lease, e))?;
        keeper
            .keep_alive()
            .await
            .map_err(|e| lease_error(lease, e))?;
        match responses
            .message()
            .await
            .map_err(|e| lease_error(lease, e))?
        {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| lease_error(lease, e))?;
        Ok(())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let stream = self
            .client
            .clone()
            .watch(
                self.full(prefix),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(after + 1),
                ),
            )
            .await
            .map_err(failed)?;
        let strip = self.prefix.clone();
        let state = (stream, strip, false);
        Ok(Box::pin(futures::stream::unfold(
            state,
            |(mut stream, strip, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let response = match stream.message().await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let e = StoreError::Unavailable("etcd closed the watch".into());
                            return Some((Err(e), (stream, strip, true)));
                        }
                        Err(e) => return Some((Err(failed(e)), (stream, strip, true))),
                    };
                    if response.compact_revision() > 0 {
                        let e = StoreError::Compacted(response.compact_revision());
                        return Some((Err(e), (stream, strip, true)));
                    }
                    if response.canceled() {
                        let e = StoreError::Unavailable(format!(
                            "etcd canceled the watch: {}",
                            response.cancel_reason()
                        ));
                        return Some((Err(e), (stream, strip, true)));
                    }
                    let events: Vec<Event> = response
                        .events()
                        .iter()
                        .filter_map(|event| {
                            let kv = event.kv()?;
                            let key = std::str::from_utf8(kv.key()).ok()?;
                            let key = key.strip_prefix(&strip)?.to_string();
                            Some(match event.event_type() {
                                EventType::Put => Event::Put(KeyValue {
                                    key,
                                    value: kv.value().to_vec(),
                                    create_revision: kv.create_revision(),
                                    mod_revision: kv.mod_revision(),
                                    lease: kv.lease(),
                                }),
                                EventType::Delete => Event::Delete {
                                    key,
                                    mod_revision: kv.mod_revision(),
                                },
                            })
                        })
                        .collect();
                    if !events.is_empty() {
                        return Some((Ok(events), (stream, strip, false)));
                    }
                }
            },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.client
            .clone()
            .compact(revision, None)
            .await
            .map_err(failed)?;
        Ok(())
    }
}
