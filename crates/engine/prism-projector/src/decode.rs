//! Kafka message → [`SourceMessage`]: the event it carries, or why it is poison and which
//! aggregate it belongs to (so later events of that aggregate can be parked behind it).

use prism_events::decode::{decode_envelope, WireHeaders};
use prism_events::{
    decode_event, AggregateType, EventRegistry, Limits, HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION,
};
use prism_kafka::ConsumedMessage;
use prism_read_store::projection::{MessageContent, Poison, SourceMessage};
use uuid::Uuid;

/// Decodes one message of `topic_type`'s topic into an event of `events`' application.
pub fn decode(
    message: &ConsumedMessage,
    events: &EventRegistry,
    topic_type: AggregateType,
    limits: &Limits,
) -> SourceMessage {
    let (key, value) = (message.shared_key(), message.shared_payload());
    let key_id =
        message.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| Uuid::parse_str(k).ok());
    let content = match decode_content(message, events, topic_type, limits, key_id) {
        Ok(content) => content,
        Err(poison) => MessageContent::Poison(poison),
    };
    SourceMessage { offset: message.offset(), key, value, content }
}

fn decode_content(
    message: &ConsumedMessage,
    events: &EventRegistry,
    topic_type: AggregateType,
    limits: &Limits,
    key_id: Option<Uuid>,
) -> Result<MessageContent, Poison> {
    let headers = WireHeaders {
        event_type: message.header(HEADER_EVENT_TYPE),
        schema_version: message.header(HEADER_SCHEMA_VERSION),
    };
    let key_aggregate = key_id.map(|id| (topic_type, id));
    match decode_event(events, message.payload(), headers, limits) {
        Ok(event) => {
            if event.meta.aggregate_type != topic_type {
                return Err(Poison {
                    aggregate: key_aggregate,
                    aggregate_version: Some(event.meta.aggregate_version),
                    event_type: Some(event.event_type().to_owned()),
                    kind: "wrong_topic".into(),
                    message: format!(
                        "a {} event on the {} topic: each aggregate type has its own topic",
                        event.meta.aggregate_type, topic_type
                    ),
                });
            }
            if key_id != Some(event.meta.aggregate_id) {
                let shown = message.key().map(String::from_utf8_lossy).unwrap_or_else(|| "(none)".into());
                return Err(Poison {
                    aggregate: key_aggregate.or(Some((topic_type, event.meta.aggregate_id))),
                    aggregate_version: Some(event.meta.aggregate_version),
                    event_type: Some(event.event_type().to_owned()),
                    kind: "key_mismatch".into(),
                    message: format!(
                        "message key `{}` is not the event's aggregate_id {}: per-aggregate order needs the aggregate id as key",
                        prism_events::error::clip(&shown),
                        event.meta.aggregate_id
                    ),
                });
            }
            Ok(MessageContent::Event(event))
        }
        Err(error) => {
            // Learn what we can about the message for the dead-letter record and parking.
            let envelope = decode_envelope(message.payload(), limits).ok();
            let envelope_aggregate = envelope.as_ref().and_then(|e| {
                (e.aggregate_type == topic_type.as_str()).then_some((topic_type, e.aggregate_id))
            });
            Err(Poison {
                aggregate: key_aggregate.or(envelope_aggregate),
                aggregate_version: envelope.as_ref().map(|e| e.aggregate_version).filter(|v| *v > 0),
                event_type: envelope.as_ref().map(|e| prism_events::error::clip(&e.event_type)),
                kind: error.kind().into(),
                message: error.to_string(),
            })
        }
    }
}
