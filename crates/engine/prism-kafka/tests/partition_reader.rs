//! The bulk replays' partition reader against the real broker: a range is delivered exactly
//! (every offset of it, in order, nothing past its end), in chunks of the size asked for; a
//! range that runs past the log ends where the log ends; and a reader that stopped fetching
//! while idle and is then pointed at another partition reads exactly that one.

use std::time::Duration;

use prism_kafka::partition_reader::{ChunkSize, PartitionReader};
use prism_kafka::ConsumedMessage;
use prism_testkit::kafka::{end_offsets, producer};
use prism_testkit::{GroupProtocol, TestEnv};
use rdkafka::producer::FutureRecord;

/// Reads `from..end` of the reader's partition in chunks of `max` messages; returns every
/// offset read and the offset the last chunk said comes next.
async fn read_range(reader: &PartitionReader, end: i64, max: usize) -> (Vec<i64>, i64) {
    read_range_in(reader, end, ChunkSize { messages: max, bytes: usize::MAX }).await
}

/// As [`read_range`], in chunks of at most `max` messages or (up to the message that reaches
/// it) bytes.
async fn read_range_in(reader: &PartitionReader, end: i64, max: ChunkSize) -> (Vec<i64>, i64) {
    let mut offsets = Vec::new();
    loop {
        let chunk = reader.read(end, max).await.expect("read");
        assert!(
            chunk.messages.len() <= max.messages,
            "a chunk of {} messages; {} asked for",
            chunk.messages.len(),
            max.messages
        );
        let bytes: usize = chunk.messages.iter().map(ConsumedMessage::size).sum();
        let last = chunk.messages.last().map_or(0, ConsumedMessage::size);
        assert!(
            bytes - last < max.bytes,
            "a chunk of {bytes} bytes went on past {} bytes (its last message has {last})",
            max.bytes
        );
        // Message `i` was produced to partition `i % 2` (see the test), so each value says which
        // partition it came from.
        let (_, partition) = reader.partition();
        for message in &chunk.messages {
            let value = std::str::from_utf8(message.payload().expect("a value")).expect("text");
            let produced: i32 =
                value.strip_prefix("message ").and_then(|i| i.parse().ok()).expect("message <i>");
            assert_eq!(
                produced % 2,
                partition,
                "`{value}` (offset {}) is of another partition",
                message.offset()
            );
        }
        offsets.extend(chunk.messages.iter().map(ConsumedMessage::offset));
        if chunk.next >= end {
            return (offsets, chunk.next);
        }
        assert!(!chunk.messages.is_empty(), "an empty chunk before the end ({} of {end})", chunk.next);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_are_read_exactly_also_by_a_reader_that_stopped_fetching_and_moved_on() {
    prism_testkit::init_logging();
    let app = prism_testkit::probe::application();
    let env = TestEnv::for_protocol(&app, GroupProtocol::Classic, &[("PRISM__TOPICS__PARTITIONS", "2")])
        .await
        .expect("test environment");
    let topic = prism_testkit::probe::PROBE.topic(env.topic_prefix());
    let producer = producer(&env.config).expect("producer");
    for i in 0..1_000 {
        let (key, value) = (format!("key-{}", i % 16), format!("message {i}"));
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value).partition(i % 2),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("produce");
    }
    let ends = end_offsets(&env.config, std::slice::from_ref(&topic)).await.expect("end offsets");
    let end_of = |partition: i32| ends[&(topic.clone(), partition)];
    assert_eq!((end_of(0), end_of(1)), (500, 500));

    // A range inside the log, in chunks.
    let mut reader = PartitionReader::open(&env.config.kafka, &topic, 0, 100).expect("reader");
    let (offsets, next) = read_range(&reader, 350, 64).await;
    assert_eq!(offsets, (100..350).collect::<Vec<i64>>(), "partition 0, offsets 100..350");
    assert_eq!(next, 350);

    // Idle, then another partition from another offset: exactly that range, even though the
    // client had fetched part of the old partition's rest before it stopped.
    reader.stop_fetching().expect("stop fetching");
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.retarget(&topic, 1, 40).expect("retarget");
    let (offsets, next) = read_range(&reader, 300, 1_000).await;
    assert_eq!(offsets, (40..300).collect::<Vec<i64>>(), "partition 1, offsets 40..300");
    assert_eq!(next, 300);

    // A range registered past what the log holds ends at the log's end.
    reader.stop_fetching().expect("stop fetching");
    reader.retarget(&topic, 0, 450).expect("retarget");
    let (offsets, next) = read_range(&reader, 600, 1_000).await;
    assert_eq!(offsets, (450..500).collect::<Vec<i64>>(), "partition 0, offsets 450..500");
    assert_eq!(next, 600, "the range is done at its end once the log has nothing more");

    // Chunks bounded by bytes: each message is `message <i>` under a key `key-<k>`, 14 to 17
    // bytes, so 64 bytes end a chunk at its fourth or fifth message.
    reader.stop_fetching().expect("stop fetching");
    reader.retarget(&topic, 1, 0).expect("retarget");
    let chunk = reader.read(500, ChunkSize { messages: 1_000, bytes: 64 }).await.expect("read");
    assert!(
        (4..=5).contains(&chunk.messages.len()),
        "a 64-byte chunk of {} messages: {:?}",
        chunk.messages.len(),
        chunk.messages.iter().map(ConsumedMessage::size).collect::<Vec<_>>()
    );
    assert_eq!(chunk.next, chunk.messages.len() as i64);
    let (offsets, next) = read_range_in(&reader, 500, ChunkSize { messages: 1_000, bytes: 64 }).await;
    assert_eq!(
        offsets,
        (chunk.next..500).collect::<Vec<i64>>(),
        "partition 1 after the first chunk, in 64-byte chunks"
    );
    assert_eq!(next, 500);
}
