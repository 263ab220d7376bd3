//! Running the `prismctl` binary as an operator would, from tests and benchmarks of any
//! application: with exactly a given set of `PRISM*` variables (none inherited from the
//! shell), stdin not a terminal (as in scripts: destructive commands need `--yes`), bounded in
//! time, its output echoed to the test's log.

use std::time::{Duration, Instant};

use crate::TestEnv;

/// The longest one `prismctl` run may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// What a `prismctl` run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Run {
    /// True when it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The stdout as one JSON document (the last line, for `--watch`).
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// The `prismctl` binary (built when missing, before any clock starts).
pub async fn binary() -> std::path::PathBuf {
    tokio::task::spawn_blocking(|| crate::binaries::path("prismctl", "prismctl"))
        .await
        .expect("build task")
        .expect("the prismctl binary")
}

/// A `prismctl args…` command with exactly `vars` of the `PRISM*` variables, stdin not a
/// terminal.
pub async fn command(vars: &[(String, String)], args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary().await);
    for (key, _) in std::env::vars() {
        if key.starts_with("PRISM") {
            command.env_remove(key);
        }
    }
    command
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `prismctl args…` with `vars` to its end.
pub async fn run_with(vars: &[(String, String)], args: &[&str]) -> Run {
    let started = Instant::now();
    let output = tokio::time::timeout(RUN_TIMEOUT, command(vars, args).await.output())
        .await
        .unwrap_or_else(|_| panic!("prismctl {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("prismctl runs");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!(
        "$ prismctl {} ({:.1}s)\n-> {:?}\n{}{}",
        args.join(" "),
        started.elapsed().as_secs_f64(),
        run.code,
        run.stdout,
        run.stderr
    );
    run
}

/// Runs `prismctl args…` against `env`.
pub async fn run(env: &TestEnv, args: &[&str]) -> Run {
    run_with(&env.env_vars, args).await
}

/// `vars` with `key` set to `value`.
pub fn with_var(vars: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vars.iter().filter(|(k, _)| k != key).cloned().collect();
    vars.push((key.to_owned(), value.to_owned()));
    vars
}
