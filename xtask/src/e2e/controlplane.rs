//! A real Kubernetes control plane on loopback, as envtest starts one: etcd, kube-apiserver (token auth,
//! its own serving certificate, a generated service-account key), kube-controller-manager (Deployments,
//! ReplicaSets, garbage collection) and kube-scheduler, all from `tools/controlplane` — built with Go from
//! the module proxy once and cached under `target/tools/` by the hash of its sources.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Kubernetes version built (k8s.io/kubernetes in tools/controlplane/go.mod).
pub const KUBERNETES_VERSION: &str = "v1.34.4";

/// The bearer token of the control plane's one user (in `system:masters`).
pub const TOKEN: &str = "dovetail-e2e-token";

/// FNV-1a, for naming the cached binary by its sources (stable across toolchains, unlike `DefaultHasher`).
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The control-plane binary, built if its sources changed since the last build.
pub fn binary(root: &Path) -> Result<PathBuf, String> {
    let src = root.join("tools/controlplane");
    let mut h = 0xcbf2_9ce4_8422_2325;
    for f in ["go.mod", "go.sum", "main.go"] {
        let text =
            std::fs::read(src.join(f)).map_err(|e| format!("tools/controlplane/{f}: {e}"))?;
        h = fnv(&text, h);
    }
    let out = root.join(format!("target/tools/controlplane-{h:016x}"));
    if out.exists() {
        return Ok(out);
    }
    if Command::new("go").arg("version").output().is_err() {
        return Err("Go is needed to build the control plane (tools/controlplane): install Go 1.24 or newer".into());
    }
    eprintln!(
        "building kube-apiserver, kube-controller-manager, kube-scheduler and etcd ({KUBERNETES_VERSION}) with Go; a few minutes the first time..."
    );
    let started = Instant::now();
    let (major, minor) = KUBERNETES_VERSION
        .trim_start_matches('v')
        .split_once('.')
        .map(|(a, b)| {
            (
                a.to_string(),
                b.split('.').next().unwrap_or("0").to_string(),
            )
        })
        .unwrap_or_default();
    let version = "k8s.io/component-base/version";
    let ldflags = format!(
        "-s -w -X {version}.gitVersion={KUBERNETES_VERSION} -X {version}.gitMajor={major} -X {version}.gitMinor={minor} -X {version}.gitTreeState=clean"
    );
    let status = Command::new("go")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .args(["build", "-trimpath", "-ldflags", &ldflags, "-o"])
        .arg(&out)
        .arg(".")
        .status()
        .map_err(|e| format!("go build: {e}"))?;
    if !status.success() {
        let _ = std::fs::remove_file(&out);
        return Err(format!("go build of tools/controlplane failed ({status})"));
    }
    eprintln!(
        "built the control plane in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// A free loopback port (released at once; the component binds it a moment later).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The last `n` lines of a log file (empty if it cannot be read), for an error message.
pub fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The running control plane; stopped (and its directory removed) when dropped.
pub struct ControlPlane {
    children: Vec<(String, Child)>,
    dir: PathBuf,
    pub server: String,
    pub kubeconfig: PathBuf,
}

fn kubeconfig_text(server: &str, ca: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: admin}}\ncurrent-context: e2e\n",
        ca = ca.display()
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl ControlPlane {
    fn spawn(&mut self, bin: &Path, component: &str, args: &[String]) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("{component}.log")))
            .map_err(|e| format!("{component}.log: {e}"))?;
        let child = Command::new(bin)
            .arg(component)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {component}: {e}"))?;
        self.children.push((component.to_string(), child));
        Ok(())
    }

    /// The last lines a component logged, for an error message.
    pub fn log_tail(&self, component: &str) -> String {
        last_lines(&self.dir.join(format!("{component}.log")), 15)
    }

    /// Start everything in `dir` and wait until the API server is ready.
    pub fn start(bin: &Path, dir: PathBuf) -> Result<ControlPlane, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let key = dir.join("sa.key");
        let public = dir.join("sa.pub");
        run(
            Command::new("openssl")
                .args(["genrsa", "-out"])
                .arg(&key)
                .arg("2048"),
            "openssl genrsa (the service-account key)",
        )?;
        run(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(&public),
            "openssl rsa -pubout",
        )?;
        let tokens = dir.join("tokens.csv");
        std::fs::write(&tokens, format!("{TOKEN},admin,admin,system:masters\n"))
            .map_err(|e| format!("tokens.csv: {e}"))?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let server = format!("https://127.0.0.1:{api_port}");
        let certs = dir.join("certs");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(&server, &certs.join("apiserver.crt")),
        )
        .map_err(|e| format!("kubeconfig: {e}"))?;
        let mut cp = ControlPlane {
            children: Vec::new(),
            dir: dir.clone(),
            server: server.clone(),
            kubeconfig: kubeconfig.clone(),
        };
        let etcd = format!("http://127.0.0.1:{etcd_port}");
        let d = |p: &Path| p.display().to_string();
        cp.spawn(
            bin,
            "etcd",
            &[
                format!("--data-dir={}", d(&dir.join("etcd"))),
                format!("--listen-client-urls={etcd}"),
                format!("--advertise-client-urls={etcd}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        cp.spawn(
            bin,
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd}"),
                format!("--cert-dir={}", d(&certs)),
                format!("--secure-port={api_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--service-account-issuer={server}"),
                format!("--service-account-key-file={}", d(&public)),
                format!("--service-account-signing-key-file={}", d(&key)),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                format!("--token-auth-file={}", d(&tokens)),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                // No ServiceAccount admission: the pods of the test need no token volume.
                "--disable-admission-plugins=ServiceAccount".into(),
                "-v=1".into(),
            ],
        )?;
        cp.wait_ready(Duration::from_secs(60))?;
        let k = d(&kubeconfig);
        cp.spawn(
            bin,
            "kube-controller-manager",
            &[
                format!("--kubeconfig={k}"),
                format!("--authentication-kubeconfig={k}"),
                format!("--authorization-kubeconfig={k}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                // Workloads, garbage collection, and node lifecycle (it lifts the not-ready taint the API
                // server puts on every new Node once the node is Ready; the fake kubelets renew their
                // Leases); no taint-based eviction and no cloud controllers.
                "--controllers=deployment-controller,replicaset-controller,garbage-collector-controller,disruption-controller,node-lifecycle-controller".into(),
                format!("--service-account-private-key-file={}", d(&key)),
                "-v=1".into(),
            ],
        )?;
        cp.spawn(
            bin,
            "kube-scheduler",
            &[
                format!("--kubeconfig={k}"),
                format!("--authentication-kubeconfig={k}"),
                format!("--authorization-kubeconfig={k}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "-v=1".into(),
            ],
        )?;
        Ok(cp)
    }

    /// Poll `/readyz` with the token until it answers `ok`.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < limit {
            for (name, child) in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    let name = name.clone();
                    return Err(format!(
                        "{name} exited ({status}):\n{}",
                        self.log_tail(&name)
                    ));
                }
            }
            let ok = Command::new("curl")
                .args(["-sk", "-H", &format!("Authorization: Bearer {TOKEN}")])
                .arg(format!("{}/readyz", self.server))
                .output()
                .is_ok_and(|o| o.stdout == b"ok");
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "kube-apiserver was not ready in {limit:?}:\n{}",
            self.log_tail("kube-apiserver")
        ))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The scheduler and controller manager first, etcd last.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("DOVETAIL_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
