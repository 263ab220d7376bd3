//! The outbox relay against a real broker, read back with a plain rdkafka consumer (assigned
//! partitions, no group): every stored event arrives, keyed by its aggregate with its event
//! headers, in version order per aggregate, through a broker outage, a relay killed
//! mid-publish, and two relays at once.

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use prism_event_store::{EventStore, StreamAppend};
use prism_events::{Event, EventPosition};
use prism_testkit::private::PrivateKafka;
use prism_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::json;
use shop_model::aggregates::USER;
use shop_model::events::{UserProfileChanged, UserRegistered};
use shop_model::ShopEvent;
use tokio::sync::watch;
use uuid::Uuid;

use crate::support::{
    environment, outbox_rows, spawn_relay, verify_all_published, wait_for_empty_outbox, Server,
};

fn user_event(id: Uuid, version: u64) -> Event {
    let body: ShopEvent = if version == 1 {
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
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id: id,
        aggregate_version: version,
        occurred_at: Utc::now(),
        correlation_id: id,
        causation_id: id,
    };
    Event::new(position, body)
}

fn store(env: &TestEnv) -> EventStore {
    EventStore::new(env.db.clone(), env.app.events().clone(), env.topic_prefix())
}

/// Appends versions `from..=to` to each user, one transaction per user.
async fn append_versions(store: &EventStore, users: &[Uuid], from: u64, to: u64) {
    for &id in users {
        let events = (from..=to).map(|version| user_event(id, version)).collect();
        let append =
            StreamAppend { aggregate_type: USER, aggregate_id: id, expected_version: from - 1, events };
        store.append(&[append], None).await.expect("append");
    }
}

/// Counts the messages in the user topic (the sum of its partitions' end offsets) over one
/// open connection, so a count takes a round trip per partition rather than a new client.
struct Published {
    consumer: rdkafka::consumer::BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl Published {
    fn new(env: &TestEnv) -> Self {
        use rdkafka::consumer::Consumer;
        let consumer =
            prism_testkit::kafka::consumer(&env.config, &env.group("watermarks"), &[]).expect("consumer");
        let topic = USER.topic(env.topic_prefix());
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let partitions = metadata.topics().iter().flat_map(|t| t.partitions()).map(|p| p.id()).collect();
        Self { consumer, topic, partitions }
    }

    fn count(&self) -> i64 {
        use rdkafka::consumer::Consumer;
        tokio::task::block_in_place(|| {
            self.partitions
                .iter()
                .map(|partition| {
                    let (_, high) = self
                        .consumer
                        .fetch_watermarks(&self.topic, *partition, Duration::from_secs(10))
                        .expect("watermarks");
                    high
                })
                .sum()
        })
    }
}

/// The broker goes away while commands keep arriving: the commands succeed (they only write
/// PostgreSQL), readiness reports the broker, and once it is back every event arrives in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_delays_but_loses_nothing() {
    // Declared before the environment so the environment's cleanup still finds it running.
    let mut broker = PrivateKafka::start().await.expect("private broker");
    let bootstrap = broker.bootstrap_servers();
    let env = environment(&[
        ("PRISM__KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("PRISM__TOPICS__PARTITIONS", "4"),
        ("PRISM__RELAY__POLL_INTERVAL_MS", "100"),
    ])
    .await;
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
    server.wait_for_readiness(StatusCode::SERVICE_UNAVAILABLE).await;

    broker.restart().await.expect("restart the broker");
    change(6).await;
    wait_for_empty_outbox(&env, Duration::from_secs(90)).await;
    let repeats = verify_all_published(&env).await;
    eprintln!("broker outage: {repeats} re-published events");
    server.stop().await;
}

/// A relay process killed (SIGKILL) while a round is in flight — messages on the broker whose
/// outbox rows are not deleted yet, observed before and confirmed after the kill — then
/// started again: nothing is lost, every row caught in flight is published again with its
/// stored event id and version, and no aggregate's events come out of order. The restarted
/// relay exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_mid_publish_loses_nothing() {
    let env = environment(&[("PRISM__TOPICS__PARTITIONS", "4")]).await;
    let users: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    append_versions(&store(&env), &users, 1, 40).await;
    let backlog = outbox_rows(&env).await;
    assert_eq!(backlog, 8_000);

    // Small rounds (16 lanes × 10 rows, 50 of them), so a kill lands while a round is in
    // flight even when the watcher's consumer trails the relay.
    let overrides = [("PRISM__RELAY__BATCH_SIZE", "10")];
    let published = Published::new(&env);
    let mut attempts = 0;
    let (left, in_flight) = loop {
        attempts += 1;
        let mut relay = spawn_relay(&env, &overrides);
        // Wait for the observable state "published but not deleted": more messages on the broker
        // than rows deleted from the outbox. (Before the first kill both counts agree.) The broker
        // is read first: both counts only grow, so a later read of the outbox that is still
        // behind proves rows in flight at that moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let on_broker = published.count();
            let deleted = backlog - outbox_rows(&env).await;
            if on_broker > deleted {
                break;
            }
            assert!(
                deleted < backlog,
                "the relay drained the backlog before a round could be caught in flight"
            );
            assert!(tokio::time::Instant::now() < deadline, "the relay published nothing within 60s");
        }
        relay.kill().expect("SIGKILL the relay");
        relay.wait().expect("reap the relay");
        // The relay is dead; let the broker finish what it had received, then read the state.
        let mut last = -1;
        let mut on_broker = published.count();
        while on_broker != last {
            tokio::time::sleep(Duration::from_millis(300)).await;
            last = on_broker;
            on_broker = published.count();
        }
        let left = outbox_rows(&env).await;
        let in_flight = on_broker - (backlog - left);
        assert!(left > 0, "the relay drained the backlog before it could be killed");
        if in_flight > 0 {
            break (left, in_flight);
        }
        // The round finished between the observation and the kill (its deletes take about a
        // millisecond): the counts agree again, so try again on the rest of the backlog.
        assert_eq!(in_flight, 0);
        assert!(attempts < 20, "twenty kills never caught a round in flight");
    };

    let mut relay = spawn_relay(&env, &overrides);
    wait_for_empty_outbox(&env, Duration::from_secs(120)).await;
    let status =
        Command::new("kill").args(["-s", "TERM", &relay.id().to_string()]).status().expect("kill -TERM");
    assert!(status.success());
    let exit = relay.wait().expect("wait for the relay");
    assert!(exit.success(), "the relay must exit 0 on SIGTERM, got {exit}");

    let repeats = verify_all_published(&env).await;
    eprintln!("relay killed with {left} of {backlog} rows left, {in_flight} in flight: {repeats} re-published events");
    assert!(repeats as i64 >= in_flight, "{in_flight} rows were in flight, only {repeats} came again");
}

/// Two relay instances at once share the lanes and keep every aggregate in order while
/// commands keep arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_lanes_and_keep_order() {
    let env =
        environment(&[("PRISM__TOPICS__PARTITIONS", "4"), ("PRISM__RELAY__POLL_INTERVAL_MS", "50")]).await;
    let store = store(&env);
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
