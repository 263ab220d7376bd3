//! The engine knows no domain (the README's guarantee 8): no crate under `crates/engine` may
//! depend — for building, testing or anything else — on a crate under `crates/apps`.
//! [`engine_dependencies_on_applications`] reads every manifest of the workspace and lists the
//! offending dependencies; this module's test fails when the list is not empty.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The workspace root (this crate lives in `crates/engine/prism-testkit`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// The package names of the crates in `dir` (one folder per crate, each with a Cargo.toml).
fn package_names(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let manifest = entry?.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)?;
        let name = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("name = \"").and_then(|rest| rest.strip_suffix('"')))
            .with_context(|| format!("{} has no package name", manifest.display()))?;
        out.push((name.to_owned(), manifest));
    }
    Ok(out)
}

/// Every dependency of an engine crate on an application crate, as `engine -> application`
/// (with the manifest section it is in).
pub fn engine_dependencies_on_applications(root: &Path) -> anyhow::Result<Vec<String>> {
    let applications: Vec<String> =
        package_names(&root.join("crates/apps"))?.into_iter().map(|(name, _)| name).collect();
    let mut offending = Vec::new();
    for (engine, manifest) in package_names(&root.join("crates/engine"))? {
        let text = std::fs::read_to_string(&manifest)?;
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
                continue;
            }
            if !section.contains("dependencies") {
                continue;
            }
            let Some(dependency) = line.split(['.', '=', ' ']).next().filter(|d| !d.is_empty()) else {
                continue;
            };
            if applications.iter().any(|app| app == dependency) {
                offending.push(format!("{engine} -> {dependency} ([{section}])"));
            }
        }
    }
    Ok(offending)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_engine_crate_depends_on_an_application_crate() {
        let offending = engine_dependencies_on_applications(&workspace_root()).expect("manifests readable");
        assert!(offending.is_empty(), "engine crates depending on application crates: {offending:?}");
    }

    /// The check itself can fail: a manifest naming an application crate is reported.
    #[test]
    fn a_dependency_on_an_application_is_reported() {
        let root = tempfile_root();
        for (dir, manifest) in [
            ("crates/apps/shop", "[package]\nname = \"shop\"\n"),
            (
                "crates/engine/prism-x",
                "[package]\nname = \"prism-x\"\n\n[dev-dependencies]\nshop.workspace = true\n",
            ),
        ] {
            std::fs::create_dir_all(root.join(dir)).expect("dir");
            std::fs::write(root.join(dir).join("Cargo.toml"), manifest).expect("manifest");
        }
        let offending = engine_dependencies_on_applications(&root).expect("readable");
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(offending, vec!["prism-x -> shop ([dev-dependencies])".to_owned()]);
    }

    fn tempfile_root() -> PathBuf {
        std::env::temp_dir().join(format!("prism-layering-{}", rand::random::<u64>()))
    }
}
