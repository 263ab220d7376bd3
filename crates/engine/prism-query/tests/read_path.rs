//! The engine's read path with a small application of its own: read models keyed by text
//! (cached) and by a number, one with a composite key, fed by the real projector; the generic
//! route, an application route built on `ReadPath::query_rows`, and the error contract.
//! Applications' suites cover cache-aside, read-your-writes, blue/green switches and outages in
//! depth; this proves nothing in the read path assumes a UUID key or a particular domain.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prism_events::{Event, EventPosition, EventRegistry};
use prism_projections::{Application, ReadModel};
use prism_query::{ApiError, QueryParams, ReadPath};
use prism_testkit::probe::{Noted, PROBE};
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Total of `n` per label: `even`, `odd`, and one label with spaces and a slash.
#[derive(Debug, Serialize, Deserialize)]
struct Tally {
    label: String,
    total: i64,
}

const EVERYTHING: &str = "all of them / total";

fn tallies(event: &Event) -> Vec<Tally> {
    let Some(noted) = event.body::<Noted>() else { return Vec::new() };
    let parity = if noted.n % 2 == 0 { "even" } else { "odd" };
    vec![Tally { label: parity.into(), total: noted.n }, Tally { label: EVERYTHING.into(), total: noted.n }]
}

/// How often each number was noted: keyed by a bigint.
#[derive(Debug, Serialize, Deserialize)]
struct Count {
    n: i64,
    seen: i64,
}

fn counts(event: &Event) -> Vec<Count> {
    event.body::<Noted>().map(|noted| vec![Count { n: noted.n, seen: 1 }]).unwrap_or_default()
}

/// Numbers noted per (parity, decade): a composite key.
#[derive(Debug, Serialize, Deserialize)]
struct Pair {
    parity: String,
    decade: String,
    seen: i64,
}

fn pairs(event: &Event) -> Vec<Pair> {
    let Some(noted) = event.body::<Noted>() else { return Vec::new() };
    let parity = if noted.n % 2 == 0 { "even" } else { "odd" };
    vec![Pair { parity: parity.into(), decade: format!("{}0s", noted.n / 10), seen: 1 }]
}

fn application() -> Application {
    let events = EventRegistry::of::<Noted>().expect("the probe's events");
    Application::new(
        "qprobe",
        events,
        vec![
            ReadModel::new("qprobe_tally")
                .table("CREATE TABLE IF NOT EXISTS {table} (label text PRIMARY KEY, total bigint NOT NULL)")
                .key(&["label"])
                .cached("tally")
                .sum(PROBE, &["total"], tallies),
            ReadModel::new("qprobe_count")
                .table("CREATE TABLE IF NOT EXISTS {table} (n bigint PRIMARY KEY, seen bigint NOT NULL)")
                .key(&["n"])
                .sum(PROBE, &["seen"], counts),
            ReadModel::new("qprobe_pair")
                .table(
                    "CREATE TABLE IF NOT EXISTS {table} (parity text, decade text, seen bigint NOT NULL, \
                     PRIMARY KEY (parity, decade))",
                )
                .key(&["parity", "decade"])
                .sum(PROBE, &["seen"], pairs),
        ],
    )
    .expect("the test application")
}

/// `GET /pairs?parity=`: an application's list route on the engine's read path.
async fn pairs_route(State(read): State<ReadPath>, query: QueryParams) -> Result<Response, ApiError> {
    let query = query.only(&["parity"])?;
    let parity = query.get("parity").unwrap_or("even").to_owned();
    let rows = read
        .query_rows(
            "qprobe_pair",
            "SELECT to_jsonb(t) FROM qprobe_pair t WHERE parity = $1 ORDER BY decade",
            &[&parity],
        )
        .await?;
    Ok(Json(json!({ "items": rows })).into_response())
}

async fn get_json(http: &reqwest::Client, url: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_application_reads_its_read_models_by_key_whatever_the_key_type() {
    prism_testkit::init_logging();
    let app = application();
    let env = TestEnv::new(&app).await.expect("test environment");
    let numbers: Vec<i64> = (1..=24).collect();
    let events: Vec<Event> = numbers
        .iter()
        .map(|n| {
            let id = Uuid::new_v4();
            let position = EventPosition {
                event_id: Uuid::new_v4(),
                aggregate_id: id,
                aggregate_version: 1,
                occurred_at: chrono::Utc::now(),
                correlation_id: id,
                causation_id: id,
            };
            Event::new(position, Noted { n: *n })
        })
        .collect();
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), &events).await.expect("publish");
    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());

    let mut config = env.config.clone();
    config.query.min_version_wait_ms = 200;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let routes = Router::new().route("/pairs", get(pairs_route));
    let service = tokio::spawn(prism_query::serve(config, app.clone(), routes, listener, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");

    // Every number projected: the tally of everything holds their sum.
    let total: i64 = numbers.iter().sum();
    let everything = format!("{base}/read-models/qprobe_tally/all%20of%20them%20%2F%20total");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = get_json(&http, &everything).await;
        if status == StatusCode::OK && body["total"] == total {
            assert_eq!(body, json!({ "label": EVERYTHING, "total": total }), "no engine columns served");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not projected after 60s: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");

    // A text key: served (the projector cached it under the same key the read path looks up).
    let even: i64 = numbers.iter().filter(|n| *n % 2 == 0).sum();
    let (status, headers, body) = get_json(&http, &format!("{base}/read-models/qprobe_tally/even")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "label": "even", "total": even }));
    assert_eq!(headers["x-prism-version"], "0", "rows fed by many aggregates reflect no one version");
    let mut redis =
        prism_testkit::services::redis_connection(&env.config.redis.url).await.expect("redis connection");
    let key = format!("{}g1:tally:{EVERYTHING}", env.config.redis.key_prefix);
    let cached: Option<String> =
        redis::cmd("HGET").arg(&key).arg("doc").query_async(&mut redis).await.expect("HGET");
    let cached: Value = serde_json::from_str(&cached.expect("cached by the projector")).expect("json");
    assert_eq!(cached, json!({ "label": EVERYTHING, "total": total }));

    // A bigint key (not cached): served from PostgreSQL; a key that is no number is a 400.
    let (status, _, body) = get_json(&http, &format!("{base}/read-models/qprobe_count/7")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "n": 7, "seen": 1 })));
    let (status, _, body) = get_json(&http, &format!("{base}/read-models/qprobe_count/seven")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "key");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("bigint")), "{body}");
    let (status, _, body) = get_json(&http, &format!("{base}/read-models/qprobe_count/99999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // min_version on a row no aggregate is folded into: it never reaches 1, answered stale.
    let (status, headers, body) =
        get_json(&http, &format!("{base}/read-models/qprobe_tally/odd?min_version=1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(headers["x-prism-stale"], "true");
    assert_eq!(body["label"], "odd");

    // A composite key cannot be read by key; the application's own list route reads it.
    let (status, _, body) = get_json(&http, &format!("{base}/read-models/qprobe_pair/even")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("2 key columns")), "{body}");
    let (status, _, body) = get_json(&http, &format!("{base}/pairs?parity=odd")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0], json!({ "parity": "odd", "decade": "00s", "seen": 5 }));
    assert_eq!(body["items"].as_array().map(Vec::len), Some(3));
    let (status, _, body) = get_json(&http, &format!("{base}/pairs?parity=odd&sort=up")).await;
    assert_eq!((status, body["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("sort")));

    // The application's routes get the engine's error contract too.
    let response = http.post(format!("{base}/pairs")).send().await.expect("POST");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("prism_query_requests_total{route=\"/pairs\",status=\"405\"} 1"), "{metrics}");
    let (status, _, ready) = get_json(&http, &format!("{base}/readyz")).await;
    assert_eq!(status, StatusCode::OK, "{ready}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("stops within 30s")
        .expect("task")
        .expect("clean exit");
}
