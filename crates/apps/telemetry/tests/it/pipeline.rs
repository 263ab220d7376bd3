//! Oracle equality: the Python producer writes a few thousand events of 80 devices over 8
//! sites; an embedded projector projects them; every row in PostgreSQL and every Redis entry
//! equals the oracle's fold of exactly what was produced — old schema versions (upcast) and
//! readings without a measurement time included — and every produced event validates against
//! `schemas/events.schema.json`.

use std::time::{Duration, Instant};

use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;

use crate::oracle;
use crate::support::{dead_letters, events_schema, written_versions, PythonProducer, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn python_produced_events_project_to_exactly_the_oracle() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let app = telemetry::application();
    let env = TestEnv::new(&app).await.expect("test environment");

    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());
    let produced = PythonProducer::spawn(&env, "pipeline", &Workload::new(80, 8, 40, 11))
        .finish(Duration::from_secs(60))
        .await;
    assert_eq!(produced.events.len(), 80 * 40, "every device's whole stream was produced");

    // The producer follows the contract: every envelope validates against the schema.
    let schema = events_schema();
    for envelope in &produced.envelopes {
        let errors: Vec<String> =
            schema.iter_errors(envelope).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "produce.py wrote an event the schema refuses: {errors:?}\n{envelope}");
    }
    // ... and exercises what the read models must handle.
    let versions = written_versions(&produced);
    for (event_type, version) in [
        ("DeviceRegistered", 1),
        ("ReadingReported", 1),
        ("ReadingReported", 2),
        ("DeviceWentOffline", 1),
        ("DeviceCameBack", 1),
    ] {
        assert!(
            versions.get(&(event_type.to_owned(), version)).is_some_and(|n| *n > 0),
            "no {event_type} v{version}: {versions:?}"
        );
    }
    let clockless = produced
        .envelopes
        .iter()
        .filter(|e| e["schema_version"] == 2 && e["payload"]["measured_at"].is_null())
        .count();
    assert!(clockless > 0, "no v2 reading without a measurement time");

    let expected = oracle::fold(&produced.events);
    let summary = env
        .wait_for_oracle(&expected, CacheCheck::Complete, Duration::from_secs(60))
        .await
        .expect("read models equal the oracle");
    assert_eq!(summary.cache_entries, 80, "one cached device_status per device");
    assert!(summary.rows > 80, "site_hourly_readings has rows too: {summary:?}");
    let dead = dead_letters(&env).await;
    assert!(dead.is_empty(), "valid events must never be dead-lettered: {dead:?}");
    projector.stop(Duration::from_secs(30)).await.expect("the projector stops cleanly");
    eprintln!("{} events -> {summary:?} in {:.1}s", produced.events.len(), started.elapsed().as_secs_f64());
}
