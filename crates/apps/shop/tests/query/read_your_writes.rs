//! Read-your-writes: `min_version` waits for the projector (woken by PostgreSQL notifications)
//! and answers stale after the configured wait; and end to end over HTTP, commands → outbox
//! relay → broker → projector → query, concurrent clients never read a version older than the
//! one their command returned.
//!
//! A waiter is "parked" when the service says so (`prism_query_waiting_requests`), not after a
//! sleep: only then are the held events published, so the answer can only come from the
//! notification that their batch landed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prism_events::Event;
use prism_testkit::oracle::normalize;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shop::testing::oracle;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;
use shop_model::read_models::{CART_VIEW, ORDER_SUMMARY, PRODUCT_CATALOG, USER_PROFILE};
use uuid::Uuid;

use crate::support::{
    environment, projector, publish, stored_events, wait_projected, with_wait, Answer, AppliedBatches,
    Running,
};

/// The series of parked read-your-writes requests on orders.
const ORDERS_WAITING: &str = "prism_query_waiting_requests{read_model=\"order_summary\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_version_waits_for_the_batch_and_answers_stale_when_it_does_not_come() {
    let _metrics = crate::support::metrics_exclusive().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let events = Workload::generate(21, 300);
    // An order with at least three events; hold back everything after its first.
    let mut versions: BTreeMap<Uuid, u64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.meta.aggregate_type == ORDER) {
        versions.insert(e.meta.aggregate_id, e.meta.aggregate_version);
    }
    let (order_id, last) = versions
        .iter()
        .find(|(_, v)| **v >= 3)
        .map(|(id, v)| (*id, *v as i64))
        .expect("an order with 3 events");
    // Other orders, held back whole, land while the request waits for its own.
    let others: Vec<Uuid> = versions.keys().filter(|id| **id != order_id).take(5).copied().collect();
    assert_eq!(others.len(), 5, "five other orders");
    let (held, rest): (Vec<Event>, Vec<Event>) = events
        .iter()
        .cloned()
        .partition(|e| e.meta.aggregate_id == order_id && e.meta.aggregate_version >= 2);
    let (of_others, first): (Vec<Event>, Vec<Event>) =
        rest.into_iter().partition(|e| others.contains(&e.meta.aggregate_id));
    publish(&env, &first).await;
    let projector = projector(&env);
    wait_projected(&env, &first, Duration::from_secs(90)).await;
    let wait = Duration::from_millis(2500);
    let query = Running::query(with_wait(&env, wait.as_millis() as u64)).await;
    // The registry is the process's: count from here.
    let stale_before = stale_answers(&query.metrics().await);

    // Not reached in time: 202, stale, with the version served and Retry-After.
    let batches = AppliedBatches::listen(&env, "order_summary_g1").await;
    let (batches_before, concerning_before) = (batches.count(), batches.concerning(&order_id.to_string()));
    let reads_before = postgres_reads(&query.metrics().await);
    let started = Instant::now();
    let stale_read = format!("/orders/{order_id}?min_version={last}");
    let (stale, ()) = tokio::join!(query.get(&stale_read, &[]), async {
        query.wait_for_metric(ORDERS_WAITING, 1.0, wait).await;
        publish(&env, &of_others).await;
    });
    let waited = started.elapsed();
    assert_eq!(stale.status, StatusCode::ACCEPTED, "{:?}", stale.body);
    assert_eq!(stale.header("x-prism-stale"), Some("true"));
    assert_eq!(stale.version_header(), Some(1));
    assert_eq!(stale.body["version"], 1, "the current row is served");
    assert!(stale.header("retry-after").is_some());
    assert!(waited >= wait, "answered stale after {waited:?}, before the {wait:?} wait");
    assert!(waited < wait + Duration::from_secs(2), "stale answer took {waited:?}");
    // No polling while waiting: PostgreSQL was read at the start (the cache holds an older
    // version) and at the deadline, and in between only once per batch that named this order's
    // row (a redelivered batch of its duplicates would) or no rows — not for the other orders'
    // batches that landed meanwhile.
    let reads_during = postgres_reads(&query.metrics().await) - reads_before;
    let landed = batches.count() - batches_before;
    let concerning = batches.concerning(&order_id.to_string()) - concerning_before;
    assert!(landed > concerning, "no batch of other orders landed during the wait ({landed} batches)");
    assert_eq!(
        reads_during,
        2.0 + concerning as f64,
        "PostgreSQL reads during one {wait:?} wait in which {landed} order batches landed, {concerning} of them naming its row"
    );
    drop(batches);

    // Unknown aggregate with min_version: not yet visible, version 0.
    let missing = query.get(&format!("/orders/{}", Uuid::new_v4()), &[("X-Prism-Min-Version", "1")]).await;
    assert_eq!(missing.status, StatusCode::ACCEPTED);
    assert_eq!(missing.error("code"), Some("not_yet_visible"));
    assert_eq!(missing.version_header(), Some(0));

    // Reached while waiting: the request is parked (the service counts it), the held events are
    // published, and the notification of their batch releases it with the new version.
    query.wait_for_metric(ORDERS_WAITING, 0.0, Duration::from_secs(5)).await;
    let waiting = {
        let http = query.http.clone();
        let url = format!("{}/orders/{order_id}", query.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response =
                http.get(url).header("X-Prism-Min-Version", last.to_string()).send().await.expect("get");
            let status = response.status();
            let version = response
                .headers()
                .get("x-prism-version")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok());
            (status, version, started.elapsed())
        })
    };
    query.wait_for_metric(ORDERS_WAITING, 1.0, wait).await;
    publish(&env, &held).await;
    let (status, version, took) = waiting.await.expect("request");
    if status == StatusCode::ACCEPTED {
        panic!("the projector did not land version {last} within {wait:?}; (took {took:?})");
    }
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, Some(last));
    // Released by the notification, not by the re-read at the deadline (which would hide a
    // notification that never came).
    assert!(took < wait, "released only after {took:?}, at the {wait:?} deadline");
    query.wait_for_metric(ORDERS_WAITING, 0.0, Duration::from_secs(5)).await;

    let stale = stale_answers(&query.metrics().await) - stale_before;
    assert_eq!(stale, 2.0, "two stale answers counted");
    wait_projected(&env, &events, Duration::from_secs(60)).await;
    query.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

/// `prism_query_postgres_reads_total` of the order read model, from `/metrics` text.
fn postgres_reads(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with("prism_query_postgres_reads_total{read_model=\"order_summary\"}"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no order_summary PostgreSQL reads in /metrics:\n{metrics}"))
}

/// `prism_query_stale_responses_total` of the order read model, from `/metrics` text.
fn stale_answers(metrics: &str) -> f64 {
    crate::support::metric(metrics, "prism_query_stale_responses_total{read_model=\"order_summary\"}")
        .unwrap_or_else(|| panic!("no order_summary stale answers in /metrics:\n{metrics}"))
}

/// What a client checks after each command: the query's version is at least the command's.
#[derive(Debug, Default)]
struct Tally {
    reads: usize,
    max_wait: Duration,
}

async fn read_at_least(query: &Running, route: &str, id: &Value, version: i64, tally: &mut Tally) -> Answer {
    let id = id.as_str().expect("an id");
    let started = Instant::now();
    let got = query.get(&format!("/{route}/{id}?min_version={version}"), &[]).await;
    tally.max_wait = tally.max_wait.max(started.elapsed());
    tally.reads += 1;
    assert_eq!(
        got.status,
        StatusCode::OK,
        "/{route}/{id} at {version}: stale or failed: {:?} {:?}",
        got.headers,
        got.body
    );
    let served = got.version_header().expect("X-Prism-Version");
    assert!(served >= version, "/{route}/{id}: served version {served}, the command returned {version}");
    assert_eq!(got.body["version"].as_i64(), Some(served), "/{route}/{id}: header and body agree");
    got
}

fn accepted(answer: &Answer, what: &str) -> (Value, i64) {
    assert!(answer.status.is_success(), "{what}: {} {:?}", answer.status, answer.body);
    let version =
        answer.body["version"].as_i64().unwrap_or_else(|| panic!("{what}: no version in {:?}", answer.body));
    (answer.body["aggregate_id"].clone(), version)
}

/// POSTs a command, retrying when it lost a race with another shopper on a shared aggregate
/// (409 `concurrent_modification`), as a real client would.
async fn command(commands: &Running, path: &str, body: Value) -> Answer {
    for _ in 0..20 {
        let answer = commands.post(path, body.clone()).await;
        if answer.status != StatusCode::CONFLICT || answer.error("reason") != Some("concurrent_modification")
        {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path}: still conflicting after 20 attempts");
}

/// One shopper: register, fill a cart, check out, pay, change the profile, with a
/// read-your-writes query after every command.
async fn shopper(n: usize, commands: &Running, query: &Running, products: &[Value]) -> Tally {
    let mut tally = Tally::default();
    let registered = command(
        commands,
        "/users",
        json!({ "email": format!("shopper{n}@example.com"), "display_name": format!("Shopper {n}") }),
    )
    .await;
    let (user, version) = accepted(&registered, "register");
    read_at_least(query, "users", &user, version, &mut tally).await;

    let cart = Value::String(Uuid::new_v4().to_string());
    for (i, product) in products.iter().enumerate().take(2 + n % 2) {
        let added = command(
            commands,
            &format!("/carts/{}/items", cart.as_str().unwrap_or_default()),
            json!({ "user_id": user, "product_id": product, "quantity": 1 + i }),
        )
        .await;
        let (_, version) = accepted(&added, "add item");
        read_at_least(query, "carts", &cart, version, &mut tally).await;
    }
    let checked_out =
        command(commands, &format!("/carts/{}/checkout", cart.as_str().unwrap_or_default()), json!({})).await;
    let (_, version) = accepted(&checked_out, "checkout");
    read_at_least(query, "carts", &cart, version, &mut tally).await;
    let order = checked_out.body["order"]["aggregate_id"].clone();
    let order_version = checked_out.body["order"]["version"].as_i64().expect("order version");
    let placed = read_at_least(query, "orders", &order, order_version, &mut tally).await;
    assert_eq!(placed.body["user_id"], user);

    let order_path = order.as_str().unwrap_or_default().to_owned();
    let paying = command(commands, &format!("/orders/{order_path}/pay"), json!({ "method": "card" })).await;
    let (_, version) = accepted(&paying, "pay");
    read_at_least(query, "orders", &order, version, &mut tally).await;
    let paid = command(
        commands,
        &format!("/orders/{order_path}/payment"),
        json!({ "outcome": "succeeded", "payment_reference": format!("ref-{n}") }),
    )
    .await;
    let (_, version) = accepted(&paid, "payment");
    let paid = read_at_least(query, "orders", &order, version, &mut tally).await;
    assert_eq!(paid.body["status"], "paid", "{:?}", paid.body);

    let user_path = user.as_str().unwrap_or_default().to_owned();
    let changed = commands
        .http
        .patch(format!("{}/users/{user_path}", commands.base))
        .json(&json!({ "display_name": format!("Shopper {n} (renamed)") }))
        .send()
        .await
        .expect("patch");
    assert!(changed.status().is_success(), "change profile: {}", changed.status());
    let body: Value = changed.json().await.expect("json");
    let version = body["version"].as_i64().expect("version");
    let profile = read_at_least(query, "users", &user, version, &mut tally).await;
    assert_eq!(profile.body["display_name"], format!("Shopper {n} (renamed)"));

    // A product's own changes, read back the same way.
    let product = &products[n % products.len()];
    let product_path = product.as_str().unwrap_or_default().to_owned();
    let restocked =
        command(commands, &format!("/products/{product_path}/restock"), json!({ "quantity": 5 })).await;
    let (_, version) = accepted(&restocked, "restock");
    read_at_least(query, "products", product, version, &mut tally).await;
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn end_to_end_queries_after_commands_never_see_an_older_version() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let projector = projector(&env);
    let commands = Running::commands(env.config.clone()).await;
    // A generous wait: under load on a small machine the pipeline can take seconds, and this
    // test is about never reading an older version, which a stale answer would hide.
    let query = Running::query(with_wait(&env, 20_000)).await;

    let mut products = Vec::new();
    for i in 0..4 {
        let listed = command(&commands, "/products", json!({ "sku": format!("SKU-{i}"), "name": format!("Product {i}"), "price_cents": 250 + i * 100, "stock": 1000 }))
            .await;
        let (product, version) = accepted(&listed, "list product");
        let mut tally = Tally::default();
        read_at_least(&query, "products", &product, version, &mut tally).await;
        products.push(product);
    }

    let shoppers = 6;
    let started = Instant::now();
    let tallies =
        futures::future::join_all((0..shoppers).map(|n| shopper(n, &commands, &query, &products))).await;
    let reads: usize = tallies.iter().map(|t| t.reads).sum();
    let slowest = tallies.iter().map(|t| t.max_wait).max().unwrap_or_default();
    eprintln!(
        "{shoppers} shoppers, {reads} read-your-writes reads in {:?}; slowest read {slowest:?}",
        started.elapsed()
    );

    // Finally the read models equal the fold of everything in the event store, and so does
    // what the query API serves for every entity.
    let events = stored_events(&env).await;
    assert!(events.len() > shoppers * 8, "only {} events stored", events.len());
    wait_projected(&env, &events, Duration::from_secs(60)).await;
    let expected = oracle::fold(&events);
    for (read_model, route) in [
        (ORDER_SUMMARY, "orders"),
        (PRODUCT_CATALOG, "products"),
        (CART_VIEW, "carts"),
        (USER_PROFILE, "users"),
    ] {
        for (id, want) in &expected.rows[read_model] {
            let got = query.get(&format!("/{route}/{id}"), &[]).await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(normalize(&got.body), normalize(want), "/{route}/{id}");
        }
    }
    query.stop().await;
    commands.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

/// The pid of this environment's listening connection, once there is one.
async fn listener_pid(client: &tokio_postgres::Client, schema: &str, not: Option<i32>) -> i32 {
    let channel = prism_read_store::read_models::applied_channel(schema);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE application_name = 'prism-query-listener' AND strpos(query, $1) > 0 AND pid <> $2",
                &[&channel, &not.unwrap_or(0)],
            )
            .await
            .expect("pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "no listening connection for {schema}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_still_wake_after_the_listening_connection_is_killed() {
    let _metrics = crate::support::metrics_exclusive().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let events = Workload::generate(23, 200);
    let (order_id, last) = events
        .iter()
        .filter(|e| e.meta.aggregate_type == ORDER && e.meta.aggregate_version >= 2)
        .map(|e| (e.meta.aggregate_id, e.meta.aggregate_version as i64))
        .max_by_key(|(_, v)| *v)
        .expect("an order with 2 events");
    let (held, first): (Vec<Event>, Vec<Event>) = events
        .iter()
        .cloned()
        .partition(|e| e.meta.aggregate_id == order_id && e.meta.aggregate_version >= 2);
    publish(&env, &first).await;
    let projector = projector(&env);
    wait_projected(&env, &first, Duration::from_secs(90)).await;
    let wait = Duration::from_secs(15);
    let query = Running::query(with_wait(&env, wait.as_millis() as u64)).await;

    // Kill the listening connection; the service reconnects (a new backend) and is ready again.
    let client = env.pg().await.expect("pg");
    let schema = env.config.postgres.schema.clone();
    let old = listener_pid(&client, &schema, None).await;
    client.execute("SELECT pg_terminate_backend($1)", &[&old]).await.expect("terminate");
    let new = listener_pid(&client, &schema, Some(old)).await;
    assert_ne!(new, old);
    let deadline = Instant::now() + Duration::from_secs(10);
    while query.get("/readyz", &[]).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready again after the listener reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A waiter parked now (as the service reports) is woken by the new connection's
    // notifications, long before the deadline (the final re-read at the deadline would
    // otherwise hide a dead listener).
    let waiting = {
        let http = query.http.clone();
        let url = format!("{}/orders/{order_id}?min_version={last}", query.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http.get(url).send().await.expect("get");
            (response.status(), started.elapsed())
        })
    };
    query.wait_for_metric(ORDERS_WAITING, 1.0, Duration::from_secs(5)).await;
    publish(&env, &held).await;
    let (status, took) = waiting.await.expect("request");
    assert_eq!(status, StatusCode::OK);
    assert!(took < wait - Duration::from_secs(5), "woken only after {took:?}");
    query.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}
