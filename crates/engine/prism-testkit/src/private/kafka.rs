//! [`PrivateKafka`]: Apache Kafka 4.4 of one test — a single KRaft node, or a three-node
//! cluster (every node broker and controller, replication factor 3, `min.insync.replicas` 2)
//! whose nodes can be killed and restarted one by one.
//!
//! The nodes run from the jars `ops/dev-stack up` fetched from Maven Central
//! (`$PRISM_STATE_DIR/kafka/lib`, default `.prism/kafka/lib` in the repository) with the same
//! `ops/kafka/server.properties.in` and logging as the development broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::{
    free_ports, kill_process, log_errors, log_file, log_tail, terminate_process, wait_for_port, ScratchDir,
    START_TIMEOUT,
};

/// What a node logs when another process took one of its ports.
const PORT_TAKEN: &str = "Address already in use";

/// The repository root (this crate lives in `crates/engine/prism-testkit`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// Where the dev stack keeps Kafka's jars.
fn kafka_lib() -> anyhow::Result<PathBuf> {
    let state =
        std::env::var_os("PRISM_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".prism"));
    let lib = state.join("kafka/lib");
    let has_broker = std::fs::read_dir(&lib)
        .map(|entries| {
            entries.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.starts_with("kafka_2.13-")))
        })
        .unwrap_or(false);
    if !has_broker {
        bail!(
            "Kafka's jars are not in {} (a private broker runs from them); fetch them with `ops/dev-stack up`",
            lib.display()
        );
    }
    Ok(lib)
}

/// One node of a private cluster.
#[derive(Debug)]
struct Node {
    /// `node.id`, 1-based.
    id: u32,
    /// Client (PLAINTEXT) port.
    port: u16,
    /// KRaft controller port.
    controller_port: u16,
    /// The JVM, while it runs.
    child: Option<Child>,
    /// Holds `server.properties`, `data/` and `logs/`.
    dir: PathBuf,
    /// Lengths of `logs/server.log` and `logs/stdout.log` when the node was last launched: a
    /// restart appends to both, and a failure shows only what this launch wrote.
    logs_at_launch: LogOffsets,
    /// Client port of the SASL_SSL listener, when the broker has one.
    sasl_ssl_port: Option<u16>,
}

/// A SASL_SSL listener (TLS, SCRAM-SHA-512) beside the PLAINTEXT one.
#[derive(Clone)]
struct SaslSsl {
    /// The brokers' certificate (for 127.0.0.1 and localhost).
    cert: super::tls::ServerCert,
    /// The SCRAM-SHA-512 user created when the storage is formatted.
    user: String,
    /// Its password (alphanumeric).
    password: String,
}

impl std::fmt::Debug for SaslSsl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslSsl").field("user", &self.user).field("password", &"***").finish_non_exhaustive()
    }
}

/// Apache Kafka of one test: one node, or three.
#[derive(Debug)]
pub struct PrivateKafka {
    /// The nodes, in `node.id` order.
    nodes: Vec<Node>,
    /// Kafka's jars.
    lib: PathBuf,
    /// Holds one directory per node; removed on drop.
    dir: ScratchDir,
    /// The SASL_SSL listener of every node, if any.
    sasl_ssl: Option<SaslSsl>,
}

impl PrivateKafka {
    /// Starts a single-node broker on free ports and waits until it serves requests.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_nodes(1).await
    }

    /// Starts a three-node cluster (replication factor 3, `min.insync.replicas` 2 for every
    /// topic, the offsets topic included) and waits until every node serves requests.
    pub async fn start_cluster() -> anyhow::Result<Self> {
        Self::start_nodes(3).await
    }

    /// Starts a single-node broker with, beside its PLAINTEXT listener (which the broker
    /// uses itself, and tests may use to look behind the scenes), a SASL_SSL listener: TLS
    /// with `cert` (for 127.0.0.1 and localhost, signed by the test's CA) and SCRAM-SHA-512
    /// authentication of `user` with `password` (alphanumeric), created when the storage is
    /// formatted. Clients reach it at [`PrivateKafka::sasl_ssl_bootstrap`].
    pub async fn start_sasl_ssl(
        cert: &super::tls::ServerCert,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && password.chars().all(|c| c.is_ascii_alphanumeric()),
            "SCRAM user and password must be alphanumeric"
        );
        let sasl = SaslSsl { cert: cert.clone(), user: user.to_owned(), password: password.to_owned() };
        Self::start_with(1, Some(sasl)).await
    }

    async fn start_nodes(count: u32) -> anyhow::Result<Self> {
        Self::start_with(count, None).await
    }

    async fn start_with(count: u32, sasl_ssl: Option<SaslSsl>) -> anyhow::Result<Self> {
        // Ports are free when picked, but another test's server may bind one before a JVM
        // has started: the node then stops with "Address already in use", and the whole
        // cluster is formed again on other ports (the voters name every node's port).
        let mut attempt = 1;
        loop {
            match Self::start_on_free_ports(count, sasl_ssl.clone()).await {
                Err(error) if attempt < 3 && format!("{error:#}").contains(PORT_TAKEN) => {
                    tracing::warn!(attempt, error = %format!("{error:#}"), "a Kafka port was taken; starting on others");
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    async fn start_on_free_ports(count: u32, sasl_ssl: Option<SaslSsl>) -> anyhow::Result<Self> {
        let lib = kafka_lib()?;
        let dir = ScratchDir::new("kafka")?;
        let ports_per_node = if sasl_ssl.is_some() { 3 } else { 2 };
        let mut ports = free_ports(count as usize * ports_per_node)?.into_iter();
        let mut nodes = Vec::new();
        for id in 1..=count {
            let node_dir = dir.0.join(format!("node{id}"));
            std::fs::create_dir_all(node_dir.join("logs"))?;
            let mut port = || ports.next().context("fewer free ports than asked for");
            nodes.push(Node {
                id,
                port: port()?,
                controller_port: port()?,
                child: None,
                dir: node_dir,
                logs_at_launch: LogOffsets::default(),
                sasl_ssl_port: if sasl_ssl.is_some() { Some(port()?) } else { None },
            });
        }
        let mut kafka = Self { nodes, lib, dir, sasl_ssl };
        kafka.write_configs()?;
        kafka.format().await?;
        for index in 0..kafka.nodes.len() {
            kafka.launch(index)?;
        }
        for index in 0..kafka.nodes.len() {
            kafka.wait_started(index).await?;
        }
        Ok(kafka)
    }

    /// Every node's `127.0.0.1:<port>`, comma-separated, for `kafka.bootstrap_servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Every node's SASL_SSL `127.0.0.1:<port>`, comma-separated, for
    /// `kafka.bootstrap_servers` with `kafka.security_protocol = "sasl_ssl"`; empty without
    /// such a listener.
    pub fn sasl_ssl_bootstrap(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| n.sasl_ssl_port.map(|port| format!("127.0.0.1:{port}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node ids (1-based).
    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The client port of node `id`.
    pub fn port_of(&self, id: u32) -> u16 {
        self.node(id).map_or(0, |n| n.port)
    }

    /// The client port of a single-node broker (the first node of a cluster).
    pub fn port(&self) -> u16 {
        self.nodes[0].port
    }

    fn node(&self, id: u32) -> anyhow::Result<&Node> {
        self.nodes.iter().find(|n| n.id == id).with_context(|| format!("no Kafka node {id}"))
    }

    fn index_of(&self, id: u32) -> anyhow::Result<usize> {
        self.nodes.iter().position(|n| n.id == id).with_context(|| format!("no Kafka node {id}"))
    }

    fn write_configs(&self) -> anyhow::Result<()> {
        let template_path = repo_root().join("ops/kafka/server.properties.in");
        let template = std::fs::read_to_string(&template_path)
            .with_context(|| format!("reading {}", template_path.display()))?;
        let voters: Vec<String> =
            self.nodes.iter().map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port)).collect();
        let (replication, min_isr) = if self.nodes.len() >= 3 { ("3", "2") } else { ("1", "1") };
        for node in &self.nodes {
            let mut listeners = format!(
                "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                node.port, node.controller_port
            );
            let mut advertised = format!("PLAINTEXT://127.0.0.1:{}", node.port);
            let mut protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".to_owned();
            // A killed node's partitions must move quickly in fault tests.
            let mut extra = "broker.session.timeout.ms=6000\nbroker.heartbeat.interval.ms=1000\n".to_owned();
            if let (Some(sasl), Some(port)) = (&self.sasl_ssl, node.sasl_ssl_port) {
                listeners.push_str(&format!(",SASL_SSL://127.0.0.1:{port}"));
                advertised.push_str(&format!(",SASL_SSL://127.0.0.1:{port}"));
                protocols.push_str(",SASL_SSL:SASL_SSL");
                // Kafka's PEM key store: the unencrypted PKCS#8 key and the certificate in one file.
                let keystore = node.dir.join("broker-keystore.pem");
                let mut pem = sasl.cert.key_pem.clone();
                pem.extend_from_slice(&sasl.cert.cert_pem);
                super::tls::write_private(&keystore, &pem)?;
                extra.push_str(&format!(
                    "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                     listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                     listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                     listener.name.sasl_ssl.ssl.keystore.type=PEM\n\
                     listener.name.sasl_ssl.ssl.keystore.location={}\n\
                     listener.name.sasl_ssl.ssl.client.auth=none\n",
                    keystore.display()
                ));
            }
            let config = template
                .replace("@NODE_ID@", &node.id.to_string())
                .replace("@VOTERS@", &voters.join(","))
                .replace("@LISTENERS@", &listeners)
                .replace("@ADVERTISED_LISTENERS@", &advertised)
                .replace("@SECURITY_PROTOCOL_MAP@", &protocols)
                .replace("@DATA_DIR@", &node.dir.join("data").display().to_string())
                .replace("@REPLICATION_FACTOR@", replication)
                .replace("@MIN_INSYNC_REPLICAS@", min_isr)
                .replace("@EXTRA@", &extra);
            std::fs::write(node.dir.join("server.properties"), config)?;
        }
        Ok(())
    }

    fn java(&self) -> Command {
        let mut command = Command::new("java");
        command.arg("-cp").arg(format!("{}/*", self.lib.display()));
        command
    }

    async fn format(&self) -> anyhow::Result<()> {
        let output = self.java().args(["kafka.tools.StorageTool", "random-uuid"]).output().context(
            "running java (Kafka needs Java 17 or newer on PATH; `ops/dev-stack up` says what is missing)",
        )?;
        anyhow::ensure!(
            output.status.success(),
            "StorageTool random-uuid: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster_id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        for node in &self.nodes {
            let mut format = self.java();
            format
                .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
                .arg(node.dir.join("server.properties"));
            if let Some(sasl) = &self.sasl_ssl {
                // The SCRAM credential goes into the cluster metadata from the start.
                format
                    .arg("--add-scram")
                    .arg(format!("SCRAM-SHA-512=[name={},password={}]", sasl.user, sasl.password));
            }
            let output = format.output()?;
            if !output.status.success() {
                bail!(
                    "formatting Kafka node {}: {}{}",
                    node.id,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Ok(())
    }

    fn launch(&mut self, index: usize) -> anyhow::Result<()> {
        let log4j = repo_root().join("ops/kafka/log4j2.properties");
        let node = &mut self.nodes[index];
        node.logs_at_launch = LogOffsets::of(&node.dir.join("logs"));
        let node = &self.nodes[index];
        let (stdout, stderr) = log_file(&node.dir.join("logs/stdout.log"))?;
        let child = self
            .java()
            .args([
                "-Xmx384m",
                "-Xms384m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dkafka.logs.dir={}", node.dir.join("logs").display()))
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .context("starting a Kafka node (java)")?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    /// Waits until node `index` listens and has logged that it started.
    async fn wait_started(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let server_log = node.dir.join("logs/server.log");
        let stdout_log = node.dir.join("logs/stdout.log");
        let Some(child) = node.child.as_mut() else { bail!("Kafka node {} is not running", node.id) };
        // The JVM's own failures go to stdout.log, Kafka's (a log recovery after a SIGKILL, a
        // quorum it waits for) to server.log: a node that never listens shows both. A JVM
        // restarted while other tests' brokers start too once took over a minute to listen.
        let listening = wait_for_port(
            node.port,
            child,
            &format!("kafka node {}", node.id),
            &stdout_log,
            2 * START_TIMEOUT,
        )
        .await;
        if let Err(error) = listening {
            bail!("{error:#}\n{}", failure_excerpt(&server_log, &stdout_log, node.logs_at_launch));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let text = std::fs::read(&server_log).unwrap_or_default();
            let since_launch =
                String::from_utf8_lossy(text.get(node.logs_at_launch.server_log..).unwrap_or_default());
            if since_launch.contains("Kafka Server started") {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "Kafka node {} exited with {status} while starting;\n{}",
                    node.id,
                    failure_excerpt(&server_log, &stdout_log, node.logs_at_launch)
                );
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Kafka node {} did not start within 90s;\n{}",
                    node.id,
                    failure_excerpt(&server_log, &stdout_log, node.logs_at_launch)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node gracefully (SIGTERM: controlled shutdown), killing what does not
    /// exit in time.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            terminate_process(node.child.take()).await?;
        }
        Ok(())
    }

    /// Kills every node (SIGKILL).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            kill_process(node.child.take())?;
        }
        Ok(())
    }

    /// Starts every node again on the same ports with the same data (stopping them first if
    /// they run).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        for index in 0..self.nodes.len() {
            self.launch(index)?;
        }
        for index in 0..self.nodes.len() {
            self.wait_started(index).await?;
        }
        Ok(())
    }

    /// Kills node `id` (SIGKILL): a crash, with no controlled shutdown.
    pub async fn kill_node(&mut self, id: u32) -> anyhow::Result<()> {
        let index = self.index_of(id)?;
        kill_process(self.nodes[index].child.take())
    }

    /// Starts node `id` again with its data, and waits until it serves requests.
    pub async fn start_node(&mut self, id: u32) -> anyhow::Result<()> {
        let index = self.index_of(id)?;
        anyhow::ensure!(self.nodes[index].child.is_none(), "Kafka node {id} is running");
        self.launch(index)?;
        self.wait_started(index).await
    }

    /// The node id of the active KRaft controller (the quorum leader), asked of the
    /// running nodes with Kafka's own `kafka-metadata-quorum` tool.
    pub async fn active_controller(&self) -> anyhow::Result<u32> {
        let bootstrap: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut command = self.java();
        command
            .args([
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-server",
                &bootstrap.join(","),
            ])
            .args(["describe", "--status"]);
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|line| line.strip_prefix("LeaderId:").map(|id| id.trim().parse::<u32>()))
            .with_context(|| {
                format!(
                    "no LeaderId in kafka-metadata-quorum's answer: {text}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })?
            .context("LeaderId is not a number")
    }

    /// The broker log of node `id` (for diagnostics).
    pub fn log_tail(&self, id: u32) -> String {
        self.node(id).map(|n| log_tail(&n.dir.join("logs/server.log"))).unwrap_or_default()
    }

    /// Where the nodes keep their directories (for diagnostics).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

/// Where a node's two logs ended when it was launched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LogOffsets {
    server_log: usize,
    stdout_log: usize,
}

impl LogOffsets {
    /// The current lengths of `server.log` and `stdout.log` in `logs` (0 for a missing file).
    fn of(logs: &Path) -> Self {
        let length = |name: &str| std::fs::metadata(logs.join(name)).map_or(0, |m| m.len() as usize);
        Self { server_log: length("server.log"), stdout_log: length("stdout.log") }
    }
}

/// Why a node did not start: the errors it logged since it was launched (Kafka's in
/// server.log, the JVM's own in stdout.log, each from where it ended at the launch), then
/// server.log's last lines.
fn failure_excerpt(server_log: &Path, stdout_log: &Path, since: LogOffsets) -> String {
    format!(
        "errors in server.log:\n{}\nerrors in stdout.log:\n{}\nlast lines of server.log:\n{}",
        log_errors(server_log, since.server_log),
        log_errors(stdout_log, since.stdout_log),
        log_tail(server_log)
    )
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = kill_process(node.child.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_shows_only_the_errors_logged_since_the_launch() {
        let logs = std::env::temp_dir().join(format!("prism-kafka-logs-{}", std::process::id()));
        std::fs::create_dir_all(&logs).expect("log directory");
        let (server_log, stdout_log) = (logs.join("server.log"), logs.join("stdout.log"));
        std::fs::write(&server_log, "[t] ERROR an earlier run's broker error\n").expect("server.log");
        std::fs::write(&stdout_log, "java.lang.OutOfMemoryError: Exception: an earlier run's JVM\n")
            .expect("stdout.log");
        let launched = LogOffsets::of(&logs);
        assert!(launched.server_log > 0 && launched.stdout_log > 0, "{launched:?}");
        let append = |path: &Path, line: &str| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(path).expect("open");
            writeln!(file, "{line}").expect("append");
        };
        append(&server_log, "[t] ERROR this launch's broker error");
        append(&stdout_log, "java.net.BindException: Exception: this launch's JVM");

        let excerpt = failure_excerpt(&server_log, &stdout_log, launched);
        let _ = std::fs::remove_dir_all(&logs);
        assert!(excerpt.contains("this launch's broker error"), "{excerpt}");
        assert!(excerpt.contains("this launch's JVM"), "{excerpt}");
        let (errors, tail) = excerpt.split_once("last lines of server.log:").expect("sections");
        assert!(!errors.contains("an earlier run's"), "errors of an earlier launch shown: {excerpt}");
        assert!(tail.contains("an earlier run's broker error"), "the tail is the file's end: {excerpt}");
    }
}
