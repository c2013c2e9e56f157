//! Start the adapters and servers, run the controller (again after it loses the Lease or fails), and on
//! SIGTERM stop acting, give the Lease up and exit.

use std::sync::Arc;
use std::time::Duration;

use dovetail::aws::cloud::Cloud;
use dovetail::clock::{Clock, SystemClock};
use dovetail::journal::LogJournal;
use dovetail::kube::Kube;
use dovetail::metrics::Metrics;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::OperatorError;

/// Pause before the controller starts again after it stopped with an error.
const RESTART_DELAY: Duration = Duration::from_secs(5);

/// Resolves when SIGTERM or SIGINT arrives (what the kubelet sends before killing the pod).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    biased;
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(
    what: &'static str,
    addr: std::net::SocketAddr,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, OperatorError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| OperatorError::Listen { what, addr, source })?;
    Ok(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(what, error = %e, "server stopped");
        }
    }))
}

/// Run the controller over the given seams until `stop` turns true, then release the Lease.
pub async fn control(
    kube: Arc<dyn Kube>,
    cloud: Arc<dyn Cloud>,
    metrics: Arc<Metrics>,
    settings: dovetail::Settings,
    mut stop: watch::Receiver<bool>,
) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut seed = clock.now().as_nanosecond() as u64;
    loop {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let ctx = dovetail::Context {
            clock: clock.clone(),
            kube: kube.clone(),
            journal: Arc::new(LogJournal),
            metrics: metrics.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            settings: settings.clone(),
        };
        let outcome = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            r = dovetail::run(ctx, cloud.clone()) => Some(r),
        };
        match outcome {
            None => break,
            Some(Err(dovetail::ControllerError::LostLeadership)) => {
                tracing::warn!("lost the leader Lease; starting again as a follower");
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "controller stopped; starting again in 5s");
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                }
            }
            Some(Ok(())) => {}
        }
    }
    if let Some(le) = &settings.leader_election {
        match dovetail::leader::release(kube.as_ref(), clock.as_ref(), le).await {
            Ok(true) => tracing::info!(lease = %le.name, "released the leader Lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not release the leader Lease"),
        }
    }
}

use base64::Engine as _;

const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The binary: adapters from the environment, servers, the controller; returns after SIGTERM.
pub async fn main(config: Config) -> Result<(), OperatorError> {
    let metrics = Arc::new(Metrics::default());
    let (kube, cloud, queue_url) = adapters(&config, metrics.clone()).await?;
    // On EKS the service account's CA is the cluster's: what nodes must trust.
    let ca_bundle = std::fs::read(SERVICE_ACCOUNT_CA)
        .ok()
        .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem));
    let settings = config.settings(queue_url, ca_bundle);
    tracing::info!(
        cluster = %config.cluster_name,
        leader_election = settings.leader_election.is_some(),
        interruption_queue = settings.interruption_queue.as_deref().unwrap_or(""),
        "dovetail starting"
    );
    let (stop_tx, stop) = watch::channel(false);
    let registry = Arc::new(crate::server::registry(metrics.clone()));
    let metrics_server = serve(
        "metrics",
        config.metrics_addr(),
        crate::server::metrics_router(registry),
        stop.clone(),
    )
    .await?;
    let health_server = serve(
        "health probes",
        config.health_addr(),
        crate::server::health_router(metrics.clone()),
        stop.clone(),
    )
    .await?;
    let controller = tokio::spawn(control(kube, cloud, metrics, settings, stop));
    terminated().await;
    tracing::info!("SIGTERM: stopping");
    let _ = stop_tx.send(true);
    let _ = controller.await;
    let _ = metrics_server.await;
    let _ = health_server.await;
    Ok(())
}

#[cfg(all(feature = "kube-client", feature = "aws"))]
async fn adapters(
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<(Arc<dyn Kube>, Arc<dyn Cloud>, Option<String>), OperatorError> {
    let kube = crate::kubeclient::KubeRs::from_environment()
        .await
        .map_err(|e| OperatorError::Kube(e.to_string()))?;
    let cloud = crate::aws::AwsCloud::from_environment(config.region.clone(), metrics).await;
    let queue_url = if config.interruption_queue.is_empty() {
        None
    } else {
        Some(
            cloud
                .queue_url(&config.interruption_queue)
                .await
                .map_err(|e| OperatorError::Aws(format!("INTERRUPTION_QUEUE: {e}")))?,
        )
    };
    Ok((Arc::new(kube), Arc::new(cloud), queue_url))
}

#[cfg(not(all(feature = "kube-client", feature = "aws")))]
async fn adapters(
    _config: &Config,
    _metrics: Arc<Metrics>,
) -> Result<(Arc<dyn Kube>, Arc<dyn Cloud>, Option<String>), OperatorError> {
    Err(OperatorError::NoAdapter(if cfg!(feature = "kube-client") {
        "AWS"
    } else {
        "Kubernetes"
    }))
}
