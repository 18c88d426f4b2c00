//! Scheduler high availability on a real etcd: two replicas, three workers reporting to
//! both; kill -9 the leader under load. The other replica takes over the job dispatcher,
//! synchronous requests sent to it all succeed, cordons are shared, no job is lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use localml_cli::client;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::*;
use localml_store::{Store, StoreAddress};
use localml_tests::*;

const CONFIG: &str =
    "report_interval_ms: 200\nworker_grace_period_ms: 3000\njobs:\n  retry_ms: 200\n";

async fn leader_pid(store: &dyn Store) -> Option<u32> {
    let kv = store.get("leader").await.ok()??;
    let identity = String::from_utf8_lossy(&kv.value).into_owned();
    // host-PID-random
    let mut parts = identity.rsplitn(3, '-');
    parts.next();
    parts.next()?.parse().ok()
}

async fn cordoned_on(scheduler: &Scheduler, name: &str) -> bool {
    scheduler
        .workers()
        .await
        .iter()
        .any(|w| w.status.as_ref().is_some_and(|s| s.name == name) && w.cordoned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_takes_over_when_the_leader_dies() {
    let etcd = Etcd::start();
    let address = etcd.store_address("ha");
    let replicas = [
        Scheduler::start_full(CONFIG, &["--store", &address]),
        Scheduler::start_full(CONFIG, &["--store", &address]),
    ];
    let both = format!("{},{}", replicas[0].cluster_addr, replicas[1].cluster_addr);
    let _workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| Worker::start_reporting_to(n, &both, &models_dir(), &["--throttle", "20"]))
        .collect();
    for r in &replicas {
        r.wait_ready(&["w1", "w2", "w3"]).await;
    }
    let store = StoreAddress::parse(&address, std::path::Path::new("/x"))
        .expect("address")
        .open()
        .await
        .expect("open etcd");
    assert!(
        wait_until(SOON, || async {
            leader_pid(store.as_ref()).await.is_some()
        })
        .await,
        "a leader is elected"
    );
    let pid = leader_pid(store.as_ref()).await.expect("leader");
    let (leader, survivor) = match replicas.iter().position(|r| r.process.pid() == pid) {
        Some(0) => (0, 1),
        Some(_) => (1, 0),
        None => panic!("leader pid {pid} is not one of the replicas"),
    };
    let mut replicas = replicas.into_iter().collect::<Vec<_>>();

    // A cordon set through one replica applies on the other.
    let mut admin = replicas[survivor].admin().await;
    admin
        .set_cordon(SetCordonRequest {
            worker: "w3".into(),
            cordoned: true,
        })
        .await
        .expect("cordon");
    let shared = wait_until(SOON, || cordoned_on(&replicas[leader], "w3")).await;
    assert!(
        shared,
        "the cordon reached the other replica through the store"
    );
    admin
        .set_cordon(SetCordonRequest {
            worker: "w3".into(),
            cordoned: false,
        })
        .await
        .expect("uncordon");
    let cleared = wait_until(SOON, || async {
        !cordoned_on(&replicas[leader], "w3").await
    })
    .await;
    assert!(cleared, "uncordon shared too");

    // Jobs submitted through the survivor, run by the leader.
    let example = &expected_examples()[0];
    let key = replicas[survivor].admin_key();
    let channel = client::connect_with_key(
        &replicas[survivor].addr,
        Duration::from_secs(10),
        Some(&key),
    )
    .await
    .expect("connect");
    let mut jobs = JobsClient::new(channel);
    let mut ids = Vec::new();
    for i in 0..60 {
        let job = jobs
            .submit(SubmitJobRequest {
                request: Some(client::request(
                    &example.model,
                    &example.version,
                    &example.inputs,
                )),
                idempotency_key: format!("ha-{i}"),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner();
        ids.push(job.id);
    }

    // Synchronous load on the survivor throughout the failover.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            let addr = replicas[survivor].addr.clone();
            tokio::spawn(async move {
                let mut oip = inference_client(&addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match oip.model_infer(image_request(1)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) => {
                            eprintln!("sync request failed: {s:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    replicas[leader].process.kill9();
    let survivor_pid = replicas[survivor].process.pid();
    let took_over = wait_until(SOON, || async {
        leader_pid(store.as_ref()).await == Some(survivor_pid)
    })
    .await;
    let gap = killed.elapsed();
    assert!(took_over, "the survivor did not take over within {SOON:?}");
    eprintln!(
        "failover gap: {:.2} s from kill -9 to the new leader",
        gap.as_secs_f64()
    );

    let finished = wait_until(Duration::from_secs(120), || async {
        let mut all = true;
        let mut jobs = jobs.clone();
        for id in &ids {
            let job = jobs
                .get(GetJobRequest { id: id.clone() })
                .await
                .map(|r| r.into_inner().state);
            all &= job.ok() == Some(JobState::Succeeded as i32);
        }
        all
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("synchronous requests to the survivor: {ok} succeeded, {failed} failed");
    assert!(finished, "every job submitted before the failover succeeds");
    assert_eq!(
        failed, 0,
        "every synchronous request to the survivor succeeds"
    );
    assert!(ok > 50, "load ran: {ok}");
}

fn worker_state_reason(workers: &[WorkerInfo], name: &str) -> Option<(i32, String)> {
    workers
        .iter()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
        .map(|w| (w.state, w.state_reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reporting_to_one_replica_is_known_to_all_through_its_lease() {
    let etcd = Etcd::start();
    let address = etcd.store_address("leases");
    let a = Scheduler::start_full(CONFIG, &["--store", &address]);
    let b = Scheduler::start_full(CONFIG, &["--store", &address]);
    // Reaches replica A only (say, B is across a link it cannot use).
    let mut lonely = Worker::start_reporting_to(
        "lonely",
        &a.cluster_addr,
        &models_dir(),
        &["--labels", "room=lab"],
    );
    a.wait_ready(&["lonely"]).await;
    b.wait_ready(&["lonely"]).await;
    // B routes to it from the stored registration.
    let mut request = image_request(1);
    request.parameters.insert(
        "localml.selector".into(),
        localml_proto::inference::InferParameter {
            parameter_choice: Some(
                localml_proto::inference::infer_parameter::ParameterChoice::StringParam(
                    "room=lab".into(),
                ),
            ),
        },
    );
    let response = b
        .inference()
        .await
        .model_infer(request)
        .await
        .expect("B routes to a worker it knows from the store")
        .into_inner();
    assert_eq!(client::served_by(&response).as_deref(), Some("lonely"));
    // The worker dies: nobody renews its lease; B learns it from the store.
    lonely.process.kill9();
    let expired = wait_until(SOON, || async {
        worker_state_reason(&b.workers().await, "lonely").is_some_and(|(state, reason)| {
            state == WorkerState::NotReady as i32 && reason.contains("lease expired")
        })
    })
    .await;
    assert!(
        expired,
        "NotReady on B through the lease: {:?}",
        worker_state_reason(&b.workers().await, "lonely")
    );
    assert!(
        wait_until(SOON, || async {
            a.worker_state("lonely").await == Some(WorkerState::NotReady)
        })
        .await,
        "and on A by its own grace period"
    );
}
