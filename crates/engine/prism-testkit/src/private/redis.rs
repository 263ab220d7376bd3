//! [`PrivateRedis`]: a Redis server of one test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use super::{find_binary, free_port, kill_process, log_file, terminate_process, wait_for_port, ScratchDir};

/// A Redis server of one test: no persistence, 127.0.0.1 only.
#[derive(Debug)]
pub struct PrivateRedis {
    /// The listening port, kept across restarts.
    port: u16,
    /// The server process, while it runs.
    child: Option<Child>,
    /// The `redis-server` binary.
    binary: PathBuf,
    /// Working directory (log).
    dir: ScratchDir,
}

impl PrivateRedis {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("redis-server", &[], "install it with `apt-get install redis-server`")?;
        let mut server = Self { port: free_port()?, child: None, binary, dir: ScratchDir::new("redis")? };
        server.launch().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = self.dir.0.join("redis.log");
        let (stdout, stderr) = log_file(&log)?;
        let mut child = Command::new(&self.binary)
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let ready = wait_for_port(self.port, &mut child, "redis-server", &log).await;
        self.child = Some(child);
        ready
    }

    /// Stops the server gracefully (SIGTERM).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        terminate_process(self.child.take()).await
    }

    /// Kills the server (SIGKILL).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        kill_process(self.child.take())
    }

    /// Starts the server again on the same port (its data is not persisted).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = kill_process(self.child.take());
    }
}
