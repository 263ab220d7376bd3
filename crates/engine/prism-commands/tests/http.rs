//! The HTTP plumbing every application's command API gets, through the probe's routes:
//! the JSON error body on 404 and 405 (with its content type and `Allow`), strict JSON object
//! bodies, empty bodies as `{}`, and honest readiness when the event store's tables are missing.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::Server;
use prism_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

async fn env() -> TestEnv {
    TestEnv::with_overrides(&prism_testkit::probe::application(), &[("PRISM__RELAY__ENABLED", "false")])
        .await
        .expect("test environment")
}

/// Every log line of this test binary, for the tests that check what an operator reads.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let make_writer = move || Capture(sink.clone());
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(make_writer)
            .try_init()
            .expect("the only subscriber of this test binary");
        logs
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn is_json(answer: &common::Answer) -> bool {
    answer.headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("application/json")
}

/// 404 and 405 answer with the error body and `content-type: application/json`, on the
/// application's routes and on the operations endpoints; 405 keeps `Allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_json_body() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let tally = format!("/tallies/{}", Uuid::new_v4());
    for (method, path, allow) in [
        (Method::GET, tally.as_str(), "POST"),
        (Method::DELETE, tally.as_str(), "POST"),
        (Method::POST, "/readyz", "GET,HEAD"),
        (Method::PUT, "/metrics", "GET,HEAD"),
    ] {
        let answer = server.raw(method.clone(), path, Some("application/json"), b"{}".to_vec()).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(is_json(&answer), "{method} {path}: {:?}", answer.headers);
        assert_eq!(answer.error("code"), Some("method_not_allowed"), "{method} {path}: {}", answer.text);
        assert!(answer.error("message").is_some_and(|m| m.contains(path)), "{}", answer.text);
        let allowed =
            answer.headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or("").replace(' ', "");
        assert_eq!(allowed, allow, "{method} {path}");
    }
    let nowhere = server.post("/invoices", json!({})).await;
    assert_eq!((nowhere.status, nowhere.error("code")), (StatusCode::NOT_FOUND, Some("not_found")));
    assert!(is_json(&nowhere));
    server.stop().await;
}

/// Bodies are JSON objects: a positional array is a 400 in the API's words; an empty body is
/// `{}` (accepted where every field is optional, a missing field otherwise), never a 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_objects_and_empty_is_empty_object() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let tally = format!("/tallies/{}", Uuid::new_v4());
    let opened = server.post(&tally, json!({"n": 3, "open": true})).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{}", opened.text);

    let positional = server.raw(Method::POST, &tally, Some("application/json"), b"[3, true]".to_vec()).await;
    assert_eq!(
        (positional.status, positional.error("field")),
        (StatusCode::BAD_REQUEST, Some("body")),
        "{}",
        positional.text
    );
    let message = positional.error("message").unwrap_or_default();
    assert!(message.contains("JSON object"), "{message}");
    for rust in ["struct", "NoteBody", "elements", "i64"] {
        assert!(!message.contains(rust), "`{rust}` in {message}");
    }
    let wrong = server.post(&tally, json!({"n": "three"})).await;
    assert_eq!(wrong.error("field"), Some("n"));
    assert!(
        wrong.error("message").is_some_and(|m| m.contains("a whole number") && !m.contains("i64")),
        "{}",
        wrong.text
    );

    for content_type in [None, Some("application/json")] {
        let touched = server.raw(Method::POST, &format!("{tally}/touch"), content_type, Vec::new()).await;
        assert_eq!(touched.status, StatusCode::OK, "{content_type:?}: {}", touched.text);
        let required = server.raw(Method::POST, &tally, content_type, Vec::new()).await;
        assert_eq!(
            (required.status, required.error("field")),
            (StatusCode::BAD_REQUEST, Some("n")),
            "{}",
            required.text
        );
    }
    let text = server.raw(Method::POST, &tally, Some("text/plain"), b"n=3".to_vec()).await;
    assert_eq!(text.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(is_json(&text));
    server.stop().await;
}

/// With the event store's tables missing, the service runs but is not ready: `/readyz` is 503
/// and names the table; a command that arrives anyway is a 503 whose log line names the table
/// and says what to run. Once the schema is migrated, it turns ready by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_is_not_ready_and_named() {
    let logs = captured_logs();
    let env = env().await;
    let mut config = env.config.clone();
    let schema = format!("{}_later", env.id);
    config.postgres.schema = schema.clone();
    let server = Server::start(config.clone()).await;

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.text);
    let detail = ready.body["checks"]["event_store"]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail.contains("`events`") && detail.contains(&schema) && detail.contains("prismctl migrate"),
        "{detail}"
    );
    assert_eq!(ready.body["checks"]["postgres"]["ok"], json!(true), "{}", ready.text);

    let refused = server.post(&format!("/tallies/{}", Uuid::new_v4()), json!({"n": 1, "open": true})).await;
    assert_eq!(
        (refused.status, refused.error("code")),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{}",
        refused.text
    );
    let text = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let line = text
        .lines()
        .find(|line| line.contains("command failed"))
        .unwrap_or_else(|| panic!("no command failure logged:\n{text}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("table `events`") && line.contains("relation \"events\" does not exist"), "{line}");
    assert!(line.contains("prismctl migrate"), "{line}");
    assert!(!line.ends_with("PostgreSQL: db error"), "{line}");

    // The migration runs: ready without a restart.
    {
        let mut client = env.db.client().await.expect("client");
        prism_postgres::migrate(&mut client, &schema).await.expect("migrate");
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.get("/readyz").await.status != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed 503 after the migration");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let accepted = server.post(&format!("/tallies/{}", Uuid::new_v4()), json!({"n": 1, "open": true})).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.text);
    server.stop().await;
    let client = env.db.client().await.expect("client");
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop the extra schema");
}
