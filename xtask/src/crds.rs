//! `cargo xtask crds`: the CRDs generated from the Rust types, as YAML in `deploy/crds/` (the kustomize
//! base) and `deploy/chart/crds/` (the Helm chart).

use std::path::Path;

/// Where the generated CRDs go, relative to the repository root.
pub const DIRS: [&str; 2] = ["deploy/crds", "deploy/chart/crds"];

/// Write them under each of [`DIRS`].
pub fn write(root: &Path) -> Result<Vec<String>, String> {
    let mut written = Vec::new();
    let crds = dovetail::crds::definitions_yaml()?;
    for dir in DIRS {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (file, text) in &crds {
            let path = dir.join(file);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path.display().to_string());
        }
    }
    Ok(written)
}
