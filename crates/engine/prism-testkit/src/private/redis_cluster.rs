//! [`PrivateRedisCluster`]: a Redis Cluster of one test — three masters and three replicas of
//! Debian's `redis-server` on 127.0.0.1, joined by `redis-cli --cluster create`, whose nodes
//! can be killed (a replica then takes over), paused, restarted, and whose slots can be moved.
//!
//! Node timeouts are short (2 s) so failovers finish within seconds, and replicas may take
//! over whatever their replication lag (`cluster-replica-validity-factor 0`), so a test decides
//! when a failover happens, not how long a replica was paused. Nothing is persisted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use super::{
    find_binary, free_ports, kill_process, log_file, log_tail, signal, wait_for_port, ScratchDir,
    START_TIMEOUT,
};

/// Masters of the cluster; each has one replica.
const MASTERS: usize = 3;
/// `cluster-node-timeout`: how long a node may be unreachable before it is marked failed.
const NODE_TIMEOUT_MS: u64 = 2000;
/// How long forming the cluster, a failover or a slot move may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// What to run when the binaries are missing.
const INSTALL_HINT: &str =
    "`ops/dev-stack up` installs Debian's redis-server package (which brings redis-cli); or `apt-get install redis-server`";

/// One node.
#[derive(Debug)]
struct Node {
    /// Client port.
    port: u16,
    /// Cluster bus port.
    bus_port: u16,
    /// The process, while it runs.
    child: Option<Child>,
    /// Whether it was stopped with SIGSTOP (and not continued since).
    paused: bool,
    /// Holds `nodes.conf` and `redis.log`.
    dir: PathBuf,
}

/// What one node says about one node of the cluster (`CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNodeView {
    /// Node id.
    pub id: String,
    /// Client port.
    pub port: u16,
    /// Flags: `master`, `slave`, `fail`, `fail?`, `myself`, …
    pub flags: Vec<String>,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// Slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNodeView {
    /// Whether it is a master the cluster does not consider failed.
    pub fn is_healthy_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master") && !self.flags.iter().any(|f| f == "fail" || f == "fail?")
    }

    /// Whether it serves `slot`.
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(start, end)| (*start..=*end).contains(&slot))
    }
}

/// A Redis Cluster of one test (three masters, three replicas).
#[derive(Debug)]
pub struct PrivateRedisCluster {
    /// The nodes, in the order they were started (`redis-cli` makes the first three masters).
    nodes: Vec<Node>,
    /// The `redis-server` binary.
    binary: PathBuf,
    /// The `redis-cli` binary.
    cli: PathBuf,
    /// Holds one directory per node; removed on drop.
    dir: ScratchDir,
}

impl PrivateRedisCluster {
    /// Starts six nodes on free ports, forms the cluster (`redis-cli --cluster create …
    /// --cluster-replicas 1`) and waits until every node says the cluster is ok and every
    /// master has its replica in sync.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_binary("redis-server", &[], INSTALL_HINT)?;
        let cli = find_binary("redis-cli", &[], INSTALL_HINT)?;
        let dir = ScratchDir::new("redis-cluster")?;
        let mut nodes = Vec::new();
        let ports = free_ports(MASTERS * 4)?;
        for i in 0..MASTERS * 2 {
            let node_dir = dir.0.join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
            nodes.push(Node {
                port: ports[2 * i],
                bus_port: ports[2 * i + 1],
                child: None,
                paused: false,
                dir: node_dir,
            });
        }
        let mut cluster = Self { nodes, binary, cli, dir };
        for i in 0..cluster.nodes.len() {
            // A port free a moment ago may be taken by another test's server meanwhile: then
            // this node gets other ports (before the cluster is formed, any will do).
            let mut attempts = 0;
            loop {
                match cluster.launch(i).await {
                    Ok(()) => break,
                    Err(err) if attempts < 5 => {
                        attempts += 1;
                        tracing::debug!(error = %format!("{err:#}"), "redis cluster node did not start; trying other ports");
                        let _ = kill_process(cluster.nodes[i].child.take());
                        let fresh = free_ports(2)?;
                        (cluster.nodes[i].port, cluster.nodes[i].bus_port) = (fresh[0], fresh[1]);
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        cluster.create().await?;
        cluster.wait_until_settled().await?;
        Ok(cluster)
    }

    async fn launch(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = node.dir.join("redis.log");
        let (stdout, stderr) = log_file(&log)?;
        let mut child = Command::new(&self.binary)
            .args(["--port", &node.port.to_string(), "--cluster-port", &node.bus_port.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&node.dir)
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let ready =
            wait_for_port(node.port, &mut child, "redis-server (cluster node)", &log, START_TIMEOUT).await;
        let pid = child.id();
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        ready?;
        // Whoever answers on the port must be this process, not a server that took the port
        // first (this one then exits, or keeps failing to bind).
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut self.node(i).await?).await?;
        let answering = info.lines().find_map(|l| l.trim().strip_prefix("process_id:")).unwrap_or("?");
        ensure!(
            answering == pid.to_string(),
            "port {} is served by process {answering}, not by the node started on it ({pid}); log:\n{}",
            self.nodes[i].port,
            log_tail(&log)
        );
        Ok(())
    }

    async fn create(&self) -> anyhow::Result<()> {
        let mut command = Command::new(&self.cli);
        command.args(["--cluster", "create"]);
        command.args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        command.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await?
            .context("running redis-cli --cluster create")?;
        ensure!(
            output.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// `redis://127.0.0.1:<port>/0` of the first node: a seed for cluster clients.
    pub fn seed_url(&self) -> String {
        self.url(0)
    }

    /// The URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}/0", self.nodes[i].port)
    }

    /// The URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The data directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The last lines node `i` logged.
    pub fn log_tail(&self, i: usize) -> String {
        log_tail(&self.nodes[i].dir.join("redis.log"))
    }

    fn is_live(&self, i: usize) -> bool {
        self.nodes[i].child.is_some() && !self.nodes[i].paused
    }

    /// A plain (non-cluster) connection to node `i`.
    pub async fn node(&self, i: usize) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url(i))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("connecting to cluster node {i} (port {})", self.nodes[i].port))
    }

    /// The keys matching `pattern` that node `i` itself holds (SCAN on that node alone).
    pub async fn keys_on_node(
        &self,
        i: usize,
        pattern: &str,
    ) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let mut node = self.node(i).await?;
        let mut found = std::collections::BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut node)
                .await
                .with_context(|| format!("SCAN on cluster node {i}"))?;
            found.extend(keys);
            if next == 0 {
                return Ok(found);
            }
            cursor = next;
        }
    }

    /// `CLUSTER NODES` as node `i` sees the cluster.
    pub async fn view_from(&self, i: usize) -> anyhow::Result<Vec<ClusterNodeView>> {
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut self.node(i).await?).await?;
        text.lines().filter(|l| !l.trim().is_empty()).map(parse_node_line).collect()
    }

    /// `CLUSTER NODES` from the first live node.
    pub async fn view(&self) -> anyhow::Result<Vec<ClusterNodeView>> {
        let live = (0..self.nodes.len()).find(|i| self.is_live(*i)).context("no node of the cluster runs")?;
        self.view_from(live).await
    }

    /// The index of the node with client port `port`.
    fn index_of_port(&self, port: u16) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .with_context(|| format!("no node listens on port {port}"))
    }

    /// The node serving `slot` as master, as the first live node sees it.
    pub async fn master_of_slot(&self, slot: u16) -> anyhow::Result<usize> {
        let view = self.view().await?;
        let master = view
            .iter()
            .find(|n| n.is_healthy_master() && n.serves(slot))
            .with_context(|| format!("no healthy master serves slot {slot}: {view:?}"))?;
        self.index_of_port(master.port)
    }

    /// Nodes serving slots as healthy masters.
    pub async fn masters(&self) -> anyhow::Result<Vec<usize>> {
        let view = self.view().await?;
        view.iter()
            .filter(|n| n.is_healthy_master() && !n.slots.is_empty())
            .map(|n| self.index_of_port(n.port))
            .collect()
    }

    /// The replica of master `master` (the first one, if it has several).
    pub async fn replica_of(&self, master: usize) -> anyhow::Result<usize> {
        let view = self.view().await?;
        let id = &view
            .iter()
            .find(|n| n.port == self.nodes[master].port)
            .with_context(|| format!("node {master} is not in the cluster"))?
            .id;
        let replica = view
            .iter()
            .find(|n| n.master_id.as_deref() == Some(id.as_str()) && !n.flags.iter().any(|f| f == "fail"))
            .with_context(|| format!("node {master} has no replica: {view:?}"))?;
        self.index_of_port(replica.port)
    }

    /// Kills node `i` (SIGKILL).
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].paused = false;
        kill_process(self.nodes[i].child.take())
    }

    /// Stops node `i` with SIGSTOP: it keeps its connections but answers nothing, as a node
    /// that hangs or a replica that lags.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.nodes[i].child.as_ref().with_context(|| format!("node {i} does not run"))?;
        signal(child.id(), "STOP");
        self.nodes[i].paused = true;
        Ok(())
    }

    /// Continues node `i` after [`pause`](Self::pause) (SIGCONT).
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.nodes[i].child.as_ref().with_context(|| format!("node {i} does not run"))?;
        signal(child.id(), "CONT");
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Starts killed node `i` again on its port; it rejoins the cluster with its `nodes.conf`
    /// (as a replica, if another node took over its slots meanwhile).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        ensure!(self.nodes[i].child.is_none(), "node {i} still runs; kill it first");
        self.launch(i).await
    }

    /// Waits until `replica` serves slots as a master and every running node says the cluster
    /// is ok (after its master was killed, or paused past the node timeout).
    pub async fn wait_for_promotion(&self, replica: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let promoted = match self.view_from(replica).await {
                Ok(view) => view.iter().any(|n| {
                    n.port == self.nodes[replica].port && n.is_healthy_master() && !n.slots.is_empty()
                }),
                Err(_) => false,
            };
            if promoted && self.all_live_ok().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {replica} was not promoted within {SETTLE_TIMEOUT:?}; its log:\n{}",
                    self.log_tail(replica)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running node has marked node `i` as failed (`fail` flag: it has not
    /// answered for `cluster-node-timeout` and a majority of masters agreed).
    pub async fn wait_until_marked_failed(&self, i: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut marked = true;
            for other in (0..self.nodes.len()).filter(|o| *o != i && self.is_live(*o)) {
                let view = self.view_from(other).await?;
                marked &=
                    view.iter().any(|n| n.port == self.nodes[i].port && n.flags.iter().any(|f| f == "fail"));
            }
            if marked {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {i} was not marked failed within {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the master serving `slot` and waits until its replica took over; returns
    /// `(killed, promoted)`.
    pub async fn fail_over_slot(&mut self, slot: u16) -> anyhow::Result<(usize, usize)> {
        let master = self.master_of_slot(slot).await?;
        let replica = self.replica_of(master).await?;
        self.kill(master).await?;
        self.wait_for_promotion(replica).await?;
        Ok((master, replica))
    }

    /// Moves `slot`, with its keys, to master `to` (a resharding of one slot: IMPORTING /
    /// MIGRATING, MIGRATE of every key, SETSLOT NODE everywhere), and waits until every
    /// running node agrees.
    pub async fn move_slot(&self, slot: u16, to: usize) -> anyhow::Result<()> {
        let from = self.master_of_slot(slot).await?;
        ensure!(from != to, "slot {slot} is on node {to} already");
        let id = |view: &[ClusterNodeView], i: usize| {
            view.iter()
                .find(|n| n.port == self.nodes[i].port)
                .map(|n| n.id.clone())
                .context("node not in the cluster")
        };
        let view = self.view().await?;
        let (from_id, to_id) = (id(&view, from)?, id(&view, to)?);
        let (mut source, mut target) = (self.node(from).await?, self.node(to).await?);
        let setslot = |state: &str, node: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(node);
            cmd
        };
        let () = setslot("IMPORTING", &from_id).query_async(&mut target).await?;
        let () = setslot("MIGRATING", &to_id).query_async(&mut source).await?;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query_async(&mut source)
                .await?;
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.nodes[to].port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await?;
        }
        let () = setslot("NODE", &to_id).query_async(&mut target).await?;
        let () = setslot("NODE", &to_id).query_async(&mut source).await?;
        for i in (0..self.nodes.len()).filter(|i| self.is_live(*i) && *i != from && *i != to) {
            let mut node = self.node(i).await?;
            // Replicas refuse SETSLOT; they learn the move from their masters.
            let _: Result<(), _> = setslot("NODE", &to_id).query_async(&mut node).await;
        }
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut agreed = true;
            for i in (0..self.nodes.len()).filter(|i| self.is_live(*i)) {
                let view = self.view_from(i).await?;
                agreed &= view.iter().any(|n| n.id == to_id && n.serves(slot))
                    && !view.iter().any(|n| n.id == from_id && n.serves(slot));
            }
            if agreed {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the move of slot {slot} to node {to} did not reach every node within {SETTLE_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether every running node says `cluster_state:ok`.
    async fn all_live_ok(&self) -> bool {
        for i in (0..self.nodes.len()).filter(|i| self.is_live(*i)) {
            let Ok(mut node) = self.node(i).await else { return false };
            let info: Result<String, _> = redis::cmd("CLUSTER").arg("INFO").query_async(&mut node).await;
            if !info.is_ok_and(|text| text.lines().any(|l| l.trim() == "cluster_state:ok")) {
                return false;
            }
        }
        true
    }

    /// Waits until every running node says the cluster is ok, knows every node, and every
    /// master serving slots has as many replicas online (in sync) as the cluster lists for it.
    pub async fn wait_until_settled(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.settled().await.unwrap_or(false) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = (0..self.nodes.len())
                    .map(|i| format!("--- node {i} ---\n{}", self.log_tail(i)))
                    .collect();
                bail!("the Redis cluster did not settle within {SETTLE_TIMEOUT:?}:\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settled(&self) -> anyhow::Result<bool> {
        if !self.all_live_ok().await {
            return Ok(false);
        }
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.is_live(*i)).collect();
        let live_ports: Vec<u16> = live.iter().map(|i| self.nodes[*i].port).collect();
        for &i in &live {
            let view = self.view_from(i).await?;
            if view.len() != self.nodes.len() || view.iter().any(|n| n.flags.iter().any(|f| f == "handshake"))
            {
                return Ok(false);
            }
            // Every running node, in every running node's view, is a master serving slots or
            // a replica of one (a node `redis-cli` made a replica may still look like an empty
            // master to some, until the news spreads).
            for node in view.iter().filter(|n| live_ports.contains(&n.port)) {
                let placed = if node.flags.iter().any(|f| f == "slave") {
                    node.master_id.is_some()
                } else {
                    node.is_healthy_master() && !node.slots.is_empty()
                };
                if !placed {
                    return Ok(false);
                }
            }
        }
        let view = self.view().await?;
        for master in view.iter().filter(|n| n.is_healthy_master() && !n.slots.is_empty()) {
            let listed = view
                .iter()
                .filter(|n| {
                    n.master_id.as_deref() == Some(master.id.as_str())
                        && !n.flags.iter().any(|f| f.starts_with("fail"))
                })
                .count();
            let index = self.index_of_port(master.port)?;
            let role: redis::Value = redis::cmd("ROLE").query_async(&mut self.node(index).await?).await?;
            let online = match role {
                redis::Value::Array(fields) => match fields.get(2) {
                    Some(redis::Value::Array(replicas)) => replicas.len(),
                    _ => 0,
                },
                _ => 0,
            };
            if online < listed {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// One line of `CLUSTER NODES`: `<id> <ip:port@bus[,host]> <flags> <master> <ping> <pong>
/// <epoch> <link> <slot>…` (slots as `n`, `a-b`, or `[n->-id]` while migrating).
fn parse_node_line(line: &str) -> anyhow::Result<ClusterNodeView> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    ensure!(fields.len() >= 8, "unreadable CLUSTER NODES line: {line}");
    let address = fields[1].split(['@', ',']).next().unwrap_or_default();
    let port = address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("no port in CLUSTER NODES line: {line}"))?;
    let mut slots = Vec::new();
    for slot in fields[8..].iter().filter(|s| !s.starts_with('[')) {
        let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
        slots.push((start.parse()?, end.parse()?));
    }
    Ok(ClusterNodeView {
        id: fields[0].to_owned(),
        port,
        flags: fields[2].split(',').map(str::to_owned).collect(),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}

impl Drop for PrivateRedisCluster {
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
    fn cluster_nodes_lines_are_read() {
        let master = parse_node_line(
            "07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,hostname4 master - 0 1426238317239 4 connected 0-5460 5462 [5461->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]",
        )
        .expect("master line");
        assert_eq!(master.port, 30004);
        assert!(master.is_healthy_master());
        assert_eq!(master.slots, vec![(0, 5460), (5462, 5462)]);
        assert!(master.serves(5462) && !master.serves(5461));
        let replica = parse_node_line(
            "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,slave 07c37dfeb235213a872192d90877d0cd55635b91 0 0 1 connected",
        )
        .expect("replica line");
        assert_eq!(replica.master_id.as_deref(), Some("07c37dfeb235213a872192d90877d0cd55635b91"));
        assert!(!replica.is_healthy_master());
        let failed = parse_node_line("abc 127.0.0.1:30002@31002 master,fail - 0 0 2 disconnected")
            .expect("failed line");
        assert!(!failed.is_healthy_master());
    }
}
