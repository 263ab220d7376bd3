//! What the telemetry integration tests share: the Python producer as a child process and what
//! it produced, projector workers as child processes (`telemetry-projector`, to be killed with
//! SIGKILL), the JSON Schema check of produced events, dead letters, and the oracle check
//! against the generations that are active now.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use jsonschema::{Retrieve, Uri, Validator};
use prism_events::{decode_event, Event, Limits, WireHeaders};
use prism_projections::{ProjectionInstance, ReadModel};
use prism_testkit::oracle::{check_expected, CacheCheck, CheckSummary, Expected};
use prism_testkit::TestEnv;
use serde_json::Value;
use tokio::process::{Child, Command};

/// The crate's directory.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Makes sure `python3` can import `confluent_kafka`, installing it with pip when missing
/// (once per test process). Panics with what to do when that fails.
pub fn ensure_python_kafka_client() {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    if *checked {
        return;
    }
    let importable = || {
        std::process::Command::new("python3")
            .args(["-c", "import confluent_kafka"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
    };
    match importable() {
        Ok(true) => {}
        Err(err) => panic!("python3 is needed for the telemetry producer and cannot be run: {err}"),
        Ok(false) => {
            let install = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "confluent-kafka"])
                .output()
                .unwrap_or_else(|e| panic!("running `python3 -m pip install confluent-kafka`: {e}"));
            assert!(
                // Another test process may have installed it meanwhile: importable is what counts.
                importable().is_ok_and(|ok| ok),
                "the Python Kafka client is missing and `python3 -m pip install --quiet confluent-kafka` failed \
                 (install it by hand): {}{}",
                String::from_utf8_lossy(&install.stdout),
                String::from_utf8_lossy(&install.stderr)
            );
        }
    }
    *checked = true;
}

/// What to ask of `producer/produce.py`.
#[derive(Debug, Clone)]
pub struct Workload {
    pub devices: usize,
    pub sites: usize,
    pub events_per_device: usize,
    pub seed: u64,
    /// Events per second; 0 for as fast as possible.
    pub rate: u32,
    pub hostile: bool,
}

impl Workload {
    pub fn new(devices: usize, sites: usize, events_per_device: usize, seed: u64) -> Self {
        Self { devices, sites, events_per_device, seed, rate: 0, hostile: false }
    }

    pub fn rate(self, rate: u32) -> Self {
        Self { rate, ..self }
    }

    pub fn hostile(self) -> Self {
        Self { hostile: true, ..self }
    }
}

/// `producer/produce.py` running against a test environment.
pub struct PythonProducer {
    child: Child,
    events_out: PathBuf,
    log: PathBuf,
}

impl PythonProducer {
    /// Starts the producer for `env`'s topics; what it writes is recorded in a file of its own.
    pub fn spawn(env: &TestEnv, name: &str, workload: &Workload) -> Self {
        ensure_python_kafka_client();
        let events_out = std::env::temp_dir().join(format!("telemetry-{}-{name}.jsonl", env.id));
        let log = std::env::temp_dir().join(format!("telemetry-{}-{name}.log", env.id));
        let log_file = std::fs::File::create(&log).expect("producer log");
        let mut command = Command::new("python3");
        command
            .arg(crate_dir().join("producer/produce.py"))
            .args(["--bootstrap", &env.services.kafka, "--topic-prefix", env.topic_prefix()])
            .args(["--devices", &workload.devices.to_string(), "--sites", &workload.sites.to_string()])
            .args(["--events-per-device", &workload.events_per_device.to_string()])
            .args(["--seed", &workload.seed.to_string(), "--rate", &workload.rate.to_string()])
            .arg("--events-out")
            .arg(&events_out)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("log")))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        if workload.hostile {
            command.arg("--hostile");
        }
        let child = command.spawn().expect("python3 produce.py starts");
        Self { child, events_out, log }
    }

    /// Whether it is still producing.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for it to finish everything (within `timeout`), and reads what it produced.
    pub async fn finish(mut self, timeout: Duration) -> Produced {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("produce.py did not finish within {timeout:?}:\n{}", self.log_text()))
            .expect("waiting for produce.py");
        assert!(status.success(), "produce.py failed ({status}):\n{}", self.log_text());
        self.read()
    }

    /// Stops it (SIGTERM: it delivers what it handed to the client and exits 0), and reads
    /// what it produced.
    pub async fn stop(self) -> Produced {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        self.finish(Duration::from_secs(60)).await
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn read(&self) -> Produced {
        let text = std::fs::read_to_string(&self.events_out).expect("the producer's events file");
        let registry = telemetry::registry();
        let mut produced = Produced::default();
        for (n, line) in text.lines().enumerate() {
            let record: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("events file line {}: {e}", n + 1));
            match record["kind"].as_str() {
                Some("event") => {
                    let value = record["value"].as_str().expect("an event line has its value");
                    let event = decode_event(
                        &registry,
                        Some(value.as_bytes()),
                        WireHeaders::default(),
                        &Limits::default(),
                    )
                    .unwrap_or_else(|e| panic!("produce.py wrote an invalid event ({e}): {value}"));
                    produced.envelopes.push(serde_json::from_str(value).expect("JSON"));
                    produced.events.push(event);
                }
                Some("hostile") => produced.hostile.push(Hostile {
                    case: record["case"].as_str().expect("case").to_owned(),
                    aggregate_id: record["aggregate_id"]
                        .as_str()
                        .expect("aggregate_id")
                        .parse()
                        .expect("uuid"),
                    after_version: record["after_version"].as_u64().expect("after_version"),
                    expect_kind: record["expect_kind"].as_str().expect("expect_kind").to_owned(),
                    expect_text: record["expect_text"]
                        .as_array()
                        .expect("expect_text")
                        .iter()
                        .map(|t| t.as_str().expect("text").to_owned())
                        .collect(),
                    position: produced.events.len(),
                }),
                other => panic!("events file line {}: unknown kind {other:?}", n + 1),
            }
        }
        let _ = std::fs::remove_file(&self.events_out);
        let _ = std::fs::remove_file(&self.log);
        produced
    }
}

/// A hostile message the producer wrote, and what the projector must make of it.
#[derive(Debug, Clone)]
pub struct Hostile {
    /// Which kind of hostile message.
    pub case: String,
    /// The device it was keyed with (and whose later events must be parked).
    pub aggregate_id: uuid::Uuid,
    /// The device's last version before it.
    pub after_version: u64,
    /// The dead letter's error kind.
    pub expect_kind: String,
    /// Texts the dead letter's reason must contain.
    pub expect_text: Vec<String>,
    /// How many valid events were written before it.
    pub position: usize,
}

/// What the producer wrote, in order.
#[derive(Debug, Default)]
pub struct Produced {
    /// The valid events, decoded by the engine (upcast to current versions).
    pub events: Vec<Event>,
    /// The same events' envelopes as written (schema versions as written).
    pub envelopes: Vec<Value>,
    /// The hostile messages.
    pub hostile: Vec<Hostile>,
}

/// Resolves the schemas' relative `$ref`s from disk.
struct FileRetriever;

impl Retrieve for FileRetriever {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri.as_str().strip_prefix("file://").ok_or("only file:// references")?;
        let path = path.split('#').next().unwrap_or(path);
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

/// The validator of `schemas/events.schema.json` (the envelope with telemetry's events).
pub fn events_schema() -> Validator {
    let path = crate_dir().join("schemas/events.schema.json").canonicalize().expect("schema");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .with_retriever(FileRetriever)
        .build(&schema)
        .expect("a valid schema")
}

/// A `telemetry-projector` process.
pub struct WorkerProcess {
    pub name: String,
    child: Child,
    log: PathBuf,
}

/// Short sessions and backoffs, so a killed member's partitions move on within seconds.
pub const FAST_FAILOVER: &[(&str, &str)] = &[
    ("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "8000"),
    ("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "1000"),
    ("PRISM__PROJECTOR__COMMIT_INTERVAL_MS", "300"),
];

impl WorkerProcess {
    /// Starts the `telemetry-projector` binary (`run`) against `env`.
    pub fn spawn(env: &TestEnv, name: &str) -> Self {
        let log = std::env::temp_dir().join(format!("telemetry-{}-{name}.log", env.id));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_telemetry-projector"));
        command
            .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PRISM__PROJECTOR__LISTEN", "127.0.0.1:0")
            .env("PRISM__LOG__FILTER", "warn,prism_projector=info")
            .envs(FAST_FAILOVER.iter().copied())
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command.spawn().expect("telemetry-projector starts");
        Self { name: name.to_owned(), child, log }
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `timeout` for the exit; `None` if it did not exit in time.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// The last lines it logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One dead letter, as recorded.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub projection: String,
    pub aggregate_id: Option<String>,
    pub aggregate_version: Option<i64>,
    pub class: String,
    pub kind: String,
    pub message: String,
    pub published: bool,
}

/// Every dead letter of the environment, oldest first.
pub async fn dead_letters(env: &TestEnv) -> Vec<DeadLetter> {
    let client = env.pg().await.expect("postgres");
    client
        .query(
            "SELECT projection, aggregate_id::text, aggregate_version, error_class, error_kind, error_message, published
             FROM dead_letters ORDER BY id",
            &[],
        )
        .await
        .expect("dead letters")
        .into_iter()
        .map(|r| DeadLetter {
            projection: r.get(0),
            aggregate_id: r.get(1),
            aggregate_version: r.get(2),
            class: r.get(3),
            kind: r.get(4),
            message: r.get(5),
            published: r.get(6),
        })
        .collect()
}

/// The active generation of every read model of `env`'s application, read from the registry
/// (the test kit's `active_targets` assumes generation 1, which a blue/green rebuild changes).
pub async fn active_instances(client: &tokio_postgres::Client, env: &TestEnv) -> Vec<ProjectionInstance> {
    let mut instances = Vec::new();
    for model in env.app.read_models() {
        let row = client
            .query_one(
                "SELECT generation FROM projection_generations WHERE projection = $1 AND status = 'active'",
                &[&model.name()],
            )
            .await
            .unwrap_or_else(|e| panic!("the active generation of {}: {e}", model.name()));
        instances.push(ProjectionInstance::new(model.name(), row.get::<_, i32>(0).unsigned_abs()));
    }
    instances
}

/// Waits until every read model, at the generation active at each look, and its cache equal
/// `expected`; panics with the last difference after `timeout`.
pub async fn wait_for_oracle_at_active(
    env: &TestEnv,
    expected: &Expected,
    timeout: Duration,
) -> (CheckSummary, Vec<ProjectionInstance>) {
    let client = env.pg().await.expect("postgres");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let instances = active_instances(&client, env).await;
        let targets: Vec<(ProjectionInstance, &ReadModel)> = instances
            .iter()
            .map(|i| (*i, env.app.read_model(i.projection).expect("a read model of the application")))
            .collect();
        let outcome = check_expected(
            expected,
            &client,
            &env.config.redis.url,
            &env.config.redis.key_prefix,
            &targets,
            CacheCheck::Complete,
        )
        .await
        .expect("the oracle check runs");
        match outcome {
            Ok(summary) => return (summary, instances),
            Err(diff) if tokio::time::Instant::now() >= deadline => {
                panic!("read models differ from the oracle after {timeout:?} ({instances:?}):\n{diff}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Events per event type and schema version as written.
pub fn written_versions(produced: &Produced) -> BTreeMap<(String, u64), usize> {
    let mut counts = BTreeMap::new();
    for envelope in &produced.envelopes {
        let key = (
            envelope["event_type"].as_str().unwrap_or_default().to_owned(),
            envelope["schema_version"].as_u64().unwrap_or_default(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}
