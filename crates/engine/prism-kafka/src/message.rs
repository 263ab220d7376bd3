//! [`ConsumedMessage`]: a message as Prism holds it from the moment it leaves librdkafka until
//! its batch landed — its offset, its timestamp, and its key, value and headers in one
//! allocation.
//!
//! A projector holds many thousands of messages at once: every partition's buffer and the
//! batches in flight. librdkafka's own copy of a message (rdkafka's `OwnedMessage`) takes seven
//! allocations — the topic's name, the key, the value, and a copy of the headers in
//! librdkafka's heap (a list and one allocation per header) — for what a partition's worker
//! already knows (the topic) or reads once (the headers, at decoding). Holding the bytes back
//! to back makes a message cost its bytes and a few dozen more, and lets the poll thread copy
//! it out of librdkafka with one allocation. The bytes are shared ([`Bytes`]): a decoded
//! message keeps its key and value (for a dead letter it may become) as views of them, not
//! copies.

use bytes::Bytes;

use rdkafka::message::{Headers, Message};

/// One consumed message: what a [`crate::consumer::BatchHandler`] receives and a
/// [`crate::partition_reader::PartitionReader`] reads.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// Its offset in the partition.
    offset: i64,
    /// Its timestamp (creation or log-append time, as the topic says), in milliseconds since
    /// the epoch, when it has one.
    timestamp_ms: Option<i64>,
    /// The key, then the value, then the headers (see [`encode_header`]).
    bytes: Bytes,
    /// Where the key ends in `bytes`; `None` when the message has no key.
    key_end: Option<usize>,
    /// Where the value ends in `bytes` (it starts where the key ends); `None` when the
    /// message has no value (a tombstone).
    value_end: Option<usize>,
}

impl ConsumedMessage {
    /// A message from its parts, in the order Kafka gives them.
    pub fn new(
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Self {
        Self::assemble(offset, timestamp_ms, key, value, || headers.iter().copied())
    }

    /// Copies a message librdkafka handed over.
    pub fn from_kafka(message: &impl Message) -> Self {
        Self::assemble(
            message.offset(),
            message.timestamp().to_millis(),
            message.key(),
            message.payload(),
            || message.headers().into_iter().flat_map(|wire| wire.iter()).map(|h| (h.key, h.value)),
        )
    }

    /// Builds the message in one allocation; `headers` is walked twice (to size the
    /// allocation, then to fill it), so a message needs no list of its headers on the way.
    fn assemble<'h, H>(
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl Fn() -> H,
    ) -> Self
    where
        H: Iterator<Item = (&'h str, Option<&'h [u8]>)>,
    {
        let header_bytes: usize =
            headers().map(|(name, value)| 8 + name.len() + value.map_or(0, <[u8]>::len)).sum();
        let mut bytes =
            Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + header_bytes);
        bytes.extend_from_slice(key.unwrap_or_default());
        let key_end = key.map(|_| bytes.len());
        bytes.extend_from_slice(value.unwrap_or_default());
        let value_end = value.map(|_| bytes.len());
        for (name, value) in headers() {
            encode_header(&mut bytes, name, value);
        }
        Self { offset, timestamp_ms, bytes: Bytes::from(bytes), key_end, value_end }
    }

    /// The bytes of its key, value and headers: what holding it costs, less a few dozen bytes
    /// of bookkeeping. Flow control and batches are bounded by it as well as by message count.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Its timestamp in milliseconds since the epoch, when it has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// Where its key lies in `bytes`, if it has one.
    fn key_range(&self) -> Option<std::ops::Range<usize>> {
        self.key_end.map(|end| 0..end)
    }

    /// Where its value lies in `bytes` (right after the key), unless it is a tombstone.
    fn value_range(&self) -> Option<std::ops::Range<usize>> {
        self.value_end.map(|end| self.key_end.unwrap_or(0)..end)
    }

    /// Its key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_range().map(|range| &self.bytes[range])
    }

    /// Its value, unless it is a tombstone.
    pub fn payload(&self) -> Option<&[u8]> {
        self.value_range().map(|range| &self.bytes[range])
    }

    /// Its key as a view that shares the message's bytes (no copy), for keeping it beyond
    /// the message.
    pub fn shared_key(&self) -> Option<Bytes> {
        self.key_range().map(|range| self.bytes.slice(range))
    }

    /// Its value as a view that shares the message's bytes (no copy).
    pub fn shared_payload(&self) -> Option<Bytes> {
        self.value_range().map(|range| self.bytes.slice(range))
    }

    /// Its headers in the order they were sent: name and value (`None` for a header without
    /// one).
    pub fn headers(&self) -> HeaderIter<'_> {
        let start = self.value_end.or(self.key_end).unwrap_or(0);
        HeaderIter { rest: &self.bytes[start..] }
    }

    /// The value of the first header called `name`, if there is one and it has a value.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| *n == name).and_then(|(_, value)| value)
    }
}

impl std::fmt::Debug for ConsumedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumedMessage")
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("key", &self.key().map(String::from_utf8_lossy))
            .field("payload_bytes", &self.payload().map(<[u8]>::len))
            .field("headers", &self.headers().map(|(name, _)| name).collect::<Vec<_>>())
            .finish()
    }
}

/// Marks a header without a value in its length field.
const NO_VALUE: u32 = u32::MAX;

/// Appends a header: the name's length (4 bytes, little-endian), the name, the value's length
/// ([`NO_VALUE`] for none) and the value. Kafka's record format gives header names and values
/// 32-bit signed lengths, so no header a broker delivers is too long for these fields.
fn encode_header(bytes: &mut Vec<u8>, name: &str, value: Option<&[u8]>) {
    let length = |len: usize| u32::try_from(len).ok().filter(|&len| len != NO_VALUE);
    let name_len = length(name.len()).expect("a Kafka header name is shorter than 2 GiB");
    bytes.extend_from_slice(&name_len.to_le_bytes());
    bytes.extend_from_slice(name.as_bytes());
    match value {
        Some(value) => {
            let value_len = length(value.len()).expect("a Kafka header value is shorter than 2 GiB");
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(value);
        }
        None => bytes.extend_from_slice(&NO_VALUE.to_le_bytes()),
    }
}

/// The headers of a [`ConsumedMessage`], in order.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    /// The encoded headers not yet returned.
    rest: &'a [u8],
}

impl<'a> HeaderIter<'a> {
    fn take_len(&mut self) -> Option<u32> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(u32::from_le_bytes(*len))
    }

    fn take(&mut self, len: u32) -> Option<&'a [u8]> {
        if self.rest.len() < len as usize {
            return None;
        }
        let (taken, rest) = self.rest.split_at(len as usize);
        self.rest = rest;
        Some(taken)
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let name_len = self.take_len()?;
        // Written from a `&str` by `encode_header`, so it is UTF-8.
        let name = std::str::from_utf8(self.take(name_len)?).ok()?;
        let value = match self.take_len()? {
            NO_VALUE => None,
            len => Some(self.take(len)?),
        };
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_as_given() {
        let message = ConsumedMessage::new(
            42,
            Some(1_700_000_000_000),
            Some(b"aggregate-1"),
            Some(b"{\"event\":1}"),
            &[("prism-event-type", Some(b"OrderPlaced")), ("empty", Some(b"")), ("none", None)],
        );
        assert_eq!(message.offset(), 42);
        assert_eq!(message.timestamp_ms(), Some(1_700_000_000_000));
        assert_eq!(message.key(), Some(&b"aggregate-1"[..]));
        assert_eq!(message.payload(), Some(&b"{\"event\":1}"[..]));
        let headers: Vec<_> = message.headers().collect();
        assert_eq!(
            headers,
            vec![("prism-event-type", Some(&b"OrderPlaced"[..])), ("empty", Some(&b""[..])), ("none", None)]
        );
        assert_eq!(message.header("prism-event-type"), Some(&b"OrderPlaced"[..]));
        assert_eq!(message.header("none"), None);
        assert_eq!(message.header("missing"), None);
    }

    #[test]
    fn a_missing_key_or_value_is_not_an_empty_one() {
        let tombstone = ConsumedMessage::new(7, None, Some(b"k"), None, &[("h", Some(b"v"))]);
        assert_eq!(tombstone.key(), Some(&b"k"[..]));
        assert_eq!(tombstone.payload(), None);
        assert_eq!(tombstone.header("h"), Some(&b"v"[..]));

        let keyless = ConsumedMessage::new(8, None, None, Some(b"value"), &[]);
        assert_eq!(keyless.key(), None);
        assert_eq!(keyless.payload(), Some(&b"value"[..]));
        assert_eq!(keyless.headers().count(), 0);

        let empty = ConsumedMessage::new(9, None, Some(b""), Some(b""), &[]);
        assert_eq!(empty.key(), Some(&b""[..]));
        assert_eq!(empty.payload(), Some(&b""[..]));

        let nothing = ConsumedMessage::new(10, None, None, None, &[]);
        assert_eq!((nothing.key(), nothing.payload(), nothing.headers().count()), (None, None, 0));
    }

    #[test]
    fn same_named_headers_keep_their_order_and_the_first_answers() {
        let message =
            ConsumedMessage::new(0, None, None, Some(b"v"), &[("a", Some(b"1")), ("a", Some(b"2"))]);
        assert_eq!(message.header("a"), Some(&b"1"[..]));
        assert_eq!(
            message.headers().collect::<Vec<_>>(),
            vec![("a", Some(&b"1"[..])), ("a", Some(&b"2"[..]))]
        );
    }

    #[test]
    fn an_owned_kafka_message_converts_whole() {
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header { key: "prism-schema-version", value: Some("2") })
            .insert(rdkafka::message::Header { key: "flag", value: None::<&[u8]> });
        let kafka = rdkafka::message::OwnedMessage::new(
            Some(b"payload".to_vec()),
            Some(b"key".to_vec()),
            "shop.order.events".into(),
            rdkafka::Timestamp::CreateTime(123),
            3,
            99,
            Some(headers),
        );
        let message = ConsumedMessage::from_kafka(&kafka);
        assert_eq!(message.offset(), 99);
        assert_eq!(message.timestamp_ms(), Some(123));
        assert_eq!(message.key(), Some(&b"key"[..]));
        assert_eq!(message.payload(), Some(&b"payload"[..]));
        assert_eq!(
            message.headers().collect::<Vec<_>>(),
            vec![("prism-schema-version", Some(&b"2"[..])), ("flag", None)]
        );
    }

    #[test]
    fn it_holds_its_bytes_in_one_allocation_of_their_size() {
        let message =
            ConsumedMessage::new(0, None, Some(b"0123456789"), Some(&[7; 300]), &[("t", Some(b"x"))]);
        assert_eq!(message.bytes.len(), 10 + 300 + 4 + 1 + 4 + 1);
        assert_eq!(message.size(), message.bytes.len(), "what flow control counts is what it holds");
    }

    #[test]
    fn shared_key_and_value_are_views_of_the_message() {
        let message = ConsumedMessage::new(0, None, Some(b"key"), Some(b"value"), &[("t", Some(b"x"))]);
        let (key, value) = (message.shared_key().expect("a key"), message.shared_payload().expect("a value"));
        assert_eq!((&key[..], &value[..]), (&b"key"[..], &b"value"[..]));
        assert_eq!(key.as_ptr(), message.bytes.as_ptr(), "the key is not a copy");
        assert_eq!(value.as_ptr(), message.bytes[3..].as_ptr(), "the value is not a copy");
        let tombstone = ConsumedMessage::new(1, None, None, None, &[]);
        assert_eq!((tombstone.shared_key(), tombstone.shared_payload()), (None, None));
        let empty = ConsumedMessage::new(2, None, Some(b""), Some(b""), &[]);
        assert_eq!((empty.shared_key(), empty.shared_payload()), (Some(Bytes::new()), Some(Bytes::new())));
    }
}
