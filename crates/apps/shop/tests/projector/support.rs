//! Helpers shared by the projector's integration tests: projector workers as real child
//! processes (to be killed with SIGKILL or stopped with SIGTERM) and in-process ones.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use prism_config::PrismConfig;
use prism_testkit::TestEnv;
use tokio::process::{Child, Command};

/// Settings that make failures show quickly in tests: short sessions so a killed member's
/// partitions move on within seconds.
pub const FAST_FAILOVER: &[(&str, &str)] =
    &[("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "8000"), ("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "1000")];

/// A `prism-projector` process.
pub struct WorkerProcess {
    /// Name in logs and assertions.
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Where its /metrics, /healthz and /readyz answer.
    listen: String,
}

impl WorkerProcess {
    /// Starts the projector binary against `env`, plus `extra` variables.
    pub fn spawn(env: &TestEnv, name: &str, extra: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("prism-{}-{name}.log", env.id));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_shop-projector"));
        command
            .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PRISM__PROJECTOR__LISTEN", &listen)
            .env("PRISM__LOG__FILTER", "warn,prism_projector=info,prism_kafka=info")
            .envs(FAST_FAILOVER.iter().copied())
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command.spawn().expect("prism-projector starts");
        Self { name: name.to_owned(), child, log, listen }
    }

    /// The sum of every sample of the metric `name` whose labels contain `label` (e.g.
    /// `reason="duplicate"`), from the worker's /metrics; 0 when it exports none yet.
    pub async fn metric_sum(&self, name: &str, label: &str) -> f64 {
        let url = format!("http://{}/metrics", self.listen);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let text = loop {
            match reqwest::get(&url).await {
                Ok(answer) => break answer.text().await.expect("metrics body"),
                Err(err) if tokio::time::Instant::now() > deadline => {
                    panic!("{}: /metrics unreachable at {url}: {err}\n{}", self.name, self.log_tail())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Events this worker skipped as already applied (all projections).
    pub async fn duplicates_skipped(&self) -> f64 {
        self.metric_sum("prism_projector_events_skipped_total", "reason=\"duplicate\"").await
    }

    /// Events this worker applied (all projections).
    pub async fn events_applied(&self) -> f64 {
        self.metric_sum("prism_projector_events_applied_total", "projection=").await
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `None` if it did not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the worker logged so far.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines the worker logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A projector running inside the test process.
pub struct InProcess(prism_projector::Embedded);

impl InProcess {
    /// Starts [`prism_projector::run`] with `config` (its listen address made ephemeral).
    pub fn start(config: PrismConfig) -> Self {
        Self(prism_projector::Embedded::start(config, shop_model::application()))
    }

    /// Asks it to stop and waits for a clean exit.
    pub async fn stop(self) {
        self.0.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly within 30s");
    }
}

/// Dead letters recorded per projection instance.
pub async fn dead_letter_counts(env: &TestEnv) -> std::collections::BTreeMap<String, i64> {
    let client = env.pg().await.expect("pg");
    client
        .query("SELECT projection, count(*) FROM dead_letters GROUP BY projection", &[])
        .await
        .expect("dead letters")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}
