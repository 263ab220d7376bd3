//! `prismctl lag` and `prismctl offsets reset` against the real broker, PostgreSQL and Redis,
//! under both group protocols: a dry run changes nothing; an execute is refused while the
//! projector runs (the group has live members), and without `--yes` when there is no terminal
//! to confirm on, and succeeds once the workers stopped and it is confirmed; `--to-offset` and
//! `--shift-by` land exactly where asked, on the selected partitions only; after a reset to the
//! earliest offsets a restarted projector replays everything and the read models still equal
//! the oracle, the replayed events counted as skipped duplicates. Lag reads zero when caught up
//! and the whole backlog, with its age, after the reset.

use std::time::Duration;

use prism_projector::Embedded;
use prism_testkit::kafka::{committed_offsets, end_offsets, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use shop::testing::oracle::fold;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;

use crate::support::{duplicates_skipped, prismctl, prismctl_with, shop, wait_caught_up, wait_group_empty};

group_protocol_tests!(reset_to_earliest_replays_without_double_applying_and_lag_follows => reset_and_replay);

async fn reset_and_replay(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let env = TestEnv::for_protocol(&shop(), protocol, &[]).await.expect("test environment");
    let events = Workload::generate(61, 1_500);
    let producer = producer(&env.config).expect("producer");
    publish_events(&producer, env.topic_prefix(), &events).await.expect("publish");

    let projector = Embedded::start(env.config.clone(), shop());
    env.wait_for_oracle(&fold(&events), CacheCheck::Complete, Duration::from_secs(120))
        .await
        .expect("oracle");
    wait_caught_up(&env, Duration::from_secs(60)).await;

    // Caught up: no lag, zero seconds.
    let group_id = prism_kafka::admin::projector_group_id(&env.config);
    let lag = prismctl(&env, &["lag", "--output", "json"]).await;
    assert!(lag.ok(), "lag runs");
    let group = &lag.json()["groups"][0];
    assert_eq!(group["group"], group_id.as_str());
    assert_eq!(group["total_lag_messages"], 0);
    assert_eq!(group["catch_up"], "caught up");
    assert_eq!(group["never_committed"], false);
    assert_eq!(group["partitions"].as_array().map(Vec::len), Some(16), "4 topics of 4 partitions");

    let topics = env.event_topics();
    let ends = end_offsets(&env.config, &topics).await.expect("ends");
    let before = committed_offsets(&env.config, &group_id, &topics).await.expect("committed");
    assert_eq!(before, ends, "caught up: committed at the end of every partition");

    // Dry run: the plan, nothing committed.
    let dry = prismctl(&env, &["offsets", "reset", "--to-earliest"]).await;
    assert!(dry.ok());
    for ((topic, partition), end) in &ends {
        assert!(
            dry.stdout.contains(&format!("{topic} {partition} {end} -> 0")),
            "plan line for {topic}/{partition}"
        );
    }
    assert!(dry.stdout.contains("dry run"));
    assert_eq!(committed_offsets(&env.config, &group_id, &topics).await.expect("committed"), before);

    // The projector is running: the group has a live member, so the reset is refused, names
    // the member and says what to do; nothing changes.
    let refused = prismctl(&env, &["offsets", "reset", "--to-earliest", "--execute", "--yes"]).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(refused.stderr.contains("1 active member"), "names the live member: {}", refused.stderr);
    assert!(refused.stderr.contains("scale"), "says to stop the workers: {}", refused.stderr);
    assert_eq!(committed_offsets(&env.config, &group_id, &topics).await.expect("committed"), before);

    // Stopped, the worker leaves the group.
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
    wait_group_empty(&env, &group_id, Duration::from_secs(60)).await;

    // Not confirmed (no terminal, no --yes): refused, nothing committed.
    let unconfirmed = prismctl(&env, &["offsets", "reset", "--to-earliest", "--execute"]).await;
    assert_eq!(unconfirmed.code, Some(1));
    assert!(
        unconfirmed.stderr.contains("stdin is not a terminal") && unconfirmed.stderr.contains("Pass --yes"),
        "{}",
        unconfirmed.stderr
    );
    assert_eq!(committed_offsets(&env.config, &group_id, &topics).await.expect("committed"), before);

    // One partition only, by shifting back: exactly it moves, by exactly 3.
    let order_topic = ORDER.topic(env.topic_prefix());
    let one = format!("{order_topic}:1");
    assert!(before[&(order_topic.clone(), 1)] >= 3, "partition 1 has room to shift back: {before:?}");
    let shifted =
        prismctl(&env, &["offsets", "reset", "--shift-by", "-3", "--topic", &one, "--execute", "--yes"])
            .await;
    assert!(shifted.ok(), "{}", shifted.stderr);
    let after_shift = committed_offsets(&env.config, &group_id, &topics).await.expect("committed");
    let mut expected = before.clone();
    *expected.get_mut(&(order_topic.clone(), 1)).expect("partition 1") -= 3;
    assert_eq!(after_shift, expected, "only partition 1 moved, by exactly 3");

    // A fixed offset on another partition: exactly there.
    let zero = format!("{order_topic}:0");
    let fixed =
        prismctl(&env, &["offsets", "reset", "--to-offset", "3", "--topic", &zero, "--execute", "--yes"])
            .await;
    assert!(fixed.ok(), "{}", fixed.stderr);
    let after_fixed = committed_offsets(&env.config, &group_id, &topics).await.expect("committed");
    *expected.get_mut(&(order_topic.clone(), 0)).expect("partition 0") = 3;
    assert_eq!(after_fixed, expected, "partition 0 at exactly 3, everything else as it was");

    // Everything back to the start.
    let reset = prismctl(&env, &["offsets", "reset", "--to-earliest", "--execute", "--yes"]).await;
    assert!(reset.ok(), "{}", reset.stderr);
    let committed = committed_offsets(&env.config, &group_id, &topics).await.expect("committed");
    assert_eq!(committed.len(), ends.len(), "every partition committed");
    assert!(committed.values().all(|o| *o == 0), "all at the earliest offset: {committed:?}");

    // The whole backlog is lag now, and it is as old as its first events.
    let lag = prismctl(&env, &["lag", "--output", "json"]).await;
    let group = &lag.json()["groups"][0];
    let total: i64 = ends.values().sum();
    assert_eq!(group["total_lag_messages"], total);
    assert!(group["max_lag_seconds"].as_f64().is_some_and(|s| s > 0.0), "lag in seconds: {group}");
    let text = prismctl(&env, &["lag"]).await;
    assert!(text.ok() && text.stdout.contains("LAG-SECONDS") && text.stdout.contains("n/a"));

    // Replay: equal to the oracle, nothing applied twice, the replay counted as duplicates.
    let skipped_before = duplicates_skipped();
    let projector = Embedded::start(env.config.clone(), shop());
    wait_caught_up(&env, Duration::from_secs(120)).await;
    env.wait_for_oracle(&fold(&events), CacheCheck::Complete, Duration::from_secs(30))
        .await
        .expect("oracle after replay");
    let skipped = duplicates_skipped() - skipped_before;
    assert!(skipped >= events.len() as f64, "every replayed event skipped as a duplicate: {skipped}");

    // Watching while caught up: estimates from successive refreshes.
    let watch = prismctl(&env, &["lag", "--watch", "1", "--count", "2", "--output", "json"]).await;
    assert!(watch.ok());
    assert_eq!(watch.stdout.lines().count(), 2, "one document per refresh");
    assert_eq!(watch.json()["groups"][0]["catch_up"], "caught up");
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_names_what_is_wrong() {
    let env = TestEnv::new(&shop()).await.expect("test environment");
    let unknown = prismctl(&env, &["offsets", "reset", "--to-latest", "--topic", "no.such.topic"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("topic no.such.topic does not exist (known event topics: ")
            && unknown.stderr.contains(&ORDER.topic(env.topic_prefix())),
        "{}",
        unknown.stderr
    );
    assert!(!unknown.stderr.contains("is the broker running"), "the broker is fine: {}", unknown.stderr);
    let order_topic = ORDER.topic(env.topic_prefix());
    let partition = format!("{order_topic}:9");
    let missing = prismctl(&env, &["offsets", "reset", "--to-latest", "--topic", &partition]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("no partition 9"), "{}", missing.stderr);

    let mut vars = env.env_vars.clone();
    vars.retain(|(k, _)| k != "PRISM__KAFKA__BOOTSTRAP_SERVERS" && k != "PRISM__KAFKA__REQUEST_TIMEOUT_MS");
    vars.push(("PRISM__KAFKA__BOOTSTRAP_SERVERS".into(), "127.0.0.1:1".into()));
    vars.push(("PRISM__KAFKA__REQUEST_TIMEOUT_MS".into(), "2000".into()));
    let down = prismctl_with(&vars, &["lag"]).await;
    assert_eq!(down.code, Some(1));
    assert!(down.stderr.contains("ops/dev-stack up"), "names how to start the broker: {}", down.stderr);
}

// While a member is live, Kafka describes its group as active (DescribeGroups) and refuses
// an offset commit made from outside it; prismctl refuses the reset and changes nothing. Under
// both group protocols.
group_protocol_tests!(a_live_member_is_never_taken_for_an_empty_group => live_member_blocks_reset);

async fn live_member_blocks_reset(protocol: GroupProtocol) {
    use prism_kafka::admin::{
        commit_offsets_outside_group, group_membership, GroupMembership, OutsideCommit,
    };
    use rdkafka::consumer::Consumer;

    let env = TestEnv::for_protocol(&shop(), protocol, &[]).await.expect("test environment");
    let group = env.group("live");
    let topic = ORDER.topic(env.topic_prefix());
    // Something to commit past, so "unchanged" compares real offsets.
    let producer = producer(&env.config).expect("producer");
    for i in 0..8 {
        prism_testkit::kafka::produce(&producer, &topic, Some(format!("k{i}").as_bytes()), Some(b"{}"), &[])
            .await
            .expect("produce");
    }
    let member = prism_testkit::kafka::consumer(&env.config, &group, &[]).expect("consumer");
    member.subscribe(&[&topic]).expect("subscribe");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let committed_by_member = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keep = {
        let (stop, consumed, committed_by_member) =
            (stop.clone(), consumed.clone(), committed_by_member.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(_)) = member.poll(Duration::from_millis(100)) {
                    consumed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if consumed.load(std::sync::atomic::Ordering::Relaxed) == 8
                    && !committed_by_member.load(std::sync::atomic::Ordering::Relaxed)
                {
                    member
                        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                        .expect("the member commits");
                    committed_by_member.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !committed_by_member.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the member never consumed and committed the 8 messages"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let timeout = Duration::from_secs(10);
    let membership = group_membership(&env.config.kafka, &group, timeout).await.expect("membership");
    assert!(
        matches!(membership, GroupMembership::Active { .. }),
        "a live group must be described as active: {membership:?}"
    );

    let before =
        committed_offsets(&env.config, &group, std::slice::from_ref(&topic)).await.expect("committed");
    assert_eq!(before.values().sum::<i64>(), 8, "the member committed what it consumed: {before:?}");
    let refused = prismctl(
        &env,
        &["offsets", "reset", "--to-earliest", "--topic", &topic, "--group", &group, "--execute", "--yes"],
    )
    .await;
    assert_eq!(refused.code, Some(1), "refused while the member is live: {}", refused.stdout);
    assert!(refused.stderr.contains("active member"), "{}", refused.stderr);

    // The broker itself is the second guard: an outside commit is refused while the member lives.
    let outcome = commit_offsets_outside_group(&env.config.kafka, &group, &[(topic.clone(), 0, 0)], timeout)
        .await
        .expect("commit answered");
    assert!(matches!(outcome, OutsideCommit::RefusedGroupActive { .. }), "{outcome:?}");
    let after =
        committed_offsets(&env.config, &group, std::slice::from_ref(&topic)).await.expect("committed");
    assert_eq!(after, before, "nothing changed while the member was live");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    keep.join().expect("member thread");
}
