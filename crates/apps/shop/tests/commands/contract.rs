//! The event store and outbox as a contract (`prism-event-store/CONTRACT.md`), proven from
//! outside Rust: a Python program (psycopg 3, `append_via_contract.py`) appends shop events
//! with nothing but the documented SQL; Prism's real relay publishes them, a projector folds
//! them into `user_profile`, and the shop's own command service carries the stream on.
//!
//! Checked: the outbox rows are what the contract says (lane = FNV-1a, topic, key), the Kafka
//! topic holds the exact bytes the program wrote with the event headers, the read model equals
//! what the events say, the program's stale append was refused by `events_stream_version`, and
//! the lane test vectors of the document match the engine's function.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prism_event_store::{outbox_lane, EventStore};
use prism_testkit::{GroupProtocol, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shop_model::aggregates::USER;
use uuid::Uuid;

use crate::support::{consume_events, shop, Server};

const PROGRAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/commands/append_via_contract.py");
const CONTRACT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../engine/prism-event-store/CONTRACT.md");

/// psycopg 3 for the program: installed with pip when missing (PyPI is reachable from CI and
/// development machines); a clear failure naming the command otherwise.
fn ensure_psycopg() {
    let has = |python: &str| {
        Command::new(python)
            .args(["-c", "import psycopg"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if has("python3") {
        return;
    }
    let install = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "psycopg[binary]"])
        .status()
        .expect("python3 must be installed to run the contract test");
    // Another test process installing it at the same time can make this install fail while
    // its own completes: importable is what counts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !install.success() && !has("python3") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(
        has("python3"),
        "cannot install psycopg: run `python3 -m pip install 'psycopg[binary]'` and retry"
    );
}

/// Runs the program against `env`'s schema for `user`; returns its report.
fn run_program(env: &TestEnv, user: Uuid) -> Value {
    let output = Command::new("python3")
        .arg(PROGRAM)
        .args(["--dsn", &env.services.database_url()])
        .args(["--schema", &env.config.postgres.schema])
        .args(["--topic-prefix", env.topic_prefix()])
        .args(["--user-id", &user.to_string()])
        .output()
        .expect("running python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{PROGRAM} failed ({}):\n{stderr}", output.status);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("{PROGRAM} printed no report ({err}):\n{}", String::from_utf8_lossy(&output.stdout))
    })
}

/// The exact message bytes the program wrote for one event (hex in its report).
fn value_bytes(written: &Value) -> Vec<u8> {
    let hex = written["value_hex"].as_str().expect("value_hex");
    (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16).expect("hex")).collect()
}

/// The lane test vectors of CONTRACT.md are the engine's lanes.
#[test]
fn documented_lane_vectors_are_the_engines() {
    let text = std::fs::read_to_string(Path::new(CONTRACT)).expect("CONTRACT.md");
    let mut checked = 0;
    for line in text.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(|cell| cell.trim().trim_matches('`')).collect();
        let (Ok(id), Some(lane)) =
            (Uuid::parse_str(cells[1]), cells.get(3).and_then(|c| c.parse::<i16>().ok()))
        else {
            continue;
        };
        assert_eq!(outbox_lane(id), lane, "CONTRACT.md says lane {lane} for {id}");
        checked += 1;
    }
    assert!(checked >= 5, "found only {checked} test vectors in CONTRACT.md");
}

async fn python_appends_are_relayed_and_projected(protocol: GroupProtocol) {
    ensure_psycopg();
    let env = TestEnv::for_protocol(&shop(), protocol, &[("PRISM__RELAY__POLL_INTERVAL_MS", "100")])
        .await
        .expect("test environment");
    let user = Uuid::new_v4();
    // The program runs a second or so: on this worker thread, the others keep the runtime going.
    let report = tokio::task::block_in_place(|| run_program(&env, user));
    let written = report["written"].as_array().expect("written").clone();
    assert_eq!(written.len(), 2, "{report}");
    // The stale third command lost the race on the documented constraint.
    assert_eq!(
        (&report["race"]["conflict"], &report["race"]["constraint"], &report["race"]["sqlstate"]),
        (&json!(true), &json!("events_stream_version"), &json!("23505")),
        "{report}"
    );
    assert_eq!(report["final_version"], json!(2));

    // The outbox rows are the contract's, before any relay runs.
    let client = env.db.client().await.expect("client");
    let rows = client
        .query(
            "SELECT o.lane, o.topic, o.message_key, o.message_value, e.event_id::text FROM outbox o
             JOIN events e USING (event_id) WHERE e.aggregate_id = $1 ORDER BY o.id",
            &[&user],
        )
        .await
        .expect("outbox rows");
    assert_eq!(rows.len(), 2);
    for (row, written) in rows.iter().zip(&written) {
        assert_eq!(row.get::<_, i16>(0), outbox_lane(user), "the program's lane is the engine's");
        assert_eq!(json!(row.get::<_, i16>(0)), written["lane"]);
        assert_eq!(row.get::<_, String>(1), format!("{}user.events", env.topic_prefix()));
        assert_eq!(row.get::<_, String>(2), user.hyphenated().to_string());
        assert_eq!(row.get::<_, Vec<u8>>(3), value_bytes(written));
        assert_eq!(json!(row.get::<_, String>(4)), written["event_id"]);
    }

    // The engine's event store reads what Python wrote.
    let store = EventStore::new(env.db.clone(), env.app.events().clone(), env.topic_prefix());
    let stream = store.load(USER, user).await.expect("the stream decodes");
    let types: Vec<&str> = stream.events.iter().map(|e| e.event_type()).collect();
    assert_eq!(types, ["UserRegistered", "UserProfileChanged"]);

    // The real relay (the shop's command service) and a projector.
    let server = Server::start(env.config.clone()).await;
    let projector = prism_projector::Embedded::start(env.config.clone(), shop());

    let registered_at: DateTime<Utc> =
        written[0]["occurred_at"].as_str().expect("occurred_at").parse().expect("RFC 3339");
    let short = &user.simple().to_string()[..8];
    let expected = json!({
        "registered": true,
        "email": format!("changed-{short}@example.com"),
        "display_name": "Python, changed",
        "marketing_opt_in": true,
        "registered_at": registered_at.to_rfc3339(),
        "order_count": 0,
        "paid_order_count": 0,
        "lifetime_spend_cents": 0,
        "version": 2,
    });
    assert_eq!(wait_for_profile(&env, user, 2).await, expected);

    // Kafka holds the exact bytes the program wrote, in order, with the event headers (checked
    // by the decoding in `consume_events`).
    let ids: BTreeSet<Uuid> = written
        .iter()
        .map(|w| Uuid::parse_str(w["event_id"].as_str().expect("event_id")).expect("uuid"))
        .collect();
    let received = consume_events(&env, ids, Duration::from_secs(60)).await;
    let mut ours: Vec<_> = received.iter().filter(|m| m.key == user.to_string()).collect();
    ours.sort_by_key(|m| m.offset);
    let values: Vec<&[u8]> = ours.iter().map(|m| m.value.as_slice()).collect();
    let expected_values: Vec<Vec<u8>> = written.iter().map(value_bytes).collect();
    assert_eq!(
        values,
        expected_values.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        "published bytes differ"
    );
    assert!(ours.iter().all(|m| m.topic == format!("{}user.events", env.topic_prefix())));

    // The shop's command service carries on from the stream Python wrote.
    let changed = server
        .send(
            Method::PATCH,
            &format!("/users/{user}"),
            Some(&json!({"display_name": "Then from Rust"})),
            &[("If-Match", "2")],
        )
        .await;
    assert_eq!((changed.status, changed.version()), (StatusCode::OK, 3), "{:?}", changed.body);
    let profile = wait_for_profile(&env, user, 3).await;
    assert_eq!((&profile["display_name"], &profile["email"]), (&json!("Then from Rust"), &expected["email"]));

    projector.stop(Duration::from_secs(30)).await.expect("projector stops cleanly");
    server.stop().await;
}

prism_testkit::group_protocol_tests!(python_appends_through_the_contract => python_appends_are_relayed_and_projected);

/// The user's `user_profile` row once it reached `version` (60 s at most), as JSON.
async fn wait_for_profile(env: &TestEnv, user: Uuid, version: i64) -> Value {
    let client = env.pg().await.expect("client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_opt(
                "SELECT registered, email, display_name, marketing_opt_in, registered_at, order_count,
                        paid_order_count, lifetime_spend_cents, version
                 FROM user_profile WHERE user_id = $1",
                &[&user],
            )
            .await
            .expect("user_profile");
        if let Some(row) = row.filter(|row| row.get::<_, i64>(8) >= version) {
            let registered_at: Option<DateTime<Utc>> = row.get(4);
            return json!({
                "registered": row.get::<_, bool>(0),
                "email": row.get::<_, Option<String>>(1),
                "display_name": row.get::<_, Option<String>>(2),
                "marketing_opt_in": row.get::<_, bool>(3),
                "registered_at": registered_at.map(|at| at.to_rfc3339()),
                "order_count": row.get::<_, i64>(5),
                "paid_order_count": row.get::<_, i64>(6),
                "lifetime_spend_cents": row.get::<_, i64>(7),
                "version": row.get::<_, i64>(8),
            });
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "user_profile of {user} never reached version {version}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
