//! Shared by the operations tests: the shop's environment, running the `prismctl` binary
//! against it (or any set of `PRISM__*` variables), and waits on observable state — the
//! projector group's committed offsets, the projector's metrics.

#![allow(dead_code)]

use std::time::Duration;

use prism_projections::Application;
use prism_testkit::TestEnv;

/// The shop as the engine runs it.
pub fn shop() -> Application {
    shop_model::application()
}

/// The `prismctl` binary (built when missing, before any clock starts).
pub async fn prismctl_binary() -> std::path::PathBuf {
    tokio::task::spawn_blocking(|| prism_testkit::binaries::path("prismctl", "prismctl"))
        .await
        .expect("build task")
        .expect("the prismctl binary")
}

/// What a `prismctl` run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The stdout as one JSON document (the last line, for `--watch`).
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

/// A `prismctl args…` command with exactly `vars` of the `PRISM*` variables, stdin not a
/// terminal (as in scripts: destructive commands need `--yes`).
pub async fn command(vars: &[(String, String)], args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(prismctl_binary().await);
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

/// Runs `prismctl args…` with `vars`, within 300 s.
pub async fn prismctl_with(vars: &[(String, String)], args: &[&str]) -> Run {
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(300), command(vars, args).await.output())
        .await
        .unwrap_or_else(|_| panic!("prismctl {args:?} did not finish within 300 s"))
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
pub async fn prismctl(env: &TestEnv, args: &[&str]) -> Run {
    prismctl_with(&env.env_vars, args).await
}

/// `vars` with `key` set to `value`.
pub fn with_var(vars: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vars.iter().filter(|(k, _)| k != key).cloned().collect();
    vars.push((key.to_owned(), value.to_owned()));
    vars
}

/// Waits until the projector group has committed the end of every event topic.
pub async fn wait_caught_up(env: &TestEnv, timeout: Duration) {
    let group = prism_kafka::admin::projector_group_id(&env.config);
    let topics = env.event_topics();
    let ends = prism_testkit::kafka::end_offsets(&env.config, &topics).await.expect("end offsets");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let committed =
            prism_testkit::kafka::committed_offsets(&env.config, &group, &topics).await.expect("committed");
        if ends.iter().all(|(tp, end)| committed.get(tp).copied().unwrap_or(0) >= *end) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up: {committed:?} / {ends:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of the projector's duplicate-skip counters, as its metrics render them.
pub fn duplicates_skipped() -> f64 {
    let text = prism_runtime::telemetry::install().render();
    text.lines()
        .filter(|l| {
            l.starts_with("prism_projector_events_skipped_total") && l.contains("reason=\"duplicate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until a projector (this process's, with its metrics) has left its group: the
/// broker describes the group without members.
pub async fn wait_group_empty(env: &TestEnv, group: &str, timeout: Duration) {
    use prism_kafka::admin::{group_membership, GroupMembership};
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let membership =
            group_membership(&env.config.kafka, group, Duration::from_secs(10)).await.expect("membership");
        if matches!(membership, GroupMembership::Empty { .. }) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "group {group} still has members: {membership:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
