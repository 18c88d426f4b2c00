//! The store conformance suite against a real etcd server, and the etcd backend's own
//! behaviour (prefix isolation, a clear error for an unreachable etcd).

use localml_store::{conformance, Store, StoreAddress, StoreError};
use localml_tests::Etcd;

async fn open(address: &str) -> std::sync::Arc<dyn Store> {
    StoreAddress::parse(address, std::path::Path::new("/nonexistent"))
        .expect("address")
        .open()
        .await
        .expect("open etcd store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_conformance_suite() {
    let etcd = Etcd::start();
    let store = open(&etcd.store_address("localml")).await;
    assert_eq!(store.backend(), "etcd");
    conformance::run(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_keep_clusters_apart() {
    let etcd = Etcd::start();
    let a = open(&etcd.store_address("site-a")).await;
    let b = open(&etcd.store_address("site-b")).await;
    a.put("workers/w1", b"a".to_vec()).await.expect("put");
    b.put("workers/w1", b"b".to_vec()).await.expect("put");
    let (listed, _) = a.list("workers/").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].key, "workers/w1",
        "keys come back without the prefix"
    );
    assert_eq!(listed[0].value, b"a");
    assert_eq!(
        b.get("workers/w1").await.expect("get").expect("w1").value,
        b"b"
    );
}

#[tokio::test]
async fn an_unreachable_etcd_is_named() {
    let error = match StoreAddress::parse("etcd://127.0.0.1:1", std::path::Path::new("/x"))
        .expect("address")
        .open()
        .await
    {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e,
    };
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("cannot reach etcd at 127.0.0.1:1")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lists_large_prefixes_in_pages() {
    use localml_store::Txn;
    let etcd = Etcd::start();
    let store = open(&etcd.store_address("pages")).await;
    // 1,234 keys of 4 KiB: about 5 MiB, over one 4 MiB response.
    let value = vec![b'x'; 4096];
    for batch in 0..13 {
        let mut txn = Txn::new();
        for i in (batch * 100)..((batch + 1) * 100).min(1234) {
            txn = txn.put(&format!("jobs/{i:05}"), value.clone(), 0);
        }
        store
            .commit(txn)
            .await
            .expect("commit")
            .expect("unconditional");
    }
    store.put("jobz", b"outside".to_vec()).await.expect("put");
    let (kvs, revision) = store.list("jobs/").await.expect("list");
    assert_eq!(kvs.len(), 1234);
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key), "key order");
    assert_eq!(kvs[0].key, "jobs/00000");
    assert_eq!(kvs[1233].key, "jobs/01233");
    assert!(kvs.iter().all(|kv| kv.mod_revision <= revision));
}
