//! The load generator (`shop::load`) against the shop's real command service: the event store
//! holds exactly the events the API reported, with the last version the API reported for every
//! aggregate; every valid command succeeded and every invalid one was refused.

use std::collections::BTreeMap;
use std::time::Duration;

use shop::load::{self, LoadConfig};
use uuid::Uuid;

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_matches_the_event_store() {
    // No relay: this test is about what the API stored, not what reached the broker.
    let env = support::environment(&[("PRISM__RELAY__ENABLED", "false")]).await;
    let commands = support::commands(env.config.clone()).await;

    let config = LoadConfig {
        target: commands.base.clone(),
        commands: Some(800),
        duration: Some(Duration::from_secs(60)),
        concurrency: 8,
        seed: 42,
        invalid_share: 0.05,
    };
    let report = load::run(&config).await.expect("load run");
    eprintln!("{report}");
    assert_eq!(report.transport_errors, 0);
    assert_eq!(report.commands, 800, "the run stopped early");
    assert_eq!(report.unexpected, 0, "valid commands failed: {:?}", report.unexpected_examples);
    assert!(report.invalid_sent > 0, "no invalid command was sent");
    assert_eq!(report.invalid_refused, report.invalid_sent, "every invalid command must get 400 or 409");
    assert!(report.by_route.len() >= 10, "the mix is too narrow: {:?}", report.by_route.keys());

    let client = env.db.client().await.expect("client");
    let stored: BTreeMap<(String, Uuid), u64> = client
        .query("SELECT aggregate_type, aggregate_id, max(aggregate_version) FROM events GROUP BY 1, 2", &[])
        .await
        .expect("stored versions")
        .iter()
        .map(|row| ((row.get(0), row.get(1)), row.get::<_, i64>(2) as u64))
        .collect();
    let total: i64 = client.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    assert_eq!(
        total as u64,
        report.events_reported(),
        "event store and API disagree on the number of events"
    );
    assert_eq!(stored, report.versions, "last versions differ between the event store and the API's answers");

    commands.stop().await;
}
