//! Shared by the command tests: the shop's command service in-process on 127.0.0.1:0 against
//! a test environment, or its binary as a child process; a small JSON client; and readers of
//! the event store, the outbox and the event topics.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use prism_events::AggregateType;
use prism_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The shop as the engine runs it.
pub fn shop() -> prism_projections::Application {
    shop_model::application()
}

/// A test environment for the shop with extra `PRISM__*` overrides.
pub async fn environment(overrides: &[(&str, &str)]) -> TestEnv {
    TestEnv::with_overrides(&shop(), overrides).await.expect("test environment")
}

/// A running command service.
pub struct Server {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// An answer: status, headers and JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `error.<name>` of an error body, as a string.
    pub fn error(&self, name: &str) -> Option<&str> {
        self.body.get("error")?.get(name)?.as_str()
    }

    /// `version` of a success body.
    pub fn version(&self) -> u64 {
        self.body["version"].as_u64().unwrap_or_else(|| panic!("no version in {:?}", self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

impl Server {
    /// Starts `shop_commands::serve` with `config` on a free port.
    pub async fn start(config: prism_config::PrismConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(shop_commands::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        Self { base, http, stop: Some(stop), task: Some(task) }
    }

    /// Sends `body` as JSON (or nothing) with extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(Method::POST, path, Some(&body), &[]).await
    }

    /// Sends raw bytes with the given content type.
    pub async fn raw(&self, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        answer(request.send().await.expect("request")).await
    }

    /// GET of a plain-text endpoint.
    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.expect("request");
        let status = response.status();
        (status, response.text().await.expect("text"))
    }

    /// Waits until `/readyz` answers `wanted` (20 s at most).
    pub async fn wait_for_readiness(&self, wanted: StatusCode) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get_text("/readyz").await;
            if status == wanted {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never answered {wanted}; last: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the service and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("service task").expect("service ended with an error");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
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

/// The `shop-commands` binary as a child process with `env`'s configuration, `overrides` on
/// top, its log on a pipe (stderr).
pub fn spawn_binary(env: &TestEnv, overrides: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop-commands"));
    command
        .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PRISM__COMMANDS__LISTEN", "127.0.0.1:0")
        .env("PRISM__LOG__FILTER", "warn,prism_commands=info,shop_commands=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in overrides {
        command.env(key, value);
    }
    command.spawn().expect("starting the shop-commands binary")
}

/// A relay-only `shop-commands` process (no contexts) on `env`.
pub fn spawn_relay(env: &TestEnv, overrides: &[(&str, &str)]) -> Child {
    let mut all = vec![("PRISM__APPLICATION__CONTEXTS", "[]"), ("PRISM__RELAY__ENABLED", "true")];
    all.extend_from_slice(overrides);
    let mut child = spawn_binary(env, &all);
    // Its log goes to the test's stderr as it comes, so a failing test shows it.
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stderr, &mut std::io::stderr());
        });
    }
    child
}

/// Stored versions of one aggregate, in order.
pub async fn stored_versions(env: &TestEnv, aggregate_type: AggregateType, id: Uuid) -> Vec<i64> {
    let client = env.db.client().await.expect("client");
    client
        .query(
            "SELECT aggregate_version FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY aggregate_version",
            &[&aggregate_type.as_str(), &id],
        )
        .await
        .expect("versions")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Registers a user through the API; returns its id.
pub async fn register_user(server: &Server) -> Uuid {
    let id = Uuid::new_v4();
    let short = &id.simple().to_string()[..12];
    let answer =
        server.post("/users", serde_json::json!({"user_id": id, "email": format!("u{short}@example.com"), "display_name": "Shopper"})).await;
    assert_eq!(answer.status, StatusCode::CREATED, "registering a user: {:?}", answer.body);
    id
}

/// A product's stock as the command side holds it — `(stock, reserved, available)` of the
/// product aggregate folded from the event store — after checking that the read model's fold
/// of the same events (what `product_catalog` will show) says the same.
pub async fn product_stock(env: &TestEnv, id: Uuid) -> (i64, i64, i64) {
    use shop_model::domain::{rehydrate, ProductState};
    use shop_model::read_models::product_catalog;

    let store =
        prism_event_store::EventStore::new(env.db.clone(), env.app.events().clone(), env.topic_prefix());
    let stream = store.load(shop_model::aggregates::PRODUCT, id).await.expect("the product's stream loads");
    let bodies: Vec<shop_model::ShopEvent> = stream
        .events
        .iter()
        .map(|e| e.body::<shop_model::ShopEvent>().expect("a shop event").clone())
        .collect();
    let state: ProductState = rehydrate(&bodies).expect("the product's stream folds");
    let product = state.product().expect("the product was listed");
    let mut view = None;
    for event in &stream.events {
        view = Some(product_catalog::apply(view, event).expect("the catalog's fold applies"));
    }
    let view = view.expect("a catalog row");
    let aggregate = (product.stock, product.reserved, product.available());
    assert_eq!(
        (view.stock, view.reserved, view.available),
        aggregate,
        "the read model would show other stock"
    );
    aggregate
}

/// Number of stored events.
pub async fn event_count(env: &TestEnv) -> i64 {
    let client = env.db.client().await.expect("client");
    client.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0)
}

/// One message as a consumer received it, decoded.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    /// The message value, byte for byte.
    pub value: Vec<u8>,
    pub event: prism_events::Event,
}

/// What the event store holds: (aggregate type, aggregate id, version) → event id.
pub async fn stored_events(env: &TestEnv) -> BTreeMap<(String, Uuid, i64), Uuid> {
    let client = env.db.client().await.expect("client");
    client
        .query("SELECT aggregate_type, aggregate_id, aggregate_version, event_id FROM events", &[])
        .await
        .expect("events")
        .iter()
        .map(|row| ((row.get(0), row.get(1), row.get(2)), row.get(3)))
        .collect()
}

/// Number of rows still in the outbox.
pub async fn outbox_rows(env: &TestEnv) -> i64 {
    let client = env.db.client().await.expect("client");
    client.query_one("SELECT count(*) FROM outbox", &[]).await.expect("count").get(0)
}

/// Waits until the outbox is empty.
pub async fn wait_for_empty_outbox(env: &TestEnv, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = outbox_rows(env).await;
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} outbox rows still unpublished after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every partition of every event topic of `env`'s application from the beginning
/// (assigned, not subscribed: no consumer group takes part, so this works the same under
/// either group protocol) until every event id in `expected` has arrived or `timeout` passes,
/// decoding each message with its headers.
pub async fn consume_events(env: &TestEnv, expected: BTreeSet<Uuid>, timeout: Duration) -> Vec<Received> {
    let reader = EnvReader {
        config: env.config.clone(),
        app: env.app.clone(),
        prefix: env.config.topics.prefix.clone(),
    };
    tokio::task::spawn_blocking(move || reader.consume(&expected, timeout)).await.expect("consumer task")
}

/// What [`consume_events`] needs of an environment, owned, for a blocking thread.
struct EnvReader {
    config: prism_config::PrismConfig,
    app: prism_projections::Application,
    prefix: String,
}

impl EnvReader {
    fn consume(&self, expected: &BTreeSet<Uuid>, timeout: Duration) -> Vec<Received> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};

        let group = format!("{}verify-{}", self.prefix, Uuid::new_v4());
        let consumer: BaseConsumer =
            prism_testkit::kafka::consumer(&self.config, &group, &[]).expect("consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for topic in self.app.aggregate_types().iter().map(|t| t.topic(&self.prefix)) {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                assignment
                    .add_partition_offset(&topic, partition.id(), rdkafka::Offset::Beginning)
                    .expect("assignment");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let deadline = std::time::Instant::now() + timeout;
        let mut received = Vec::new();
        let mut seen = BTreeSet::new();
        while std::time::Instant::now() < deadline && !expected.is_subset(&seen) {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
            let message = message.expect("consumer error");
            let header = |name: &str| {
                message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == name).and_then(|h| h.value))
            };
            let (event_type, schema_version) =
                (header(prism_events::HEADER_EVENT_TYPE), header(prism_events::HEADER_SCHEMA_VERSION));
            assert!(event_type.is_some() && schema_version.is_some(), "message without event headers");
            let event = prism_events::decode_event(
                self.app.events(),
                message.payload(),
                prism_events::WireHeaders { event_type, schema_version },
                &prism_events::Limits::default(),
            )
            .expect("published events decode and match their headers");
            let key = String::from_utf8(message.key().expect("key").to_vec()).expect("utf-8 key");
            seen.insert(event.meta.event_id);
            received.push(Received {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
                key,
                value: message.payload().unwrap_or_default().to_vec(),
                event,
            });
        }
        received
    }
}

/// Checks what a consumer received against the event store: every stored event arrived,
/// keyed by its aggregate id on its aggregate's topic; per aggregate, first deliveries come
/// in version order 1, 2, 3, …; any repeat is a re-publication of an earlier version with
/// the same event id. Returns the number of repeats.
pub fn verify_delivery(
    prefix: &str,
    stored: &BTreeMap<(String, Uuid, i64), Uuid>,
    received: &[Received],
) -> usize {
    let mut received: Vec<&Received> = received.iter().collect();
    // Per partition in offset order (the order the broker holds), whatever order the polls
    // interleaved the partitions in.
    received.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    let mut highest: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut repeats = 0;
    let mut partitions: BTreeMap<Uuid, (String, i32)> = BTreeMap::new();
    for message in received {
        let meta = &message.event.meta;
        assert_eq!(message.key, meta.aggregate_id.to_string(), "key must be the aggregate id");
        assert_eq!(message.topic, meta.aggregate_type.topic(prefix), "wrong topic");
        let place = partitions.entry(meta.aggregate_id).or_insert((message.topic.clone(), message.partition));
        assert_eq!(place, &(message.topic.clone(), message.partition), "an aggregate moved partitions");
        let stored_id = stored
            .get(&(meta.aggregate_type.as_str().to_owned(), meta.aggregate_id, meta.aggregate_version as i64))
            .unwrap_or_else(|| panic!("received an event the store does not hold: {meta:?}"));
        assert_eq!(*stored_id, meta.event_id, "a (re-)publication must carry the stored event id");
        let last = highest.entry(meta.aggregate_id).or_insert(0);
        if meta.aggregate_version == *last + 1 {
            *last += 1;
        } else if meta.aggregate_version <= *last {
            repeats += 1;
        } else {
            panic!(
                "{} {}: version {} arrived after version {} (out of order or lost)",
                meta.aggregate_type, meta.aggregate_id, meta.aggregate_version, last
            );
        }
    }
    for (_, aggregate_id, version) in stored.keys() {
        let last = highest.get(aggregate_id).copied().unwrap_or(0);
        assert!(*version as u64 <= last, "{aggregate_id} version {version} never arrived (got up to {last})");
    }
    repeats
}

/// Reads everything back and checks it against the store; returns the repeat count.
pub async fn verify_all_published(env: &TestEnv) -> usize {
    let stored = stored_events(env).await;
    let expected: BTreeSet<Uuid> = stored.values().copied().collect();
    let received = consume_events(env, expected, Duration::from_secs(90)).await;
    verify_delivery(env.topic_prefix(), &stored, &received)
}
