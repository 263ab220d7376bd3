//! Shared by the query service's integration tests: the query service, the projector and the
//! command service running in-process against one test environment, a small HTTP client,
//! and reading the event store back for the oracle.

#![allow(dead_code)]

use std::time::Duration;

use prism_config::PrismConfig;
use prism_events::{Event, Limits};
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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
    /// Starts `prism_query::serve` and waits until `/readyz` passes (the notification
    /// listener included).
    pub async fn query(config: PrismConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(prism_query::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let running = Self::new(base, stop, task);
        running.wait_ready().await;
        running
    }

    /// Starts `prism_commands::serve` (with its outbox relay) and waits until ready.
    pub async fn commands(config: PrismConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(prism_commands::serve(config, listener, async {
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

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self.get("/readyz", &[]).await;
            if answer.status == StatusCode::OK {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready after 30s: {:?}",
                self.base,
                answer.body
            );
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
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

/// The environment's configuration with `[query]` overrides.
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
    rows.iter()
        .map(|row| {
            let text: String = row.get(0);
            let envelope = prism_events::decode::decode_envelope(Some(text.as_bytes()), &limits)
                .unwrap_or_else(|e| panic!("stored event {text}: {e}"));
            prism_events::decode::envelope_to_event(envelope)
                .unwrap_or_else(|e| panic!("stored event {text}: {e}"))
        })
        .collect()
}

/// Publishes `events` as the relay would.
pub async fn publish(env: &TestEnv, events: &[Event]) {
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), events).await.expect("publish");
}
