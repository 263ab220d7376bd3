//! The `shop-query` binary as operators run it: configured from `PRISM__*` variables, ready on
//! `/readyz`, exporting its metrics, exiting 0 on SIGTERM and 2 on bad configuration.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::process::Command;

use crate::support::environment;

fn free_port() -> u16 {
    prism_testkit::ports::free_port().expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_until_sigterm_and_refuses_bad_configuration() {
    let env = environment().await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop-query"))
        .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PRISM__QUERY__LISTEN", format!("127.0.0.1:{port}"))
        .env("PRISM__LOG__FILTER", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("shop-query starts");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(response) if response.status() == StatusCode::OK => break,
            _ => {
                assert!(Instant::now() < deadline, "shop-query not ready on {base} after 30s");
                assert!(child.try_wait().expect("status").is_none(), "shop-query exited early");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let missing = http.get(format!("{base}/orders/{}", uuid::Uuid::new_v4())).send().await.expect("get");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let metrics =
        http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains("prism_query_requests_total{route=\"/orders/{id}\",status=\"404\"} 1"),
        "{metrics}"
    );

    let pid = child.id().expect("pid").to_string();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid]).status();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within 15s of SIGTERM")
        .expect("status");
    assert!(status.success(), "exit status {status:?}");

    let status = Command::new(env!("CARGO_BIN_EXE_shop-query"))
        .env("PRISM__QUERY__MAX_PAGE_SIZE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("runs");
    assert_eq!(status.code(), Some(2), "bad configuration exits 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_a_schema_where_the_shop_is_not_set_up() {
    let env = environment().await;
    // Another schema of the same database, with nothing in it.
    let client = env.pg().await.expect("pg");
    let empty = format!("{}_empty", env.config.postgres.schema);
    client.batch_execute(&format!("CREATE SCHEMA {empty}")).await.expect("schema");
    let output = Command::new(env!("CARGO_BIN_EXE_shop-query"))
        .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PRISM__POSTGRES__SCHEMA", &empty)
        .env("PRISM__QUERY__LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("runs");
    client.batch_execute(&format!("DROP SCHEMA {empty} CASCADE")).await.expect("drop schema");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("shop-projector migrate"), "the error says what to run: {stderr}");
}
