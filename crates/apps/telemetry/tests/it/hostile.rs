//! Hostile messages from the Python producer, in the middle of valid traffic: malformed JSON,
//! an unknown aggregate type, an unknown event type, a NUL byte in a text field, a message
//! over the size limit, a version-1 reading carrying a version-2 field, and a version gap —
//! each keyed with a device that already has events. Each ends as a dead letter of both read
//! models with a reason naming what was wrong; the devices' later events are parked behind it;
//! valid events of other devices written after them are applied; everything else equals the
//! oracle; every dead letter is copied to the dead-letter topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use prism_events::Event;
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use telemetry::read_models::{DEVICE_STATUS, SITE_HOURLY_READINGS};
use telemetry::DEVICE;

use crate::oracle;
use crate::support::{dead_letters, DeadLetter, PythonProducer, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_messages_are_dead_lettered_with_a_reason_and_their_devices_parked() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let app = telemetry::application();
    let env = TestEnv::new(&app).await.expect("test environment");
    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());
    let produced = PythonProducer::spawn(&env, "hostile", &Workload::new(40, 5, 20, 41).hostile())
        .finish(Duration::from_secs(60))
        .await;
    let cases: BTreeSet<&str> = produced.hostile.iter().map(|h| h.case.as_str()).collect();
    assert_eq!(
        cases,
        BTreeSet::from([
            "malformed_json",
            "wrong_aggregate_type",
            "unknown_event_type",
            "nul_in_field",
            "oversize",
            "v2_field_in_v1",
            "version_gap"
        ]),
        "the producer wrote every hostile case"
    );
    let last_hostile = produced.hostile.iter().map(|h| h.position).max().unwrap_or(0);
    let victims: BTreeMap<uuid::Uuid, u64> =
        produced.hostile.iter().map(|h| (h.aggregate_id, h.after_version)).collect();
    let later_of_others = produced.events[last_hostile..]
        .iter()
        .filter(|e| !victims.contains_key(&e.meta.aggregate_id))
        .count();
    assert!(
        later_of_others > 50,
        "valid events of other devices follow the hostile ones ({later_of_others})"
    );

    // What must be applied: everything but the victims' events behind their hostile message.
    let behind =
        |e: &Event| victims.get(&e.meta.aggregate_id).is_some_and(|after| e.meta.aggregate_version > *after);
    let applied: Vec<Event> = produced.events.iter().filter(|e| !behind(e)).cloned().collect();
    let parked_behind: usize = produced.events.iter().filter(|e| behind(e)).count();
    env.wait_for_oracle(&oracle::fold(&applied), CacheCheck::Complete, Duration::from_secs(60))
        .await
        .expect("everything else equals the oracle");

    // Per read model: one permanent dead letter per hostile case (for the gap, the event after
    // it), every later event of the victims parked.
    let permanent = produced.hostile.len();
    let parked = parked_behind - 1; // the gap's first event behind it is its permanent dead letter
    let instances = [format!("{DEVICE_STATUS}_g1"), format!("{SITE_HOURLY_READINGS}_g1")];
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead: Vec<DeadLetter> = loop {
        let dead = dead_letters(&env).await;
        let complete = instances.iter().all(|instance| {
            let of =
                |class: &str| dead.iter().filter(|d| &d.projection == instance && d.class == class).count();
            of("permanent") == permanent && of("parked") == parked
        }) && dead.len() == 2 * (permanent + parked)
            && dead.iter().all(|d| d.published);
        if complete {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "expected per read model {permanent} permanent and {parked} parked dead letters, all published; got {:#?}",
            dead.iter().map(|d| (&d.projection, &d.class, &d.kind, &d.aggregate_id, d.published)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    for instance in &instances {
        for hostile in &produced.hostile {
            let victim = hostile.aggregate_id.to_string();
            let of_victim: Vec<&DeadLetter> = dead
                .iter()
                .filter(|d| &d.projection == instance && d.aggregate_id.as_deref() == Some(victim.as_str()))
                .collect();
            let failed: Vec<&&DeadLetter> = of_victim.iter().filter(|d| d.class == "permanent").collect();
            assert_eq!(
                failed.len(),
                1,
                "{instance}, {}: one permanent dead letter: {of_victim:#?}",
                hostile.case
            );
            let failed = failed[0];
            assert_eq!(failed.kind, hostile.expect_kind, "{instance}, {}: {}", hostile.case, failed.message);
            for text in &hostile.expect_text {
                assert!(
                    failed.message.contains(text),
                    "{instance}, {}: `{}` should name `{text}`",
                    hostile.case,
                    failed.message
                );
            }
            assert!(
                failed.message.len() < 1_000,
                "{instance}, {}: a bounded reason: {}",
                hostile.case,
                failed.message.len()
            );
            let parked_versions: Vec<i64> = of_victim
                .iter()
                .filter(|d| d.class == "parked")
                .filter_map(|d| d.aggregate_version)
                .collect();
            let behind_versions: Vec<i64> = produced
                .events
                .iter()
                .filter(|e| {
                    e.meta.aggregate_id == hostile.aggregate_id
                        && e.meta.aggregate_version > hostile.after_version
                })
                .map(|e| e.meta.aggregate_version as i64)
                .skip(usize::from(hostile.case == "version_gap"))
                .collect();
            assert_eq!(
                parked_versions, behind_versions,
                "{instance}, {}: the device's later events are parked, in order",
                hostile.case
            );
        }
    }

    // The dead-letter topic holds a copy of every dead letter.
    let dlq = DEVICE.dead_letter_topic(env.topic_prefix());
    let copies: i64 = prism_testkit::kafka::end_offsets(&env.config, std::slice::from_ref(&dlq))
        .await
        .expect("dead-letter topic offsets")
        .values()
        .sum();
    assert_eq!(copies, dead.len() as i64, "one copy per dead letter in {dlq}");

    projector.stop(Duration::from_secs(30)).await.expect("the projector stops cleanly");
    eprintln!(
        "{} events, {} hostile, {parked_behind} behind them -> {} dead letters in {:.1}s",
        produced.events.len(),
        produced.hostile.len(),
        dead.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A NUL byte where the engine copies event data into its own dead-letter record — the
/// envelope's `event_type`, the message key — rather than in a payload field the application
/// validates. PostgreSQL `text` cannot hold NUL: the engine spells it out (`\u{0}`) in every
/// text it writes, so each message ends as a dead letter naming what was wrong, and the valid
/// events behind them land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nul_byte_in_what_the_engine_copies_into_a_dead_letter_does_not_stall_the_partition() {
    prism_testkit::init_logging();
    let app = telemetry::application();
    let env = TestEnv::new(&app).await.expect("test environment");
    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    let topic = DEVICE.topic(env.topic_prefix());
    let envelope = |event_type: &str, id: uuid::Uuid| {
        serde_json::to_vec(&serde_json::json!({
            "event_id": uuid::Uuid::new_v4(), "event_type": event_type, "schema_version": 1,
            "aggregate_type": "device", "aggregate_id": id, "aggregate_version": 1,
            "occurred_at": "2026-03-01T00:00:00Z", "correlation_id": id, "causation_id": id,
            "payload": {"site_id": "berlin-01", "model": "TH-200", "name": "n"}
        }))
        .expect("json")
    };
    // On every partition (keys spread over them), so valid traffic after them must pass each.
    for n in 0..8 {
        let id = uuid::Uuid::new_v4();
        let key = id.to_string();
        prism_testkit::kafka::produce(
            &producer,
            &topic,
            Some(key.as_bytes()),
            Some(&envelope("Device\u{0}Registered", id)),
            &[],
        )
        .await
        .expect("produce");
        let nul_key = format!("device\u{0}{n}");
        prism_testkit::kafka::produce(
            &producer,
            &topic,
            Some(nul_key.as_bytes()),
            Some(&envelope("DeviceRegistered", id)),
            &[],
        )
        .await
        .expect("produce");
    }
    let valid = PythonProducer::spawn(&env, "after-nul", &Workload::new(20, 3, 5, 43))
        .finish(Duration::from_secs(60))
        .await;
    env.wait_for_oracle(&oracle::fold(&valid.events), CacheCheck::Complete, Duration::from_secs(30))
        .await
        .expect("valid events behind the NUL bytes land");
    let dead = dead_letters(&env).await;
    let kinds: BTreeSet<&str> = dead.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(dead.len(), 2 * 16, "every NUL message dead-lettered for both read models: {dead:#?}");
    assert_eq!(kinds, BTreeSet::from(["unknown_event_type", "key_mismatch"]));
    assert!(
        dead.iter().all(|d| d.message.contains("\\u{0}")),
        "every reason shows the NUL it found: {dead:#?}"
    );
    projector.stop(Duration::from_secs(30)).await.expect("the projector stops cleanly");
}
