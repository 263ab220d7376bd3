//! The `prismctl` binary as an operator meets it, against the real broker and PostgreSQL, with
//! the test kit's probe application (events, no read models: nothing here needs a fold):
//!
//! - every command first prints, to stderr, the deployment it acts on, and never a password;
//! - `offsets reset` touches only this deployment's event topics and groups: a mistyped topic
//!   is named as missing with the known ones, another deployment's topic or group (outside
//!   `topics.prefix`) is refused, and nothing changes on the other deployment;
//! - `lag --group <typo>` says the group never committed, listing the known groups, instead
//!   of a table of full lag;
//! - a `projector.group` written with the prefix already in it is not prefixed twice;
//! - a destructive command without `--yes` and without a terminal refuses, changing nothing;
//! - librdkafka properties come from `PRISM__KAFKA__PROPERTIES__*` variables, and one librdkafka
//!   refuses is named as configuration, not blamed on the broker.
//!
//! Read models, dead letters and rebuilds are exercised by the applications' own operations
//! tests (the shop's `tests/ops.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use prism_kafka::admin::{commit_offsets_outside_group, projector_group_id, OutsideCommit};
use prism_testkit::probe::{self, PROBE};
use prism_testkit::TestEnv;

use prism_testkit::prismctl::{run as prismctl, run_with as prismctl_with, with_var as with};

async fn environment() -> TestEnv {
    TestEnv::new(&probe::application()).await.expect("test environment")
}

/// Puts `n` messages on every partition of the probe topic, so offsets have room to move.
async fn fill(env: &TestEnv, n: usize) {
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    let topic = PROBE.topic(env.topic_prefix());
    for partition in 0..4 {
        for i in 0..n {
            let payload = format!("{{\"n\":{i}}}");
            let record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(partition)
                .payload(payload.as_bytes());
            producer.send(record, Duration::from_secs(30)).await.map_err(|(err, _)| err).expect("produce");
        }
    }
}

/// Commits `offset` on every partition of `env`'s probe topic for `group`.
async fn commit_all(env: &TestEnv, group: &str, offset: i64) {
    let topic = PROBE.topic(env.topic_prefix());
    let offsets: Vec<(String, i32, i64)> = (0..4).map(|p| (topic.clone(), p, offset)).collect();
    let outcome = commit_offsets_outside_group(&env.config.kafka, group, &offsets, Duration::from_secs(10))
        .await
        .expect("commit");
    assert_eq!(outcome, OutsideCommit::Committed);
}

async fn committed(env: &TestEnv, group: &str) -> BTreeMap<(String, i32), i64> {
    prism_testkit::kafka::committed_offsets(&env.config, group, &[PROBE.topic(env.topic_prefix())])
        .await
        .expect("committed offsets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_names_its_deployment_first_and_never_a_password() {
    let env = environment().await;
    // Secrets wherever configuration takes them: their own keys, and a PostgreSQL URL's query
    // (libpq and tokio-postgres accept `?password=`). The development PostgreSQL trusts local
    // connections, so the commands still work.
    let mut vars = with(
        &env.env_vars,
        "PRISM__POSTGRES__URL",
        &format!("{}?password=hunter2-query", env.services.database_url()),
    );
    vars = with(&vars, "PRISM__POSTGRES__PASSWORD", "hunter2-postgres");
    vars = with(&vars, "PRISM__REDIS__PASSWORD", "hunter2-redis");
    let commands: &[&[&str]] = &[
        &["migrate"],
        &["read-models"],
        &["topics", "ensure"],
        &["lag", "--output", "json"],
        &["offsets", "reset", "--to-latest"],
        &["dlq", "list"],
        &["rebuild", "nothing_here", "--mode", "in-place", "--dry-run"],
    ];
    let pg = env.services.database_url();
    let pg_host = pg.rsplit_once('@').map_or(pg.as_str(), |(_, host)| host);
    let expected = format!(
        "deployment: kafka {} (topic prefix \"{}\"), postgres postgres://{pg_host} schema {}, redis {} (key prefix \"{}\")",
        env.services.kafka, env.config.topics.prefix, env.config.postgres.schema, env.config.redis.url, env.config.redis.key_prefix
    );
    for args in commands {
        let run = prismctl_with(&vars, args).await;
        let first = run.stderr.lines().next().unwrap_or_default();
        assert_eq!(first, expected, "`prismctl {}` names its deployment first, on stderr", args.join(" "));
        assert!(!run.stdout.contains("deployment:"), "stdout stays the command's own output");
        for output in [&run.stdout, &run.stderr] {
            assert!(
                !output.contains("hunter2"),
                "`prismctl {}` printed a password:\n{output}",
                args.join(" ")
            );
        }
    }
    let lag = prismctl_with(&vars, &["lag", "--output", "json"]).await;
    assert_eq!(lag.code, Some(0), "the commands work with those settings: {}", lag.stderr);
    serde_json::from_str::<serde_json::Value>(&lag.stdout).expect("stdout is the JSON document alone");

    // A password in a URL's user information is refused by configuration, without echoing it.
    let in_url = pg.replacen("postgres@", "postgres:hunter2-url@", 1);
    assert_ne!(in_url, pg, "the test URL has a user to add a password to: {pg}");
    let refused =
        prismctl_with(&with(&env.env_vars, "PRISM__POSTGRES__URL", &in_url), &["dlq", "list"]).await;
    assert_eq!(refused.code, Some(2), "a configuration error");
    assert!(refused.stderr.contains("postgres.url contains a password"), "{}", refused.stderr);
    assert!(!refused.stderr.contains("hunter2") && !refused.stdout.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_touches_only_this_deployments_event_topics_and_groups() {
    let (env, other) = (environment().await, environment().await);
    fill(&other, 5).await;
    let other_group = projector_group_id(&other.config);
    commit_all(&other, &other_group, 3).await;
    let before = committed(&other, &other_group).await;
    assert_eq!(before.len(), 4);

    let known = PROBE.topic(env.topic_prefix());
    let hint = "is the broker running";
    // A typo inside the prefix: named as missing, with the topics that exist.
    let typo = format!("{}prob.events", env.topic_prefix());
    let run = prismctl(&env, &["offsets", "reset", "--to-earliest", "--topic", &typo]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!("topic {typo} does not exist (known event topics: {known})")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(hint), "the broker is fine; the topic is wrong: {}", run.stderr);
    // A topic of this deployment that is not an event topic.
    let dlq = PROBE.dead_letter_topic(env.topic_prefix());
    let run = prismctl(&env, &["offsets", "reset", "--to-earliest", "--topic", &dlq]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!("topic {dlq} is not an event topic of this deployment")),
        "{}",
        run.stderr
    );

    // Another deployment's topic and group, which exist: refused, and its offsets stay.
    let foreign = PROBE.topic(other.topic_prefix());
    let run =
        prismctl(&env, &["offsets", "reset", "--to-earliest", "--topic", &foreign, "--execute", "--yes"])
            .await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!("topic {foreign} belongs to another deployment"))
            && run.stderr.contains("Nothing was changed"),
        "{}",
        run.stderr
    );
    for topic in [&foreign, &known] {
        let args = [
            "offsets",
            "reset",
            "--to-earliest",
            "--topic",
            topic,
            "--group",
            &other_group,
            "--execute",
            "--yes",
        ];
        let run = prismctl(&env, &args).await;
        assert_eq!(run.code, Some(1));
        assert!(
            run.stderr.contains(&format!("group {other_group} is outside this deployment's prefix"))
                && run.stderr.contains("Nothing was changed"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(committed(&other, &other_group).await, before, "the other deployment's offsets are unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_names_a_group_that_never_committed_and_the_groups_that_did() {
    let env = environment().await;
    fill(&env, 2).await;
    let group = projector_group_id(&env.config);

    // Nothing committed yet on the projector group: full lag, said so.
    let fresh = prismctl(&env, &["lag", "--output", "json"]).await;
    assert_eq!(fresh.code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&fresh.stdout).expect("json")["groups"][0]
            ["never_committed"],
        true
    );
    assert!(
        fresh.stderr.contains(&format!("note: group {group} has never committed offsets")),
        "{}",
        fresh.stderr
    );

    commit_all(&env, &group, 1).await;
    let typo = format!("{group}s");
    let run = prismctl(&env, &["lag", "--group", &typo]).await;
    assert_eq!(run.code, Some(1), "a group nobody knows is an error, not a table of full lag");
    assert!(
        run.stderr.contains(&format!("group {typo} has never committed offsets"))
            && run.stderr.contains("is the name right?")
            && run.stderr.contains(&format!("(prefix \"{}\"): {group}", env.topic_prefix())),
        "names the groups of this deployment: {}",
        run.stderr
    );
    assert!(!run.stdout.contains("LAG"), "no table: {}", run.stdout);

    let known = prismctl(&env, &["lag", "--group", &group, "--output", "json"]).await;
    assert_eq!(known.code, Some(0));
    let document: serde_json::Value = serde_json::from_str(&known.stdout).expect("json");
    assert_eq!(document["groups"][0]["never_committed"], false);
    assert_eq!(document["groups"][0]["total_lag_messages"], 4, "one of two messages left per partition");
    assert!(!known.stderr.contains("never committed"), "{}", known.stderr);

    // `projector.group` written with the prefix already in it: the same group, not
    // `<prefix><prefix>projector`.
    let prefixed = with(&env.env_vars, "PRISM__PROJECTOR__GROUP", &group);
    let run = prismctl_with(&prefixed, &["lag", "--output", "json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let document: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(document["groups"][0]["group"], group.as_str());
    assert_eq!(document["groups"][0]["never_committed"], false, "the workers' committed offsets are found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destructive_command_without_yes_and_without_a_terminal_changes_nothing() {
    let env = environment().await;
    fill(&env, 6).await;
    let group = projector_group_id(&env.config);
    commit_all(&env, &group, 4).await;
    let before = committed(&env, &group).await;

    let run = prismctl(&env, &["offsets", "reset", "--to-earliest", "--execute"]).await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("stdin is not a terminal")
            && run.stderr.contains("Nothing was changed")
            && run.stderr.contains("Pass --yes"),
        "{}",
        run.stderr
    );
    assert_eq!(committed(&env, &group).await, before, "nothing committed");

    // Confirmed, the same command goes through: the refusal was the only thing in the way.
    let run = prismctl(&env, &["offsets", "reset", "--to-earliest", "--execute", "--yes"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(committed(&env, &group).await.values().all(|o| *o == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_properties_come_from_variables_and_a_refused_one_is_named_as_configuration() {
    let env = environment().await;
    // A property librdkafka takes, set the way an orchestrator sets it: the command works.
    let keepalive = with(&env.env_vars, "PRISM__KAFKA__PROPERTIES__SOCKET_KEEPALIVE_ENABLE", "true");
    let run = prismctl_with(&keepalive, &["lag", "--output", "json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    // One it does not know: named, and not blamed on the broker, which is running.
    let unknown = with(&env.env_vars, "PRISM__KAFKA__PROPERTIES__FETCH_WAIT_MAX_SECONDS", "1");
    let run = prismctl_with(&unknown, &["lag", "--output", "json"]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("fetch.wait.max.seconds") && run.stderr.contains("kafka.properties"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("is the broker running"), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("No such configuration property").count(),
        1,
        "librdkafka's message, once: {}",
        run.stderr
    );
}
