//! The Rust types against the JSON Schemas in `schemas/` (telemetry's events within the
//! engine's envelope): every event this crate writes validates against its schema and decodes
//! back unchanged, every schema file belongs to a known event type and version (and every
//! type and version has one), an old version validates and is upcast, and invalid events are
//! refused by both the schema and the decoder, the decoder naming the problem.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use jsonschema::{Retrieve, Uri, Validator};
use prism_events::{decode_event, Event, EventPosition, Limits, WireHeaders};
use serde_json::{json, Value};
use telemetry::events::{DeviceCameBack, DeviceRegistered, DeviceWentOffline, ReadingReported};
use telemetry::{registry, EventType, TelemetryEvent};
use uuid::Uuid;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").canonicalize().expect("schemas/ exists")
}

/// Resolves the schemas' relative `$ref`s from disk (the envelope's is in the engine's crate).
struct FileRetriever;

impl Retrieve for FileRetriever {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri.as_str().strip_prefix("file://").ok_or("only file:// references")?;
        let path = path.split('#').next().unwrap_or(path);
        Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
    }
}

fn validator(relative: &str) -> Validator {
    let path = schemas_dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{relative} must declare draft 2020-12"
    );
    jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .with_retriever(FileRetriever)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{relative} is not a valid schema: {e}"))
}

fn schema_errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect()
}

/// Valid payloads of every event type, edge cases included.
fn samples() -> Vec<TelemetryEvent> {
    let at = |s: &str| Some(chrono::DateTime::parse_from_rfc3339(s).expect("timestamp").with_timezone(&Utc));
    vec![
        DeviceRegistered {
            site_id: "berlin-01".into(),
            model: "TH-200".into(),
            name: "Cold room 2, north wall".into(),
        }
        .into(),
        DeviceRegistered { site_id: "0".into(), model: "Ω".into(), name: "x".repeat(100) }.into(),
        ReadingReported {
            site_id: "berlin-01".into(),
            metric: "temperature_c".into(),
            value: -18.25,
            measured_at: at("2026-03-01T10:15:00.123456Z"),
        }
        .into(),
        ReadingReported { site_id: "b".into(), metric: "co2_ppm".into(), value: 1.0e9, measured_at: None }
            .into(),
        ReadingReported {
            site_id: "b".into(),
            metric: "x".into(),
            value: 0.0,
            measured_at: at("2000-01-01T00:00:00Z"),
        }
        .into(),
        DeviceWentOffline { reason: "battery low".into() }.into(),
        DeviceCameBack {}.into(),
    ]
}

fn event(body: TelemetryEvent, version: u64) -> Event {
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id: Uuid::from_u128(0xde_f1ce),
        aggregate_version: version,
        occurred_at: Utc.with_ymd_and_hms(2026, 3, 1, 10, 16, 0).single().expect("valid date"),
        correlation_id: Uuid::new_v4(),
        causation_id: Uuid::new_v4(),
    };
    Event::new(position, body)
}

#[test]
fn every_event_validates_against_its_schema_and_round_trips() {
    let envelope_schema = validator("events.schema.json");
    let samples = samples();
    for &event_type in EventType::ALL {
        assert!(samples.iter().any(|s| s.event_type() == event_type), "no sample for {event_type}: add one");
    }
    for (i, body) in samples.into_iter().enumerate() {
        let event_type = body.event_type();
        let payload_schema = validator(&format!(
            "events/device/{event_type}.v{}.schema.json",
            event_type.current_schema_version()
        ));
        let event = event(body, i as u64 + 1);
        let bytes = event.to_json_bytes();
        let json: Value = serde_json::from_slice(&bytes).expect("JSON");
        let errors = schema_errors(&envelope_schema, &json);
        assert!(errors.is_empty(), "{event_type} envelope: {errors:?}\n{json:#}");
        let errors = schema_errors(&payload_schema, &json["payload"]);
        assert!(errors.is_empty(), "{event_type} payload: {errors:?}\n{json:#}");

        let version = event_type.current_schema_version().to_string();
        let headers = WireHeaders {
            event_type: Some(event_type.as_str().as_bytes()),
            schema_version: Some(version.as_bytes()),
        };
        let decoded = decode_event(&registry(), Some(&bytes), headers, &Limits::default())
            .unwrap_or_else(|e| panic!("{event_type} does not decode: {e}"));
        assert_eq!(decoded, event, "{event_type} changed in a round trip");
        assert_eq!(decoded.body::<TelemetryEvent>(), event.body::<TelemetryEvent>());
    }
}

#[test]
fn every_schema_file_names_a_known_event_type_and_version() {
    let mut found = Vec::new();
    for aggregate in std::fs::read_dir(schemas_dir().join("events")).expect("schemas/events") {
        let aggregate = aggregate.expect("entry").path();
        let aggregate_name = aggregate.file_name().and_then(|n| n.to_str()).expect("utf-8").to_owned();
        let aggregate_type = registry()
            .aggregate_type(&aggregate_name)
            .expect("the folder names one of telemetry's aggregate types");
        for file in std::fs::read_dir(&aggregate).expect("aggregate folder") {
            let name = file.expect("entry").file_name().into_string().expect("utf-8");
            let stem =
                name.strip_suffix(".schema.json").unwrap_or_else(|| panic!("{name}: expected *.schema.json"));
            let (type_name, version) =
                stem.rsplit_once(".v").unwrap_or_else(|| panic!("{name}: expected <Type>.v<N>"));
            let event_type: EventType = type_name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            let version: u32 = version.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(event_type.aggregate_type(), aggregate_type, "{name} is in the wrong folder");
            assert!(
                (1..=event_type.current_schema_version()).contains(&version),
                "{name}: version {version} is not one this build reads"
            );
            validator(&format!("events/{aggregate_name}/{name}"));
            found.push((event_type, version));
        }
    }
    for &event_type in EventType::ALL {
        for version in 1..=event_type.current_schema_version() {
            assert!(found.contains(&(event_type, version)), "no schema for {event_type} v{version}");
        }
    }
    // The combined schema names exactly these types and versions.
    let combined: Value = serde_json::from_str(
        &std::fs::read_to_string(schemas_dir().join("events.schema.json")).expect("read"),
    )
    .expect("json");
    let refs: Vec<String> = combined["allOf"]
        .as_array()
        .expect("allOf")
        .iter()
        .filter_map(|part| {
            part.pointer("/then/properties/payload/$ref").and_then(Value::as_str).map(str::to_owned)
        })
        .collect();
    let mut expected: Vec<String> =
        found.iter().map(|(t, v)| format!("events/{}/{t}.v{v}.schema.json", t.aggregate_type())).collect();
    let mut refs_sorted = refs.clone();
    refs_sorted.sort();
    expected.sort();
    assert_eq!(refs_sorted, expected, "events.schema.json must reference every payload schema once");
}

fn v1_reading() -> Value {
    json!({
        "event_id": "7b0f7c4e-4b7e-4d0b-9a43-6f6d8a3c2b10", "event_type": "ReadingReported",
        "schema_version": 1, "aggregate_type": "device",
        "aggregate_id": "00000000-0000-0000-0000-0000000000d1", "aggregate_version": 2,
        "occurred_at": "2026-03-01T12:00:00.5Z",
        "correlation_id": "00000000-0000-0000-0000-0000000000c1",
        "causation_id": "00000000-0000-0000-0000-0000000000c2",
        "payload": {"site_id": "berlin-01", "metric": "temperature_c", "value": 4}
    })
}

#[test]
fn an_old_schema_version_validates_and_is_upcast_on_decode() {
    let v1 = v1_reading();
    let errors = schema_errors(&validator("events.schema.json"), &v1);
    assert!(errors.is_empty(), "{errors:?}");
    let bytes = serde_json::to_vec(&v1).expect("json");
    let headers = WireHeaders { event_type: Some(b"ReadingReported"), schema_version: Some(b"1") };
    let decoded = decode_event(&registry(), Some(&bytes), headers, &Limits::default()).expect("decodes");
    assert_eq!(decoded.meta.schema_version, 2, "decoded at the current version");
    assert_eq!(
        decoded.body::<TelemetryEvent>().cloned().expect("a telemetry event"),
        TelemetryEvent::ReadingReported(ReadingReported {
            site_id: "berlin-01".into(),
            metric: "temperature_c".into(),
            value: 4.0,
            measured_at: Some(decoded.meta.occurred_at)
        })
    );
    // v1 with a v2 field: the schema and the upcaster both refuse it.
    let mut mixed = v1_reading();
    mixed["payload"]["measured_at"] = json!("2026-03-01T12:00:00Z");
    assert!(!validator("events.schema.json").is_valid(&mixed), "the schema accepts a v2 field in v1");
    let bytes = serde_json::to_vec(&mixed).expect("json");
    let err = decode_event(&registry(), Some(&bytes), WireHeaders::default(), &Limits::default())
        .expect_err("refused");
    assert_eq!(err.kind(), "upcast_failed", "{err}");
}

/// A valid v2 reading envelope, to be broken one way at a time.
fn valid() -> Value {
    let body = ReadingReported {
        site_id: "berlin-01".into(),
        metric: "humidity_pct".into(),
        value: 55.5,
        measured_at: None,
    };
    serde_json::from_slice(&event(body.into(), 3).to_json_bytes()).expect("json")
}

fn with(mut envelope: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    envelope
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("object")
        .insert(key.to_owned(), value);
    envelope
}

fn without(mut envelope: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    envelope.pointer_mut(parent).and_then(Value::as_object_mut).expect("object").remove(key);
    envelope
}

#[test]
fn invalid_events_are_refused_by_schema_and_decoder_naming_the_problem() {
    let schema = validator("events.schema.json");
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("missing site", without(valid(), "/payload/site_id"), "missing_field", "payload.site_id"),
        (
            "missing measured_at in v2",
            without(valid(), "/payload/measured_at"),
            "missing_field",
            "payload.measured_at",
        ),
        ("value as text", with(valid(), "/payload/value", json!("55.5")), "wrong_type", "payload.value"),
        ("value too large", with(valid(), "/payload/value", json!(2.0e9)), "invalid_value", "payload.value"),
        (
            "metric with a dash",
            with(valid(), "/payload/metric", json!("humidity-pct")),
            "invalid_value",
            "payload.metric",
        ),
        (
            "site in capitals",
            with(valid(), "/payload/site_id", json!("Berlin")),
            "invalid_value",
            "payload.site_id",
        ),
        (
            "NUL in the site",
            with(valid(), "/payload/site_id", json!("b\u{0}1")),
            "invalid_value",
            "payload.site_id",
        ),
        (
            "measured_at with an offset",
            with(valid(), "/payload/measured_at", json!("2026-03-01T12:00:00+01:00")),
            "wrong_type",
            "payload.measured_at",
        ),
        (
            "measured in 1970",
            with(valid(), "/payload/measured_at", json!("1970-01-01T00:00:00Z")),
            "invalid_value",
            "payload.measured_at",
        ),
        (
            "unknown payload field",
            with(valid(), "/payload/unit", json!("%")),
            "unknown_field",
            "payload.unit",
        ),
        (
            "unknown event type",
            with(valid(), "/event_type", json!("DeviceTeleported")),
            "unknown_event_type",
            "DeviceTeleported",
        ),
        (
            "another application's aggregate",
            with(valid(), "/aggregate_type", json!("order")),
            "invalid_value",
            "aggregate_type",
        ),
        (
            "future schema version",
            with(valid(), "/schema_version", json!(3)),
            "unsupported_schema_version",
            "version 3",
        ),
        (
            "NUL in a reason",
            with(
                with(with(valid(), "/event_type", json!("DeviceWentOffline")), "/schema_version", json!(1)),
                "/payload",
                json!({"reason": "a\u{0}b"}),
            ),
            "invalid_value",
            "payload.reason",
        ),
    ];
    for (what, json, kind, names) in cases {
        let bytes = serde_json::to_vec(&json).expect("json");
        let err = decode_event(&registry(), Some(&bytes), WireHeaders::default(), &Limits::default())
            .expect_err(what);
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert!(err.to_string().contains(names), "{what}: `{err}` should name `{names}`");
        assert!(!schema.is_valid(&json), "{what}: the schema accepts it");
    }
}

/// `producer/produce.py --dry-run` (no broker needed): the same seed gives the same bytes,
/// every event it writes validates against `events.schema.json` and decodes through the
/// engine, each device's versions run 1, 2, 3, … (with the one gap `--hostile` asks for), and
/// it writes each hostile case once, each for a device of its own.
#[test]
fn the_python_producer_follows_the_schemas_and_is_deterministic() {
    let run = |seed: &str, name: &str| -> String {
        let out = std::env::temp_dir().join(format!("telemetry-dry-run-{}-{name}.jsonl", std::process::id()));
        let status = std::process::Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("producer/produce.py"))
            .args([
                "--dry-run",
                "--hostile",
                "--devices",
                "30",
                "--sites",
                "4",
                "--events-per-device",
                "25",
                "--seed",
                seed,
            ])
            .arg("--events-out")
            .arg(&out)
            .status()
            .expect("python3 runs (the producer needs Python 3)");
        assert!(status.success(), "produce.py --dry-run failed: {status}");
        let text = std::fs::read_to_string(&out).expect("events file");
        let _ = std::fs::remove_file(&out);
        text
    };
    let first = run("5", "a");
    assert_eq!(first, run("5", "b"), "the same seed gives the same events");
    assert_ne!(first, run("6", "c"), "another seed gives other events");

    let schema = validator("events.schema.json");
    let mut versions: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let mut hostile = Vec::new();
    for line in first.lines() {
        let record: Value = serde_json::from_str(line).expect("a JSON line");
        if record["kind"] == "hostile" {
            hostile.push((
                record["case"].as_str().expect("case").to_owned(),
                record["aggregate_id"].as_str().expect("id").to_owned(),
            ));
            continue;
        }
        let value = record["value"].as_str().expect("an event's value");
        let envelope: Value = serde_json::from_str(value).expect("JSON");
        let errors = schema_errors(&schema, &envelope);
        assert!(errors.is_empty(), "{errors:?}\n{envelope:#}");
        let event =
            decode_event(&registry(), Some(value.as_bytes()), WireHeaders::default(), &Limits::default())
                .unwrap_or_else(|e| panic!("{e}: {value}"));
        versions.entry(event.meta.aggregate_id.to_string()).or_default().push(event.meta.aggregate_version);
    }
    assert_eq!(versions.len(), 30);
    let gap_victim =
        hostile.iter().find(|(case, _)| case == "version_gap").map(|(_, id)| id.clone()).expect("a gap");
    for (device, seen) in &versions {
        let expected: Vec<u64> = (1..=25).filter(|v| device != &gap_victim || *v != 4).collect();
        assert_eq!(seen, &expected, "device {device}'s versions in the order written");
    }
    let victims: std::collections::BTreeSet<&str> = hostile.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!((hostile.len(), victims.len()), (7, 7), "seven hostile cases, one device each: {hostile:?}");
}
