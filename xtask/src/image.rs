//! `cargo xtask image`: the controller's container image — the release `dovetail` binary with the shared
//! libraries it links and the CA bundle, staged into a FROM-scratch `Containerfile` and built with podman,
//! tagged as the chart and kustomize base expect, then run: `--help` (read-only, non-root), and the
//! simulator as a user's CI runs it (`dovetail sim --snapshot` on a mounted directory, twice).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's name and tag: what `deploy/` and the chart default to.
pub fn reference() -> String {
    format!(
        "ghcr.io/dovetail-autoscaler/dovetail:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Where the CA bundle is on Debian and in the image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// podman as this machine runs it: vfs storage, runc, cgroupfs, and a containers.conf without default
/// ulimits (see PLUMBING: the defaults fail here).
pub fn podman(root: &Path) -> Result<Command, String> {
    if Command::new("podman").arg("--version").output().is_err() {
        return Err(
            "podman is not installed: apt-get install podman runc (Debian), then run again".into(),
        );
    }
    let conf = root.join("target/image/containers.conf");
    if let Some(dir) = conf.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n")
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", &conf).args([
        "--storage-driver=vfs",
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
    ]);
    Ok(cmd)
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The shared libraries a binary loads (the loader included), as `ldd` lists them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let listing = run(Command::new("ldd").arg(binary), "ldd")?;
    Ok(listing
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)".
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copy `from` to `rootfs` + its absolute path, following symlinks (the image has the file itself).
fn place(rootfs: &Path, from: &Path) -> Result<(), String> {
    let to = rootfs.join(from.strip_prefix("/").unwrap_or(from));
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::copy(from, &to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

/// Build the binary (the release build; with `dev`, the debug build the tests already made, which CI uses
/// to save a second compile), stage the build context, build the image. Returns its reference and size.
pub fn build(root: &Path, dev: bool) -> Result<(String, u64), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let binary = if dev {
        crate::e2e::test_binary(root)?
    } else {
        eprintln!("building the release dovetail binary...");
        run(
            Command::new(&cargo).current_dir(root).args([
                "build",
                "--release",
                "--locked",
                "--package",
                "dovetail-operator",
                "--bin",
                "dovetail",
            ]),
            "cargo build --release",
        )?;
        root.join("target/release/dovetail")
    };
    let context = root.join("target/image/context");
    let _ = std::fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");
    let bin_dir = rootfs.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir).map_err(|e| format!("{}: {e}", bin_dir.display()))?;
    // The symbols are for debuggers, not for a cluster: strip the copy.
    run(
        Command::new("strip")
            .arg("-o")
            .arg(bin_dir.join("dovetail"))
            .arg(&binary),
        "strip",
    )?;
    for lib in shared_libraries(&binary)? {
        place(&rootfs, &lib)?;
    }
    place(&rootfs, Path::new(CA_BUNDLE))?;
    // A writable /tmp for anything that wants one (the root filesystem may be mounted read-only).
    std::fs::create_dir_all(rootfs.join("tmp")).map_err(|e| format!("rootfs/tmp: {e}"))?;
    std::fs::copy(root.join("Containerfile"), context.join("Containerfile"))
        .map_err(|e| format!("Containerfile: {e}"))?;
    let reference = reference();
    eprintln!("building {reference} with podman...");
    run(
        podman(root)?
            .args(["build", "--quiet", "--tag", &reference, "--build-arg"])
            .arg(format!("VERSION={}", env!("CARGO_PKG_VERSION")))
            .arg("--file")
            .arg(context.join("Containerfile"))
            .arg(&context),
        "podman build",
    )?;
    let size = run(
        podman(root)?.args(["image", "inspect", "--format", "{{.Size}}", &reference]),
        "podman image inspect",
    )?;
    let size = size.trim().parse::<u64>().unwrap_or(0);
    // It runs: as its non-root user, on a read-only root filesystem, and prints its settings.
    let help = run(
        podman(root)?.args(["run", "--rm", "--read-only", &reference, "--help"]),
        "podman run IMAGE --help",
    )?;
    if !help.contains("CLUSTER_NAME") || !help.contains("INTERRUPTION_QUEUE") {
        return Err(format!(
            "the image's `dovetail --help` does not list the settings:\n{help}"
        ));
    }
    simulate_in(root, &reference)?;
    Ok((reference, size))
}

/// The simulator in the image, as a user's CI runs it: a directory holding a scenario mounted as the working
/// directory, `dovetail sim --snapshot` as the invoking user — written (exit 0), unchanged (exit 0), a
/// NodePool edit (exit 1, the change named), accepted with `--update` (exit 0).
fn simulate_in(root: &Path, reference: &str) -> Result<(), String> {
    let work = root.join("target/image/user-ci");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("scenarios"))
        .map_err(|e| format!("{}: {e}", work.display()))?;
    let scenario = work.join("scenarios/web.yaml");
    std::fs::copy(root.join("scenarios/steady-web.yaml"), &scenario)
        .map_err(|e| format!("scenarios/steady-web.yaml: {e}"))?;
    let user = run(Command::new("id").arg("-u"), "id -u")?;
    let w = work.display().to_string();
    let sim = |extra: &[&str]| -> Result<(Option<i32>, String), String> {
        let out = podman(root)?
            .args(["run", "--rm", "--read-only", "--user", user.trim()])
            .args(["--volume", &format!("{w}:{w}"), "--workdir", &w, reference])
            .args(["sim", "scenarios/web.yaml", "--until", "10m"])
            .args(["--snapshot", "snapshots", "--junit", "report.xml"])
            .args(extra)
            .output()
            .map_err(|e| format!("podman run IMAGE sim: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.code(), text))
    };
    let expect = |step: &str, got: (Option<i32>, String), code: i32, says: &str| {
        if got.0 == Some(code) && got.1.contains(says) {
            Ok(())
        } else {
            Err(format!(
                "the image's `dovetail sim --snapshot` ({step}) exited {:?}, not {code} saying {says:?}:\n{}",
                got.0, got.1
            ))
        }
    };
    expect("first run", sim(&[])?, 0, "(new)")?;
    expect("second run", sim(&[])?, 0, "unchanged")?;
    let yaml = std::fs::read_to_string(&scenario).map_err(|e| e.to_string())?;
    std::fs::write(
        &scenario,
        yaml.replace("values: [spot, on-demand]", "values: [on-demand]"),
    )
    .map_err(|e| e.to_string())?;
    expect("NodePool edited", sim(&[])?, 1, "CHANGED: total cost")?;
    expect("--update", sim(&["--update"])?, 0, "updated")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_the_one_the_manifests_name() {
        let root = crate::table::root();
        let deployment = std::fs::read_to_string(root.join("deploy/deployment.yaml")).unwrap();
        assert!(
            deployment.contains(&format!("image: {}", reference())),
            "deploy/deployment.yaml must name {}",
            reference()
        );
        let values = std::fs::read_to_string(root.join("deploy/chart/values.yaml")).unwrap();
        let (repository, tag) = reference()
            .rsplit_once(':')
            .map(|(r, t)| (r.to_string(), t.to_string()))
            .unwrap();
        assert!(values.contains(&format!("repository: {repository}")));
        assert!(values.contains(&format!("tag: {tag}")));
    }
}
