//! `--serve`: a run paced to the wall clock whose API server kubectl can reach — fakekube's HTTP front on
//! loopback TCP, served from a thread of its own, and fakecloud's EC2 / SQS / SSM front beside it for the
//! AWS CLI — with every write a client makes acting on the running simulation and written to the trace as
//! a `kubectl` (or `aws`) line. Such a run is not deterministic (people type
//! when they type); everything else about it is the scenario's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dovetail::clock::Clock;
use dovetail::journal::Journal;
use fakecloud::FakeCloud;
use fakecloud::http::AwsFront;
use fakekube::FakeKube;
use fakekube::http::ApiServer;
use jiff::Timestamp;

use crate::SimError;
use crate::trace::Trace;

/// What `--serve` asks for.
#[derive(Clone)]
pub struct Serve {
    /// Where to listen (`127.0.0.1:0`: any free port).
    pub addr: SocketAddr,
    /// Where the AWS endpoint (EC2, SQS, SSM) listens.
    pub aws_addr: SocketAddr,
    /// Simulated seconds per wall-clock second.
    pub speed: f64,
    /// Where to write the kubeconfig (default: the system's temporary directory).
    pub kubeconfig: Option<PathBuf>,
    /// Set to end the run early (Ctrl-C sets it too); the summary covers the time run so far.
    pub stop: Arc<AtomicBool>,
    /// Told once the API server listens.
    pub ready: Option<OnReady>,
}

/// A callback told where the API is served.
pub type OnReady = Arc<dyn Fn(&Serving) + Send + Sync>;

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("addr", &self.addr)
            .field("aws_addr", &self.aws_addr)
            .field("speed", &self.speed)
            .field("kubeconfig", &self.kubeconfig)
            .finish()
    }
}

impl Default for Serve {
    fn default() -> Self {
        Serve {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            aws_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            speed: 1.0,
            kubeconfig: None,
            stop: Arc::default(),
            ready: None,
        }
    }
}

/// Where the served API is.
#[derive(Debug, Clone)]
pub struct Serving {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    /// The AWS endpoint (`AWS_ENDPOINT_URL`): EC2, SQS and SSM.
    pub aws_addr: SocketAddr,
}

impl Serving {
    /// What to tell the person at the terminal.
    pub fn instructions(&self) -> String {
        format!(
            "serving the simulated cluster's API at http://{addr} and its AWS (EC2, SQS, SSM) at http://{aws}\n  export KUBECONFIG={kc}\n  kubectl get nodes,nodeclaims,nodepools -o wide\n  export AWS_ENDPOINT_URL=http://{aws} AWS_ACCESS_KEY_ID=sim AWS_SECRET_ACCESS_KEY=sim AWS_DEFAULT_REGION=us-east-1\n  aws ec2 describe-instances\n  (Ctrl-C ends the run and prints the summary)\n",
            addr = self.addr,
            aws = self.aws_addr,
            kc = self.kubeconfig.display()
        )
    }
}

/// Simulated time as the serving thread sees it: published by the stepping loop after every step.
#[derive(Clone)]
struct SharedClock {
    epoch: Timestamp,
    elapsed_ms: Arc<AtomicU64>,
}

impl SharedClock {
    fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms.load(Ordering::Relaxed))
    }
}

#[async_trait]
impl Clock for SharedClock {
    fn now(&self) -> Timestamp {
        self.epoch.checked_add(self.elapsed()).unwrap_or(self.epoch)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// Clients' writes as trace lines at the simulated time they landed.
struct ServeJournal {
    trace: Trace,
    clock: SharedClock,
}

impl Journal for ServeJournal {
    fn record(&self, source: &'static str, line: String) {
        // Both fronts write here: kubectl's lines and the AWS CLI's.
        self.trace.push_at(self.clock.elapsed(), source, line);
    }
}

/// The running front: the serving thread and the pacing of the stepping loop.
pub(crate) struct Front {
    clock: SharedClock,
    speed: f64,
    started: std::time::Instant,
    stop: Arc<AtomicBool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn kubeconfig_text(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: dovetail-sim\n  cluster:\n    server: http://{addr}\nusers:\n- name: dovetail-sim\n  user: {{}}\ncontexts:\n- name: dovetail-sim\n  context:\n    cluster: dovetail-sim\n    user: dovetail-sim\n    namespace: default\ncurrent-context: dovetail-sim\n"
    )
}

impl Front {
    pub(crate) fn start(
        serve: &Serve,
        kube: FakeKube,
        cloud: &FakeCloud,
        trace: Trace,
        epoch: Timestamp,
    ) -> Result<Front, SimError> {
        let clock = SharedClock {
            epoch,
            elapsed_ms: Arc::default(),
        };
        let journal = Arc::new(ServeJournal {
            trace,
            clock: clock.clone(),
        });
        let server = ApiServer::new(kube, Arc::new(clock.clone())).with_journal(journal.clone());
        let aws = AwsFront::new(
            cloud
                .with_clock(Arc::new(clock.clone()))
                .with_journal(journal.clone()),
        )
        .with_journal(journal);
        let (listener, addr) = bind(serve.addr)?;
        let (aws_listener, aws_addr) = bind(serve.aws_addr)?;
        let kubeconfig = serve.kubeconfig.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("dovetail-sim-{}.kubeconfig", addr.port()))
        });
        std::fs::write(&kubeconfig, kubeconfig_text(addr)).map_err(|e| {
            SimError::Run(format!(
                "--serve: cannot write the kubeconfig {}: {e}",
                kubeconfig.display()
            ))
        })?;
        let (shutdown, done) = tokio::sync::oneshot::channel::<()>();
        let stop = serve.stop.clone();
        let answer_kubectl = move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                stop.store(true, Ordering::Relaxed);
                return;
            };
            rt.block_on(async move {
                let (Ok(listener), Ok(aws_listener)) = (
                    tokio::net::TcpListener::from_std(listener),
                    tokio::net::TcpListener::from_std(aws_listener),
                ) else {
                    stop.store(true, Ordering::Relaxed);
                    return;
                };
                tokio::select! {
                    biased;
                    _ = done => {}
                    _ = tokio::signal::ctrl_c() => stop.store(true, Ordering::Relaxed),
                    _ = fakekube::http::serve(listener, server) => {}
                    _ = fakecloud::http::serve(aws_listener, aws) => {}
                }
            });
        };
        let thread = std::thread::spawn(answer_kubectl); // allow-nondeterminism: --serve serves kubectl from a thread outside the simulation
        if let Some(ready) = &serve.ready {
            ready(&Serving {
                addr,
                kubeconfig,
                aws_addr,
            });
        }
        Ok(Front {
            clock,
            speed: serve.speed,
            started: std::time::Instant::now(), // allow-nondeterminism: --serve paces the run to the wall clock
            stop: serve.stop.clone(),
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// After each step: publish the simulated time, wait for the wall clock to catch up with it, and say
    /// whether the run should end here.
    pub(crate) fn after_step(&self, elapsed: Duration) -> bool {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.clock.elapsed_ms.store(ms, Ordering::Relaxed);
        let due = elapsed.div_f64(self.speed);
        let spent = self.started.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
        self.stop.load(Ordering::Relaxed)
    }
}

/// A non-blocking listener on `addr`, and the address it got.
fn bind(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), SimError> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| SimError::Run(format!("--serve: cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| SimError::Run(format!("--serve: {e}")))?;
    Ok((listener, local))
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
