//! Helpers shared by prismctl's integration tests: running the `prismctl` binary against a
//! test environment (or any set of `PRISM__*` variables), and a projector running in the test
//! process.

#![allow(dead_code)]

use std::time::Duration;

use prism_testkit::TestEnv;

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

/// Runs `prismctl args…` with `vars` (and nothing else from `PRISM__*`), within 120 s.
pub async fn prismctl_with(vars: &[(String, String)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_prismctl"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PRISM") {
            command.env_remove(key);
        }
    }
    command.envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).args(args).kill_on_drop(true);
    command.stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("prismctl {args:?} did not finish within 120 s"))
        .expect("prismctl runs");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("$ prismctl {}\n-> {:?}\n{}{}", args.join(" "), run.code, run.stdout, run.stderr);
    run
}

/// Runs `prismctl args…` against `env`.
pub async fn prismctl(env: &TestEnv, args: &[&str]) -> Run {
    prismctl_with(&env.env_vars, args).await
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
        tokio::time::sleep(Duration::from_millis(500)).await;
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
