//! `cargo xtask crds`: the CRDs generated from the Rust types, as YAML in `deploy/crds/`.

use std::path::Path;

/// Write them under `root/deploy/crds/`.
pub fn write(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("deploy/crds");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in dovetail::crds::definitions_yaml()? {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
