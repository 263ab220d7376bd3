//! The shop's HTTP command API against the real PostgreSQL: every status code of the error
//! table, idempotent replays, contexts, concurrent commands on one aggregate, readiness, and
//! the hardening of the HTTP edge (a missing schema named, object bodies only, JSON 405s, empty
//! bodies on commands whose fields are all optional).

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use prism_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shop_model::aggregates::{ORDER, PRODUCT};
use uuid::Uuid;

use crate::support::{environment, event_count, register_user, spawn_binary, stored_versions, Server};

async fn env() -> TestEnv {
    environment(&[("PRISM__RELAY__ENABLED", "false"), ("PRISM__COMMANDS__MAX_BODY_BYTES", "2048")]).await
}

async fn list_product(server: &Server, price_cents: i64, stock: i64) -> Uuid {
    let id = Uuid::new_v4();
    let answer = server
        .post("/products", json!({"product_id": id, "sku": "SKU-1", "name": "Lamp", "price_cents": price_cents, "stock": stock}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    id
}

/// Users and catalog: successes with versions, and 400 (field named), 404, 409 (reason),
/// 413, 415 and If-Match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_catalog_answer_with_versions_and_precise_errors() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;

    let user = Uuid::new_v4();
    let created = server
        .post("/users", json!({"user_id": user, "email": "ada@example.com", "display_name": "Ada"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    assert_eq!(
        created.body,
        json!({"aggregate_type": "user", "aggregate_id": user, "version": 1, "events": ["UserRegistered"]})
    );
    let generated = server.post("/users", json!({"email": "bob@example.com", "display_name": "Bob"})).await;
    assert_eq!(generated.status, StatusCode::CREATED);
    assert!(generated.body["aggregate_id"].as_str().and_then(|id| Uuid::parse_str(id).ok()).is_some());

    let path = format!("/users/{user}");
    let changed = server.send(Method::PATCH, &path, Some(&json!({"display_name": "Ada L."})), &[]).await;
    assert_eq!((changed.status, changed.version()), (StatusCode::OK, 2));
    assert_eq!(changed.body["events"], json!(["UserProfileChanged"]));

    // 409 with the rule's code.
    let same = server.send(Method::PATCH, &path, Some(&json!({"display_name": "Ada L."})), &[]).await;
    assert_eq!(
        (same.status, same.error("code"), same.error("reason")),
        (StatusCode::CONFLICT, Some("rejected"), Some("no_change"))
    );
    let again = server
        .post("/users", json!({"user_id": user, "email": "ada@example.com", "display_name": "Ada"}))
        .await;
    assert_eq!(again.error("reason"), Some("already_registered"));

    // 404 for an aggregate that does not exist.
    let missing = server
        .send(Method::PATCH, &format!("/users/{}", Uuid::new_v4()), Some(&json!({"email": "x@y.io"})), &[])
        .await;
    assert_eq!((missing.status, missing.error("code")), (StatusCode::NOT_FOUND, Some("not_found")));

    // 400 naming the field: domain rule, wrong type, unknown field, missing field, bad path id.
    let cases: [(&str, Value, &str); 4] = [
        ("/users", json!({"email": "not-an-address", "display_name": "X"}), "email"),
        ("/users", json!({"email": "a@b.io", "display_name": 42}), "display_name"),
        ("/users", json!({"email": "a@b.io", "display_name": "X", "nickname": "x"}), "nickname"),
        ("/users", json!({"display_name": "X"}), "email"),
    ];
    for (path, body, field) in cases {
        let answer = server.post(path, body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {:?}", answer.body);
        assert_eq!(answer.error("field"), Some(field), "{body}: {:?}", answer.body);
        assert!(answer.error("message").is_some_and(|m| !m.is_empty()));
    }
    let bad_id =
        server.send(Method::PATCH, "/users/not-a-uuid", Some(&json!({"email": "a@b.io"})), &[]).await;
    assert_eq!((bad_id.status, bad_id.error("field")), (StatusCode::BAD_REQUEST, Some("id")));
    let empty_patch = server.send(Method::PATCH, &path, Some(&json!({})), &[]).await;
    assert_eq!((empty_patch.status, empty_patch.error("field")), (StatusCode::BAD_REQUEST, Some("body")));

    // Malformed JSON, non-JSON, oversized bodies.
    let malformed =
        server.raw(Method::POST, "/users", Some("application/json"), b"{\"email\": ".to_vec()).await;
    assert_eq!(
        (malformed.status, malformed.error("code")),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    let text = server.raw(Method::POST, "/users", Some("text/plain"), b"hello".to_vec()).await;
    assert_eq!(
        (text.status, text.error("code")),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("unsupported_media_type"))
    );
    let untyped = server.raw(Method::POST, "/users", None, b"{}".to_vec()).await;
    assert_eq!(untyped.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({"email": "a@b.io", "display_name": "x".repeat(4096)});
    let too_large = server.post("/users", huge).await;
    assert_eq!(
        (too_large.status, too_large.error("code")),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    // If-Match: the current version passes, another one is a version mismatch.
    let stale =
        server.send(Method::PATCH, &path, Some(&json!({"email": "ada@new.io"})), &[("If-Match", "1")]).await;
    assert_eq!((stale.status, stale.error("reason")), (StatusCode::CONFLICT, Some("version_mismatch")));
    let fresh = server
        .send(Method::PATCH, &path, Some(&json!({"email": "ada@new.io"})), &[("If-Match", "\"2\"")])
        .await;
    assert_eq!((fresh.status, fresh.version()), (StatusCode::OK, 3));
    let bad_header =
        server.send(Method::PATCH, &path, Some(&json!({"email": "a@b.io"})), &[("If-Match", "three")]).await;
    assert_eq!((bad_header.status, bad_header.error("field")), (StatusCode::BAD_REQUEST, Some("If-Match")));

    // Catalog: price, stock rules, delisting.
    let product = list_product(&server, 1_000, 5).await;
    let price = server.post(&format!("/products/{product}/price"), json!({"price_cents": 1_250})).await;
    assert_eq!((price.status, price.version()), (StatusCode::OK, 2));
    let below = server.post(&format!("/products/{product}/restock"), json!({"quantity": -6})).await;
    assert_eq!(below.error("reason"), Some("stock_below_zero"));
    let zero = server.post(&format!("/products/{product}/restock"), json!({"quantity": 0})).await;
    assert_eq!((zero.status, zero.error("field")), (StatusCode::BAD_REQUEST, Some("quantity")));
    let delisted =
        server.post(&format!("/products/{product}/delist"), json!({"reason": "discontinued"})).await;
    assert_eq!((delisted.status, delisted.version()), (StatusCode::OK, 3));
    let after = server.post(&format!("/products/{product}/price"), json!({"price_cents": 900})).await;
    assert_eq!((after.status, after.error("reason")), (StatusCode::CONFLICT, Some("product_delisted")));
    assert_eq!(stored_versions(&env, PRODUCT, product).await, vec![1, 2, 3]);

    // Operations endpoints share the listener.
    let (status, metrics) = server.get_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("prism_commands_requests_total"), "{metrics}");
    assert!(metrics.contains("outcome=\"rejected\""), "{metrics}");
    // The product was folded whole once, then from the state kept for it.
    let loads = |start: &str| -> f64 {
        let series = format!("prism_commands_aggregate_loads_total{{start=\"{start}\"}} ");
        let line = metrics
            .lines()
            .find(|line| line.starts_with(&series))
            .unwrap_or_else(|| panic!("{series}in {metrics}"));
        line[series.len()..].trim().parse().expect("a count")
    };
    assert!(loads("whole") >= 1.0 && loads("kept") >= 2.0, "{metrics}");
    assert_eq!(loads("diverged"), 0.0, "exported from the start");
    assert_eq!(server.get_text("/healthz").await.0, StatusCode::OK);
    assert_eq!(server.get_text("/readyz").await.0, StatusCode::OK);
    let nowhere = server.post("/invoices", json!({})).await;
    assert_eq!((nowhere.status, nowhere.error("code")), (StatusCode::NOT_FOUND, Some("not_found")));
    server.stop().await;
}

/// Carts and orders: adding items prices them from the catalog, checkout places the order in
/// the same transaction, orders from items refuse unknown and delisted products, and the
/// payment and shipping rules answer with their codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_checkout_and_orders_follow_the_rules() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let (user, cart) = (register_user(&server).await, Uuid::new_v4());
    let lamp = list_product(&server, 1_500, 10).await;
    let desk = list_product(&server, 20_000, 3).await;

    let items = format!("/carts/{cart}/items");
    let opened = server.post(&items, json!({"user_id": user, "product_id": lamp, "quantity": 2})).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    assert_eq!(opened.body["events"], json!(["CartOpened", "CartItemAdded"]));
    assert_eq!(opened.version(), 2);
    let added = server.post(&items, json!({"user_id": user, "product_id": desk, "quantity": 1})).await;
    assert_eq!((added.status, added.version()), (StatusCode::OK, 3));
    let stranger =
        server.post(&items, json!({"user_id": Uuid::new_v4(), "product_id": desk, "quantity": 1})).await;
    assert_eq!(stranger.error("reason"), Some("not_cart_owner"));
    let unknown =
        server.post(&items, json!({"user_id": user, "product_id": Uuid::new_v4(), "quantity": 1})).await;
    assert_eq!((unknown.status, unknown.error("reason")), (StatusCode::CONFLICT, Some("product_not_found")));
    let negative = server.post(&items, json!({"user_id": user, "product_id": desk, "quantity": -1})).await;
    assert_eq!((negative.status, negative.error("field")), (StatusCode::BAD_REQUEST, Some("quantity")));
    let removed = server.send(Method::DELETE, &format!("{items}/{desk}"), None, &[]).await;
    assert_eq!((removed.status, removed.version()), (StatusCode::OK, 4));
    let not_in = server.send(Method::DELETE, &format!("{items}/{desk}"), None, &[]).await;
    assert_eq!(not_in.error("reason"), Some("item_not_in_cart"));

    let order = Uuid::new_v4();
    let correlation = Uuid::new_v4().to_string();
    let checked_out = server
        .send(
            Method::POST,
            &format!("/carts/{cart}/checkout"),
            Some(&json!({"order_id": order})),
            &[("X-Correlation-Id", &correlation)],
        )
        .await;
    assert_eq!(checked_out.status, StatusCode::OK, "{:?}", checked_out.body);
    assert_eq!(checked_out.body["events"], json!(["CartCheckedOut"]));
    assert_eq!(
        checked_out.body["order"],
        json!({"aggregate_type": "order", "aggregate_id": order, "version": 1, "events": ["OrderPlaced"]})
    );
    let client = env.db.client().await.expect("client");
    let placed = client
        .query_one("SELECT payload, correlation_id::text FROM events WHERE aggregate_id = $1", &[&order])
        .await
        .expect("order placed");
    let payload: Value = placed.get(0);
    assert_eq!(payload["cart_id"], json!(cart));
    assert_eq!(payload["lines"], json!([{"product_id": lamp, "quantity": 2, "unit_price_cents": 1_500}]));
    assert_eq!(payload["total_cents"], json!(3_000));
    assert_eq!(placed.get::<_, String>(1), correlation, "events carry the request's correlation id");
    let twice = server.post(&format!("/carts/{cart}/checkout"), json!({})).await;
    assert_eq!(twice.error("reason"), Some("cart_checked_out"));

    // Orders from items: prices from the catalog; unknown, delisted and repeated products refused.
    let direct = Uuid::new_v4();
    let lines = json!([{"product_id": lamp, "quantity": 1}, {"product_id": desk, "quantity": 2}]);
    let placed = server.post("/orders", json!({"order_id": direct, "user_id": user, "items": lines})).await;
    assert_eq!((placed.status, placed.version()), (StatusCode::CREATED, 1), "{:?}", placed.body);
    let ghost = server
        .post("/orders", json!({"user_id": user, "items": [{"product_id": Uuid::new_v4(), "quantity": 1}]}))
        .await;
    assert_eq!((ghost.status, ghost.error("reason")), (StatusCode::CONFLICT, Some("product_not_found")));
    let repeated = server
        .post("/orders", json!({"user_id": user, "items": [{"product_id": lamp, "quantity": 1}, {"product_id": lamp, "quantity": 1}]}))
        .await;
    assert_eq!(
        (repeated.status, repeated.error("field")),
        (StatusCode::BAD_REQUEST, Some("items[1].product_id"))
    );
    let empty = server.post("/orders", json!({"user_id": user, "items": []})).await;
    assert_eq!((empty.status, empty.error("field")), (StatusCode::BAD_REQUEST, Some("items")));
    assert_eq!(server.post(&format!("/products/{desk}/delist"), json!({})).await.status, StatusCode::OK);
    let gone = server
        .post("/orders", json!({"user_id": user, "items": [{"product_id": desk, "quantity": 1}]}))
        .await;
    assert_eq!(gone.error("reason"), Some("product_not_listed"));

    // Payment and shipping.
    let at = |action: &str| format!("/orders/{direct}/{action}");
    assert_eq!(
        server.post(&at("ship"), json!({"carrier": "DHL", "tracking_code": "T1"})).await.error("reason"),
        Some("order_not_paid")
    );
    assert_eq!(server.post(&at("pay"), json!({"method": "card"})).await.version(), 2);
    assert_eq!(
        server.post(&at("pay"), json!({"method": "card"})).await.error("reason"),
        Some("payment_in_progress")
    );
    let no_ref = server.post(&at("payment"), json!({"outcome": "succeeded"})).await;
    assert_eq!((no_ref.status, no_ref.error("field")), (StatusCode::BAD_REQUEST, Some("payment_reference")));
    let bad_method = server.post(&at("pay"), json!({"method": "cash"})).await;
    assert_eq!((bad_method.status, bad_method.error("field")), (StatusCode::BAD_REQUEST, Some("method")));
    assert_eq!(
        server.post(&at("payment"), json!({"outcome": "failed", "reason": "declined"})).await.version(),
        3
    );
    assert_eq!(server.post(&at("pay"), json!({"method": "wallet"})).await.version(), 4);
    assert_eq!(
        server
            .post(&at("payment"), json!({"outcome": "succeeded", "payment_reference": "psp-1"}))
            .await
            .version(),
        5
    );
    assert_eq!(
        server.post(&at("cancel"), json!({"reason": "changed my mind"})).await.error("reason"),
        Some("order_already_paid")
    );
    assert_eq!(server.post(&at("ship"), json!({"carrier": "DHL", "tracking_code": "T1"})).await.version(), 6);
    assert_eq!(
        server.post(&at("cancel"), json!({"reason": "late"})).await.error("reason"),
        Some("order_shipped")
    );
    let nowhere = server.post(&format!("/orders/{}/pay", Uuid::new_v4()), json!({"method": "card"})).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(stored_versions(&env, ORDER, direct).await, (1..=6).collect::<Vec<i64>>());
    server.stop().await;
}

/// Idempotency-Key: a retry replays the first response and appends nothing; the key with
/// another request is 422; malformed keys are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_and_refuse_reuse() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let body = json!({"email": "kim@example.com", "display_name": "Kim"});
    let key = [("Idempotency-Key", "signup-7f3a")];
    let first = server.send(Method::POST, "/users", Some(&body), &key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("Idempotent-Replayed").is_none());
    let events_after_first = event_count(&env).await;

    let retry = server.send(Method::POST, "/users", Some(&body), &key).await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body, "the replay must be the stored response (same generated id)");
    assert_eq!(retry.headers.get("Idempotent-Replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(event_count(&env).await, events_after_first, "a replay appends nothing");

    let other = server
        .send(
            Method::POST,
            "/users",
            Some(&json!({"email": "kim@example.com", "display_name": "Kimberly"})),
            &key,
        )
        .await;
    assert_eq!(
        (other.status, other.error("code")),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused"))
    );
    let elsewhere = server
        .send(
            Method::POST,
            "/products",
            Some(&json!({"sku": "S", "name": "N", "price_cents": 1, "stock": 1})),
            &key,
        )
        .await;
    assert_eq!(
        elsewhere.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "same key on another path is another request"
    );

    let long_key = "k".repeat(129);
    for bad in [long_key.as_str(), "has space"] {
        let answer = server.send(Method::POST, "/users", Some(&body), &[("Idempotency-Key", bad)]).await;
        assert_eq!(
            (answer.status, answer.error("field")),
            (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
            "{bad}"
        );
    }
    // A refused command is not recorded: the same key works once the request is valid.
    let refused = server
        .send(
            Method::POST,
            "/users",
            Some(&json!({"email": "bad", "display_name": "X"})),
            &[("Idempotency-Key", "k2")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let retried = server
        .send(
            Method::POST,
            "/users",
            Some(&json!({"email": "bad", "display_name": "X"})),
            &[("Idempotency-Key", "k2")],
        )
        .await;
    assert!(retried.headers.get("Idempotent-Replayed").is_none());
    assert_eq!(event_count(&env).await, events_after_first);
    server.stop().await;
}

/// Concurrent commands at one aggregate over HTTP: no two successes share a version, every
/// loser gets 409 `concurrent_modification`, and the stored stream has no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_get_one_winner_per_version() {
    const BURSTS: usize = 5;
    const PER_BURST: usize = 16;
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let product = list_product(&server, 100, 1_000).await;
    let path = format!("/products/{product}/price");
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for burst in 0..BURSTS {
        let requests = (0..PER_BURST).map(|n| {
            // Distinct prices: no request can be refused as `price_unchanged`.
            let price = 1_000 + (burst * PER_BURST + n) as i64;
            server.post(&path, json!({"price_cents": price}))
        });
        for answer in join_all(requests).await {
            match answer.status {
                StatusCode::OK => winners.push(answer.version()),
                StatusCode::CONFLICT => {
                    assert_eq!(answer.error("reason"), Some("concurrent_modification"), "{:?}", answer.body);
                    conflicts += 1;
                }
                other => panic!("unexpected {other}: {:?}", answer.body),
            }
        }
    }
    winners.sort_unstable();
    let distinct: std::collections::BTreeSet<u64> = winners.iter().copied().collect();
    assert_eq!(distinct.len(), winners.len(), "two requests won the same version: {winners:?}");
    assert!(conflicts > 0, "{} concurrent requests produced no conflict", BURSTS * PER_BURST);
    let stored = stored_versions(&env, PRODUCT, product).await;
    assert_eq!(
        stored,
        (1..=winners.len() as i64 + 1).collect::<Vec<_>>(),
        "stream has gaps or lost a winner"
    );
    assert_eq!(winners, (2..=winners.len() as u64 + 1).collect::<Vec<_>>());
    server.stop().await;
}

/// `[application] contexts` chooses the route groups a process serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_choose_the_routes() {
    let env =
        environment(&[("PRISM__RELAY__ENABLED", "false"), ("PRISM__APPLICATION__CONTEXTS", "[\"users\"]")])
            .await;
    let server = Server::start(env.config.clone()).await;
    assert_eq!(
        server.post("/users", json!({"email": "a@b.io", "display_name": "A"})).await.status,
        StatusCode::CREATED
    );
    let catalog =
        server.post("/products", json!({"sku": "S", "name": "N", "price_cents": 1, "stock": 1})).await;
    assert_eq!(catalog.status, StatusCode::NOT_FOUND, "the catalog is not served here");
    server.stop().await;
}

/// `/readyz` follows PostgreSQL: not ready while it is down (commands then get 503), ready
/// again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_postgres() {
    // Declared before the environment so the environment's cleanup still finds it running.
    let mut postgres = prism_testkit::private::PrivatePostgres::start().await.expect("private PostgreSQL");
    let url = format!("{}/postgres", postgres.url());
    let env =
        environment(&[("PRISM__RELAY__ENABLED", "false"), ("PRISM__POSTGRES__URL", url.as_str())]).await;
    let server = Server::start(env.config.clone()).await;
    let wait_for = |wanted: StatusCode| {
        let server = &server;
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            while server.get_text("/readyz").await.0 != wanted {
                assert!(tokio::time::Instant::now() < deadline, "/readyz never answered {wanted}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    };
    wait_for(StatusCode::OK).await;
    postgres.stop().await.expect("stop PostgreSQL");
    wait_for(StatusCode::SERVICE_UNAVAILABLE).await;
    let refused = server.post("/users", json!({"email": "a@b.io", "display_name": "A"})).await;
    assert_eq!(
        (refused.status, refused.error("code")),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    postgres.restart().await.expect("restart PostgreSQL");
    wait_for(StatusCode::OK).await;
    let accepted = server.post("/users", json!({"email": "a@b.io", "display_name": "A"})).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{:?}", accepted.body);
    server.stop().await;
}

/// Bodies are JSON objects. A positional array (which serde would read field by
/// field) is a 400 about the body, in the API's words; so is a positional line inside an
/// order; wrong types are described as JSON, never as Rust types. Nothing is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_bodies_are_refused_in_the_apis_words() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let before = event_count(&env).await;
    let rust_words =
        ["struct", "RegisterUser", "PlaceOrder", "Item", "elements", "u32", "i64", "sequence", "Vec"];
    let no_rust = |answer: &crate::support::Answer| {
        let message = answer.error("message").unwrap_or_default().to_owned();
        for word in rust_words {
            assert!(!message.contains(word), "`{word}` in {message}");
        }
        message
    };

    let positional = server
        .raw(
            Method::POST,
            "/users",
            Some("application/json"),
            br#"[null,"a@example.com","Array Body",true]"#.to_vec(),
        )
        .await;
    assert_eq!(
        (positional.status, positional.error("code"), positional.error("field")),
        (StatusCode::BAD_REQUEST, Some("invalid_field"), Some("body")),
        "{:?}",
        positional.body
    );
    assert!(no_rust(&positional).contains("JSON object"));

    let product = list_product(&server, 100, 5).await;
    let nested = server.post("/orders", json!({"user_id": Uuid::new_v4(), "items": [[product, 1]]})).await;
    assert_eq!(
        (nested.status, nested.error("field")),
        (StatusCode::BAD_REQUEST, Some("items[0]")),
        "{:?}",
        nested.body
    );
    assert!(no_rust(&nested).contains("JSON object"));

    let negative = server
        .post(
            &format!("/carts/{}/items", Uuid::new_v4()),
            json!({"user_id": Uuid::new_v4(), "product_id": product, "quantity": -1}),
        )
        .await;
    assert_eq!(negative.error("field"), Some("quantity"));
    assert!(no_rust(&negative).contains("a whole number from 0 to"));
    let text_price = server.post(&format!("/products/{product}/price"), json!({"price_cents": "ten"})).await;
    assert_eq!(text_price.error("field"), Some("price_cents"));
    no_rust(&text_price);
    let twice = server
        .raw(
            Method::POST,
            "/users",
            Some("application/json"),
            br#"{"email": "a@b.io", "email": "c@d.io", "display_name": "X"}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (twice.status, twice.error("field")),
        (StatusCode::BAD_REQUEST, Some("email")),
        "{:?}",
        twice.body
    );
    assert_eq!(event_count(&env).await, before + 1, "only the product was appended");
    server.stop().await;
}

/// A known path with another method is a 405 with the JSON error body and
/// `content-type: application/json` (and `Allow`), on the shop's routes and on the operations
/// endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_answers_in_json() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let id = Uuid::new_v4();
    for (method, path, allow) in [
        (Method::GET, "/users".to_owned(), "POST"),
        (Method::DELETE, format!("/users/{id}"), "PATCH"),
        (Method::GET, format!("/carts/{id}/checkout"), "POST"),
        (Method::PUT, format!("/orders/{id}/pay"), "POST"),
        (Method::POST, "/readyz".to_owned(), "GET,HEAD"),
        (Method::POST, "/healthz".to_owned(), "GET,HEAD"),
    ] {
        let answer = server.send(method.clone(), &path, None, &[]).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(answer.header("content-type"), Some("application/json"), "{method} {path}");
        assert_eq!(answer.error("code"), Some("method_not_allowed"), "{method} {path}: {:?}", answer.body);
        assert_eq!(
            answer.header("allow").map(|a| a.replace(' ', "")).as_deref(),
            Some(allow),
            "{method} {path}"
        );
    }
    server.stop().await;
}

/// Commands whose fields are all optional (delist, checkout) accept an empty body,
/// with or without a JSON content type, as `{}`; a command with required fields answers an
/// empty body with the missing field, not 415.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies_are_empty_objects() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let (user, cart) = (register_user(&server).await, Uuid::new_v4());
    let lamp = list_product(&server, 1_500, 10).await;
    let desk = list_product(&server, 9_000, 2).await;
    let delisted = server.raw(Method::POST, &format!("/products/{desk}/delist"), None, Vec::new()).await;
    assert_eq!((delisted.status, delisted.version()), (StatusCode::OK, 2), "{:?}", delisted.body);

    let added = server
        .post(&format!("/carts/{cart}/items"), json!({"user_id": user, "product_id": lamp, "quantity": 1}))
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);
    let checked_out = server
        .raw(Method::POST, &format!("/carts/{cart}/checkout"), Some("application/json"), Vec::new())
        .await;
    assert_eq!(checked_out.status, StatusCode::OK, "{:?}", checked_out.body);
    assert_eq!(checked_out.body["events"], json!(["CartCheckedOut"]));
    assert_eq!(checked_out.body["order"]["events"], json!(["OrderPlaced"]));

    let required = server.raw(Method::POST, "/users", None, Vec::new()).await;
    assert_eq!(
        (required.status, required.error("field")),
        (StatusCode::BAD_REQUEST, Some("email")),
        "{:?}",
        required.body
    );
    server.stop().await;
}

/// In process: with the schema never migrated, `/readyz` is 503 and its body
/// names the missing table and what to run; commands answer 503 `unavailable`, not 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_schema_is_not_ready() {
    let env = env().await;
    let mut config = env.config.clone();
    config.postgres.schema = format!("{}_absent", env.id);
    let server = Server::start(config.clone()).await;
    let (status, body) = server.get_text("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let readiness: Value = serde_json::from_str(&body).expect("JSON readiness");
    let detail = readiness["checks"]["event_store"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("`events`")
            && detail.contains(&config.postgres.schema)
            && detail.contains("prismctl migrate"),
        "{body}"
    );
    let refused = server.post("/users", json!({"email": "a@b.io", "display_name": "A"})).await;
    assert_eq!(
        (refused.status, refused.error("code")),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"))
    );
    server.stop().await;
}

/// As operators run it: the `shop-commands` binary on a schema never migrated
/// starts, is not ready, and the log line of a failed command names the table and the fix
/// (not just `PostgreSQL: db error`). SIGTERM still ends it with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_names_the_missing_table() {
    let env = env().await;
    let schema = format!("{}_absent", env.id);
    let mut child = spawn_binary(
        &env,
        &[("PRISM__POSTGRES__SCHEMA", schema.as_str()), ("PRISM__RELAY__ENABLED", "false")],
    );
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    if let Some(stderr) = child.stderr.take() {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("shop-commands: {line}");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
    }
    let find = |needle: &str| {
        lines.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|l| l.contains(needle)).cloned()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let listening = loop {
        if let Some(line) = find("command service listening") {
            break line;
        }
        assert!(child.try_wait().expect("status").is_none(), "shop-commands exited before listening");
        assert!(tokio::time::Instant::now() < deadline, "shop-commands never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let address = listening
        .split("address=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address in the log");
    let base = format!("http://{address}");
    let http = reqwest::Client::new();
    let ready = http.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().await.expect("body").contains("`events`"));
    assert!(
        find("the event store is not set up").is_some_and(|l| l.contains("`events`")),
        "no start-up warning naming the table"
    );
    let refused = http
        .post(format!("{base}/users"))
        .json(&json!({"email": "a@b.io", "display_name": "A"}))
        .send()
        .await
        .expect("command");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        if let Some(line) = find("command failed") {
            break line;
        }
        assert!(tokio::time::Instant::now() < deadline, "no log line for the failed command");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        failed.contains("table `events`") && failed.contains("relation \"events\" does not exist"),
        "{failed}"
    );
    assert!(failed.contains("prismctl migrate"), "{failed}");

    let status = std::process::Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::block_in_place(|| child.wait()).expect("wait");
    assert!(exit.success(), "shop-commands must exit 0 on SIGTERM, got {exit}");
}

/// The shop's own settings are configuration: an unknown context is refused at start with
/// exit code 2 and a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_contexts_exit_2() {
    let env = environment(&[]).await;
    let child = spawn_binary(&env, &[("PRISM__APPLICATION__CONTEXTS", "[\"users\", \"invoices\"]")]);
    let output = tokio::task::block_in_place(|| child.wait_with_output()).expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[application]") && stderr.contains("invoices"), "{stderr}");
}
