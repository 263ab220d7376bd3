//! Shared by the end-to-end tests: the shop's HTTP services run in the test process on free
//! ports, each waited for until its `/readyz` answers 200 and stopped with a clean exit.

#![allow(dead_code)]

use std::time::Duration;

use prism_config::PrismConfig;
use prism_testkit::TestEnv;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shop as the engine runs it.
pub fn shop() -> prism_projections::Application {
    shop_model::application()
}

/// A test environment for the shop with extra `PRISM__*` overrides.
pub async fn environment(overrides: &[(&str, &str)]) -> TestEnv {
    TestEnv::with_overrides(&shop(), overrides).await.expect("test environment")
}

/// An HTTP service of this process on a free port.
pub struct Service {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Starts `serve` on a free port and waits until its `/readyz` answers 200; a service that
    /// ends during start-up fails the test with its error.
    pub async fn start<F, Fut>(config: PrismConfig, serve: F) -> Self
    where
        F: FnOnce(PrismConfig, tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, stopped));
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready =
                http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if task.is_finished() {
                panic!("{base} ended during start-up: {:?}", task.await);
            }
            assert!(tokio::time::Instant::now() < deadline, "{base} not ready after 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { base, stop, task }
    }

    /// Asks it to stop and waits for a clean exit.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops within 30s")
            .expect("task")
            .expect("clean exit");
    }
}

/// The shop's command service (HTTP API and, with `relay.enabled`, the outbox relay) on a
/// free port.
pub async fn commands(config: PrismConfig) -> Service {
    Service::start(config, |config, listener, stopped| {
        shop_commands::serve(config, listener, async {
            let _ = stopped.await;
        })
    })
    .await
}

/// The shop's query service on a free port.
pub async fn query(config: PrismConfig) -> Service {
    Service::start(config, |config, listener, stopped| {
        shop_query::serve(config, listener, async {
            let _ = stopped.await;
        })
    })
    .await
}

/// `n` projector workers of the shop, in this process, sharing the partitions of one group.
pub fn projectors(config: &PrismConfig, n: usize) -> Vec<prism_projector::Embedded> {
    (0..n).map(|_| prism_projector::Embedded::start(config.clone(), shop())).collect()
}

/// Stops projector workers, each within 30 s and cleanly.
pub async fn stop_projectors(projectors: Vec<prism_projector::Embedded>) {
    for projector in projectors {
        projector.stop(Duration::from_secs(30)).await.expect("projector exits cleanly");
    }
}
