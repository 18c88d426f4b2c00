//! Catalog files on more than one scheduler replica. With a shared store (etcd) and
//! several replicas, each keeps the blobs it received on its own disk; a push is
//! acknowledged once the file is on two replicas (this one copies it to another, which
//! fetches it from this one over the cluster port), and a replica asked for a file it
//! lacks (a worker's fetch, a replica that was down during the push) fetches it from one
//! that has it first; in the background each replica also copies, every
//! `replica_sync_interval_ms`, the files it lacks, so that in time every replica holds
//! every file. Replicas find each other under `replicas/` in the store, each under a lease
//! it keeps alive, with its cluster address.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use localml_proto::localml::v1::cluster_client::ClusterClient;
use localml_proto::localml::v1::{FetchBlobRequest, ReplicateBlobRequest};
use localml_store::{Store, Txn};
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::{blocking, Catalog, CatalogError};

pub const REPLICAS: &str = "replicas/";
/// A replica's registration lasts this long without renewal.
const TTL: Duration = Duration::from_secs(15);
/// How long a copy may go without a byte before it is given up.
const IDLE: Duration = Duration::from_secs(60);
/// The longest a replica's copy of one file may take when asked at a push.
const COPY_DEADLINE: Duration = Duration::from_secs(1800);

/// What one pass of [`Replicas::sync`] did.
#[derive(Debug, Default)]
pub struct Synced {
    /// Files copied from other replicas, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files no other replica could give, and the last reason.
    pub left: u64,
    pub last_error: String,
}

pub struct Replicas {
    store: Arc<dyn Store>,
    /// This replica's key under `replicas/`.
    id: String,
    /// host:port of this replica's cluster port, as the others dial it.
    pub address: String,
    tls: ClientTlsConfig,
}

impl Replicas {
    pub fn new(
        store: Arc<dyn Store>,
        id: String,
        address: String,
        tls: ClientTlsConfig,
    ) -> Replicas {
        Replicas {
            store,
            id,
            address,
            tls,
        }
    }

    /// This replica's identity under `replicas/`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keeps this replica registered until `stopped`; a lost lease is granted again.
    pub async fn run(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let key = format!("{REPLICAS}{}", localml_store::escape_segment(&self.id));
        loop {
            let registered = async {
                let lease = self.store.grant(TTL).await?;
                let txn = Txn::new().put(&key, self.address.clone().into_bytes(), lease);
                self.store.commit(txn).await?;
                tracing::info!(address = %self.address, "this replica holds catalog files for the others");
                loop {
                    tokio::time::sleep(TTL / 3).await;
                    if let Err(e) = self.store.keep_alive(lease).await {
                        break Err::<(), localml_store::StoreError>(e);
                    }
                }
            };
            tokio::select! {
                r = registered => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "cannot keep this replica registered for catalog copies; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ = async { let _ = stopped.wait_for(|s| *s).await; } => {
                    let _ = self.store.delete(&key).await;
                    return;
                }
            }
        }
    }

    /// The other replicas' cluster addresses (a store error is an error, not "none").
    pub async fn others(&self) -> Result<Vec<String>, CatalogError> {
        let own = format!("{REPLICAS}{}", localml_store::escape_segment(&self.id));
        let (kvs, _) = self.store.list(REPLICAS).await?;
        Ok(kvs
            .into_iter()
            .filter(|kv| kv.key != own)
            .filter_map(|kv| String::from_utf8(kv.value).ok())
            .filter(|a| *a != self.address)
            .collect())
    }

    fn client(&self, address: &str) -> Result<ClusterClient<tonic::transport::Channel>, String> {
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .and_then(|e| e.tls_config(self.tls.clone()))
            .map_err(|e| format!("replica address {address}: {e}"))?;
        Ok(ClusterClient::new(
            endpoint
                .connect_timeout(Duration::from_secs(3))
                .connect_lazy(),
        ))
    }

    /// After a push: has another replica copy blob `sha256` from this one. Ok(None) when
    /// there is no other replica (the file is on this one only); an error when there are
    /// some and none took it.
    pub async fn replicate(&self, sha256: &str, size: u64) -> Result<Option<String>, String> {
        let others = self.others().await.map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for address in others {
            let mut request = tonic::Request::new(ReplicateBlobRequest {
                sha256: sha256.to_string(),
                size,
                source: self.address.clone(),
                requester: self.id.clone(),
            });
            request.set_timeout(COPY_DEADLINE);
            let answer = match self.client(&address) {
                Ok(mut c) => c
                    .replicate_blob(request)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| s.message().to_string()),
                Err(e) => Err(e),
            };
            match answer {
                // An address that reaches this replica itself is not another copy.
                Ok(r) if r.replica == self.id => {}
                Ok(r) => {
                    tracing::info!(sha256, replica = %address, copied = r.copied, "file copied to another replica");
                    return Ok(Some(address));
                }
                Err(e) => errors.push(format!("{address}: {e}")),
            }
        }
        match errors.is_empty() {
            true => Ok(None),
            false => Err(errors.join("; ")),
        }
    }

    /// Copies blob `sha256` of `size` bytes from the replica at `source` into this one's
    /// store (resuming what it holds); returns the bytes copied.
    pub async fn copy_from(
        &self,
        catalog: &Catalog,
        source: &str,
        sha256: &str,
        size: u64,
    ) -> Result<u64, CatalogError> {
        let blobs = Arc::clone(&catalog.blobs);
        // Kept from this replica's collector until a version uses it.
        catalog.uploaded(sha256);
        let unreachable = |e: String| CatalogError::Replica(format!("{source}: {e}"));
        // One copy of a file at a time: another (a push sharing the file, a worker's fetch)
        // may be under way; wait for it. A complete file is done.
        let started = tokio::time::Instant::now();
        let (upload, offset) = loop {
            let hex = sha256.to_string();
            let blobs = Arc::clone(&blobs);
            let begun = blocking(move || {
                let held = blobs.held(&hex)?;
                if held.complete {
                    return Ok(None);
                }
                blobs
                    .begin(&hex, size, held.bytes)
                    .map(|u| Some((u, held.bytes)))
            })
            .await;
            match begun {
                Ok(Some(begun)) => break begun,
                Ok(None) | Err(CatalogError::BlobExists(_)) => return Ok(0),
                Err(CatalogError::Busy(_)) if started.elapsed() < IDLE => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let mut client = self.client(source).map_err(unreachable)?;
        let request = client.fetch_blob(FetchBlobRequest {
            sha256: sha256.to_string(),
            offset,
            max_chunk_bytes: 0,
        });
        let chunks = tokio::time::timeout(IDLE, request)
            .await
            .map_err(|_| unreachable(format!("no answer for {} s", IDLE.as_secs())))?
            .map_err(|s| unreachable(s.message().to_string()))?
            .into_inner()
            .map(|c| {
                c.map(|c| c.data)
                    .map_err(|s| unreachable(s.message().to_string()))
            });
        let quiet = || unreachable(format!("no bytes for {} s", IDLE.as_secs()));
        let held = catalog.receive(upload, chunks, IDLE, quiet).await?;
        let copied = held.bytes.saturating_sub(offset);
        Ok(copied)
    }

    /// Until `stopped`: every `interval`, copies the catalog files this replica lacks
    /// from the others (a replica that was down during pushes, or that lost its disk,
    /// fills up again without waiting for a worker to ask).
    pub async fn sync(
        self: Arc<Self>,
        catalog: Arc<Catalog>,
        interval: Duration,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            // A stop interrupts a copy: what arrived stays for a resume.
            let synced = tokio::select! {
                s = self.sync_once(&catalog) => s,
                _ = stopped.wait_for(|s| *s) => return,
            };
            match synced {
                Ok(Synced {
                    files: 0, left: 0, ..
                }) => {}
                Ok(s) if s.left == 0 => {
                    tracing::info!(
                        files = s.files,
                        bytes = s.bytes,
                        "copied the catalog files this replica lacked from the others"
                    )
                }
                Ok(s) => {
                    tracing::warn!(files = s.files, bytes = s.bytes, left = s.left, error = %s.last_error, "some catalog files this replica lacks could not be copied from any other replica; trying again later")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for catalog files this replica lacks")
                }
            }
        }
    }

    /// One pass of [`Replicas::sync`].
    pub async fn sync_once(&self, catalog: &Catalog) -> Result<Synced, CatalogError> {
        let wanted = catalog.referenced().await?;
        let blobs = Arc::clone(&catalog.blobs);
        let mut missing: Vec<(String, u64)> = blocking(move || {
            Ok(wanted
                .into_iter()
                .filter(|(sha256, _)| !blobs.held(sha256).is_ok_and(|h| h.complete))
                .collect())
        })
        .await?;
        missing.sort();
        let mut done = Synced::default();
        if missing.is_empty() {
            return Ok(done);
        }
        // A replica that failed a copy is asked after the others for the rest of the pass
        // (a dead one, its registration not expired yet, costs a connection timeout once
        // while another can give the files).
        let others = self.others().await?;
        let mut failed: std::collections::HashSet<String> = Default::default();
        for (sha256, size) in missing {
            let mut order: Vec<&String> = others.iter().collect();
            order.sort_by_key(|a| failed.contains(*a));
            let mut copied = None;
            for address in order {
                match self.copy_from(catalog, address, &sha256, size).await {
                    Ok(bytes) => {
                        copied = Some(bytes);
                        break;
                    }
                    Err(e) => {
                        done.last_error = e.to_string();
                        failed.insert(address.clone());
                    }
                }
            }
            match copied {
                Some(bytes) => {
                    done.files += 1;
                    done.bytes += bytes;
                }
                None => done.left += 1,
            }
        }
        Ok(done)
    }

    /// A blob this replica lacks: fetched from another replica that has it. Ok(false)
    /// when none has it.
    pub async fn fetch_missing(
        &self,
        catalog: &Catalog,
        sha256: &str,
    ) -> Result<bool, CatalogError> {
        let size = match catalog.size_of(sha256).await? {
            Some(size) => size,
            None => return Ok(false),
        };
        for address in self.others().await? {
            match self.copy_from(catalog, &address, sha256, size).await {
                Ok(copied) => {
                    tracing::info!(sha256, replica = %address, copied, "file this replica lacked fetched from another");
                    return Ok(true);
                }
                Err(e) => {
                    tracing::warn!(sha256, replica = %address, error = %e, "cannot fetch a file from another replica")
                }
            }
        }
        Ok(false)
    }
}
