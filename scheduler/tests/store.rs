//! The embedded store: the shared conformance suite, and what is its own: durability
//! across reopening, leases that run out while the scheduler is down, one user per file.

use std::time::Duration;

use localml_scheduler::store::embedded::EmbeddedStore;
use localml_scheduler::store::{conformance, Store, StoreError, Txn};

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
        Err(e) => e.to_string(),
    };
    assert!(error.contains("in use by another scheduler"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_is_bounded_by_bytes() {
    use localml_scheduler::store::embedded::HISTORY_BYTES;
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
