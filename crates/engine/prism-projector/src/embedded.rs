//! A projector running inside another process: `prismctl rebuild`'s blue/green builder, the
//! benchmarks and the tests run [`crate::run`] on a task and need to stop it cleanly (in-flight
//! batches finish, offsets are committed) and to learn how it ended.

use std::time::Duration;

use anyhow::bail;
use prism_config::PrismConfig;
use prism_runtime::Health;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A projector on a task of the current runtime, serving its ops endpoints on an ephemeral
/// port.
#[derive(Debug)]
pub struct Embedded {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Embedded {
    /// Starts [`crate::run`] with `config`; its `projector.listen` is replaced by an ephemeral
    /// port so several can run side by side.
    pub fn start(mut config: PrismConfig) -> Self {
        config.projector.listen = "127.0.0.1:0".into();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::run(config, Health::new(), async {
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
