//! [`PrivatePostgres`]: a PostgreSQL cluster of one test, from Debian's server binaries.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{
    children_of, find_binary, free_port, kill_process, log_file, log_tail, process_alive, signal,
    wait_for_exit, wait_for_port, ScratchDir, START_TIMEOUT, STOP_TIMEOUT,
};

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/<major>/bin`).
pub(super) fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).context(
        "PostgreSQL's server binaries are not installed (no /usr/lib/postgresql/<major>/bin/postgres); \
         `ops/dev-stack up` installs them (apt-get install postgresql)",
    )
}

/// A PostgreSQL server of one test: its own cluster (trust authentication, user
/// `postgres`), listening on 127.0.0.1 with its Unix socket inside its directory.
///
/// [`PrivatePostgres::start_tls`] makes one that accepts TCP connections only over TLS and
/// only with a password (`hostssl … scram-sha-256`); the harness itself then connects through
/// the Unix socket.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// The server process over its directory.
    server: Postmaster,
    /// Whether TCP connections need TLS and a password.
    tls: bool,
}

/// One `postgres` server process over a directory of its own (`data/`, the socket directory
/// and `postgres.log`, owned by the `postgres` user), on a port kept across restarts: started,
/// stopped with a fast shutdown, or killed with its backends. Dropping it kills the server and
/// removes the directory. [`PrivatePostgres`] is one; a standby of
/// [`PrivatePostgresPair`](super::postgres_replica::PrivatePostgresPair) is another.
#[derive(Debug)]
pub(super) struct Postmaster {
    /// The listening port.
    pub(super) port: u16,
    /// `runuser … postgres` (or `postgres` itself when not root), while it runs.
    child: Option<Child>,
    /// Directory holding `data/`, the socket directory and the log.
    pub(super) dir: ScratchDir,
}

impl Postmaster {
    /// A server over `dir` (its `data/` made by initdb or pg_basebackup) on a free port, not
    /// started yet.
    pub(super) fn new(dir: ScratchDir) -> anyhow::Result<Self> {
        Ok(Self { port: free_port()?, child: None, dir })
    }

    /// The server's log file.
    pub(super) fn log(&self) -> PathBuf {
        self.dir.0.join("postgres.log")
    }

    /// Starts `postgres` with `settings` (`name=value`, each passed as `-c`) and waits until it
    /// listens; `what` names it in errors. Listening comes before accepting connections: the
    /// caller waits for that in its own terms.
    pub(super) async fn spawn(&mut self, settings: &[&str], what: &str) -> anyhow::Result<()> {
        let log = self.log();
        let (stdout, stderr) = log_file(&log)?;
        if is_root() {
            let _ = Command::new("chown").arg("postgres:postgres").arg(&log).status();
        }
        let mut command = as_postgres_user(&pg_bin()?.join("postgres"));
        command.arg("-D").arg(self.dir.0.join("data")).args([
            "-p",
            &self.port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
        ]);
        for setting in settings {
            command.args(["-c", setting]);
        }
        let mut child = command
            .arg("-k")
            .arg(self.dir.0.join("socket"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let listening = wait_for_port(self.port, &mut child, what, &log, START_TIMEOUT).await;
        self.child = Some(child);
        listening
    }

    /// The postmaster's pid, from its lock file.
    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.0.join("data/postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are disconnected, data is
    /// checkpointed).
    pub(super) async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = self.pid().filter(|pid| process_alive(*pid)) {
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
    pub(super) async fn kill(&mut self) -> anyhow::Result<()> {
        self.kill_postmaster();
        if let Some(mut child) = self.child.take() {
            if !wait_for_exit(&mut child, STOP_TIMEOUT).await? {
                kill_process(Some(child))?;
            }
        }
        Ok(())
    }

    fn kill_postmaster(&self) {
        let Some(pid) = self.pid().filter(|pid| process_alive(*pid)) else { return };
        let backends = children_of(pid);
        signal(pid, "KILL");
        // Backends notice a dead postmaster only at their next wait; a restart needs them gone
        // (they still hold the old shared memory).
        for backend in backends {
            signal(backend, "KILL");
        }
    }
}

impl Drop for Postmaster {
    fn drop(&mut self) {
        self.kill_postmaster();
        let _ = kill_process(self.child.take());
    }
}

impl PrivatePostgres {
    /// Creates a cluster with initdb, starts it on a free port and waits until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<Self> {
        let server = Self::init().await?;
        server.finish_start().await
    }

    /// A server whose TCP connections must use TLS (certificate `cert`, for 127.0.0.1 and
    /// localhost) and a password: `pg_hba.conf` holds `hostssl all all 127.0.0.1/32
    /// scram-sha-256` and rejects every other TCP connection. Creates `role` with `password`
    /// and a database of the same name owned by it.
    pub async fn start_tls(
        cert: &super::tls::ServerCert,
        role: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let mut server = Self::init().await?;
        server.tls = true;
        let data = server.server.dir.0.join("data");
        cert.write(&data.join("server.crt"), &data.join("server.key"))?;
        if is_root() {
            // The server refuses a key file that is not its own or readable by others.
            for file in ["server.crt", "server.key"] {
                let status = Command::new("chown").arg("postgres:postgres").arg(data.join(file)).status()?;
                anyhow::ensure!(status.success(), "chown of {file} to postgres failed");
            }
        }
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"\n# TLS for the test kit's private server\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\npassword_encryption = 'scram-sha-256'\n",
        )?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "# The harness: the Unix socket. Clients: TCP over TLS with a password, nothing else.\n\
             local     all all                trust\n\
             hostssl   all all 127.0.0.1/32   scram-sha-256\n\
             host      all all 127.0.0.1/32   reject\n",
        )?;
        let server = server.finish_start().await?;
        let admin = crate::services::connect_pg(&server.admin_url("postgres")).await?;
        // Identifiers and the password are the test's own (checked below), not outside input.
        anyhow::ensure!(
            role.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && password.chars().all(|c| c.is_ascii_alphanumeric()),
            "role must be a lowercase identifier and password alphanumeric"
        );
        // The role gets the password's SCRAM verifier, not the password: the statement is
        // logged (tokio-postgres logs statements at debug), and tests grep logs for secrets.
        let verifier = scram_sha_256_verifier(password)?;
        admin
            .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{verifier}'"))
            .await
            .context("creating the role")?;
        admin
            .batch_execute(&format!("CREATE DATABASE {role} OWNER {role}"))
            .await
            .context("creating the database")?;
        Ok(server)
    }

    /// A connection string for the harness (user `postgres`, no password) to `database`: the
    /// TCP URL, or the Unix socket for a TLS server (whose TCP port wants TLS and a password).
    pub fn admin_url(&self, database: &str) -> String {
        if self.tls {
            format!(
                "host={} port={} user=postgres dbname={database}",
                self.server.dir.0.join("socket").display(),
                self.server.port
            )
        } else {
            format!("{}/{database}", self.url())
        }
    }

    async fn finish_start(mut self) -> anyhow::Result<Self> {
        self.launch().await?;
        Ok(self)
    }

    /// initdb into a new scratch directory.
    async fn init() -> anyhow::Result<Self> {
        let bin = pg_bin()?;
        for tool in ["initdb", "postgres"] {
            find_binary(tool, std::slice::from_ref(&bin), "install PostgreSQL with `ops/dev-stack up`")?;
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
        Ok(Self { server: Postmaster::new(dir)?, tls: false })
    }

    /// `postgres://postgres@127.0.0.1:<port>` (append `/<database>`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.server.port)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        self.server.spawn(&[], "postgres").await?;
        // Listening comes before accepting: wait for a real connection.
        let url = self.admin_url("postgres");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            match crate::services::connect_pg(&url).await {
                Ok(_) => return Ok(()),
                Err(err) if tokio::time::Instant::now() > deadline => {
                    bail!(
                        "postgres on port {} does not accept connections: {err:#}; log:\n{}",
                        self.server.port,
                        log_tail(&self.server.log())
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops the server with a fast shutdown (SIGINT: clients are disconnected, data is
    /// checkpointed).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.server.stop().await
    }

    /// Kills the postmaster and its backends (SIGKILL): a crash, recovered from at restart.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.server.kill().await
    }

    /// Starts the server again on the same port with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.launch().await
    }
}

pub(super) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command for a PostgreSQL binary, run as the `postgres` user when this process is root.
pub(super) fn as_postgres_user(binary: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(binary);
        command
    } else {
        Command::new(binary)
    }
}

/// PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, 4096 iterations, as
/// `password_encryption = scram-sha-256` would store it): what `CREATE ROLE … PASSWORD` accepts
/// in place of the password itself.
fn scram_sha_256_verifier(password: &str) -> anyhow::Result<String> {
    use openssl::base64::encode_block;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sign::Signer;
    const ITERATIONS: usize = 4096;
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt)?;
    let mut salted = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        password.as_bytes(),
        &salt,
        ITERATIONS,
        MessageDigest::sha256(),
        &mut salted,
    )?;
    let hmac = |message: &[u8]| -> anyhow::Result<Vec<u8>> {
        let key = PKey::hmac(&salted)?;
        let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
        signer.update(message)?;
        Ok(signer.sign_to_vec()?)
    };
    let stored_key = openssl::sha::sha256(&hmac(b"Client Key")?);
    let server_key = hmac(b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        encode_block(&salt),
        encode_block(&stored_key),
        encode_block(&server_key)
    ))
}
