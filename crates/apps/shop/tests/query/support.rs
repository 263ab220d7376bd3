//! Shared by the query tests: the query service (and the command service) running in-process
//! against one test environment, a small HTTP client, reading `/metrics`, projecting a
//! workload and reading the event store back for the oracle.

#![allow(dead_code)]

use std::time::Duration;

use prism_config::PrismConfig;
use prism_events::decode::Limits;
use prism_events::Event;
use prism_projector::Embedded;
use prism_read_store::read_models::{parse_applied_payload, AppliedRows};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Tests of one process share one metrics registry. `ops/test` runs every test in a process of
/// its own; under a plain `cargo test` they are threads of one process, so a test that asserts
/// exact metric values holds this lock exclusively ([`metrics_exclusive`]) and every other test
/// that runs a service in-process holds it shared ([`metrics_shared`]).
static METRICS: std::sync::LazyLock<tokio::sync::RwLock<()>> =
    std::sync::LazyLock::new(|| tokio::sync::RwLock::new(()));

/// For a test that asserts exact metric values: no other in-process service runs meanwhile.
pub async fn metrics_exclusive() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    METRICS.write().await
}

/// For a test that runs services in-process without asserting exact metric values.
pub async fn metrics_shared() -> tokio::sync::RwLockReadGuard<'static, ()> {
    METRICS.read().await
}

/// The shop as the engine runs it.
pub fn shop() -> prism_projections::Application {
    shop_model::application()
}

/// A fresh test environment for the shop.
pub async fn environment() -> TestEnv {
    TestEnv::new(&shop()).await.expect("test environment")
}

/// An answer: status, headers and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `error.<name>` of an error body.
    pub fn error(&self, name: &str) -> Option<&str> {
        self.body.get("error")?.get(name)?.as_str()
    }

    /// `X-Prism-Version` as a number.
    pub fn version_header(&self) -> Option<i64> {
        self.headers.get("x-prism-version")?.to_str().ok()?.parse().ok()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// A service running in this process on a free port, stopped through a oneshot.
pub struct Running {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Starts `shop_query::serve` and waits until `/readyz` passes (the notification listener
    /// included).
    pub async fn query(config: PrismConfig) -> Self {
        let running = Self::query_unready(config).await;
        running.wait_ready().await;
        running
    }

    /// Starts `shop_query::serve` without waiting for readiness.
    pub async fn query_unready(config: PrismConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(shop_query::serve(config, listener, async {
            let _ = stopped.await;
        }));
        Self::new(base, stop, task)
    }

    /// Starts `shop_commands::serve` (with its outbox relay) and waits until ready.
    pub async fn commands(config: PrismConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(shop_commands::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let running = Self::new(base, stop, task);
        running.wait_ready().await;
        running
    }

    fn new(base: String, stop: oneshot::Sender<()>, task: JoinHandle<anyhow::Result<()>>) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Self { base, http, stop: Some(stop), task: Some(task) }
    }

    /// Waits until `/readyz` answers 200; fails with the last body after 30 s, or at once if
    /// the service stopped.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(task) = &self.task {
                assert!(!task.is_finished(), "{} stopped before it was ready", self.base);
            }
            if let Ok(response) = self.http.get(format!("{}/readyz", self.base)).send().await {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status == StatusCode::OK {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} not ready after 30s: {body:?}",
                    self.base
                );
            }
            assert!(tokio::time::Instant::now() < deadline, "{} not answering after 30s", self.base);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
    }

    /// `method path` without a body.
    pub async fn request(&self, method: reqwest::Method, path: &str) -> Answer {
        let request = self.http.request(method.clone(), format!("{}{path}", self.base));
        answer(request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        let request = self.http.post(format!("{}{path}", self.base)).json(&body);
        answer(request.send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"))).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Waits until the series `series` (name and labels, as `/metrics` prints them) has the
    /// value `value`; fails after `timeout` with the last value seen.
    pub async fn wait_for_metric(&self, series: &str, value: f64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = metric(&self.metrics().await, series);
            if seen == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {seen:?}, not {value}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the service and waits for a clean exit.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("stops within 30s")
                .expect("task")
                .expect("clean exit");
        }
    }

    /// Stops the service and returns how it ended.
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("stops within 30s")
                .expect("task"),
            None => Ok(()),
        }
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

/// The value of one series (name and labels exactly as printed) in `/metrics` text.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The environment's configuration with `query.min_version_wait_ms` set.
pub fn with_wait(env: &TestEnv, wait_ms: u64) -> PrismConfig {
    let mut config = env.config.clone();
    config.query.min_version_wait_ms = wait_ms;
    config
}

/// Every event in the environment's event store, in append order.
pub async fn stored_events(env: &TestEnv) -> Vec<Event> {
    let client = env.pg().await.expect("pg");
    let rows = client
        .query(
            "SELECT jsonb_build_object(
                 'event_id', event_id, 'event_type', event_type, 'schema_version', schema_version,
                 'aggregate_type', aggregate_type, 'aggregate_id', aggregate_id,
                 'aggregate_version', aggregate_version, 'occurred_at', occurred_at,
                 'correlation_id', correlation_id, 'causation_id', causation_id, 'payload', payload)::text
             FROM events ORDER BY global_position",
            &[],
        )
        .await
        .expect("events");
    let limits = Limits { max_event_bytes: 1 << 20, max_depth: 16 };
    let registry = shop_model::registry();
    rows.iter()
        .map(|row| {
            let text: String = row.get(0);
            let envelope = prism_events::decode::decode_envelope(Some(text.as_bytes()), &limits)
                .unwrap_or_else(|e| panic!("stored event {text}: {e}"));
            prism_events::decode::envelope_to_event(&registry, envelope)
                .unwrap_or_else(|e| panic!("stored event {text}: {e}"))
        })
        .collect()
}

/// Publishes `events` as the relay would.
pub async fn publish(env: &TestEnv, events: &[Event]) {
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), events).await.expect("publish");
}

/// Starts the shop's projector on the environment.
pub fn projector(env: &TestEnv) -> Embedded {
    Embedded::start(env.config.clone(), shop())
}

/// Waits until the read models (rows and cache) equal the oracle's fold of `events`.
pub async fn wait_projected(env: &TestEnv, events: &[Event], timeout: Duration) {
    let expected = shop::testing::oracle::fold(events);
    env.wait_for_oracle(&expected, CacheCheck::Complete, timeout)
        .await
        .expect("read models equal the oracle");
}

/// Records the projectors' applied-batch notifications of one read model, as the query service
/// receives them (its own `LISTEN` on the environment's applied channel).
pub struct AppliedBatches {
    landed: std::sync::Arc<std::sync::Mutex<Vec<AppliedRows>>>,
    _client: tokio_postgres::Client,
    task: JoinHandle<()>,
}

impl AppliedBatches {
    /// Starts recording the notifications of `instance` (e.g. `order_summary_g1`).
    pub async fn listen(env: &TestEnv, instance: &str) -> Self {
        use futures::StreamExt;
        let url =
            format!("{}?options=-csearch_path%3D{}", env.services.database_url(), env.config.postgres.schema);
        let (client, mut connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("listener");
        let landed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = landed.clone();
        let instance = instance.to_owned();
        let task = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = message {
                    let (of, rows) = parse_applied_payload(n.payload());
                    if of == instance {
                        recorded.lock().expect("notifications").push(rows);
                    }
                }
            }
        });
        let channel = prism_read_store::read_models::applied_channel(&env.config.postgres.schema);
        client.batch_execute(&format!("LISTEN \"{channel}\"")).await.expect("LISTEN");
        Self { landed, _client: client, task }
    }

    /// Notifications recorded so far.
    pub fn count(&self) -> usize {
        self.landed.lock().expect("notifications").len()
    }

    /// Notifications recorded so far that may concern the row under `key`: those naming it, and
    /// those naming no rows (any row).
    pub fn concerning(&self, key: &str) -> usize {
        self.landed.lock().expect("notifications").iter().filter(|rows| rows.concern(Some(key))).count()
    }
}

impl Drop for AppliedBatches {
    fn drop(&mut self) {
        self.task.abort();
    }
}
