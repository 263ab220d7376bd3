//! `prismctl dlq` against the real broker, PostgreSQL and Redis, with a projector running in
//! the test process: an order whose version 2 never arrived (a gap: version 3 dead-lettered,
//! the rest parked) and an order whose version 2 arrived corrupted (poison: the rest parked)
//! show up in `dlq list`; once the missing event is published the gap heals by itself, and
//! after the corrupted row is fixed `dlq redrive --all` brings every read model, in PostgreSQL
//! and in Redis, to exactly the oracle's fold of the full history. A poison message that must
//! never apply is discarded and stays on record. Redrives are done by the shop's running
//! workers (prismctl has no folds): prismctl files the request and waits for their report.
//! Redrive and discard change the read models: without `--yes` and without a terminal they
//! refuse and change nothing.

use std::time::Duration;

use prism_events::{Event, HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION};
use prism_projector::Embedded;
use prism_testkit::kafka::{produce, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use shop::testing::oracle::fold;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;
use uuid::Uuid;

use crate::support::{prismctl, prismctl_with, shop, with_var};

/// Read models fed by order events: each records its own dead letters.
const ORDER_FED: i64 = 3;

/// Redrive requests filed so far.
async fn requests_filed(env: &TestEnv) -> i64 {
    let client = env.pg().await.expect("pg");
    client.query_one("SELECT count(*) FROM operator_requests", &[]).await.expect("requests").get(0)
}

/// Every dead letter's id and status.
async fn statuses(env: &TestEnv) -> Vec<(i64, String)> {
    let client = env.pg().await.expect("pg");
    client
        .query("SELECT id, status FROM dead_letters ORDER BY id", &[])
        .await
        .expect("dead letters")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Open dead letters per kind.
async fn open_by_kind(env: &TestEnv) -> std::collections::BTreeMap<String, i64> {
    let client = env.pg().await.expect("pg");
    client
        .query("SELECT error_kind, count(*) FROM dead_letters WHERE status = 'open' GROUP BY 1", &[])
        .await
        .expect("dead letters")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn wait_for_dead_letters(env: &TestEnv, total: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = open_by_kind(env).await.values().sum();
        if open == total {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let client = env.pg().await.expect("pg");
            let rows: Vec<String> = client
                .query(
                    "SELECT projection, error_kind, aggregate_id::text, aggregate_version FROM dead_letters \
                     WHERE status = 'open' ORDER BY 1, 3, 4",
                    &[],
                )
                .await
                .expect("dead letters")
                .iter()
                .map(|r| {
                    let (p, k, a, v): (String, String, Option<String>, Option<i64>) =
                        (r.get(0), r.get(1), r.get(2), r.get(3));
                    format!("{p} {k} {a:?} {v:?}")
                })
                .collect();
            panic!("{open} open dead letters, expected {total}:\n{}", rows.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redriving_after_a_fix_brings_the_read_models_to_the_oracle() {
    prism_testkit::init_logging();
    let env = TestEnv::new(&shop()).await.expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(71, 1_500);

    // Two orders with at least four events each: one loses version 2, one gets it corrupted.
    let mut long_orders = events
        .iter()
        .filter(|e| e.meta.aggregate_type == ORDER && e.meta.aggregate_version == 4)
        .map(|e| e.meta.aggregate_id);
    let gap = long_orders.next().expect("an order with four events");
    let poisoned = long_orders.next().expect("another order with four events");
    let stream =
        |id: Uuid| -> Vec<Event> { events.iter().filter(|e| e.meta.aggregate_id == id).cloned().collect() };
    let (gap_stream, poisoned_stream) = (stream(gap), stream(poisoned));
    let held = |e: &Event| {
        (e.meta.aggregate_id == gap || e.meta.aggregate_id == poisoned) && e.meta.aggregate_version >= 2
    };

    // Everything else, the first events of both orders, then their later events with the gap
    // and the corruption.
    let (first, later): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| !held(e));
    publish_events(&producer, env.topic_prefix(), &first).await.expect("publish");
    let topic = ORDER.topic(env.topic_prefix());
    let v2 = &poisoned_stream[1];
    let v2_json = v2.to_json_bytes();
    let corrupted = &v2_json[..v2_json.len() / 2];
    let schema_version = v2.meta.schema_version.to_string();
    let v2_headers =
        [(HEADER_EVENT_TYPE, v2.event_type().as_bytes()), (HEADER_SCHEMA_VERSION, schema_version.as_bytes())];
    produce(&producer, &topic, Some(poisoned.to_string().as_bytes()), Some(corrupted), &v2_headers)
        .await
        .expect("corrupted event");
    let rest: Vec<Event> = later.iter().filter(|e| e.meta.aggregate_version >= 3).cloned().collect();
    publish_events(&producer, env.topic_prefix(), &rest).await.expect("publish the rest");
    // A message that must never apply: garbage keyed by an order that does not exist.
    let stray = Uuid::new_v4();
    produce(&producer, &topic, Some(stray.to_string().as_bytes()), Some(b"not an event"), &[])
        .await
        .expect("stray");

    let projector = Embedded::start(env.config.clone(), shop());
    // Both orders stop at version 1 until redriven.
    env.wait_for_oracle(&fold(&first), CacheCheck::Complete, Duration::from_secs(120))
        .await
        .expect("oracle before");
    // Per order-fed read model: the gap order's versions 3.. (one gap, the rest parked), the
    // poisoned order's versions 2.. (the poison, the rest parked), and the stray message.
    let expected = ORDER_FED * ((gap_stream.len() as i64 - 2) + (poisoned_stream.len() as i64 - 1) + 1);
    wait_for_dead_letters(&env, expected).await;
    let kinds = open_by_kind(&env).await;
    assert_eq!(kinds.get("version_gap"), Some(&ORDER_FED), "{kinds:?}");

    // list: counts and rows, filtered.
    let list = prismctl(&env, &["dlq", "list", "--output", "json"]).await;
    assert!(list.ok());
    let document = list.json();
    let counted: i64 =
        document["counts"].as_array().expect("counts").iter().map(|c| c["count"].as_i64().unwrap_or(0)).sum();
    assert_eq!(counted, expected);
    let gaps = prismctl(
        &env,
        &["dlq", "list", "--projection", "order_summary", "--reason", "version_gap", "--output", "json"],
    )
    .await;
    let rows = gaps.json()["dead_letters"].as_array().cloned().expect("rows");
    assert_eq!(rows.len(), 1, "one gap in order_summary");
    assert_eq!(rows[0]["aggregate_id"], gap.to_string());
    assert_eq!(rows[0]["aggregate_version"], 3);
    let text = prismctl(&env, &["dlq", "list"]).await;
    assert!(text.ok() && text.stdout.contains("version_gap") && text.stdout.contains("parked"));

    // show: origin, event, error and payload.
    let id = rows[0]["id"].as_i64().expect("id").to_string();
    let show = prismctl(&env, &["dlq", "show", &id]).await;
    assert!(show.ok());
    for needle in
        [topic.as_str(), "version_gap", "expected version 2, got 3", &gap.to_string(), "event id", "payload"]
    {
        assert!(show.stdout.contains(needle), "show names {needle}");
    }
    let missing = prismctl(&env, &["dlq", "show", "999999"]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("no dead letter has id 999999"));

    // Not confirmed (no terminal, no --yes): refused before any request is filed.
    let recorded = statuses(&env).await;
    let unconfirmed = prismctl(&env, &["dlq", "redrive", "--aggregate", &format!("order:{gap}")]).await;
    assert_eq!(unconfirmed.code, Some(1));
    assert!(
        unconfirmed.stderr.contains("stdin is not a terminal") && unconfirmed.stderr.contains("Pass --yes"),
        "{}",
        unconfirmed.stderr
    );
    assert_eq!(requests_filed(&env).await, 0, "no redrive requested");
    assert_eq!(statuses(&env).await, recorded, "no dead letter changed");

    // Nothing fixed yet: a redrive applies nothing and says what is still wrong.
    let early = prismctl(&env, &["dlq", "redrive", "--aggregate", &format!("order:{gap}"), "--yes"]).await;
    assert_eq!(early.code, Some(1));
    assert!(early.stdout.contains("version_gap"), "{}", early.stdout);
    assert_eq!(open_by_kind(&env).await.values().sum::<i64>(), expected, "nothing resolved");

    // Fix 1: the missing event is published. The projector parks it behind the gap and, the
    // chain being complete now, heals it by itself: the missing event and the parked ones are
    // applied in version order and recorded as redriven.
    publish_events(&producer, env.topic_prefix(), std::slice::from_ref(&gap_stream[1]))
        .await
        .expect("missing event");
    let gap_chain = ORDER_FED * (gap_stream.len() as i64 - 2);
    wait_for_dead_letters(&env, expected - gap_chain).await;
    let healed: i64 = env
        .pg()
        .await
        .expect("pg")
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE aggregate_id = $1 AND status = 'redriven'",
            &[&gap],
        )
        .await
        .expect("healed")
        .get(0);
    assert_eq!(
        healed,
        gap_chain + ORDER_FED,
        "the gap chain and the missing event, per order-fed read model"
    );
    let but_poisoned: Vec<Event> = events
        .iter()
        .filter(|e| !(e.meta.aggregate_id == poisoned && e.meta.aggregate_version >= 2))
        .cloned()
        .collect();
    env.wait_for_oracle(&fold(&but_poisoned), CacheCheck::Complete, Duration::from_secs(60))
        .await
        .expect("oracle with the gap healed");
    // An operator's redrive of the healed aggregate finds nothing left to do.
    let fixed = prismctl(&env, &["dlq", "redrive", "--aggregate", &format!("order:{gap}"), "--yes"]).await;
    assert!(fixed.ok(), "{}", fixed.stderr);
    assert!(fixed.stdout.contains("no open dead letters match"), "{}", fixed.stdout);

    // The stray message must never apply: discarded, kept on record.
    let stray_rows =
        prismctl(&env, &["dlq", "list", "--aggregate", &format!("order:{stray}"), "--output", "json"]).await;
    let stray_ids: Vec<String> = stray_rows.json()["dead_letters"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_i64().expect("id").to_string())
        .collect();
    assert_eq!(stray_ids.len() as i64, ORDER_FED);
    let recorded = statuses(&env).await;
    let unconfirmed = prismctl(&env, &["dlq", "discard", &stray_ids[0]]).await;
    assert_eq!(unconfirmed.code, Some(1));
    assert!(
        unconfirmed.stderr.contains("stdin is not a terminal")
            && unconfirmed.stderr.contains("Nothing was changed"),
        "{}",
        unconfirmed.stderr
    );
    assert_eq!(statuses(&env).await, recorded, "not discarded without confirmation");
    for id in &stray_ids {
        let discarded = prismctl(&env, &["dlq", "discard", id, "--yes"]).await;
        assert!(discarded.ok(), "{}", discarded.stderr);
    }
    let again = prismctl(&env, &["dlq", "discard", &stray_ids[0], "--yes"]).await;
    assert_eq!(again.code, Some(1));
    assert!(again.stderr.contains("already discarded"));

    // Fix 2: the corrupted event is corrected where it is recorded, then everything redriven.
    let client = env.pg().await.expect("pg");
    let corrected = client
        .execute(
            "UPDATE dead_letters SET message_value = $1 WHERE aggregate_id = $2 AND aggregate_version IS DISTINCT FROM 3 \
             AND error_class = 'permanent' AND status = 'open'",
            &[&v2_json, &poisoned],
        )
        .await
        .expect("fix the stored event");
    assert_eq!(corrected as i64, ORDER_FED, "one corrupted record per order-fed read model");
    let all = prismctl(&env, &["dlq", "redrive", "--all", "--yes"]).await;
    assert!(all.ok(), "{}", all.stderr);

    // Every read model, in PostgreSQL and Redis, equals the fold of the whole history.
    env.wait_for_oracle(&fold(&events), CacheCheck::Complete, Duration::from_secs(30))
        .await
        .expect("oracle after redrive");
    assert!(open_by_kind(&env).await.is_empty(), "no dead letter left open");
    let statuses = client
        .query("SELECT status, count(*) FROM dead_letters GROUP BY 1 ORDER BY 1", &[])
        .await
        .expect("statuses")
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    assert_eq!(
        statuses,
        vec![("discarded".to_owned(), ORDER_FED), ("redriven".to_owned(), expected)],
        "everything on record"
    );
    let parked: i64 =
        client.query_one("SELECT count(*) FROM parked_aggregates", &[]).await.expect("parked").get(0);
    assert_eq!(parked, 0, "no aggregate parked any more");

    // A second redrive finds nothing; new events of the redriven orders apply live again.
    let nothing = prismctl(&env, &["dlq", "redrive", "--all", "--yes"]).await;
    assert!(nothing.ok() && nothing.stdout.contains("no open dead letters"));
    let done = prismctl(&env, &["dlq", "redrive", &id, "--yes"]).await;
    assert_eq!(done.code, Some(1));
    assert!(done.stderr.contains("already redriven"), "{}", done.stderr);
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_names_what_is_wrong() {
    let env = TestEnv::new(&shop()).await.expect("test environment");
    let unknown = prismctl(&env, &["dlq", "list", "--projection", "orders"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("unknown read model `orders`") && unknown.stderr.contains("order_summary"),
        "names the read models there are: {}",
        unknown.stderr
    );
    let empty = prismctl(&env, &["dlq", "list"]).await;
    assert!(empty.ok() && empty.stdout.contains("no dead letters match"));
    let bad = prismctl(&env, &["dlq", "redrive", "--aggregate", "order:nope"]).await;
    assert_eq!(bad.code, Some(2), "usage error");

    let vars = with_var(&env.env_vars, "PRISM__POSTGRES__URL", "postgres://postgres@127.0.0.1:1/prism");
    let down = prismctl_with(&vars, &["dlq", "list"]).await;
    assert_eq!(down.code, Some(1));
    assert!(down.stderr.contains("ops/dev-stack up"), "{}", down.stderr);
}
