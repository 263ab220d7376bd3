//! The engine's generic route, `GET /read-models/{name}/{key}`, on the shop's read models: the
//! same rows, versions and read-your-writes as the shop's own routes, none of the engine's
//! bookkeeping columns, and clear errors for what it cannot serve. And every error of the
//! service is JSON, a 405 included.

use std::time::Duration;

use prism_testkit::oracle::normalize;
use reqwest::{Method, StatusCode};
use shop::testing::oracle;
use shop::testing::workload::Workload;
use shop_model::read_models::{CART_VIEW, ORDER_SUMMARY, PRODUCT_CATALOG, PRODUCT_SALES_DAILY, USER_PROFILE};
use uuid::Uuid;

use crate::support::{environment, metric, projector, publish, wait_projected, with_wait, Running};

/// Rows compared per read model (the whole oracle is compared through the shop's routes).
const SAMPLE: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_generic_route_serves_every_keyed_read_model_as_the_shop_routes_do() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let events = Workload::generate(31, 300);
    publish(&env, &events).await;
    let projector = projector(&env);
    wait_projected(&env, &events, Duration::from_secs(90)).await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
    let query = Running::query(with_wait(&env, 300)).await;
    let expected = oracle::fold(&events);

    for (read_model, route) in [
        (ORDER_SUMMARY, "/orders"),
        (PRODUCT_CATALOG, "/products"),
        (CART_VIEW, "/carts"),
        (USER_PROFILE, "/users"),
    ] {
        let rows = &expected.rows[read_model];
        assert!(!rows.is_empty(), "the workload produced no {read_model} rows");
        for (id, want) in rows.iter().take(SAMPLE) {
            let path = format!("/read-models/{read_model}/{id}");
            let got = query.get(&path, &[]).await;
            assert_eq!(got.status, StatusCode::OK, "{path}: {:?}", got.body);
            assert_eq!(normalize(&got.body), normalize(want), "{path}");
            assert_eq!(got.version_header(), want["version"].as_i64(), "{path} X-Prism-Version");
            let keys: Vec<&String> = got.body.as_object().expect("an object").keys().collect();
            assert!(!keys.iter().any(|k| k.starts_with("prism_")), "{path}: engine columns served: {keys:?}");
            let shop_route = query.get(&format!("{route}/{id}"), &[]).await;
            assert_eq!(got.body, shop_route.body, "{path} and {route}/{id} serve the same document");
            assert_eq!(got.version_header(), shop_route.version_header());
        }
    }

    // Read-your-writes through the generic route: reached at once, or stale after the wait.
    let (id, want) = expected.rows[ORDER_SUMMARY].iter().next().expect("an order");
    let version = want["version"].as_i64().expect("version");
    let path = format!("/read-models/{ORDER_SUMMARY}/{id}");
    let reached = query.get(&format!("{path}?min_version={version}"), &[]).await;
    assert_eq!(reached.status, StatusCode::OK, "{:?}", reached.body);
    let ahead = (version + 1).to_string();
    let stale = query.get(&path, &[("X-Prism-Min-Version", &ahead)]).await;
    assert_eq!(stale.status, StatusCode::ACCEPTED, "{:?}", stale.body);
    assert_eq!(stale.header("x-prism-stale"), Some("true"));
    assert_eq!(stale.version_header(), Some(version));
    assert_eq!(normalize(&stale.body), normalize(want), "the row as it stands");

    // What the route cannot serve, each a clear JSON error.
    let unknown = query.get(&format!("/read-models/no_such_model/{id}"), &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error("code"), Some("not_found"));
    assert!(unknown.error("message").is_some_and(|m| m.contains("no_such_model")), "{:?}", unknown.body);
    let composite = query.get(&format!("/read-models/{PRODUCT_SALES_DAILY}/{id}"), &[]).await;
    assert_eq!(composite.status, StatusCode::NOT_FOUND, "{:?}", composite.body);
    assert!(composite.error("message").is_some_and(|m| m.contains("key columns")), "{:?}", composite.body);
    let missing = query.get(&format!("/read-models/{CART_VIEW}/{}", Uuid::new_v4()), &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error("message"), Some("cart_view row not found"));
    for (path, field) in [
        (format!("/read-models/{ORDER_SUMMARY}/not-a-uuid"), "key"),
        (format!("/read-models/{ORDER_SUMMARY}/{}", "a".repeat(600)), "key"),
        (format!("{path}?min_version=soon"), "min_version"),
        (format!("{path}?limit=3"), "limit"),
    ] {
        let got = query.get(&path, &[]).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{path}: {:?}", got.body);
        assert_eq!(got.error("field"), Some(field), "{path}: {:?}", got.body);
    }

    let metrics = query.metrics().await;
    let served =
        metric(&metrics, "prism_query_requests_total{route=\"/read-models/{name}/{key}\",status=\"200\"}");
    assert!(served.is_some_and(|n| n >= 4.0 * SAMPLE.min(1) as f64), "{served:?}");
    query.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_a_405_included() {
    let _metrics = crate::support::metrics_exclusive().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let query = Running::query(env.config.clone()).await;
    let id = Uuid::new_v4();
    for (method, path) in [
        (Method::POST, format!("/orders/{id}")),
        (Method::DELETE, format!("/users/{id}/orders")),
        (Method::PUT, "/products".to_owned()),
        (Method::POST, format!("/read-models/{ORDER_SUMMARY}/{id}")),
        (Method::POST, "/metrics".to_owned()),
        (Method::DELETE, "/readyz".to_owned()),
    ] {
        let got = query.request(method.clone(), &path).await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(got.header("content-type"), Some("application/json"), "{method} {path}");
        assert_eq!(got.error("code"), Some("method_not_allowed"), "{method} {path}: {:?}", got.body);
        assert!(got.error("message").is_some_and(|m| !m.is_empty()), "{method} {path}");
        assert!(
            got.header("allow").is_some_and(|allow| allow.contains("GET")),
            "{method} {path}: {:?}",
            got.headers
        );
    }
    let unknown = query.request(Method::GET, "/no/such/route").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.header("content-type"), Some("application/json"));
    assert_eq!(unknown.error("code"), Some("not_found"));
    let metrics = query.metrics().await;
    assert!(
        metric(&metrics, "prism_query_requests_total{route=\"/orders/{id}\",status=\"405\"}") == Some(1.0),
        "a 405 is counted under its route:\n{metrics}"
    );
    query.stop().await;
}
