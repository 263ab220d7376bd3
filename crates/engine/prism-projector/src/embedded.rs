//! A projector running inside another process: blue/green builders, benchmarks and tests run
//! [`crate::run`] on a task and need to stop it cleanly (in-flight batches finish, offsets are
//! committed) and to learn how it ended.

use std::time::Duration;

use anyhow::bail;
use prism_config::PrismConfig;
use prism_projections::Application;
use prism_runtime::Health;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Duties, SharedClients};

/// A projector on a task of the current runtime, serving its ops endpoints on an ephemeral
/// port.
#[derive(Debug)]
pub struct Embedded {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Embedded {
    /// Starts [`crate::run`] for `app` with `config`; its `projector.listen` is replaced by an
    /// ephemeral port so several can run side by side.
    pub fn start(config: PrismConfig, app: Application) -> Self {
        Self::start_with(config, app, Duties::All)
    }

    /// [`Embedded::start`], choosing the worker's duties.
    pub fn start_with(config: PrismConfig, app: Application, duties: Duties) -> Self {
        Self::start_sharing(config, app, duties, None)
    }

    /// A builder of the worker whose clients it is given ([`crate::builder`]): its consumer
    /// group only, on the worker's PostgreSQL pool, cache and producer.
    pub fn start_builder(config: PrismConfig, app: Application, clients: SharedClients) -> Self {
        Self::start_sharing(config, app, Duties::GroupOnly, Some(clients))
    }

    fn start_sharing(
        mut config: PrismConfig,
        app: Application,
        duties: Duties,
        shared: Option<SharedClients>,
    ) -> Self {
        config.projector.listen = "127.0.0.1:0".into();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run_sharing(config, app, Health::new(), duties, shared, async {
            let _ = stopped.await;
        }));
        Self { stop: Some(stop), task }
    }

    /// Whether it stopped by itself (it only does so on a fatal error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks it to stop and waits up to `timeout` for the end: its own error, a panic or the
    /// timeout are errors.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(timeout, &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => bail!("the projector task panicked: {join}"),
            Err(_) => {
                self.task.abort();
                bail!("the projector did not stop within {timeout:?}")
            }
        }
    }
}
