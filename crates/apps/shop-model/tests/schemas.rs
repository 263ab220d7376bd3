//! The Rust types against the JSON Schemas in `schemas/` (the shop's events within the
//! engine's envelope): every event this crate writes
//! validates against its schema, every schema file belongs to a known event type and
//! version, and invalid events are refused by both the schema and the decoder, the decoder
//! naming the problem.

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use jsonschema::{Retrieve, Uri, Validator};
use prism_events::{decode_event, Event, EventPosition, Limits, WireHeaders};
use serde_json::{json, Value};
use shop_model::events::*;
use shop_model::{registry, EventType, ShopEvent};
use uuid::Uuid;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").canonicalize().expect("schemas/ exists")
}

/// Resolves the schemas' relative `$ref`s from disk.
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

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn line(product: u128, quantity: u32, unit_price_cents: i64) -> OrderLine {
    OrderLine { product_id: id(product), quantity, unit_price_cents }
}

/// One valid payload of every event type.
fn sample_payloads() -> Vec<ShopEvent> {
    let lines = vec![line(0xa1, 2, 1250), line(0xa2, 1, 99)];
    vec![
        UserRegistered {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            marketing_opt_in: true,
        }
        .into(),
        UserProfileChanged {
            email: None,
            display_name: Some("Ada L.".into()),
            marketing_opt_in: Some(false),
        }
        .into(),
        ProductListed { sku: "SKU-1".into(), name: "Teapot".into(), price_cents: 2599, stock: 10 }.into(),
        ProductPriceChanged { price_cents: 2499, previous_price_cents: 2599 }.into(),
        ProductRestocked { quantity: -3, stock_after: 7 }.into(),
        ProductDelisted { reason: String::new() }.into(),
        StockReserved { order_id: id(0x0d), quantity: 2 }.into(),
        StockReleased { order_id: id(0x0d), quantity: 2 }.into(),
        StockShipped { order_id: id(0x0e), quantity: 999 }.into(),
        CartOpened { user_id: id(1) }.into(),
        CartItemAdded { product_id: id(0xa1), quantity: 2, unit_price_cents: 1250 }.into(),
        CartItemRemoved { product_id: id(0xa1) }.into(),
        CartCheckedOut { order_id: id(0x0d) }.into(),
        OrderPlaced { user_id: id(1), cart_id: Some(id(2)), lines: lines.clone(), total_cents: 2599 }.into(),
        OrderPlaced { user_id: id(1), cart_id: None, lines: lines.clone(), total_cents: 2599 }.into(),
        OrderPaymentRequested { amount_cents: 2599, method: PaymentMethod::BankTransfer }.into(),
        OrderPaymentSucceeded {
            payment_reference: "pay_1".into(),
            user_id: id(1),
            amount_cents: 2599,
            lines,
        }
        .into(),
        OrderPaymentFailed { reason: "card declined".into() }.into(),
        OrderShipped { carrier: "DHL".into(), tracking_code: "JD0001".into() }.into(),
        OrderCancelled { reason: "changed my mind".into() }.into(),
    ]
}

fn event(body: ShopEvent, version: u64) -> Event {
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id: id(0xfeed),
        aggregate_version: version,
        occurred_at: Utc.with_ymd_and_hms(2026, 11, 23, 12, 30, 0).single().expect("valid date"),
        correlation_id: Uuid::new_v4(),
        causation_id: Uuid::new_v4(),
    };
    Event::new(position, body)
}

fn schema_errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[test]
fn every_event_validates_against_its_schema_and_round_trips() {
    let envelope_schema = validator("events.schema.json");
    let samples = sample_payloads();
    for &event_type in EventType::ALL {
        assert!(samples.iter().any(|s| s.event_type() == event_type), "no sample for {event_type}: add one");
    }
    for (i, body) in samples.into_iter().enumerate() {
        let event_type = body.event_type();
        let payload_schema = validator(&format!(
            "events/{}/{}.v{}.schema.json",
            event_type.aggregate_type(),
            event_type,
            event_type.current_schema_version()
        ));
        let event = event(body, i as u64 + 1);
        let bytes = event.to_json_bytes();
        let json: Value = serde_json::from_slice(&bytes).expect("JSON");
        let errors = schema_errors(&envelope_schema, &json);
        assert!(errors.is_empty(), "{event_type} envelope: {errors:?}\n{json:#}");
        let errors = schema_errors(&payload_schema, &json["payload"]);
        assert!(errors.is_empty(), "{event_type} payload: {errors:?}\n{json:#}");

        let headers = WireHeaders {
            event_type: Some(event_type.as_str().as_bytes()),
            schema_version: Some(event_type.current_schema_version().to_string().into_bytes().leak()),
        };
        let decoded = decode_event(&registry(), Some(&bytes), headers, &Limits::default())
            .unwrap_or_else(|e| panic!("{event_type} does not decode: {e}"));
        assert_eq!(decoded, event, "{event_type} changed in a round trip");
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
            .expect("the folder names one of the shop's aggregate types");
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
}

#[test]
fn an_old_schema_version_validates_and_is_upcast_on_decode() {
    let v1 = json!({
        "event_id": "7b0f7c4e-4b7e-4d0b-9a43-6f6d8a3c2b10", "event_type": "UserRegistered",
        "schema_version": 1, "aggregate_type": "user",
        "aggregate_id": "00000000-0000-0000-0000-000000000001", "aggregate_version": 1,
        "occurred_at": "2026-11-23T12:00:00Z",
        "correlation_id": "00000000-0000-0000-0000-0000000000c1",
        "causation_id": "00000000-0000-0000-0000-0000000000c2",
        "payload": {"email": "ada@example.com", "name": "Ada"}
    });
    let errors = schema_errors(&validator("events.schema.json"), &v1);
    assert!(errors.is_empty(), "{errors:?}");
    let bytes = serde_json::to_vec(&v1).expect("json");
    let decoded =
        decode_event(&registry(), Some(&bytes), WireHeaders::default(), &Limits::default()).expect("decodes");
    assert_eq!(
        decoded.body::<ShopEvent>().cloned().expect("a shop event"),
        ShopEvent::UserRegistered(UserRegistered {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            marketing_opt_in: false
        })
    );
    // The payload a decoded event gives is its current version, written from the typed body
    // (the event holds no second, JSON copy of it), and publishes as an equal event.
    assert_eq!(decoded.meta.schema_version, 2);
    assert_eq!(
        decoded.payload(),
        json!({"email": "ada@example.com", "display_name": "Ada", "marketing_opt_in": false})
    );
    let republished =
        decode_event(&registry(), Some(&decoded.to_json_bytes()), WireHeaders::default(), &Limits::default())
            .expect("the republished event decodes");
    assert_eq!(republished, decoded);
}

/// An envelope that is valid, to be broken one way at a time.
fn valid_envelope() -> Value {
    let event = event(
        OrderPlaced { user_id: id(1), cart_id: None, lines: vec![line(0xa1, 2, 500)], total_cents: 1000 }
            .into(),
        3,
    );
    serde_json::from_slice(&event.to_json_bytes()).expect("json")
}

/// Sets (or adds) the value at `pointer`.
fn with(mut envelope: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    match envelope.pointer_mut(parent).unwrap_or_else(|| panic!("{parent} exists")) {
        Value::Object(object) => {
            object.insert(key.to_owned(), value);
        }
        Value::Array(array) => array[key.parse::<usize>().expect("index")] = value,
        other => panic!("{parent} is {other}"),
    }
    envelope
}

fn without(mut envelope: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    envelope.pointer_mut(parent).and_then(Value::as_object_mut).expect("object").remove(key);
    envelope
}

struct Invalid {
    what: &'static str,
    bytes: Vec<u8>,
    /// The decoder's error kind.
    kind: &'static str,
    /// Text the decoder's message must contain: the field or limit it names.
    names: &'static str,
    /// Whether the schema can see the problem (size, depth and encoding are the decoder's).
    schema_rejects: bool,
}

fn invalid(what: &'static str, json: Value, kind: &'static str, names: &'static str) -> Invalid {
    Invalid { what, bytes: serde_json::to_vec(&json).expect("json"), kind, names, schema_rejects: true }
}

fn invalid_samples() -> Vec<Invalid> {
    let e = valid_envelope;
    let mut deep = json!({"x": 1});
    for _ in 0..40 {
        deep = json!({ "x": deep });
    }
    let mut oversize = e();
    oversize["payload"]["note"] = Value::String("x".repeat(2 * 1024 * 1024));
    vec![
        invalid("missing envelope field", without(e(), "/aggregate_id"), "missing_field", "aggregate_id"),
        invalid(
            "missing payload field",
            without(e(), "/payload/user_id"),
            "missing_field",
            "payload.user_id",
        ),
        invalid(
            "wrong type in envelope",
            with(e(), "/aggregate_version", json!("three")),
            "wrong_type",
            "aggregate_version",
        ),
        invalid(
            "wrong type in payload",
            with(e(), "/payload/lines/0/quantity", json!("2")),
            "wrong_type",
            "payload.lines[0].quantity",
        ),
        invalid(
            "unknown event type",
            with(e(), "/event_type", json!("OrderTeleported")),
            "unknown_event_type",
            "OrderTeleported",
        ),
        invalid(
            "negative aggregate version",
            with(e(), "/aggregate_version", json!(-1)),
            "wrong_type",
            "aggregate_version",
        ),
        invalid(
            "zero aggregate version",
            with(e(), "/aggregate_version", json!(0)),
            "invalid_value",
            "aggregate_version",
        ),
        invalid(
            "negative schema version",
            with(e(), "/schema_version", json!(-2)),
            "wrong_type",
            "schema_version",
        ),
        invalid(
            "future schema version",
            with(e(), "/schema_version", json!(9)),
            "unsupported_schema_version",
            "version 9",
        ),
        invalid("unknown envelope field", with(e(), "/shard", json!(1)), "unknown_field", "shard"),
        invalid(
            "unknown payload field",
            with(e(), "/payload/coupon", json!("FREE")),
            "unknown_field",
            "payload.coupon",
        ),
        invalid(
            "aggregate type of another event",
            with(e(), "/aggregate_type", json!("cart")),
            "aggregate_type_mismatch",
            "cart",
        ),
        invalid(
            "local time offset",
            with(e(), "/occurred_at", json!("2026-11-23T12:00:00+02:00")),
            "wrong_type",
            "occurred_at",
        ),
        invalid("malformed UUID", with(e(), "/event_id", json!("not-a-uuid")), "wrong_type", "event_id"),
        invalid(
            "zero quantity",
            with(e(), "/payload/lines/0/quantity", json!(0)),
            "invalid_value",
            "payload.lines[0].quantity",
        ),
        // Arithmetic across fields is beyond JSON Schema: the schema documents the rule, the
        // decoder enforces it.
        Invalid {
            schema_rejects: false,
            ..invalid(
                "total disagrees with lines",
                with(e(), "/payload/total_cents", json!(999)),
                "invalid_value",
                "payload.total_cents",
            )
        },
        invalid("payload not an object", with(e(), "/payload", json!([1, 2])), "wrong_type", "payload"),
        Invalid {
            what: "over-deep nesting",
            bytes: serde_json::to_vec(&with(e(), "/payload/user_id", deep)).expect("json"),
            kind: "too_deep",
            names: "16 levels",
            schema_rejects: true,
        },
        Invalid {
            what: "oversize",
            bytes: serde_json::to_vec(&oversize).expect("json"),
            kind: "too_large",
            names: "limit of 1048576 bytes",
            schema_rejects: true,
        },
        Invalid {
            what: "invalid JSON",
            bytes: b"{\"event_id\": ".to_vec(),
            kind: "invalid_json",
            names: "line 1",
            schema_rejects: false,
        },
        Invalid {
            what: "invalid UTF-8",
            bytes: vec![b'{', 0xff, 0xfe, b'}'],
            kind: "invalid_utf8",
            names: "offset 1",
            schema_rejects: false,
        },
    ]
}

#[test]
fn invalid_events_are_rejected_naming_the_problem() {
    let envelope_schema = validator("events.schema.json");
    for sample in invalid_samples() {
        let err = decode_event(&registry(), Some(&sample.bytes), WireHeaders::default(), &Limits::default())
            .expect_err(sample.what);
        assert_eq!(err.kind(), sample.kind, "{}: {err}", sample.what);
        assert!(
            err.to_string().contains(sample.names),
            "{}: message `{err}` should name `{}`",
            sample.what,
            sample.names
        );
        if sample.schema_rejects {
            let json: Value = serde_json::from_slice(&sample.bytes).expect("sample is JSON");
            assert!(!envelope_schema.is_valid(&json), "{}: the schema accepts it", sample.what);
        }
    }
}

#[test]
fn a_stock_event_outside_an_order_lines_quantity_is_rejected_by_schema_and_decoder() {
    let envelope_schema = validator("events.schema.json");
    let valid: Value = serde_json::from_slice(
        &event(StockReserved { order_id: id(0x0d), quantity: 3 }.into(), 4).to_json_bytes(),
    )
    .expect("json");
    assert!(envelope_schema.is_valid(&valid), "{:?}", schema_errors(&envelope_schema, &valid));
    for (quantity, what) in [(json!(0), "none"), (json!(1000), "above the line limit")] {
        for event_type in ["StockReserved", "StockReleased", "StockShipped"] {
            let broken = with(
                with(valid.clone(), "/event_type", json!(event_type)),
                "/payload/quantity",
                quantity.clone(),
            );
            assert!(!envelope_schema.is_valid(&broken), "{event_type} with {what}: the schema accepts it");
            let bytes = serde_json::to_vec(&broken).expect("json");
            let err = decode_event(&registry(), Some(&bytes), WireHeaders::default(), &Limits::default())
                .expect_err("the decoder refuses it");
            assert_eq!(err.kind(), "invalid_value", "{event_type} with {what}: {err}");
            assert!(err.to_string().contains("payload.quantity"), "{event_type}: {err}");
        }
    }
    let foreign = with(valid, "/aggregate_type", json!("order"));
    assert!(!envelope_schema.is_valid(&foreign), "stock events belong to products");
}

#[test]
fn a_null_value_and_disagreeing_headers_are_rejected() {
    let err = decode_event(&registry(), None, WireHeaders::default(), &Limits::default()).expect_err("null");
    assert_eq!(err.kind(), "missing_payload");

    let bytes = serde_json::to_vec(&valid_envelope()).expect("json");
    let headers = WireHeaders { event_type: Some(b"OrderShipped"), schema_version: None };
    let err = decode_event(&registry(), Some(&bytes), headers, &Limits::default()).expect_err("mismatch");
    assert_eq!(err.kind(), "header_mismatch");
    assert!(err.to_string().contains("OrderShipped") && err.to_string().contains("OrderPlaced"), "{err}");

    let headers = WireHeaders { event_type: None, schema_version: Some(b"7") };
    let err = decode_event(&registry(), Some(&bytes), headers, &Limits::default()).expect_err("mismatch");
    assert!(err.to_string().contains("schema_version"), "{err}");
}
