//! The outbox relay against a real broker, read back with a plain rdkafka consumer: every
//! stored event arrives, keyed by its aggregate with its event headers, in version order per
//! aggregate, through a broker outage, a relay killed mid-publish, and two relays at once.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::Duration;

use chrono::Utc;
use common::{consume_events, outbox_rows, stored_events, verify_delivery, wait_for_empty_outbox, Server};
use prism_events::events::{UserProfileChanged, UserRegistered};
use prism_events::{AggregateType, DomainEvent, Event, EventMeta};
use prism_store::{EventStore, StreamAppend};
use prism_testkit::private::PrivateKafka;
use prism_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

fn user_event(id: Uuid, version: u64) -> Event {
    let body: DomainEvent = if version == 1 {
        UserRegistered {
            email: format!("{id}@example.com"),
            display_name: "New".into(),
            marketing_opt_in: false,
        }
        .into()
    } else {
        UserProfileChanged {
            email: None,
            display_name: Some(format!("Name {version}")),
            marketing_opt_in: None,
        }
        .into()
    };
    Event {
        meta: EventMeta {
            event_id: Uuid::new_v4(),
            aggregate_type: AggregateType::User,
            aggregate_id: id,
            aggregate_version: version,
            occurred_at: Utc::now(),
            correlation_id: id,
            causation_id: id,
        },
        body,
    }
}

/// Appends versions `from..=to` to each user, one transaction per user.
async fn append_versions(store: &EventStore, users: &[Uuid], from: u64, to: u64) {
    for &id in users {
        let events = (from..=to).map(|version| user_event(id, version)).collect();
        let append = StreamAppend {
            aggregate_type: AggregateType::User,
            aggregate_id: id,
            expected_version: from - 1,
            events,
        };
        store.append(&[append], None).await.expect("append");
    }
}

/// Reads everything back and checks it against the store; returns the repeat count.
async fn verify_all_published(env: &TestEnv) -> usize {
    let stored = stored_events(env).await;
    let expected: BTreeSet<Uuid> = stored.values().copied().collect();
    let config = env.config.clone();
    let received =
        tokio::task::spawn_blocking(move || consume_events(&config, &expected, Duration::from_secs(90)))
            .await
            .expect("consumer task");
    verify_delivery(env.topic_prefix(), &stored, &received)
}

fn spawn_relay(env: &TestEnv, overrides: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prism-commands"));
    command
        .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PRISM__COMMANDS__LISTEN", "127.0.0.1:0")
        .env("PRISM__COMMANDS__CONTEXTS", "[]")
        .env("PRISM__RELAY__ENABLED", "true")
        .env("PRISM__LOG__FILTER", "warn,prism_commands=info");
    for (key, value) in overrides {
        command.env(key, value);
    }
    command.spawn().expect("starting the prism-commands binary")
}

/// The broker goes away while commands keep arriving: the commands succeed (they only write
/// PostgreSQL), readiness reports the broker, and once it is back every event arrives in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_delays_but_loses_nothing() {
    // Declared before the environment so the environment's cleanup still finds it running.
    let mut broker = PrivateKafka::start().await.expect("private broker");
    let bootstrap = broker.bootstrap_servers();
    let env = TestEnv::with_overrides(&[
        ("PRISM__KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("PRISM__TOPICS__PARTITIONS", "4"),
        ("PRISM__RELAY__POLL_INTERVAL_MS", "100"),
    ])
    .await
    .expect("test environment");
    let server = Server::start(env.config.clone()).await;
    let mut users = Vec::new();
    for n in 0..12 {
        let answer =
            server.post("/users", json!({"email": format!("u{n}@example.com"), "display_name": "U"})).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        users.push(answer.body["aggregate_id"].as_str().expect("id").to_owned());
    }
    let change = |round: usize| {
        let server = &server;
        let users = &users;
        async move {
            for user in users {
                let body = json!({"display_name": format!("Round {round}")});
                let answer = server.send(Method::PATCH, &format!("/users/{user}"), Some(&body), &[]).await;
                assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
            }
        }
    };
    change(1).await;
    wait_for_empty_outbox(&env, Duration::from_secs(60)).await;

    broker.stop().await.expect("stop the broker");
    for round in 2..6 {
        change(round).await;
    }
    assert!(outbox_rows(&env).await > 0, "events must wait in the outbox while the broker is down");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while server.get_text("/readyz").await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed ready with the broker down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    broker.restart().await.expect("restart the broker");
    change(6).await;
    wait_for_empty_outbox(&env, Duration::from_secs(90)).await;
    let repeats = verify_all_published(&env).await;
    eprintln!("broker outage: {repeats} re-published events");
    server.stop().await;
}

/// A relay process killed (SIGKILL) while it publishes a large backlog, then started again:
/// nothing is lost, re-publications carry the stored event ids and versions, and no
/// aggregate's events come out of order. The restarted relay exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_publish_loses_nothing() {
    let env = TestEnv::with_overrides(&[("PRISM__TOPICS__PARTITIONS", "4")]).await.expect("test environment");
    let store = EventStore::new(env.db.clone(), env.topic_prefix());
    let users: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    append_versions(&store, &users, 1, 20).await;
    let backlog = outbox_rows(&env).await;
    assert_eq!(backlog, 4_000);

    // Small rounds (16 lanes × 50 rows), so the kill lands while a round is in flight.
    let overrides = [("PRISM__RELAY__BATCH_SIZE", "50")];
    let mut relay = spawn_relay(&env, &overrides);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while outbox_rows(&env).await == backlog {
        assert!(tokio::time::Instant::now() < deadline, "the relay published nothing within 60s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first round is acknowledged and deleted; let the next one get under way.
    tokio::time::sleep(Duration::from_millis(15)).await;
    relay.kill().expect("SIGKILL the relay");
    relay.wait().expect("reap the relay");
    let left = outbox_rows(&env).await;
    assert!(left > 0, "the relay drained the backlog before it could be killed");

    let mut relay = spawn_relay(&env, &overrides);
    wait_for_empty_outbox(&env, Duration::from_secs(120)).await;
    let status =
        Command::new("kill").args(["-s", "TERM", &relay.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let exit = relay.wait().expect("wait for the relay");
    assert!(exit.success(), "the relay must exit 0 on SIGTERM, got {exit}");

    let repeats = verify_all_published(&env).await;
    eprintln!("relay killed with {left} of {backlog} rows left: {repeats} re-published events");
}

/// Two relay instances at once share the lanes and keep every aggregate in order while
/// commands keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_lanes_and_keep_order() {
    let env = TestEnv::with_overrides(&[
        ("PRISM__TOPICS__PARTITIONS", "4"),
        ("PRISM__RELAY__POLL_INTERVAL_MS", "50"),
    ])
    .await
    .expect("test environment");
    let store = EventStore::new(env.db.clone(), env.topic_prefix());
    let (stop_tx, stop) = watch::channel(false);
    let relays: Vec<_> = (0..2)
        .map(|_| tokio::spawn(prism_commands::relay::run(env.config.clone(), env.db.clone(), stop.clone())))
        .collect();

    let users: Vec<Uuid> = (0..120).map(|_| Uuid::new_v4()).collect();
    let client = env.db.client().await.expect("client");
    let lock_key = format!("prism.outbox.lanes.{}", env.db.schema());
    let mut both_held = false;
    for version in 1..=15 {
        append_versions(&store, &users, version, version).await;
        let holders: i64 = client
            .query_one(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND classid = hashtext($1)::oid",
                &[&lock_key],
            )
            .await
            .expect("lock holders")
            .get(0);
        both_held |= holders == 2;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_for_empty_outbox(&env, Duration::from_secs(60)).await;
    assert!(both_held, "the two relays never shared the lanes");
    stop_tx.send(true).expect("stop");
    for relay in relays {
        relay.await.expect("relay task").expect("relay");
    }
    let repeats = verify_all_published(&env).await;
    assert_eq!(repeats, 0, "two healthy relays must not publish an event twice");
}
