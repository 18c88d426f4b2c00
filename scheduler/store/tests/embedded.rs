//! The embedded store: the shared conformance suite, and what is its own: durability
//! across reopening, leases that run out while the scheduler is down, one user per file.

use std::time::Duration;

use localml_store::embedded::EmbeddedStore;
use localml_store::{
    conformance, Event, KeyValue, LeaseId, Revision, Store, StoreError, Txn, WatchStream,
};

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "localml-store-{tag}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_passes_the_conformance_suite() {
    let dir = temp_dir("conformance");
    let store = EmbeddedStore::open(&dir).expect("open");
    conformance::run(&store).await;
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopening() {
    let dir = temp_dir("reopen");
    let (revision, lease) = {
        let store = EmbeddedStore::open(&dir).expect("open");
        store
            .put("jobs/1", b"accepted".to_vec())
            .await
            .expect("put");
        let lease = store
            .grant(Duration::from_millis(300))
            .await
            .expect("grant");
        let revision = store
            .commit(Txn::new().put("workers/w1", b"w".to_vec(), lease))
            .await
            .expect("commit")
            .expect("unconditional");
        (revision, lease)
    };
    // Closed for longer than the lease: it expires on the next start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let store = EmbeddedStore::open(&dir).expect("reopen");
    let job = store.get("jobs/1").await.expect("get").expect("job kept");
    assert_eq!(job.value, b"accepted");
    let (_, now) = store.list("").await.expect("list");
    assert!(now >= revision, "revision {now} continues from {revision}");
    let gone = async {
        while store.get("workers/w1").await.expect("get").is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the lease that ran out while closed expires after reopening");
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    // New leases do not reuse the old id.
    assert_ne!(
        store.grant(Duration::from_secs(5)).await.expect("grant"),
        lease
    );
    // A watch from before the restart lists again.
    let mut watch = store.watch("", revision - 1).await.expect("watch");
    use futures::StreamExt;
    assert!(matches!(
        watch.next().await,
        Some(Err(StoreError::Compacted(_)))
    ));
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_second_opener_is_refused_with_a_clear_message() {
    let dir = temp_dir("twice");
    let _first = EmbeddedStore::open(&dir).expect("open");
    let error = match EmbeddedStore::open(&dir) {
        Ok(_) => panic!("opened twice"),
        Err(e) => e,
    };
    assert!(matches!(error, StoreError::InUse(_)), "{error}");
    let error = error.to_string();
    assert!(error.contains("in use by another scheduler"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_is_bounded_by_bytes() {
    use localml_store::embedded::HISTORY_BYTES;
    let dir = temp_dir("history");
    let store = EmbeddedStore::open(&dir).expect("open");
    let (_, start) = store.list("").await.expect("list");
    let big = vec![7u8; HISTORY_BYTES / 3 + 1];
    for i in 0..4 {
        store
            .put(&format!("big/{i}"), big.clone())
            .await
            .expect("put");
    }
    // The oldest values fell out of the in-memory history: a watch from the start lists
    // again, one from the newest revision still works.
    use futures::StreamExt;
    let mut old = store.watch("", start).await.expect("watch");
    assert!(matches!(
        old.next().await,
        Some(Err(StoreError::Compacted(_)))
    ));
    let (_, now) = store.list("").await.expect("list");
    let mut recent = store.watch("", now - 1).await.expect("watch");
    let events = recent.next().await.expect("event").expect("not compacted");
    assert_eq!(events[0].key(), "big/3");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}

/// The embedded store, except that its first watch breaks (as a network would) after
/// one batch.
struct Flaky {
    inner: EmbeddedStore,
    broken: std::sync::atomic::AtomicBool,
}

#[tonic::async_trait]
impl Store for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.list(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<Option<Revision>, StoreError> {
        self.inner.commit(txn).await
    }
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke(lease).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        use futures::StreamExt;
        let stream = self.inner.watch(prefix, after).await?;
        if self.broken.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(stream);
        }
        let cut = futures::stream::once(async {
            Err(StoreError::Unavailable("connection reset".into()))
        });
        Ok(Box::pin(stream.take(1).chain(cut)))
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

type View = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>>;

/// Follows `p/` into a map; returns the map, and how many times it listed.
fn follower(
    store: std::sync::Arc<dyn Store>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (View, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let map = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (m1, m2, l) = (map.clone(), map.clone(), lists.clone());
    tokio::spawn(async move {
        localml_store::follow(
            store,
            "p/",
            stop,
            move |kvs| {
                l.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut m = m1.lock().expect("lock");
                m.clear();
                m.extend(kvs.into_iter().map(|kv| (kv.key, kv.value)));
            },
            move |event| {
                let mut m = m2.lock().expect("lock");
                match event {
                    Event::Put(kv) => {
                        m.insert(kv.key, kv.value);
                    }
                    Event::Delete { key, .. } => {
                        m.remove(&key);
                    }
                }
            },
        )
        .await
    });
    (map, lists)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < end, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_resume_after_a_disconnect_and_relist_only_after_compaction() {
    use std::sync::atomic::Ordering::SeqCst;
    for compact in [false, true] {
        let dir = temp_dir("follow");
        let flaky = std::sync::Arc::new(Flaky {
            inner: EmbeddedStore::open(&dir).expect("open"),
            broken: Default::default(),
        });
        let store: std::sync::Arc<dyn Store> = flaky.clone();
        store.put("p/a", b"1".to_vec()).await.expect("put");
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let (map, lists) = follower(store.clone(), stop);
        eventually("listed", || map.lock().expect("lock").len() == 1).await;
        // One batch arrives, then the watch breaks; the rest happens while it is down.
        store.put("p/b", b"2".to_vec()).await.expect("put");
        store.put("p/c", b"3".to_vec()).await.expect("put");
        store.delete("p/a").await.expect("delete");
        if compact {
            let (_, now) = store.list("").await.expect("list");
            store.compact(now).await.expect("compact");
        }
        let want: Vec<String> = vec!["p/b".into(), "p/c".into()];
        eventually("caught up", || {
            map.lock()
                .expect("lock")
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                == want
        })
        .await;
        let expected_lists = if compact { 2 } else { 1 };
        assert_eq!(
            lists.load(SeqCst),
            expected_lists,
            "compacted: {compact}: resumed from its revision unless the history was gone"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn the_store_is_private_to_the_schedulers_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("private").join("state");
    let _store = EmbeddedStore::open(&dir).expect("open");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    // It holds the cluster CA's key and the API keys' hashes.
    assert_eq!(mode(&dir), 0o700, "the data directory");
    assert_eq!(
        mode(&dir.join(localml_store::embedded::FILE_NAME)),
        0o600,
        "the store file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_keeps_only_recent_events() {
    let dir = temp_dir("history-age");
    let store = EmbeddedStore::open(&dir).expect("open");
    store.set_history_age(Duration::from_millis(300));
    let (_, start) = store.list("").await.expect("list");
    store.put("old", b"1".to_vec()).await.expect("put");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, before_new) = store.list("").await.expect("list");
    store.put("new", b"2".to_vec()).await.expect("put");
    // The old event aged out with the next write: a watch from before it lists again;
    // one from after it still gets the new event.
    use futures::StreamExt;
    let mut old = store.watch("", start).await.expect("watch");
    assert!(matches!(
        old.next().await,
        Some(Err(StoreError::Compacted(_)))
    ));
    let mut recent = store.watch("", before_new).await.expect("watch");
    let events = recent.next().await.expect("event").expect("not compacted");
    assert_eq!(events[0].key(), "new");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}
