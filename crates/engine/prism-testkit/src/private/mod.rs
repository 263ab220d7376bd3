//! Private service instances for fault tests: a Kafka broker (or a three-node cluster), a
//! PostgreSQL server or a Redis server that one test owns and may stop, kill and restart
//! without disturbing the shared development stack or other tests.
//!
//! Each instance listens on 127.0.0.1 on ports that were free when it started (picked by
//! [`crate::ports`]), keeps its data in its own temporary directory, and survives
//! [`restart`](PrivateKafka::restart) on the same ports with the same data. `stop` is graceful, `kill` is SIGKILL. Dropping an
//! instance kills it and removes its directory.
//!
//! - `kafka`: [`PrivateKafka`], Apache Kafka 4.4 from the dev stack's jars, one node or three.
//! - `postgres`: [`PrivatePostgres`], a PostgreSQL cluster of its own.
//! - `postgres_replica`: [`PrivatePostgresPair`], a primary and a streaming hot standby whose
//!   replay can be paused, delayed and stopped.
//! - `redis`: [`PrivateRedis`], a Redis server of its own.
//! - `tls`: [`TestCa`], certificates a test generates, for servers that speak TLS
//!   ([`PrivateKafka::start_sasl_ssl`], [`PrivatePostgres::start_tls`], [`PrivateRedis::start_tls`]).
//! - `stack`: [`TlsStack`], all three over TLS with passwords, and the `PRISM__*` variables
//!   that reach them.
//!
//! This module holds what they share: scratch directories, starting, signalling and reaping
//! processes, and the excerpts of their logs that failures show. Signals are sent with the `kill` command rather than `libc`,
//! keeping the workspace free of `unsafe`.

mod kafka;
mod postgres;
mod postgres_replica;
mod redis;
pub mod redis_cluster;
mod stack;
mod tls;

pub use kafka::PrivateKafka;
pub use postgres::PrivatePostgres;
pub use postgres_replica::PrivatePostgresPair;
pub use redis::PrivateRedis;
pub use stack::{TlsStack, TLS_STACK_USER};
pub use tls::{ServerCert, TestCa};

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;

use crate::ports::{free_port, free_ports};

/// How long a started service may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

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

async fn wait_for_port(
    port: u16,
    child: &mut Child,
    what: &str,
    log: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on {address}; log:\n{}", log_tail(log));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} did not listen on {address} within {within:?}; log:\n{}", log_tail(log));
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

/// The lines of `log` from byte `from` on that report errors (Kafka's and log4j's `ERROR` and
/// `FATAL`, the exceptions and their causes), the first twenty: a server that shuts down after
/// a failure logs its shutdown last, and the tail alone hides why.
fn log_errors(log: &Path, from: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from..).unwrap_or_default());
    let errors: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.contains(" ERROR ")
                || line.contains(" FATAL ")
                || line.starts_with("Caused by")
                || line.contains("Exception: ")
        })
        .take(20)
        .collect();
    errors.join("\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(port: u16) -> bool {
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500))
            .is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_stops_restarts_and_dies_on_the_same_port() {
        let mut broker = PrivateKafka::start().await.expect("start kafka");
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
        let dir = broker.dir().to_owned();
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
        let client = ::redis::Client::open(server.url()).expect("client");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
        let pong: String = ::redis::cmd("PING").query_async(&mut conn).await.expect("ping");
        assert_eq!(pong, "PONG");
        server.kill().await.expect("kill");
        assert!(!answers(server.port()));
        server.restart().await.expect("restart");
        assert!(answers(server.port()));
    }
}
