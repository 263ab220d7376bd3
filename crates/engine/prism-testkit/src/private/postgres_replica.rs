//! [`PrivatePostgresPair`]: a PostgreSQL primary and a streaming hot standby of one test, from
//! Debian's server binaries, with replication that the test can hold back on purpose.
//!
//! The primary is a [`PrivatePostgres`] (its cluster is made by `initdb -A trust`, whose
//! `pg_hba.conf` admits replication connections from 127.0.0.1; `wal_level` is checked to be
//! `replica` or more). A role with the `REPLICATION` attribute takes a base backup with
//! `pg_basebackup -R` (which writes `standby.signal` and `primary_conninfo`) into the standby's
//! own directory, and the standby starts on a port of its own with `hot_standby = on`.
//!
//! Holding replication back, two ways:
//! - [`pause_replay`](PrivatePostgresPair::pause_replay) / [`resume_replay`](PrivatePostgresPair::resume_replay):
//!   the standby keeps receiving WAL but applies none of it (`pg_wal_replay_pause()`): what
//!   it serves stays exactly as it was, however much lands on the primary;
//! - [`set_apply_delay`](PrivatePostgresPair::set_apply_delay): every transaction becomes
//!   visible on the standby that long after it committed on the primary
//!   (`recovery_min_apply_delay`, changed at run time with `ALTER SYSTEM` and a reload).
//!
//! [`stop_standby`](PrivatePostgresPair::stop_standby), [`kill_standby`](PrivatePostgresPair::kill_standby)
//! and [`restart_standby`](PrivatePostgresPair::restart_standby) take it away and bring it
//! back on the same port, resuming replication where it stopped.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::postgres::{as_postgres_user, is_root, pg_bin, Postmaster};
use super::{find_binary, log_tail, PrivatePostgres, ScratchDir, START_TIMEOUT};
use crate::services::{connect_pg, Services};

/// The role the standby replicates as.
const REPLICATION_ROLE: &str = "prism_replication";

/// A primary and a streaming hot standby of one test. Dropping it kills both and removes their
/// directories.
#[derive(Debug)]
pub struct PrivatePostgresPair {
    /// The primary.
    primary: PrivatePostgres,
    /// The standby's server process over its own directory, on a port kept across restarts.
    standby: Postmaster,
}

impl PrivatePostgresPair {
    /// Starts a primary, makes a standby of it with `pg_basebackup -R`, starts the standby and
    /// waits until it accepts connections and has replayed everything the primary had.
    /// Fails naming what is missing when PostgreSQL's server binaries or `pg_basebackup` are not
    /// installed.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = pg_bin()?;
        for tool in ["initdb", "postgres", "pg_basebackup"] {
            find_binary(tool, std::slice::from_ref(&bin), "install PostgreSQL with `ops/dev-stack up`")?;
        }
        let mut primary = PrivatePostgres::start().await.context("starting the primary")?;
        let admin = connect_pg(&primary.admin_url("postgres")).await?;
        let wal_level: String = admin.query_one("SHOW wal_level", &[]).await?.get(0);
        if wal_level == "minimal" {
            admin.batch_execute("ALTER SYSTEM SET wal_level = 'replica'").await?;
            drop(admin);
            primary.restart().await.context("restarting the primary with wal_level = replica")?;
        }
        let admin = connect_pg(&primary.admin_url("postgres")).await?;
        let senders: String = admin.query_one("SHOW max_wal_senders", &[]).await?.get(0);
        anyhow::ensure!(senders != "0", "the primary allows no WAL senders (max_wal_senders = 0)");
        admin
            .batch_execute(&format!("CREATE ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN"))
            .await
            .context("creating the replication role")?;

        let standby_dir = ScratchDir::new("postgres-standby")?;
        std::fs::create_dir_all(standby_dir.0.join("socket"))?;
        if is_root() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(&standby_dir.0).status()?;
            anyhow::ensure!(status.success(), "chown of {} to postgres failed", standby_dir.0.display());
        }
        let output = as_postgres_user(&bin.join("pg_basebackup"))
            .arg("-D")
            .arg(standby_dir.0.join("data"))
            .args(["-h", "127.0.0.1", "-p", &primary.port().to_string(), "-U", REPLICATION_ROLE])
            // -R: standby.signal and primary_conninfo; WAL streamed alongside; no fsync, no wait
            // for a spread checkpoint.
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .output()
            .context("running pg_basebackup")?;
        if !output.status.success() {
            bail!(
                "pg_basebackup failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut pair = Self { primary, standby: Postmaster::new(standby_dir)? };
        pair.launch_standby().await?;
        pair.wait_for_standby(Duration::from_secs(60)).await?;
        Ok(pair)
    }

    /// The primary (stop, kill and restart it through this).
    pub fn primary(&mut self) -> &mut PrivatePostgres {
        &mut self.primary
    }

    /// `postgres://postgres@127.0.0.1:<primary port>` (append `/<database>`).
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// `postgres://postgres@127.0.0.1:<standby port>` (append `/<database>`).
    pub fn standby_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.standby.port)
    }

    /// The standby's listening port.
    pub fn standby_port(&self) -> u16 {
        self.standby.port
    }

    /// The shared services (from the environment) with PostgreSQL replaced by the primary, for
    /// [`crate::TestEnv::on`]: the test's schema is created on the primary and replicated.
    pub fn services(&self) -> Services {
        Services { postgres: self.primary.url(), ..Services::from_env() }
    }

    /// Waits until the standby has replayed everything the primary had written when called
    /// (its replay position reaches the primary's current WAL position), or `timeout`.
    pub async fn wait_for_standby(&self, timeout: Duration) -> anyhow::Result<()> {
        let primary = connect_pg(&self.primary.admin_url("postgres")).await?;
        let target: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
        let standby = self.standby_admin().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let row = standby
                .query_one(
                    "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn, pg_last_wal_replay_lsn()::text",
                    &[&target],
                )
                .await?;
            if row.get::<_, Option<bool>>(0) == Some(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the standby replayed up to {:?}, not {target}, within {timeout:?} (replay paused or delayed?)",
                    row.get::<_, Option<String>>(1)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops applying WAL on the standby (it keeps receiving it): from now on it serves the
    /// data as it stands, whatever lands on the primary. Returns once the pause is in effect.
    pub async fn pause_replay(&self) -> anyhow::Result<()> {
        let standby = self.standby_admin().await?;
        standby.batch_execute("SELECT pg_wal_replay_pause()").await.context("pausing replay")?;
        // The pause takes effect at the next record; "pause requested" already means no
        // record is applied after the one in progress. Wait for a settled state all the same,
        // with a record to apply if the primary is idle.
        let primary = connect_pg(&self.primary.admin_url("postgres")).await?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let state: String =
                standby.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await?.get(0);
            if state == "paused" {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "replay still `{state}` after {START_TIMEOUT:?}"
            );
            primary.batch_execute("SELECT pg_logical_emit_message(false, 'prism', 'pause')").await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resumes applying WAL on the standby.
    pub async fn resume_replay(&self) -> anyhow::Result<()> {
        let standby = self.standby_admin().await?;
        standby.batch_execute("SELECT pg_wal_replay_resume()").await.context("resuming replay")?;
        Ok(())
    }

    /// Whether replay is paused (or a pause requested).
    pub async fn replay_paused(&self) -> anyhow::Result<bool> {
        let standby = self.standby_admin().await?;
        let state: String = standby.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await?.get(0);
        Ok(state != "not paused")
    }

    /// Makes every transaction visible on the standby `delay` after it committed on the primary
    /// (`recovery_min_apply_delay`; zero removes the delay), at run time. Returns once the
    /// standby runs with the new setting.
    pub async fn set_apply_delay(&self, delay: Duration) -> anyhow::Result<()> {
        let standby = self.standby_admin().await?;
        let millis = delay.as_millis();
        standby
            .batch_execute(&format!("ALTER SYSTEM SET recovery_min_apply_delay = '{millis}ms'"))
            .await
            .context("setting recovery_min_apply_delay")?;
        standby.batch_execute("SELECT pg_reload_conf()").await?;
        // A reload is signalled, not awaited: a new session sees the setting once the
        // postmaster has re-read the file.
        let expected = match millis {
            0 => "0".to_owned(),
            m if m % 1000 == 0 => format!("{}s", m / 1000),
            m => format!("{m}ms"),
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let session = self.standby_admin().await?;
            let current: String = session.query_one("SHOW recovery_min_apply_delay", &[]).await?.get(0);
            if current == expected {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "recovery_min_apply_delay is {current}, not {expected}, after {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the standby with a fast shutdown.
    pub async fn stop_standby(&mut self) -> anyhow::Result<()> {
        self.standby.stop().await
    }

    /// Kills the standby's postmaster and backends (SIGKILL).
    pub async fn kill_standby(&mut self) -> anyhow::Result<()> {
        self.standby.kill().await
    }

    /// Starts the standby again on the same port; it resumes streaming where it stopped.
    pub async fn restart_standby(&mut self) -> anyhow::Result<()> {
        self.stop_standby().await?;
        self.launch_standby().await
    }

    /// A connection to the standby as `postgres`.
    async fn standby_admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect_pg(&format!("{}/postgres", self.standby_url())).await.context("connecting to the standby")
    }

    async fn launch_standby(&mut self) -> anyhow::Result<()> {
        self.standby.spawn(&["hot_standby=on"], "postgres standby").await?;
        // A standby listens before it reaches a consistent state and accepts connections.
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match self.standby_admin().await {
                Ok(client) => {
                    let in_recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0);
                    anyhow::ensure!(
                        in_recovery,
                        "the standby on port {} is not in recovery",
                        self.standby.port
                    );
                    return Ok(());
                }
                Err(err) if tokio::time::Instant::now() > deadline => {
                    bail!(
                        "the standby on port {} does not accept connections: {err:#}; log:\n{}",
                        self.standby.port,
                        log_tail(&self.standby.log())
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(url: &str) -> i64 {
        let client = connect_pg(&format!("{url}/postgres")).await.expect("connect");
        client.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_standby_follows_the_primary_unless_held_back() {
        let mut pair = PrivatePostgresPair::start().await.expect("primary and standby");
        let primary = connect_pg(&format!("{}/postgres", pair.primary_url())).await.expect("primary");
        primary.batch_execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1)").await.expect("write");
        pair.wait_for_standby(Duration::from_secs(30)).await.expect("replicated");
        assert_eq!(count(&pair.standby_url()).await, 1);

        // Paused: the standby keeps what it had, and says it is behind.
        pair.pause_replay().await.expect("pause");
        assert!(pair.replay_paused().await.expect("state"));
        primary.batch_execute("INSERT INTO t VALUES (2)").await.expect("write");
        let behind = pair.wait_for_standby(Duration::from_millis(300)).await;
        assert!(behind.is_err(), "a paused standby does not catch up");
        assert_eq!(count(&pair.standby_url()).await, 1);
        pair.resume_replay().await.expect("resume");
        pair.wait_for_standby(Duration::from_secs(30)).await.expect("caught up after resuming");
        assert_eq!(count(&pair.standby_url()).await, 2);

        // Delayed: a commit shows on the standby only after the delay.
        pair.set_apply_delay(Duration::from_secs(2)).await.expect("delay");
        let committed = tokio::time::Instant::now();
        primary.batch_execute("INSERT INTO t VALUES (3)").await.expect("write");
        assert_eq!(count(&pair.standby_url()).await, 2, "not visible before the delay");
        pair.wait_for_standby(Duration::from_secs(30)).await.expect("visible after the delay");
        assert!(
            committed.elapsed() >= Duration::from_millis(1900),
            "applied after {:?}",
            committed.elapsed()
        );
        assert_eq!(count(&pair.standby_url()).await, 3);
        pair.set_apply_delay(Duration::ZERO).await.expect("no delay");

        // Stopped and restarted on the same port: it catches up with what it missed.
        pair.stop_standby().await.expect("stop");
        assert!(connect_pg(&format!("{}/postgres", pair.standby_url())).await.is_err(), "stopped");
        primary.batch_execute("INSERT INTO t VALUES (4)").await.expect("write");
        pair.restart_standby().await.expect("restart");
        pair.wait_for_standby(Duration::from_secs(30)).await.expect("caught up after restart");
        assert_eq!(count(&pair.standby_url()).await, 4);
    }
}
