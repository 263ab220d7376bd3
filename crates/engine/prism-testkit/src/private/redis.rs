//! [`PrivateRedis`]: a Redis server of one test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use super::{
    find_binary, free_port, kill_process, log_file, terminate_process, wait_for_port, ScratchDir,
    START_TIMEOUT,
};

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
    /// For a TLS server, its configuration file (TLS and password settings, mode 0600, so
    /// the password is not on the command line).
    tls_config: Option<PathBuf>,
}

impl PrivateRedis {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("redis-server", &[], "install it with `apt-get install redis-server`")?;
        let mut server = Self {
            port: free_port()?,
            child: None,
            binary,
            dir: ScratchDir::new("redis")?,
            tls_config: None,
        };
        server.launch().await?;
        Ok(server)
    }

    /// Starts a server that speaks only TLS (certificate `cert`, for 127.0.0.1 and localhost;
    /// clients are not asked for certificates) and requires `password`.
    pub async fn start_tls(cert: &super::tls::ServerCert, password: &str) -> anyhow::Result<Self> {
        let binary = find_binary("redis-server", &[], "install it with `apt-get install redis-server`")?;
        let dir = ScratchDir::new("redis")?;
        let (cert_path, key_path) = (dir.0.join("server.crt"), dir.0.join("server.key"));
        cert.write(&cert_path, &key_path)?;
        let port = free_port()?;
        let config = dir.0.join("redis.conf");
        super::tls::write_private(
            &config,
            format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-auth-clients no\nrequirepass \"{password}\"\n",
                cert_path.display(),
                key_path.display()
            )
            .as_bytes(),
        )?;
        let mut server = Self { port, child: None, binary, dir, tls_config: Some(config) };
        server.launch().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/0`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls_config.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = self.dir.0.join("redis.log");
        let (stdout, stderr) = log_file(&log)?;
        let mut command = Command::new(&self.binary);
        match &self.tls_config {
            // The file first: redis-server reads a configuration file only as its first argument.
            Some(config) => command.arg(config),
            None => command.args(["--port", &self.port.to_string()]),
        };
        let mut child = command
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir.0)
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let ready = wait_for_port(self.port, &mut child, "redis-server", &log, START_TIMEOUT).await;
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
