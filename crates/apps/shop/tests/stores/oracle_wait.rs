//! The oracle's wait (`TestEnv::wait_for_oracle`) against the real PostgreSQL and Redis: it
//! looks again after a look that failed for the moment, but two looks in a row that PostgreSQL
//! refuses the same way for what they ask (here a read model's table that is gone) fail the wait
//! there, naming the cause, instead of being asked again until the deadline and reported
//! minutes late. (One such refusal alone may be a look at a generation a switch has just
//! retired: the next look reads the active generations again.)

use std::time::{Duration, Instant};

use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use shop::testing::oracle::fold;
use shop_model::application as shop;

/// Far longer than the test may take: a wait that used it up would be the failure.
const DEADLINE: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_the_next_look_meets_again_ends_the_wait() {
    prism_testkit::init_logging();
    let env = TestEnv::new(&shop()).await.expect("test environment");

    // Nothing produced, nothing projected: the read models equal the fold of no events.
    let summary = env
        .wait_for_oracle(&fold(&[]), CacheCheck::Complete, DEADLINE)
        .await
        .expect("empty read models equal the fold of no events");
    assert_eq!(summary.rows, 0, "{summary:?}");

    let instance = env
        .active_instances()
        .await
        .expect("active generations")
        .into_iter()
        .find(|instance| instance.projection == "order_summary")
        .expect("order_summary has an active generation");
    let pg = env.pg().await.expect("pg");
    // With the view that serves it under the read model's own name.
    pg.batch_execute(&format!("DROP TABLE {} CASCADE", instance.id())).await.expect("drop the table");

    let started = Instant::now();
    let error = env
        .wait_for_oracle(&fold(&[]), CacheCheck::Complete, DEADLINE)
        .await
        .expect_err("a read model without its table cannot equal the oracle");
    let waited = started.elapsed();
    let message = format!("{error:#}");
    assert!(
        message.contains(&instance.id()) && message.contains("does not exist"),
        "the failure names the missing table: {message}"
    );
    assert!(
        waited < DEADLINE / 4,
        "the wait took {waited:?} of its {DEADLINE:?} for a look no later look can mend: {message}"
    );
}
