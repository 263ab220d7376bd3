//! Telemetry read through the engine's query service (`telemetry-query`'s routes, served
//! in-process): every device's `device_status` at `/read-models/device_status/{id}` — first
//! from PostgreSQL (the cache is emptied first), then from the refilled cache — and every
//! site's `site_hourly_readings` at `/sites/{site_id}/readings` equal the oracle's rows; bad
//! parameters are refused naming the parameter.

use std::collections::BTreeMap;
use std::time::Duration;

use prism_testkit::oracle::{normalize, CacheCheck};
use prism_testkit::TestEnv;
use serde_json::Value;

use crate::oracle;
use crate::support::{PythonProducer, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_row_reads_back_through_the_query_service_as_the_oracle_has_it() {
    prism_testkit::init_logging();
    let app = telemetry::application();
    let env = TestEnv::new(&app).await.expect("test environment");
    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());
    let produced = PythonProducer::spawn(&env, "query", &Workload::new(30, 4, 20, 17))
        .finish(Duration::from_secs(60))
        .await;
    let expected = oracle::fold(&produced.events);
    env.wait_for_oracle(&expected, CacheCheck::Complete, Duration::from_secs(60)).await.expect("oracle");
    projector.stop(Duration::from_secs(30)).await.expect("the projector stops cleanly");
    // Misses first: every read goes to PostgreSQL and refills the cache.
    prism_testkit::env::delete_keys(&env.config.redis.url, &env.config.redis.key_prefix)
        .await
        .expect("empty the cache");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(prism_query::serve(
        env.config.clone(),
        app.clone(),
        telemetry::query::routes(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let answer = http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}")))
        }
    };

    let devices = &expected.rows["device_status"];
    assert_eq!(devices.len(), 30);
    for round in ["from PostgreSQL", "from the cache"] {
        for (id, row) in devices {
            let (status, body) = get(format!("/read-models/device_status/{id}")).await;
            assert_eq!(status, 200, "device {id} {round}: {body}");
            assert_eq!(normalize(&body), normalize(row), "device {id} {round}");
        }
    }

    let mut by_site: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in expected.rows["site_hourly_readings"].values() {
        by_site.entry(row["site_id"].as_str().expect("site").to_owned()).or_default().push(normalize(row));
    }
    assert_eq!(by_site.len(), 4);
    for (site, mut want) in by_site {
        let (status, body) = get(format!("/sites/{site}/readings?limit=1000")).await;
        assert_eq!(status, 200, "{body}");
        let mut got: Vec<Value> =
            body["readings"].as_array().expect("readings").iter().map(normalize).collect();
        let order = |v: &Value| (v["metric"].to_string(), v["hour"].to_string());
        got.sort_by_key(order);
        want.sort_by_key(order);
        assert_eq!(got, want, "site {site}");
    }

    let (status, body) = get("/sites/berlin-01/readings?limit=lots".to_owned()).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("limit")), "{body}");
    let (status, body) = get("/sites/berlin-01/readings?metric=Not%20A%20Metric".to_owned()).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("metric")), "{body}");
    let (status, body) = get("/read-models/device_status/not-a-uuid".to_owned()).await;
    assert_eq!(status, 400, "{body}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("stops")
        .expect("task")
        .expect("clean exit");
}
