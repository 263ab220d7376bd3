//! The relay alone (`serve_relay`, what the `prism-relay` binary runs), with no application code:
//! it publishes whatever the outbox holds, byte for byte, keyed by aggregate, with the event
//! headers, and deletes what the broker acknowledged; its operations endpoints answer, every
//! other path is a JSON 404.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Note, Tally};
use prism_commands::{CommandService, RequestMeta};
use prism_event_store::EventStore;
use prism_testkit::TestEnv;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::sync::oneshot;
use uuid::Uuid;

async fn outbox(env: &TestEnv) -> BTreeMap<Uuid, (String, Vec<u8>)> {
    let client = env.db.client().await.expect("client");
    client
        .query("SELECT event_id, message_key, message_value FROM outbox", &[])
        .await
        .expect("outbox")
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_alone_publishes_the_outbox_as_stored() {
    let env = TestEnv::with_overrides(
        &prism_testkit::probe::application(),
        &[("PRISM__RELAY__ENABLED", "false"), ("PRISM__RELAY__POLL_INTERVAL_MS", "100")],
    )
    .await
    .expect("test environment");
    let store = EventStore::new(env.db.clone(), env.app.events().clone(), env.topic_prefix());
    let service = CommandService::new(store, Duration::from_secs(60));
    let tallies: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for id in &tallies {
        service.execute::<Tally>(*id, Note::Open(1), &RequestMeta::new()).await.expect("open");
        service.execute::<Tally>(*id, Note::Many(vec![2, 3]), &RequestMeta::new()).await.expect("more");
    }
    let queued = outbox(&env).await;
    assert_eq!(queued.len(), 15);

    // `relay.enabled = false` in the configuration: the relay-only entry point runs it anyway.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(prism_commands::serve_relay(env.config.clone(), listener, async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !outbox(&env).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the relay left rows in the outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();
    let ready = http.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("prism_commands_outbox_published_total"), "{metrics}");
    let nowhere = http.post(format!("{base}/tallies")).send().await.expect("post");
    assert_eq!(nowhere.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(nowhere.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    let _ = stop.send(());
    relay.await.expect("relay task").expect("relay stops cleanly");

    // What the broker holds: the stored bytes, keyed by aggregate, in version order.
    let config = env.config.clone();
    let topic = prism_testkit::probe::PROBE.topic(env.topic_prefix());
    let group = env.group("verify");
    let received = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = prism_testkit::kafka::consumer(&config, &group, &[]).expect("consumer");
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).expect("metadata");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            assignment
                .add_partition_offset(&topic, partition.id(), rdkafka::Offset::Beginning)
                .expect("assign");
        }
        consumer.assign(&assignment).expect("assign");
        let mut received = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while received.len() < 15 && std::time::Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
            let message = message.expect("message");
            let headers: Vec<(String, Vec<u8>)> = message
                .headers()
                .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
                .unwrap_or_default();
            let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).expect("key");
            received.push((key, message.payload().unwrap_or_default().to_vec(), headers));
        }
        received
    })
    .await
    .expect("consumer");
    assert_eq!(received.len(), 15);
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, value, headers) in &received {
        let envelope: serde_json::Value = serde_json::from_slice(value).expect("envelope");
        let event_id = Uuid::parse_str(envelope["event_id"].as_str().expect("event_id")).expect("uuid");
        let (stored_key, stored_value) = &queued[&event_id];
        assert_eq!((key, value), (stored_key, stored_value), "published bytes differ from the outbox row");
        assert!(headers.contains(&("event_type".to_owned(), b"Noted".to_vec())), "{headers:?}");
        assert!(headers.contains(&("schema_version".to_owned(), b"1".to_vec())), "{headers:?}");
        versions
            .entry(key.clone())
            .or_default()
            .push(envelope["aggregate_version"].as_u64().expect("version"));
    }
    for id in &tallies {
        assert_eq!(versions[&id.to_string()], vec![1, 2, 3], "{id} out of order");
    }
}
