//! Every route against the oracle: events are published, projected by a real projector, and
//! each read model is read back over HTTP and compared with the in-memory fold of the same
//! events. Plus the 400 and 404 answers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use prism_testkit::oracle::normalize;
use reqwest::StatusCode;
use serde_json::Value;
use shop::testing::oracle;
use shop::testing::workload::Workload;
use shop_model::read_models::{CART_VIEW, ORDER_SUMMARY, PRODUCT_CATALOG, PRODUCT_SALES_DAILY, USER_PROFILE};
use uuid::Uuid;

use crate::support::{environment, projector, publish, wait_projected, Running};

fn field<'a>(row: &'a Value, name: &str) -> &'a str {
    row.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("no {name} in {row}"))
}

fn placed_at(row: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(field(row, "placed_at")).expect("placed_at").with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_serves_what_the_oracle_expects() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let events = Workload::generate(7, 700);
    publish(&env, &events).await;
    let projector = projector(&env);
    wait_projected(&env, &events, Duration::from_secs(90)).await;
    let query = Running::query(env.config.clone()).await;
    let expected = oracle::fold(&events);

    // Entities: body equals the oracle's row, X-Prism-Version equals the row's version.
    let entity_routes = [
        (ORDER_SUMMARY, "/orders"),
        (PRODUCT_CATALOG, "/products"),
        (CART_VIEW, "/carts"),
        (USER_PROFILE, "/users"),
    ];
    let mut compared = 0;
    for (read_model, route) in entity_routes {
        let rows = &expected.rows[read_model];
        assert!(!rows.is_empty(), "the workload produced no {read_model} rows");
        for (id, want) in rows {
            let got = query.get(&format!("{route}/{id}"), &[]).await;
            assert_eq!(got.status, StatusCode::OK, "{route}/{id}: {:?}", got.body);
            assert_eq!(normalize(&got.body), normalize(want), "{route}/{id}");
            assert_eq!(got.version_header(), want["version"].as_i64(), "{route}/{id} X-Prism-Version");
            compared += 1;
        }
    }

    // A user's orders: newest first, every order exactly once across pages of 3.
    let orders = &expected.rows[ORDER_SUMMARY];
    let mut by_user: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for row in orders.values() {
        by_user.entry(field(row, "user_id")).or_default().push(row);
    }
    for (user, rows) in &mut by_user {
        rows.sort_by(|a, b| (placed_at(b), field(b, "order_id")).cmp(&(placed_at(a), field(a, "order_id"))));
        let mut served: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/users/{user}/orders?limit=3&cursor={c}"),
                None => format!("/users/{user}/orders?limit=3"),
            };
            let page = query.get(&path, &[]).await;
            assert_eq!(page.status, StatusCode::OK, "{path}: {:?}", page.body);
            let items = page.body["items"].as_array().expect("items").clone();
            assert!(items.len() <= 3, "{path}: page larger than limit");
            served.extend(items);
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let want: Vec<Value> = rows.iter().map(|r| normalize(r)).collect();
        let got: Vec<Value> = served.iter().map(normalize).collect();
        assert_eq!(got, want, "orders of user {user}, newest first");
    }

    // Listed products: every listed product exactly once across pages of 4, in name order.
    let listed: BTreeSet<&str> = expected.rows[PRODUCT_CATALOG]
        .values()
        .filter(|row| row["listed"] == Value::Bool(true))
        .map(|row| field(row, "product_id"))
        .collect();
    let mut served: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/products?limit=4&cursor={c}"),
            None => "/products?limit=4".to_owned(),
        };
        let page = query.get(&path, &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {:?}", page.body);
        served.extend(page.body["items"].as_array().expect("items").iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let served_ids: Vec<&str> = served.iter().map(|row| field(row, "product_id")).collect();
    assert_eq!(served_ids.len(), listed.len(), "every listed product once: {served_ids:?}");
    assert_eq!(served_ids.iter().copied().collect::<BTreeSet<_>>(), listed);
    for row in &served {
        let want = &expected.rows[PRODUCT_CATALOG][field(row, "product_id")];
        assert_eq!(normalize(row), normalize(want));
    }

    // Daily sales: per product, the days of the whole workload span.
    let sales = &expected.rows[PRODUCT_SALES_DAILY];
    assert!(!sales.is_empty(), "the workload paid no orders");
    let mut per_product: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for row in sales.values() {
        per_product.entry(field(row, "product_id")).or_default().push(row);
    }
    let days: Vec<NaiveDate> = sales.values().map(|r| field(r, "day").parse().expect("day")).collect();
    let (first, last) = (days.iter().min().expect("a day"), days.iter().max().expect("a day"));
    for (product, rows) in &per_product {
        let path = format!("/products/{product}/sales?from={first}&to={last}");
        let got = query.get(&path, &[]).await;
        assert_eq!(got.status, StatusCode::OK, "{path}: {:?}", got.body);
        let want: Vec<Value> = rows.iter().map(|r| normalize(r)).collect();
        let got_days: Vec<Value> = got.body["days"].as_array().expect("days").iter().map(normalize).collect();
        assert_eq!(got_days, want, "{path}");
        let units: i64 = rows.iter().map(|r| r["units"].as_i64().unwrap_or(0)).sum();
        assert_eq!(got.body["totals"]["units"].as_i64(), Some(units), "{path} totals");
        // A one-day window holds only that day.
        let day = field(rows[0], "day");
        let one = query.get(&format!("/products/{product}/sales?from={day}&to={day}"), &[]).await;
        assert_eq!(one.body["days"].as_array().map(Vec::len), Some(1), "{product} on {day}");
    }
    eprintln!(
        "compared {compared} entities, {} users' order lists, {} products' sales",
        by_user.len(),
        per_product.len()
    );

    query.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400_naming_them_and_unknown_ids_are_404() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let env = environment().await;
    let query = Running::query(env.config.clone()).await;
    let id = Uuid::new_v4();

    // (path, headers, the parameter the 400 must name)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let bad: Vec<Case<'_>> = vec![
        ("/orders/not-a-uuid".into(), vec![], "id"),
        ("/carts/123".into(), vec![], "id"),
        ("/users/x/orders".into(), vec![], "id"),
        (format!("/orders/{id}?min_version=abc"), vec![], "min_version"),
        (format!("/orders/{id}?min_version=-1"), vec![], "min_version"),
        (format!("/products/{id}"), vec![("X-Prism-Min-Version", "soon")], "X-Prism-Min-Version"),
        (format!("/users/{id}?min_verison=3"), vec![], "min_verison"),
        (format!("/users/{id}/orders?limit=0"), vec![], "limit"),
        (format!("/users/{id}/orders?limit=100000"), vec![], "limit"),
        (format!("/users/{id}/orders?limit=2&limit=3"), vec![], "limit"),
        (format!("/users/{id}/orders?cursor=zz"), vec![], "cursor"),
        ("/products?cursor=6f7c317c32".into(), vec![], "cursor"),
        ("/products?offset=10".into(), vec![], "offset"),
        (format!("/products/{id}/sales?to=2026-11-20"), vec![], "from"),
        (format!("/products/{id}/sales?from=2026-13-01&to=2026-11-20"), vec![], "from"),
        (format!("/products/{id}/sales?from=2026-11-20"), vec![], "to"),
        (format!("/products/{id}/sales?from=2026-11-20&to=2026-11-19"), vec![], "to"),
        (format!("/products/{id}/sales?from=2020-01-01&to=2026-11-19"), vec![], "to"),
    ];
    for (path, headers, parameter) in &bad {
        let got = query.get(path, headers).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{path}: {:?}", got.body);
        assert_eq!(got.error("field"), Some(*parameter), "{path}: {:?}", got.body);
        assert!(got.error("message").is_some_and(|m| !m.is_empty()), "{path}");
    }

    for path in [
        format!("/orders/{id}"),
        format!("/products/{id}"),
        format!("/carts/{id}"),
        format!("/users/{id}"),
        format!("/products/{id}/sales?from=2026-11-01&to=2026-11-30"),
        "/no/such/route".to_owned(),
    ] {
        let got = query.get(&path, &[]).await;
        assert_eq!(got.status, StatusCode::NOT_FOUND, "{path}: {:?}", got.body);
        assert_eq!(got.error("code"), Some("not_found"), "{path}");
    }
    // No orders is an empty list, not an unknown user.
    let got = query.get(&format!("/users/{id}/orders"), &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["items"], Value::Array(vec![]));
    assert_eq!(got.body["next_cursor"], Value::Null);

    let metrics = query.metrics().await;
    for series in [
        "prism_query_requests_total{route=\"/orders/{id}\",status=\"400\"}",
        "prism_query_requests_total{route=\"/orders/{id}\",status=\"404\"}",
        "prism_query_requests_total{route=\"/products\",status=\"200\"}",
        "prism_query_cache_lookups_total{read_model=\"order_summary\",result=\"miss\"}",
        "prism_query_stale_responses_total{read_model=\"cart_view\"}",
        "prism_query_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(series), "missing {series} in /metrics:\n{metrics}");
    }
    assert_eq!(query.get("/healthz", &[]).await.status, StatusCode::OK);
    let ready = query.get("/readyz", &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{:?}", ready.body);
    for check in ["postgres", "redis", "notifications"] {
        assert_eq!(ready.body["checks"][check]["ok"], Value::Bool(true), "{check}: {:?}", ready.body);
    }
    query.stop().await;
}
