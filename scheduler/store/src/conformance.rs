//! The conformance suite every [`Store`] backend passes: the embedded one in the
//! scheduler's tests, etcd in `tests/tests/store.rs` against a real etcd server.
//!
//! Each check panics with a message naming what differed. Keys live under a prefix unique
//! to the run, so a shared etcd is fine.

use std::time::Duration;

use futures::StreamExt;

use crate::*;

/// Runs every check against `store`.
pub async fn run(store: &dyn Store) {
    let base = format!("conformance/{:016x}/", fastrand::u64(..));
    revisions_and_lists(store, &format!("{base}kv/")).await;
    last_keys(store, &format!("{base}last/")).await;
    transactions(store, &format!("{base}txn/")).await;
    leases(store, &format!("{base}lease/")).await;
    watches(store, &format!("{base}watch/")).await;
    compaction(store, &format!("{base}compact/")).await;
}

/// `list_last`: the highest keys of a prefix, below a key, at most a limit.
async fn last_keys(store: &dyn Store, p: &str) {
    for k in ["j/1", "j/2", "j/3", "j/4", "j/5", "i", "k", "j0"] {
        store
            .put(&format!("{p}{k}"), k.as_bytes().to_vec())
            .await
            .expect("put");
    }
    let keys = |kvs: Vec<KeyValue>| -> Vec<String> {
        kvs.into_iter()
            .map(|kv| kv.key.trim_start_matches(p).to_string())
            .collect()
    };
    let jobs = format!("{p}j/");
    let last = |before: Option<String>, limit: usize| {
        let jobs = jobs.clone();
        async move {
            store
                .list_last(&jobs, before.as_deref(), limit)
                .await
                .expect("list_last")
        }
    };
    assert_eq!(keys(last(None, 2).await), ["j/5", "j/4"]);
    assert_eq!(
        keys(last(Some(format!("{p}j/4")), 10).await),
        ["j/3", "j/2", "j/1"]
    );
    assert_eq!(keys(last(None, 100).await).len(), 5, "only the prefix");
    assert!(last(None, 0).await.is_empty());
    assert!(
        last(Some(format!("{p}a")), 10).await.is_empty(),
        "below the prefix"
    );
    assert_eq!(keys(last(Some(format!("{p}z")), 1).await), ["j/5"]);
    // The values come along.
    assert_eq!(text(&last(None, 1).await[0]), "j/5");
}

fn text(kv: &KeyValue) -> &str {
    std::str::from_utf8(&kv.value).unwrap_or("<not utf-8>")
}

async fn revisions_and_lists(store: &dyn Store, p: &str) {
    let r1 = store
        .put(&format!("{p}b"), b"1".to_vec())
        .await
        .expect("put b");
    let r2 = store
        .put(&format!("{p}a"), b"2".to_vec())
        .await
        .expect("put a");
    assert!(r2 > r1, "revisions increase: {r1} then {r2}");
    let r3 = store
        .put(&format!("{p}b"), b"3".to_vec())
        .await
        .expect("put b again");
    let b = store
        .get(&format!("{p}b"))
        .await
        .expect("get")
        .expect("b exists");
    assert_eq!(text(&b), "3");
    assert_eq!(
        (b.create_revision, b.mod_revision),
        (r1, r3),
        "b's revisions"
    );
    assert_eq!(b.lease, 0);
    assert_eq!(store.get(&format!("{p}missing")).await.expect("get"), None);
    // A sibling outside the prefix is not listed.
    store
        .put(&format!("{p}x/inner"), b"4".to_vec())
        .await
        .expect("put");
    store
        .put(
            &format!("{}-sibling", p.trim_end_matches('/')),
            b"5".to_vec(),
        )
        .await
        .expect("put");
    let (kvs, revision) = store.list(p).await.expect("list");
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [format!("{p}a"), format!("{p}b"), format!("{p}x/inner")],
        "list returns the prefix in key order"
    );
    assert!(
        revision >= r3,
        "list revision {revision} >= last write {r3}"
    );
    let rd = store.delete(&format!("{p}a")).await.expect("delete");
    assert!(rd > revision);
    assert_eq!(store.get(&format!("{p}a")).await.expect("get"), None);
    // Recreated keys get a new create revision.
    let r5 = store
        .put(&format!("{p}a"), b"6".to_vec())
        .await
        .expect("put");
    let a = store.get(&format!("{p}a")).await.expect("get").expect("a");
    assert_eq!(a.create_revision, r5);
}

async fn transactions(store: &dyn Store, p: &str) {
    let key = format!("{p}k");
    // Create only if absent.
    let created = store
        .commit(Txn::new().when(&key, 0).put(&key, b"v1".to_vec(), 0))
        .await
        .expect("txn");
    let r1 = created.expect("creating an absent key succeeds");
    let again = store
        .commit(Txn::new().when(&key, 0).put(&key, b"other".to_vec(), 0))
        .await
        .expect("txn");
    assert_eq!(again, None, "create-if-absent fails when the key exists");
    assert_eq!(text(&store.get(&key).await.expect("get").expect("k")), "v1");
    // Compare-and-swap on the modification revision.
    let stale = store
        .commit(
            Txn::new()
                .when(&key, r1 - 1)
                .put(&key, b"stale".to_vec(), 0),
        )
        .await
        .expect("txn");
    assert_eq!(stale, None, "a stale revision is refused");
    let r2 = store
        .commit(Txn::new().when(&key, r1).put(&key, b"v2".to_vec(), 0))
        .await
        .expect("txn")
        .expect("the current revision is accepted");
    assert!(r2 > r1);
    // Several operations are atomic: all at one revision, or none.
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let r3 = store
        .commit(
            Txn::new()
                .when(&key, r2)
                .put(&a, b"A".to_vec(), 0)
                .put(&b, b"B".to_vec(), 0)
                .delete(&key),
        )
        .await
        .expect("txn")
        .expect("all compares hold");
    let (kvs, _) = store.list(p).await.expect("list");
    assert_eq!(kvs.len(), 2, "k deleted, a and b written: {kvs:?}");
    assert!(
        kvs.iter().all(|kv| kv.mod_revision == r3),
        "one revision: {kvs:?}"
    );
    let refused = store
        .commit(
            Txn::new()
                .when(&a, r3)
                .when(&b, r3 + 100)
                .put(&a, b"no".to_vec(), 0),
        )
        .await
        .expect("txn");
    assert_eq!(refused, None, "one failing compare refuses the whole txn");
    assert_eq!(text(&store.get(&a).await.expect("get").expect("a")), "A");
    // One key written twice in a transaction: refused, nothing written (etcd's rule).
    let twice = store
        .commit(
            Txn::new()
                .put(&b, b"gone".to_vec(), 0)
                .delete(&a)
                .put(&a, b"again".to_vec(), 0),
        )
        .await;
    assert_eq!(twice, Err(StoreError::DuplicateKey(a.clone())));
    let put_twice = store
        .commit(
            Txn::new()
                .put(&a, b"one".to_vec(), 0)
                .put(&a, b"two".to_vec(), 0),
        )
        .await;
    assert_eq!(put_twice, Err(StoreError::DuplicateKey(a.clone())));
    assert_eq!(text(&store.get(&a).await.expect("get").expect("a")), "A");
    assert_eq!(text(&store.get(&b).await.expect("get").expect("b")), "B");
    // Deleting a key twice is allowed (etcd allows it).
    store
        .commit(Txn::new().delete(&b).delete(&b))
        .await
        .expect("txn")
        .expect("no compares");
    assert!(store.get(&b).await.expect("get").is_none());
    store.put(&b, b"B".to_vec()).await.expect("put back");
}

async fn wait_until_gone(store: &dyn Store, key: &str, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if store.get(key).await.expect("get").is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn leases(store: &dyn Store, p: &str) {
    let ttl = Duration::from_secs(2);
    let lease = store.grant(ttl).await.expect("grant");
    assert_ne!(lease, 0);
    let key = format!("{p}held");
    store
        .commit(Txn::new().put(&key, b"x".to_vec(), lease))
        .await
        .expect("put with lease")
        .expect("unconditional");
    assert_eq!(
        store.get(&key).await.expect("get").expect("key").lease,
        lease
    );
    // Keep-alives hold the key past its TTL.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        store.keep_alive(lease).await.expect("keep alive");
    }
    assert!(store.get(&key).await.expect("get").is_some(), "kept alive");
    // Without them it expires (etcd checks expiry every 500 ms).
    assert!(
        wait_until_gone(store, &key, ttl * 6).await,
        "a lease without keep-alives expires and deletes its key"
    );
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    assert_eq!(
        store
            .commit(Txn::new().put(&key, b"y".to_vec(), lease))
            .await,
        Err(StoreError::LeaseNotFound(lease)),
        "writing with an expired lease fails"
    );
    // Revoking deletes at once.
    let lease = store.grant(Duration::from_secs(60)).await.expect("grant");
    store
        .commit(Txn::new().put(&key, b"z".to_vec(), lease))
        .await
        .expect("put")
        .expect("unconditional");
    store.revoke(lease).await.expect("revoke");
    assert_eq!(store.get(&key).await.expect("get"), None, "revoked");
}

async fn next(stream: &mut WatchStream) -> Result<Vec<Event>, StoreError> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch stream goes on")
}

async fn collect(stream: &mut WatchStream, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < count {
        events.extend(next(stream).await.expect("events"));
    }
    events
}

fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::Put(kv) => format!("put {} {}", kv.key, text(kv)),
            Event::Delete { key, .. } => format!("delete {key}"),
        })
        .collect()
}

async fn watches(store: &dyn Store, p: &str) {
    let (_, start) = store.list(p).await.expect("list");
    let mut live = store.watch(p, start).await.expect("watch");
    let r1 = store
        .put(&format!("{p}a"), b"1".to_vec())
        .await
        .expect("put");
    store
        .put(&format!("{p}b"), b"2".to_vec())
        .await
        .expect("put");
    let outside = format!("{}-outside", p.trim_end_matches('/'));
    store.put(&outside, b"no".to_vec()).await.expect("put");
    store.delete(&format!("{p}a")).await.expect("delete");
    let lease = store.grant(Duration::from_secs(60)).await.expect("grant");
    store
        .commit(Txn::new().put(&format!("{p}c"), b"3".to_vec(), lease))
        .await
        .expect("put")
        .expect("unconditional");
    store.revoke(lease).await.expect("revoke");
    let expected = [
        format!("put {p}a 1"),
        format!("put {p}b 2"),
        format!("delete {p}a"),
        format!("put {p}c 3"),
        format!("delete {p}c"),
    ];
    let events = collect(&mut live, expected.len()).await;
    assert_eq!(
        summary(&events),
        expected,
        "live watch sees every change in order"
    );
    assert!(
        events.windows(2).all(|w| w[0].revision() < w[1].revision()),
        "revisions increase"
    );
    // Resuming after a seen revision replays the rest.
    let mut resumed = store.watch(p, r1).await.expect("watch");
    let events = collect(&mut resumed, expected.len() - 1).await;
    assert_eq!(
        summary(&events),
        expected[1..],
        "resume after revision {r1}"
    );
}

async fn compaction(store: &dyn Store, p: &str) {
    let r1 = store
        .put(&format!("{p}a"), b"1".to_vec())
        .await
        .expect("put");
    let r2 = store
        .put(&format!("{p}a"), b"2".to_vec())
        .await
        .expect("put");
    store.compact(r2).await.expect("compact");
    let mut old = store.watch(p, r1 - 1).await.expect("watch");
    match next(&mut old).await {
        Err(StoreError::Compacted(at)) => assert!(at >= r2, "compacted at {at}, asked {r2}"),
        other => panic!("a watch from before the compaction must get Compacted, got {other:?}"),
    }
    // From the compaction revision on, history is there.
    let mut fresh = store.watch(p, r2 - 1).await.expect("watch");
    let events = next(&mut fresh).await.expect("events");
    assert_eq!(summary(&events), [format!("put {p}a 2")]);
    // And the current value is still readable.
    let a = store.get(&format!("{p}a")).await.expect("get").expect("a");
    assert_eq!(text(&a), "2");
}
