//! Events injected straight into the topics, as a misbehaving producer or an operator would:
//! duplicates and a full replay after an offset reset never apply anything twice (the totals
//! fed by many aggregates would show it); a version gap dead-letters the event and parks the
//! rest of its aggregate, per read model, and nothing of it is applied out of order; when the
//! missing event arrives (late, or swapped with the next one), the gap heals by itself: the
//! missing event and the chain parked behind it apply in order, and their dead letters are
//! resolved.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::InProcess;
use prism_events::{AggregateType, Event};
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use rdkafka::consumer::{CommitMode, Consumer};
use shop::testing::workload::Workload;
use shop_model::aggregates::{CART, ORDER};
use uuid::Uuid;

/// Dead letters each projection instance must record for an aggregate of `aggregate_type`
/// whose events after a gap number `after_gap` (the first is the gap, the rest are parked).
fn expected_dead_letters(aggregate_type: AggregateType, after_gap: i64, into: &mut BTreeMap<String, i64>) {
    for model in shop_model::read_models::all().iter().filter(|m| m.is_fed_by(aggregate_type)) {
        *into.entry(format!("{}_g1", model.name())).or_default() += after_gap;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_replays_and_gaps_never_double_apply_or_reorder() {
    prism_testkit::init_logging();
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
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
    let mut late: Vec<Event> = Vec::new();
    let mut still_missing_after_late = BTreeMap::new();
    let (mut gaps, mut swaps) = (0, 0);
    for stream in by_aggregate.values() {
        let aggregate_type = stream[0].meta.aggregate_type;
        if stream.len() >= 3 && gaps < 5 && aggregate_type == ORDER {
            // Version 2 is missing: three of these arrive late, two never.
            gaps += 1;
            gapped.extend(stream.iter().filter(|e| e.meta.aggregate_version != 2).cloned());
            expected_dead_letters(aggregate_type, stream.len() as i64 - 2, &mut expected_dead);
            if gaps <= 3 {
                late.push(stream[1].clone());
            } else {
                expected_dead_letters(aggregate_type, stream.len() as i64 - 2, &mut still_missing_after_late);
            }
        } else if stream.len() >= 3 && swaps < 5 && aggregate_type == CART {
            // Versions 2 and 3 arrive swapped: 3 is a gap, 2 fills it right behind, and the
            // gap heals at once.
            swaps += 1;
            let mut swapped = stream.clone();
            swapped.swap(1, 2);
            out_of_order.extend(swapped);
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
    // missing version; the swapped ones healed.
    let mut produced: Vec<Event> = events.clone();
    produced.extend(gapped.iter().cloned());
    produced.extend(out_of_order.iter().cloned());

    let projector = InProcess::start(env.config.clone());
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&produced),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
    .await
    .expect("oracle after injection");
    assert_eq!(
        open_dead_letter_counts(&env).await,
        expected_dead,
        "open dead letters per read model: the gaps"
    );
    let healed = resolved_dead_letters(&env).await;
    assert!(healed > 0, "the swapped streams were dead-lettered, then healed");

    // Rival events: the last version of a few aggregates again, under new event ids (as two
    // writers deciding the same version would produce). Skipped, counted as conflicts, not as
    // duplicates; the read models do not change.
    let conflicts_before = skipped("conflict");
    let mut last_of: BTreeMap<Uuid, Event> = BTreeMap::new();
    for event in &events {
        last_of.insert(event.meta.aggregate_id, event.clone());
    }
    let rivals: Vec<Event> = last_of
        .into_values()
        .filter(|e| e.meta.aggregate_type == ORDER)
        .take(3)
        .map(|mut rival| {
            rival.meta.event_id = Uuid::new_v4();
            rival
        })
        .collect();
    publish_events(&producer, env.topic_prefix(), &rivals).await.expect("publish rivals");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Each rival is a conflict in every read model its aggregate type feeds.
    let fed = shop_model::read_models::all().iter().filter(|m| m.is_fed_by(ORDER)).count();
    while skipped("conflict") - conflicts_before < (rivals.len() * fed) as f64 {
        assert!(tokio::time::Instant::now() < deadline, "rival events never counted as conflicts");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The missing events of three gapped orders arrive late: they and the chains parked
    // behind them apply, in order, without an operator.
    publish_events(&producer, env.topic_prefix(), &late).await.expect("publish late events");
    produced.extend(late.iter().cloned());
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&produced),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
    .await
    .expect("oracle after the late events");
    assert_eq!(
        open_dead_letter_counts(&env).await,
        still_missing_after_late,
        "only the gaps whose event never came stay open"
    );
    assert!(resolved_dead_letters(&env).await > healed, "the late events' chains were resolved");
    let expected_dead = still_missing_after_late;
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
    // The reset must have landed, or "no double application" would be judged on no replay.
    let committed =
        prism_testkit::kafka::committed_offsets(&env.config, &group, &topics).await.expect("committed");
    assert!(
        !committed.is_empty() && committed.values().all(|offset| *offset == 0),
        "the reset put every partition at 0: {committed:?}"
    );
    let skipped_before = skipped("duplicate");

    let projector = InProcess::start(env.config.clone());
    let committed_before = tokio::time::Instant::now();
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&produced),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
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
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&produced),
        CacheCheck::Complete,
        Duration::from_secs(10),
    )
    .await
    .expect("oracle after replay");
    assert_eq!(open_dead_letter_counts(&env).await, expected_dead, "a replay records no dead letter twice");
    // And the replay did happen: every event came again and was skipped as a duplicate (at
    // least once: it feeds one read model or more).
    let replayed = skipped("duplicate") - skipped_before;
    assert!(
        replayed >= events.len() as f64,
        "{replayed} duplicates skipped in the replay of {} events",
        events.len()
    );
    projector.stop().await;
}

/// Events skipped for `reason` so far by the projectors of this process, over every read model.
fn skipped(reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    prism_runtime::telemetry::install()
        .render()
        .lines()
        .filter(|l| l.starts_with("prism_projector_events_skipped_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Open dead letters per projection instance.
async fn open_dead_letter_counts(env: &TestEnv) -> BTreeMap<String, i64> {
    let client = env.pg().await.expect("pg");
    client
        .query("SELECT projection, count(*) FROM dead_letters WHERE status = 'open' GROUP BY projection", &[])
        .await
        .expect("dead letters")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Dead letters resolved (applied after the fact), over every projection instance.
async fn resolved_dead_letters(env: &TestEnv) -> i64 {
    let client = env.pg().await.expect("pg");
    client
        .query_one("SELECT count(*) FROM dead_letters WHERE status = 'redriven'", &[])
        .await
        .expect("dead letters")
        .get(0)
}
