//! Helpers shared by the end-to-end tests: Prism's HTTP services run in the test process.

#![allow(dead_code)]

use std::time::Duration;

use prism_config::PrismConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An HTTP service of this process on a free port.
pub struct Service {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    /// Starts `serve` on a free port and waits until its `/readyz` answers 200.
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


/// The command service (HTTP API and outbox relay) on a free port.
pub async fn commands(config: PrismConfig) -> Service {
    Service::start(config, |config, listener, stopped| {
        prism_commands::serve(config, listener, async {
            let _ = stopped.await;
        })
    })
    .await
}

/// The query service on a free port.
pub async fn query(config: PrismConfig) -> Service {
    Service::start(config, |config, listener, stopped| {
        prism_query::serve(config, listener, async {
            let _ = stopped.await;
        })
    })
    .await
}
