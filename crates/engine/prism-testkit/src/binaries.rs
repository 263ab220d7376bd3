//! Workspace binaries a test runs as a process of its own when they belong to another package
//! (cargo gives an integration test `CARGO_BIN_EXE_<name>` only for its own package's
//! binaries): `prismctl` for an application's operations tests, for instance.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context};

/// The path of the workspace binary `name` of package `package`, built (in the test's
/// profile) if it is missing or out of date — cargo does nothing when it is up to date.
pub fn path(package: &str, name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().context("the test's own path")?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test binary is not under target/<profile>/deps")?;
    let binary = profile_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let manifest = crate::layering::workspace_root().join("Cargo.toml");
        let profile = profile_dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "--quiet", "-p", package, "--bin", name]).arg("--manifest-path").arg(&manifest);
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.status().with_context(|| format!("running cargo to build {name}"))?;
        if !status.success() {
            bail!("building {name} failed (cargo build -p {package} --bin {name})");
        }
        built.push(name.to_owned());
    }
    if !binary.is_file() {
        bail!(
            "{} does not exist after building it (cargo build -p {package} --bin {name})",
            binary.display()
        );
    }
    Ok(binary)
}
