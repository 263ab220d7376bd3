//! The command service against the real PostgreSQL, through a domain-free aggregate over the
//! test kit's probe events: load → decide → append with the outbox rows, `If-Match`,
//! idempotency keys, several aggregates in one transaction, concurrency, and a missing schema
//! named for what it is.

mod common;

use std::time::Duration;

use common::{Note, Refusal, Tally};
use futures::future::join_all;
use prism_commands::{CommandService, Decision, IdempotencyKey, RequestMeta, ServiceError};
use prism_event_store::{outbox_lane, EventStore};
use prism_testkit::probe::PROBE;
use prism_testkit::TestEnv;
use serde_json::json;
use uuid::Uuid;

async fn env() -> TestEnv {
    TestEnv::with_overrides(&prism_testkit::probe::application(), &[("PRISM__RELAY__ENABLED", "false")])
        .await
        .expect("test environment")
}

/// A service as a command service runs it: keeping the states of the aggregates it loads.
fn service(env: &TestEnv) -> CommandService {
    service_keeping(env, 100)
}

fn service_keeping(env: &TestEnv, aggregates: usize) -> CommandService {
    let store = EventStore::new(env.db.clone(), env.app.events().clone(), env.topic_prefix());
    CommandService::new(store, Duration::from_secs(3600)).keeping_states(aggregates)
}

fn keyed(key: &str, fingerprint: &str) -> RequestMeta {
    RequestMeta {
        idempotency: Some(IdempotencyKey { key: key.into(), fingerprint: fingerprint.into() }),
        ..RequestMeta::new()
    }
}

async fn versions(env: &TestEnv, id: Uuid) -> Vec<i64> {
    let client = env.db.client().await.expect("client");
    client
        .query(
            "SELECT aggregate_version FROM events WHERE aggregate_id = $1 ORDER BY aggregate_version",
            &[&id],
        )
        .await
        .expect("versions")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    env.db.client().await.expect("client").query_one(sql, &[]).await.expect("count").get(0)
}

/// A command creates (201) and then changes (200) an aggregate; every event has its outbox row
/// (lane, topic, key and the exact envelope bytes) and carries the request's correlation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_appends_events_with_their_outbox_rows() {
    let env = env().await;
    let service = service(&env);
    let id = Uuid::new_v4();
    let meta = RequestMeta::new();
    let created = service.execute::<Tally>(id, Note::Open(5), &meta).await.expect("open");
    assert_eq!((created.status, created.replayed), (201, false));
    assert_eq!(
        created.body,
        json!({"aggregate_type": "probe", "aggregate_id": id, "version": 1, "events": ["Noted"]})
    );
    let more = service.execute::<Tally>(id, Note::Many(vec![2, 3]), &RequestMeta::new()).await.expect("more");
    assert_eq!(
        (more.status, more.body["version"].clone(), more.body["events"].clone()),
        (200, json!(3), json!(["Noted", "Noted"]))
    );
    assert_eq!(versions(&env, id).await, vec![1, 2, 3]);
    let loaded = service.load::<Tally>(id).await.expect("load");
    assert_eq!((loaded.version(), loaded.state().total, loaded.state().notes), (3, 10, 3));

    let client = env.db.client().await.expect("client");
    let rows = client
        .query(
            "SELECT o.lane, o.topic, o.message_key, o.message_value, e.correlation_id, e.causation_id, e.payload
             FROM outbox o JOIN events e USING (event_id) WHERE e.aggregate_id = $1 ORDER BY o.id",
            &[&id],
        )
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row.get::<_, i16>(0), outbox_lane(id));
        assert_eq!(row.get::<_, String>(1), format!("{}probe.events", env.topic_prefix()));
        assert_eq!(row.get::<_, String>(2), id.hyphenated().to_string());
        let value: serde_json::Value =
            serde_json::from_slice(&row.get::<_, Vec<u8>>(3)).expect("envelope JSON");
        assert_eq!(value["payload"], row.get::<_, serde_json::Value>(6));
        assert_eq!(value["aggregate_id"], json!(id));
    }
    assert_eq!(rows[0].get::<_, Uuid>(4), meta.correlation_id, "events carry the request's correlation id");
    assert_eq!(rows[0].get::<_, Uuid>(5), meta.command_id, "and the command as their cause");
}

/// Refusals, `If-Match` and no-ops append nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_preconditions_and_no_ops_append_nothing() {
    let env = env().await;
    let service = service(&env);
    let id = Uuid::new_v4();
    let missing =
        service.execute::<Tally>(id, Note::Add(1), &RequestMeta::new()).await.expect_err("not opened");
    assert!(matches!(missing, ServiceError::Refused(Refusal::NotFound)), "{missing:?}");
    // A precondition on an aggregate that does not exist: its refusal comes first.
    let stale = RequestMeta { if_match: Some(4), ..RequestMeta::new() };
    let err = service.execute::<Tally>(id, Note::Add(1), &stale).await.expect_err("not opened");
    assert!(matches!(err, ServiceError::Refused(Refusal::NotFound)), "{err:?}");

    service.execute::<Tally>(id, Note::Open(1), &RequestMeta::new()).await.expect("open");
    let err = service.execute::<Tally>(id, Note::Add(1), &stale).await.expect_err("stale");
    assert!(matches!(err, ServiceError::VersionMismatch { expected: 4, actual: 1 }), "{err:?}");
    let fresh = RequestMeta { if_match: Some(1), ..RequestMeta::new() };
    assert_eq!(
        service.execute::<Tally>(id, Note::Add(1), &fresh).await.expect("fresh").body["version"],
        json!(2)
    );
    let zero = service.execute::<Tally>(id, Note::Add(0), &RequestMeta::new()).await.expect_err("zero");
    assert!(matches!(zero, ServiceError::Refused(Refusal::Zero)));

    let nothing = service.execute::<Tally>(id, Note::Nothing, &RequestMeta::new()).await.expect("no-op");
    assert_eq!(
        (nothing.status, nothing.body["version"].clone(), nothing.body["events"].clone()),
        (200, json!(2), json!([]))
    );
    assert_eq!(versions(&env, id).await, vec![1, 2]);
}

/// A key replays its first response and appends nothing; the key with another request is
/// refused; a refused command records nothing, so its key works once the request is valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_and_refuse_reuse() {
    let env = env().await;
    let service = service(&env);
    let id = Uuid::new_v4();
    let first = service.execute::<Tally>(id, Note::Open(7), &keyed("k1", "open 7")).await.expect("first");
    let events = count(&env, "SELECT count(*) FROM events").await;
    let again = service.execute::<Tally>(id, Note::Open(7), &keyed("k1", "open 7")).await.expect("replay");
    assert_eq!((again.status, &again.body, again.replayed), (first.status, &first.body, true));
    assert_eq!(count(&env, "SELECT count(*) FROM events").await, events, "a replay appends nothing");
    let reused = service.execute::<Tally>(id, Note::Add(1), &keyed("k1", "add 1")).await.expect_err("reuse");
    assert!(matches!(reused, ServiceError::KeyReused), "{reused:?}");

    let refused = service.execute::<Tally>(id, Note::Add(0), &keyed("k2", "add 0")).await.expect_err("zero");
    assert!(matches!(refused, ServiceError::Refused(Refusal::Zero)));
    let valid = service.execute::<Tally>(id, Note::Add(2), &keyed("k2", "add 2")).await.expect("k2 is free");
    assert!(!valid.replayed);

    // Concurrent requests with one key: one appends, the others replay its answer.
    let other = Uuid::new_v4();
    let racing = (0..8).map(|_| {
        let service = service.clone();
        async move { service.execute::<Tally>(other, Note::Open(3), &keyed("k3", "open 3")).await }
    });
    let replies: Vec<_> =
        join_all(racing).await.into_iter().map(|r| r.expect("same key, same request")).collect();
    assert_eq!(replies.iter().filter(|r| !r.replayed).count(), 1, "{replies:?}");
    assert!(replies.iter().all(|r| r.body == replies[0].body));
    assert_eq!(versions(&env, other).await, vec![1]);
}

/// Two aggregates in one decision land together, the related one under its name; when one of
/// them loses a race, neither lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_over_several_aggregates_are_one_transaction() {
    let env = env().await;
    let service = service(&env);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let meta = RequestMeta::new();
    let reply = service
        .execute_with(&meta, || async {
            let first = service.load::<Tally>(a).await?;
            let second = service.load::<Tally>(b).await?;
            let append_a = first.decide(&Note::Open(1), &meta)?;
            let append_b = second.decide(&Note::Many(vec![4, 5]), &meta.without_precondition())?;
            Ok(Decision::new(append_a).with_related("partner", append_b))
        })
        .await
        .expect("both");
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body["version"], json!(1));
    assert_eq!(
        reply.body["partner"],
        json!({"aggregate_type": "probe", "aggregate_id": b, "version": 2, "events": ["Noted", "Noted"]})
    );
    assert_eq!((versions(&env, a).await, versions(&env, b).await), (vec![1], vec![1, 2]));

    // b moves on between the load and the append: the whole decision is refused.
    let lost = service
        .execute_with(&meta, || async {
            let first = service.load::<Tally>(a).await?;
            let second = service.load::<Tally>(b).await?;
            service.execute::<Tally>(b, Note::Add(1), &RequestMeta::new()).await?;
            Ok(Decision::new(first.decide(&Note::Add(1), &meta)?)
                .with_related("partner", second.decide(&Note::Add(1), &meta)?))
        })
        .await
        .expect_err("b changed");
    assert!(matches!(lost, ServiceError::Conflict { aggregate_id, .. } if aggregate_id == b), "{lost:?}");
    assert_eq!(
        (versions(&env, a).await, versions(&env, b).await),
        (vec![1], vec![1, 2, 3]),
        "a must not have moved"
    );
}

/// Concurrent commands at one aggregate: one winner per version, the others conflict, no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_get_one_winner_per_version() {
    let env = env().await;
    let service = service(&env);
    let id = Uuid::new_v4();
    service.execute::<Tally>(id, Note::Open(1), &RequestMeta::new()).await.expect("open");
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for _ in 0..4 {
        let requests = (0..12).map(|_| {
            let service = service.clone();
            async move { service.execute::<Tally>(id, Note::Add(1), &RequestMeta::new()).await }
        });
        for result in join_all(requests).await {
            match result {
                Ok(reply) => winners.push(reply.body["version"].as_u64().expect("version")),
                Err(ServiceError::Conflict { aggregate_type, aggregate_id }) => {
                    assert_eq!((aggregate_type, aggregate_id), (PROBE, id));
                    conflicts += 1;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    winners.sort_unstable();
    assert_eq!(winners, (2..=winners.len() as u64 + 1).collect::<Vec<_>>(), "two winners shared a version");
    assert!(conflicts > 0, "48 concurrent commands produced no conflict");
    assert_eq!(versions(&env, id).await, (1..=winners.len() as i64 + 1).collect::<Vec<_>>());
}

/// A stored stream the aggregate cannot follow is reported as such, not folded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfoldable_streams_are_reported() {
    let env = env().await;
    let service = service(&env);
    let id = Uuid::new_v4();
    service.execute::<Tally>(id, Note::Open(1), &RequestMeta::new()).await.expect("open");
    let client = env.db.client().await.expect("client");
    client
        .execute("UPDATE events SET payload = '{\"n\": 0}' WHERE aggregate_id = $1", &[&id])
        .await
        .expect("corrupt");
    let err = service.execute::<Tally>(id, Note::Add(1), &RequestMeta::new()).await.expect_err("unfoldable");
    assert!(matches!(err, ServiceError::Unfoldable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot follow note 0"), "{err}");
    assert!(!err.is_transient());
}

/// A kept state saves a command the fold of its aggregate's history, and is never taken as
/// current: each load reads what other instances appended since, and folds the stream anew
/// when it no longer holds the event the state was folded up to (a store restored from an
/// older backup).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_states_fold_only_what_was_appended_since() {
    let env = env().await;
    let (instance, other) = (service(&env), service_keeping(&env, 100));
    let id = Uuid::new_v4();
    other.execute::<Tally>(id, Note::Open(5), &RequestMeta::new()).await.expect("open");
    assert!(instance.states().is_empty(), "an aggregate without events is not kept");
    let loaded = instance.load::<Tally>(id).await.expect("load");
    assert_eq!((loaded.version(), loaded.state().total), (1, 5));
    assert_eq!(instance.states().len(), 1);

    // The first event made unfoldable: only a load that folds it again fails.
    let client = env.db.client().await.expect("client");
    client
        .execute("UPDATE events SET payload = '{\"n\": 0}' WHERE aggregate_id = $1", &[&id])
        .await
        .expect("corrupt");
    let added = instance
        .execute::<Tally>(id, Note::Add(2), &RequestMeta::new())
        .await
        .expect("add on the kept state");
    assert_eq!(added.body["version"], json!(2));
    let refolded =
        service_keeping(&env, 0).load::<Tally>(id).await.expect_err("a whole fold reads the first event");
    assert!(matches!(refolded, ServiceError::Unfoldable { .. }), "{refolded:?}");
    client
        .execute(
            "UPDATE events SET payload = '{\"n\": 5}' WHERE aggregate_id = $1 AND aggregate_version = 1",
            &[&id],
        )
        .await
        .expect("repair");

    // Another instance appends; the kept state is not stale for it.
    other.execute::<Tally>(id, Note::Add(10), &RequestMeta::new()).await.expect("add elsewhere");
    let loaded = instance.load::<Tally>(id).await.expect("load");
    assert_eq!((loaded.version(), loaded.state().total, loaded.state().notes), (3, 17, 3));

    // The stream loses its last two events, as a restore from an older backup would.
    let rewrite = |statement: &'static str| {
        let client = &client;
        async move {
            client
                .execute(
                    "DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM events WHERE aggregate_id = $1)",
                    &[&id],
                )
                .await
                .expect("the stream's outbox rows");
            client.execute(statement, &[&id]).await.expect(statement);
        }
    };
    rewrite("DELETE FROM events WHERE aggregate_id = $1 AND aggregate_version > 1").await;
    let loaded = instance.load::<Tally>(id).await.expect("load");
    assert_eq!((loaded.version(), loaded.state().total), (1, 5), "folded anew, not appended after version 3");
    let added = instance.execute::<Tally>(id, Note::Add(1), &RequestMeta::new()).await.expect("add");
    assert_eq!(added.body["version"], json!(2));
    assert_eq!(versions(&env, id).await, vec![1, 2], "no gap where the kept state was");

    // The same version held by another event: folded anew as well.
    let loaded = instance.load::<Tally>(id).await.expect("load");
    assert_eq!((loaded.version(), loaded.state().total), (2, 6), "kept at version 2");
    rewrite(
        "UPDATE events SET event_id = gen_random_uuid(), payload = '{\"n\": 7}' \
         WHERE aggregate_id = $1 AND aggregate_version = 2",
    )
    .await;
    let loaded = instance.load::<Tally>(id).await.expect("load");
    assert_eq!(
        (loaded.version(), loaded.state().total),
        (2, 12),
        "the event now at version 2, not the one kept"
    );
}

/// The states kept are bounded: the least recently used go first, and none are kept at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_states_are_bounded() {
    let env = env().await;
    let (two, none) = (service_keeping(&env, 2), service_keeping(&env, 0));
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (n, id) in ids.iter().enumerate() {
        none.execute::<Tally>(*id, Note::Open(n as i64 + 1), &RequestMeta::new()).await.expect("open");
    }
    for id in &ids {
        assert_eq!(two.load::<Tally>(*id).await.expect("load").version(), 1);
        none.load::<Tally>(*id).await.expect("load");
    }
    assert_eq!((two.states().len(), two.states().capacity()), (2, 2));
    assert!(two.states().get::<Tally>(ids[0]).is_none(), "the least recently used was evicted");
    assert_eq!(two.states().get::<Tally>(ids[2]).map(|kept| (kept.version, kept.state.total)), Some((1, 3)));
    assert!(none.states().is_empty() && none.states().capacity() == 0);
}

/// A schema that was never migrated: the failure names the missing table and counts as
/// transient (503: the operator's migration fixes it, the client retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_named() {
    let env = env().await;
    let mut config = env.config.postgres.clone();
    config.schema = format!("{}_unmigrated", env.id);
    let db = prism_postgres::Database::connect(&config, "test").await.expect("connect");
    let store = EventStore::new(db, env.app.events().clone(), env.topic_prefix());
    let service = CommandService::new(store, Duration::from_secs(60));
    let err = service
        .execute::<Tally>(Uuid::new_v4(), Note::Open(1), &RequestMeta::new())
        .await
        .expect_err("no tables");
    assert_eq!(err.missing_table().as_deref(), Some("events"), "{err:?}");
    assert!(err.is_transient());
    let chain = prism_commands::service::error_chain(&err);
    assert!(chain.contains("relation \"events\" does not exist"), "{chain}");
}
