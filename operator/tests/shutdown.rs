//! Graceful shutdown: a leader told to stop quits acting and gives its Lease up, so a follower takes over
//! at its next attempt instead of waiting out the lease.

use std::sync::Arc;
use std::time::Duration;

use dovetail::clock::{Clock, SystemClock};
use dovetail::journal::LogJournal;
use dovetail::kube::{Kind, Kube, ObjectKey};
use dovetail::leader::{Elector, LeaderElection};
use dovetail::metrics::{LEADER, Metrics};
use fakecloud::{Catalog, CloudConfig, FakeCloud};
use fakekube::{FakeKube, Store};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

fn context(kube: Arc<FakeKube>, clock: Arc<dyn Clock>) -> dovetail::Context {
    dovetail::Context {
        clock,
        kube,
        journal: Arc::new(LogJournal),
        metrics: Default::default(),
        rng: ChaCha8Rng::seed_from_u64(7),
        settings: Default::default(),
    }
}

#[tokio::test]
async fn a_stopped_leader_releases_its_lease_to_the_follower() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kube = Arc::new(FakeKube::new(
        Store::new(ChaCha8Rng::seed_from_u64(1)),
        clock.clone(),
        Duration::ZERO,
    ));
    let cloud = Arc::new(FakeCloud::new(
        CloudConfig::default(),
        Catalog::builtin(),
        2,
        clock.clone(),
        Arc::new(LogJournal),
    ));
    let leader = LeaderElection::new("kube-system", "dovetail-a");
    let follower = LeaderElection::new("kube-system", "dovetail-b");
    let settings = dovetail::Settings {
        leader_election: Some(leader.clone()),
        ..Default::default()
    };
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(dovetail_operator::run::control(
        kube.clone(),
        cloud.clone(),
        metrics.clone(),
        settings,
        stopped,
    ));
    let key = ObjectKey::namespaced("kube-system", &leader.name);
    let holder = |kube: Arc<FakeKube>| {
        let key = key.clone();
        async move {
            kube.get(Kind::Lease, &key).await.unwrap().map(|l| {
                l["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
        }
    };
    let mut waited = Duration::ZERO;
    while holder(kube.clone()).await.as_deref() != Some("dovetail-a") {
        assert!(
            waited < Duration::from_secs(10),
            "the leader never took the Lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(metrics.get(LEADER, &[("name", &leader.name)]), Some(1.0));
    // While the leader holds it, the follower's attempt fails.
    let ctx = context(kube.clone(), clock.clone());
    let mut elector = Elector::default();
    assert!(!elector.try_acquire_or_renew(&ctx, &follower).await.unwrap());

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the controller stops within 10 s")
        .unwrap();
    let lease = kube.get(Kind::Lease, &key).await.unwrap().unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
    assert!(
        elector.try_acquire_or_renew(&ctx, &follower).await.unwrap(),
        "the follower takes the released Lease at once"
    );
    assert_eq!(holder(kube).await.as_deref(), Some("dovetail-b"));
}
