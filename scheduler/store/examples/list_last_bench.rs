//! What reading the newest jobs costs: the latest 50 of N job-sized records, by listing
//! the whole prefix and keeping the last 50 (the baseline, as `Jobs.List` newest first
//! did) against `Store::list_last`, in the same run.
//!
//! `cargo run --release -p localml-store --example list_last_bench -- [N] [STORE]`:
//! N records (default 20000) of 300 bytes; STORE `embedded:DIR` (default: a temporary
//! directory) or `etcd://host:port/prefix`.

use std::time::{Duration, Instant};

use localml_store::{StoreAddress, Txn};

const VALUE_BYTES: usize = 300;
const LATEST: usize = 50;
const ROUNDS: u32 = 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    if records < LATEST {
        return Err(format!("at least {LATEST} records").into());
    }
    let scratch = std::env::temp_dir().join(format!("localml-list-last-{}", std::process::id()));
    let address = args
        .next()
        .unwrap_or_else(|| format!("embedded:{}", scratch.display()));
    let store = StoreAddress::parse(&address, &scratch)?.open().await?;
    let prefix = format!("bench-{}/jobs/", std::process::id());
    let value = vec![7u8; VALUE_BYTES];
    for chunk in (0..records).collect::<Vec<_>>().chunks(100) {
        let txn = chunk.iter().fold(Txn::new(), |txn, i| {
            txn.put(&format!("{prefix}{i:08}"), value.clone(), 0)
        });
        store.commit(txn).await?;
    }
    let whole = time(|| async {
        let (kvs, _) = store.list(&prefix).await.expect("list");
        kvs.into_iter().rev().take(LATEST).count()
    })
    .await;
    let last = time(|| async {
        store
            .list_last(&prefix, None, LATEST)
            .await
            .expect("list_last")
            .len()
    })
    .await;
    println!(
        "{} ({records} records of {VALUE_BYTES} B), the latest {LATEST}, mean of {ROUNDS}: list whole prefix {:.2} ms, list_last {:.3} ms, ratio {:.0}x",
        store.backend(),
        ms(whole),
        ms(last),
        whole.as_secs_f64() / last.as_secs_f64()
    );
    let keys: Vec<String> = (0..records).map(|i| format!("{prefix}{i:08}")).collect();
    for chunk in keys.chunks(100) {
        store
            .commit(chunk.iter().fold(Txn::new(), |txn, k| txn.delete(k)))
            .await?;
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// The mean time of `ROUNDS` runs of `f`, after one to warm up; each must find `LATEST`.
async fn time<F, Fut>(f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    assert_eq!(f().await, LATEST);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        assert_eq!(f().await, LATEST);
    }
    start.elapsed() / ROUNDS
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
