//! Private service instances for fault tests: a broker, a PostgreSQL server or a Redis
//! server that one test owns and may stop, kill and restart without disturbing the shared
//! development stack or other tests.
//!
//! Each instance listens on 127.0.0.1 on a port that was free when it started, keeps its
//! data in its own temporary directory, and survives [`restart`](PrivateTansu::restart) on
//! the same port with the same data. `stop` is graceful, `kill` is SIGKILL. Dropping an
//! instance kills it and removes its directory.
//!
//! Signals are sent with the `kill` command rather than `libc`, keeping the workspace free
//! of `unsafe`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;

/// How long a started service may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Where Debian puts PostgreSQL 15's server binaries.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A temporary directory removed on drop.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(kind: &str) -> anyhow::Result<Self> {
        let name = format!("prism-{kind}-{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff);
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Finds `name` on PATH or in `extra` directories.
fn find_binary(name: &str, extra: &[PathBuf], install_hint: &str) -> anyhow::Result<PathBuf> {
    let path_dirs =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!("`{name}` is not installed (looked on PATH and in {extra:?}); {install_hint}")
        })
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args(["-s", name, &pid.to_string()]).stderr(Stdio::null()).status();
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            // A zombie (state Z) has exited already.
            .map(|stat| {
                stat.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')).unwrap_or(true)
            })
            .unwrap_or(false)
}

/// Direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            std::fs::read_to_string(format!("/proc/{candidate}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit(')').next().map(str::to_owned))
                .and_then(|rest| rest.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect()
}

async fn wait_for_port(port: u16, child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {address}; log:\n{}", log_tail(log));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} did not listen on {address} within {START_TIMEOUT:?}; log:\n{}", log_tail(log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(false)
}

/// Asks a server process to stop with SIGTERM, killing it if it has not exited in time.
async fn terminate_process(child: Option<Child>) -> anyhow::Result<()> {
    let Some(mut child) = child else { return Ok(()) };
    signal(child.id(), "TERM");
    if wait_for_exit(&mut child, STOP_TIMEOUT).await? {
        Ok(())
    } else {
        kill_process(Some(child))
    }
}

/// Kills a server process (SIGKILL) and reaps it.
fn kill_process(child: Option<Child>) -> anyhow::Result<()> {
    if let Some(mut child) = child {
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// A Tansu broker (Kafka protocol) of one test, with `sqlite://` storage in its own directory.
#[derive(Debug)]
pub struct PrivateTansu {
    /// The listening port, kept across restarts.
    port: u16,
    /// The broker process, while it runs.
    child: Option<Child>,
    /// The `tansu` binary.
    binary: PathBuf,
    /// Working directory holding `tansu.db` and `tansu.log`.
    dir: ScratchDir,
}

impl PrivateTansu {
    /// Starts a broker on a free port and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let binary = find_binary(
            "tansu",
            &[home.join(".cargo/bin")],
            "install it with `ops/dev-stack up` (or `cargo install tansu --version 0.6.0 --locked --features libsql`)",
        )?;
        let mut broker = Self { port: free_port()?, child: None, binary, dir: ScratchDir::new("tansu")? };
        broker.launch().await?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`, for `kafka.bootstrap_servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = self.dir.0.join("tansu.log");
        let (stdout, stderr) = log_file(&log)?;
        // Tansu resolves the sqlite path against its working directory.
        let mut child = Command::new(&self.binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let ready = wait_for_port(self.port, &mut child, "tansu", &log).await;
        self.child = Some(child);
        ready?;
        index_tansu_headers(&self.dir.0.join("tansu.db"))
    }

    /// Stops the broker gracefully (SIGTERM), killing it if it does not exit in time.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        terminate_process(self.child.take()).await
    }

    /// Kills the broker (SIGKILL).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        kill_process(self.child.take())
    }

    /// Starts the broker again on the same port with the same data (stopping it first if it
    /// runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        let _ = kill_process(self.child.take());
    }
}

/// A PostgreSQL 15 server of one test: its own cluster (trust authentication, user
/// `postgres`), listening on 127.0.0.1 with its Unix socket inside its directory.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// The listening port, kept across restarts.
    port: u16,
    /// `runuser … postgres` (or `postgres` itself when not root), while it runs.
    child: Option<Child>,
    /// Directory holding `data/`, the socket directory and the log; owned by `postgres`.
    dir: ScratchDir,
}

impl PrivatePostgres {
    /// Creates a cluster with initdb, starts it on a free port and waits until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = PathBuf::from(PG_BIN);
        for tool in ["initdb", "postgres"] {
            find_binary(
                tool,
                std::slice::from_ref(&bin),
                "install PostgreSQL 15 with `apt-get install postgresql-15`",
            )?;
        }
        let dir = ScratchDir::new("postgres")?;
        std::fs::create_dir_all(dir.0.join("socket"))?;
        if is_root() {
            // initdb refuses to run as root: the cluster belongs to the postgres user.
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir.0).status()?;
            anyhow::ensure!(status.success(), "chown of {} to postgres failed", dir.0.display());
        }
        let data = dir.0.join("data");
        let output = as_postgres_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut server = Self { port: free_port()?, child: None, dir };
        server.launch().await?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>` (append `/<database>`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = self.dir.0.join("postgres.log");
        let (stdout, stderr) = log_file(&log)?;
        if is_root() {
            let _ = Command::new("chown").arg("postgres:postgres").arg(&log).status();
        }
        let mut child = as_postgres_user(&PathBuf::from(PG_BIN).join("postgres"))
            .arg("-D")
            .arg(self.dir.0.join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(self.dir.0.join("socket"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting postgres")?;
        if let Err(err) = wait_for_port(self.port, &mut child, "postgres", &log).await {
            self.child = Some(child);
            return Err(err);
        }
        self.child = Some(child);
        // Listening comes before accepting: wait for a real connection.
        let url = format!("{}/postgres", self.url());
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match crate::services::connect_pg(&url).await {
                Ok(_) => return Ok(()),
                Err(err) if tokio::time::Instant::now() > deadline => {
                    bail!(
                        "postgres on port {} does not accept connections: {err:#}; log:\n{}",
                        self.port,
                        log_tail(&log)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The postmaster's pid, from its lock file.
    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.0.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are disconnected, data is
    /// checkpointed).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = self.postmaster_pid().filter(|pid| process_alive(*pid)) {
                signal(pid, "INT");
            }
            if !wait_for_exit(&mut child, STOP_TIMEOUT).await? {
                self.kill_postmaster();
                kill_process(Some(child))?;
            }
        }
        Ok(())
    }

    /// Kills the postmaster and its backends (SIGKILL): a crash, recovered from at restart.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.kill_postmaster();
        if let Some(mut child) = self.child.take() {
            if !wait_for_exit(&mut child, STOP_TIMEOUT).await? {
                kill_process(Some(child))?;
            }
        }
        Ok(())
    }

    fn kill_postmaster(&self) {
        let Some(pid) = self.postmaster_pid().filter(|pid| process_alive(*pid)) else { return };
        let backends = children_of(pid);
        signal(pid, "KILL");
        // Backends notice a dead postmaster only at their next wait; a restart needs them gone
        // (they still hold the old shared memory).
        for backend in backends {
            signal(backend, "KILL");
        }
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.kill_postmaster();
        let _ = kill_process(self.child.take());
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as the `postgres` user when this process is root.
fn as_postgres_user(binary: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

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

/// Adds the index Tansu 0.6's sqlite schema lacks on record headers (see `ops/dev-stack`):
/// without it every fetch scans every header ever written, and a broker that has taken a few
/// thousand events with headers starves its group coordinator.
fn index_tansu_headers(db: &Path) -> anyhow::Result<()> {
    const SQL: &str = "create index if not exists header_topition_offset_id on header (topition, offset_id);";
    let status = Command::new("sqlite3")
        .args(["-cmd", ".timeout 30000"])
        .arg(db)
        .arg(SQL)
        .stdout(Stdio::null())
        .status()
        .or_else(|_| {
            Command::new("python3")
                .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=30); c.execute(sys.argv[2]); c.commit()"])
                .arg(db)
                .arg(SQL)
                .status()
        })
        .context("indexing Tansu's header table needs sqlite3 or python3 on PATH")?;
    if !status.success() {
        bail!("could not add the header index to {}", db.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(port: u16) -> bool {
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500))
            .is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tansu_stops_restarts_and_dies_on_the_same_port() {
        let mut broker = PrivateTansu::start().await.expect("start tansu");
        let port = broker.port();
        assert!(answers(port));
        broker.stop().await.expect("stop");
        assert!(!answers(port), "stopped broker still answers");
        broker.restart().await.expect("restart");
        assert!(answers(port));
        broker.kill().await.expect("kill");
        assert!(!answers(port));
        broker.restart().await.expect("restart after kill");
        assert_eq!(broker.port(), port);
        let dir = broker.dir.0.clone();
        drop(broker);
        assert!(!dir.exists(), "drop removes the data directory");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_keeps_committed_data_across_kill_and_restart() {
        let mut server = PrivatePostgres::start().await.expect("start postgres");
        let url = format!("{}/postgres", server.url());
        let client = crate::services::connect_pg(&url).await.expect("connect");
        client.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (42)").await.expect("write");
        drop(client);
        server.kill().await.expect("kill");
        assert!(!answers(server.port()));
        server.restart().await.expect("restart after a crash");
        let client = crate::services::connect_pg(&url).await.expect("reconnect");
        let n: i32 = client.query_one("SELECT n FROM t", &[]).await.expect("read").get(0);
        assert_eq!(n, 42);
        drop(client);
        server.stop().await.expect("stop");
        assert!(!answers(server.port()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_answers_and_restarts() {
        let mut server = PrivateRedis::start().await.expect("start redis");
        let client = redis::Client::open(server.url()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.expect("ping");
        assert_eq!(pong, "PONG");
        server.kill().await.expect("kill");
        assert!(!answers(server.port()));
        server.restart().await.expect("restart");
        assert!(answers(server.port()));
    }
}
