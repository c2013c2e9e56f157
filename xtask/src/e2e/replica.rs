//! The controller replicas of the end-to-end test: the `dovetail` binary as a child process, or the image
//! under podman (`--network host`, the kubeconfig's directory mounted read-only, as a non-root user on a
//! read-only root filesystem) — configured as in a cluster, through the environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// How a replica is started.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// The binary the test build left (`target/debug/dovetail`).
    Binary(PathBuf),
    /// The image (its reference), run with podman as `xtask/src/image.rs` configures it for this machine.
    Image { root: PathBuf, reference: String },
}

impl Launcher {
    pub fn describe(&self) -> String {
        match self {
            Launcher::Binary(path) => format!("the binary {}", path.display()),
            Launcher::Image { reference, .. } => format!("the image {reference} under podman"),
        }
    }
}

/// One running replica; killed (and its container removed) when dropped.
pub struct Replica {
    child: Child,
    /// The podman container's name and the root that configures podman, for an image replica.
    container: Option<(PathBuf, String)>,
}

impl Replica {
    /// Start a replica with `env` as its settings, its stderr (the log) written to `log`.
    pub fn start(
        launcher: &Launcher,
        name: &str,
        env: &[(String, String)],
        mounts: &[&Path],
        log: &Path,
    ) -> Result<Replica, String> {
        let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let (mut cmd, container) = match launcher {
            Launcher::Binary(path) => {
                let mut cmd = Command::new(path);
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
                (cmd, None)
            }
            Launcher::Image { root, reference } => {
                // A container of the same name left by an earlier, interrupted run would refuse this one.
                let _ = crate::image::podman(root)?
                    .args(["rm", "--force", "--ignore", name])
                    .output();
                let mut cmd = crate::image::podman(root)?;
                cmd.args([
                    "run",
                    "--rm",
                    "--name",
                    name,
                    "--network",
                    "host",
                    "--read-only",
                ]);
                for dir in mounts {
                    let d = dir.display();
                    cmd.arg("--volume").arg(format!("{d}:{d}:ro"));
                }
                for (k, v) in env {
                    cmd.arg("--env").arg(format!("{k}={v}"));
                }
                cmd.arg(reference);
                (cmd, Some((root.clone(), name.to_string())))
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", launcher.describe()))?;
        Ok(Replica { child, container })
    }

    /// Kill it at once (SIGKILL), as a node failure or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some((root, name)) = &self.container
            && let Ok(mut podman) = crate::image::podman(root)
        {
            let _ = podman.args(["kill", "--signal", "KILL", name]).output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Ask it to stop (SIGTERM, as the kubelet does) and wait for it to exit.
    pub fn terminate(mut self) -> Result<ExitStatus, String> {
        let signalled = match &self.container {
            // `podman run` passes the container's exit status on as its own.
            Some((root, name)) => crate::image::podman(root)?
                .args(["kill", "--signal", "TERM", name])
                .output()
                .map(|o| o.status),
            None => Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status(),
        };
        signalled.map_err(|e| format!("send SIGTERM: {e}"))?;
        self.child.wait().map_err(|e| e.to_string())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some((root, name)) = &self.container
            && let Ok(mut podman) = crate::image::podman(root)
        {
            let _ = podman.args(["rm", "--force", "--ignore", name]).output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
