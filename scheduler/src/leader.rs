//! Leader election through the store: the replica that creates the `leader` key, bound to
//! its lease, leads until the lease ends. Every write the leader makes on behalf of
//! leadership (job dispatch) is a transaction that also checks the `leader` key's
//! modification revision (the *fence*): once the lease expired and another replica took
//! over, the key was deleted and recreated at a newer revision, so a paused old leader's
//! writes are refused by the store itself.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use localml_store::{LeaseId, Revision, Store, StoreError, Txn};

/// The key whose holder leads.
pub const LEADER_KEY: &str = "leader";

/// This replica's leadership; `lost` turns true when the lease could not be renewed.
pub struct Leadership {
    pub fence: Revision,
    pub lease: LeaseId,
    pub lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    store: Arc<dyn Store>,
}

impl Leadership {
    /// A transaction that only commits while this replica still leads.
    pub fn fenced(&self) -> Txn {
        Txn::new().when(LEADER_KEY, self.fence)
    }

    /// Gives leadership up at once (revoking the lease), e.g. on shutdown, so another
    /// replica need not wait for the lease to expire.
    pub async fn resign(self) {
        self.keeper.abort();
        let _ = self.store.revoke(self.lease).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Waits until this replica (`identity`) leads. Checks again every quarter lease while
/// another replica leads; store errors are retried.
pub async fn campaign(store: Arc<dyn Store>, identity: &str, ttl: Duration) -> Leadership {
    let mut logged = false;
    loop {
        match try_lead(&store, identity, ttl).await {
            Ok(Some(leadership)) => {
                tracing::info!(
                    identity,
                    fence = leadership.fence,
                    "leading: running the job dispatcher"
                );
                return leadership;
            }
            Ok(None) => {
                if !logged {
                    let holder = match store.get(LEADER_KEY).await {
                        Ok(Some(kv)) => String::from_utf8_lossy(&kv.value).into_owned(),
                        _ => "?".into(),
                    };
                    tracing::info!(identity, leader = %holder, "standing by: another replica leads");
                    logged = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "leader election: store error; retrying"),
        }
        tokio::time::sleep(ttl / 4).await;
    }
}

async fn try_lead(
    store: &Arc<dyn Store>,
    identity: &str,
    ttl: Duration,
) -> Result<Option<Leadership>, StoreError> {
    // Cheap check first: no lease is granted while someone leads.
    if store.get(LEADER_KEY).await?.is_some() {
        return Ok(None);
    }
    let lease = store.grant(ttl).await?;
    let won = store
        .commit(
            Txn::new()
                .when(LEADER_KEY, 0)
                .put(LEADER_KEY, identity.as_bytes().to_vec(), lease),
        )
        .await?;
    let Some(fence) = won else {
        let _ = store.revoke(lease).await;
        return Ok(None);
    };
    let (lost_tx, lost) = watch::channel(false);
    let keeper = {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            // The lease surely lasts a TTL from when a renewal was *sent*; step down with a
            // third of it to spare, so a stalled store cannot leave two leaders running.
            let mut renewed_at = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let sent = tokio::time::Instant::now();
                match tokio::time::timeout(ttl / 3, store.keep_alive(lease)).await {
                    Ok(Ok(())) => renewed_at = sent,
                    Ok(Err(StoreError::LeaseNotFound(_))) => break,
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader lease"),
                    Err(_) => tracing::warn!("renewing the leader lease timed out"),
                }
                if renewed_at.elapsed() >= ttl * 2 / 3 {
                    break;
                }
            }
            tracing::warn!("leadership lost: the leader lease expired");
            let _ = lost_tx.send(true);
        })
    };
    Ok(Some(Leadership {
        fence,
        lease,
        lost,
        keeper,
        store: Arc::clone(store),
    }))
}

/// A name for this replica: host, process and a random part.
pub fn identity() -> String {
    let host = crate::config::host_name().unwrap_or_else(|| "scheduler".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_store::embedded::EmbeddedStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leader_and_fencing_after_takeover() {
        let dir = std::env::temp_dir().join(format!("localml-leader-{}", fastrand::u64(..)));
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir).expect("open"));
        let ttl = Duration::from_millis(1_000);
        let first = campaign(Arc::clone(&store), "a", ttl).await;
        assert!(
            try_lead(&store, "b", ttl).await.expect("try").is_none(),
            "one leader"
        );
        // The first leader stops renewing (a pause): its lease expires, b takes over.
        first.keeper.abort();
        let second = tokio::time::timeout(
            Duration::from_secs(10),
            campaign(Arc::clone(&store), "b", ttl),
        )
        .await
        .expect("b leads after a's lease expired");
        assert!(second.fence > first.fence);
        // a's fenced writes are refused; b's go through.
        let refused = store
            .commit(first.fenced().put("jobs/x", b"a".to_vec(), 0))
            .await
            .expect("commit");
        assert_eq!(refused, None, "the old leader is fenced off");
        let accepted = store
            .commit(second.fenced().put("jobs/x", b"b".to_vec(), 0))
            .await
            .expect("commit");
        assert!(accepted.is_some());
        // Resigning hands over at once.
        second.resign().await;
        let third = tokio::time::timeout(
            Duration::from_secs(5),
            campaign(Arc::clone(&store), "c", ttl),
        )
        .await
        .expect("c leads after b resigned");
        assert!(!*third.lost.borrow());
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }
}
