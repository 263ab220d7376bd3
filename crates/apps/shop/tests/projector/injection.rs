//! Events injected straight into the topics, as a misbehaving producer or an operator would:
//! duplicates and a full replay after an offset reset never apply anything twice (the totals
//! fed by many aggregates would show it); a version gap dead-letters the event and parks the
//! rest of its aggregate, per read model, and nothing of it is applied out of order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{dead_letter_counts, InProcess};
use prism_events::{AggregateType, Event};
use prism_projections::ProjectionName;
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::workload::Workload;
use prism_testkit::TestEnv;
use rdkafka::consumer::{CommitMode, Consumer};
use uuid::Uuid;

/// Dead letters each projection instance must record for an aggregate of `aggregate_type`
/// whose events after a gap number `after_gap` (the first is the gap, the rest are parked).
fn expected_dead_letters(aggregate_type: AggregateType, after_gap: i64, into: &mut BTreeMap<String, i64>) {
    for p in ProjectionName::ALL.into_iter().filter(|p| p.sources().contains(&aggregate_type)) {
        *into.entry(format!("{}_g1", p.as_str())).or_default() += after_gap;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_replays_and_gaps_never_double_apply_or_reorder() {
    prism_testkit::init_logging();
    let env = TestEnv::new().await.expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(21, 4_000);

    // A second workload of fresh aggregates, from which versions go missing.
    let others = Workload::generate(22, 600);
    let mut by_aggregate: BTreeMap<Uuid, Vec<Event>> = BTreeMap::new();
    for e in &others {
        by_aggregate.entry(e.meta.aggregate_id).or_default().push(e.clone());
    }
    let mut expected_dead = BTreeMap::new();
    let mut gapped: Vec<Event> = Vec::new();
    let mut out_of_order: Vec<Event> = Vec::new();
    let (mut gaps, mut swaps) = (0, 0);
    for stream in by_aggregate.values() {
        let aggregate_type = stream[0].meta.aggregate_type;
        if stream.len() >= 3 && gaps < 5 && aggregate_type == AggregateType::Order {
            // Version 2 never arrives.
            gaps += 1;
            gapped.extend(stream.iter().filter(|e| e.meta.aggregate_version != 2).cloned());
            expected_dead_letters(aggregate_type, stream.len() as i64 - 2, &mut expected_dead);
        } else if stream.len() >= 3 && swaps < 5 && aggregate_type == AggregateType::Cart {
            // Versions 2 and 3 arrive swapped: 3 is a gap, 2 is parked behind it, and so is
            // everything after.
            swaps += 1;
            let mut swapped = stream.clone();
            swapped.swap(1, 2);
            out_of_order.extend(swapped);
            expected_dead_letters(aggregate_type, stream.len() as i64 - 1, &mut expected_dead);
        } else {
            gapped.extend(stream.iter().cloned());
        }
    }
    assert!(
        gaps == 5 && swaps == 5,
        "the second workload has enough long streams ({gaps} gaps, {swaps} swaps)"
    );

    // Everything once, then a tenth of it again, then the injected streams.
    publish_events(&producer, env.topic_prefix(), &events).await.expect("publish");
    let again: Vec<Event> = events.iter().step_by(10).cloned().collect();
    publish_events(&producer, env.topic_prefix(), &again).await.expect("publish duplicates");
    publish_events(&producer, env.topic_prefix(), &gapped).await.expect("publish gapped");
    publish_events(&producer, env.topic_prefix(), &out_of_order).await.expect("publish out of order");

    // What the read models must converge to: the oracle stops every aggregate at its first
    // missing version; an out-of-order aggregate stays at version 1 until redriven.
    let mut produced: Vec<Event> = events.clone();
    produced.extend(gapped.iter().cloned());
    produced.extend(out_of_order.iter().filter(|e| e.meta.aggregate_version == 1).cloned());

    let projector = InProcess::start(env.config.clone());
    env.wait_for_oracle(&produced, CacheCheck::Complete, Duration::from_secs(120))
        .await
        .expect("oracle after injection");
    assert_eq!(dead_letter_counts(&env).await, expected_dead, "dead letters per read model");
    projector.stop().await;

    // Reset the group to the earliest offsets, as an operator rebuilding with the standard
    // Kafka tools would, and replay everything: still equal, totals not doubled.
    let group = prism_projector::group_id(&env.config);
    let topics = env.event_topics();
    let reset = prism_testkit::kafka::consumer(&env.config, &group, &[]).expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for ((topic, partition), _) in
        prism_testkit::kafka::end_offsets(&env.config, &topics).await.expect("offsets")
    {
        tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(0)).expect("offset");
    }
    reset.commit(&tpl, CommitMode::Sync).expect("reset offsets to earliest");
    drop(reset);

    let projector = InProcess::start(env.config.clone());
    let committed_before = tokio::time::Instant::now();
    env.wait_for_oracle(&produced, CacheCheck::Complete, Duration::from_secs(120))
        .await
        .expect("oracle after replay");
    // The replay must actually have happened before we judge it: wait until the group has
    // committed the end of every topic again.
    let ends = prism_testkit::kafka::end_offsets(&env.config, &topics).await.expect("end offsets");
    loop {
        let committed =
            prism_testkit::kafka::committed_offsets(&env.config, &group, &topics).await.expect("committed");
        if ends.iter().all(|(tp, end)| committed.get(tp).copied().unwrap_or(0) >= *end) {
            break;
        }
        assert!(
            committed_before.elapsed() < Duration::from_secs(120),
            "replay never caught up: {committed:?} / {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    env.wait_for_oracle(&produced, CacheCheck::Complete, Duration::from_secs(10))
        .await
        .expect("oracle after replay");
    assert_eq!(dead_letter_counts(&env).await, expected_dead, "a replay records no dead letter twice");
    projector.stop().await;
}
