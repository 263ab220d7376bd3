//! Redis Cluster (`redis.mode = "cluster"`), or a managed Redis in cluster mode.
//!
//! The cluster client (`redis::cluster_async`) keeps a connection to every node, routes each
//! keyed command to the master of the key's slot and follows `MOVED`/`ASK` redirections, so
//! reads ([`Cluster::get`]) need nothing more. What a cluster changes is handled here:
//! - [`slot`]: one script call may only touch keys of one hash slot, so writes are grouped by
//!   slot (Prism's keys spread over all of them);
//! - [`write`]: the slot groups of one master go in one pipeline, and a projector's write
//!   waits until the master's replicas have it (`WAIT`), since Redis replicates
//!   asynchronously and a failover would otherwise bring back older entries for good;
//! - [`scan`]: a prefix delete scans every master (each holds only its slots' keys);
//! - [`topology`]: which master serves which slots, with how many healthy replicas.

mod scan;
mod slot;
mod topology;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prism_config::RedisConfig;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Script, Value};

pub use slot::key_slot;

use crate::error::{connect_error, CacheError};
use crate::Cached;
use topology::Topology;

/// What certificates are checked against in cluster mode (`redis.tls_ca_cert` is refused).
const TRUST: &str = "the system's trust store (SSL_CERT_FILE)";

/// The cluster connection and what Prism keeps beside it. Cheap to clone; clones share both.
#[derive(Clone)]
pub(crate) struct Cluster {
    /// Routes commands to the master of their slot, follows redirections, reconnects.
    connection: ClusterConnection,
    /// The latest snapshot of the slot layout.
    layout: Arc<Layout>,
    /// The first node's connection settings (password, TLS), for connecting to one master
    /// directly (prefix deletes scan each master on its own).
    node_template: ConnectionInfo,
    /// `redis.cluster_replica_acks`.
    replica_acks: u32,
    /// `redis.cluster_replica_ack_timeout_ms`.
    ack_timeout: Duration,
}

impl Cluster {
    /// Connects to the cluster through `redis.url` (or the first answering seed), proves every
    /// master answers, loads `script` on every master and reads the slot layout.
    pub(crate) async fn connect(config: &RedisConfig, script: &Script) -> Result<Self, CacheError> {
        let mut nodes: Vec<ConnectionInfo> = Vec::new();
        let urls = std::iter::once(("redis.url", config.url.as_str()))
            .chain(config.cluster_seeds.iter().map(|seed| ("redis.cluster_seeds", seed.as_str())));
        for (key, url) in urls {
            let info =
                url.into_connection_info().map_err(|e| CacheError::Config(format!("{key} `{url}`: {e}")))?;
            if info.redis_settings().db() != 0 {
                return Err(CacheError::Config(format!(
                    "{key} `{url}` selects database {}, but a Redis Cluster has only database 0",
                    info.redis_settings().db()
                )));
            }
            nodes.push(info);
        }
        let target = nodes.iter().map(|n| address(n.addr())).collect::<Vec<_>>().join(", ");
        let ack_timeout = Duration::from_millis(config.cluster_replica_ack_timeout_ms);
        let mut builder = ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(Duration::from_secs(2))
            // A write may wait for replicas (WAIT) within its response.
            .response_timeout(crate::REPLY_TIMEOUT + ack_timeout)
            // Redirections and reconnections during a failover are retried a few times within
            // about a second and a half; beyond that the caller's own retry (the projector's
            // backoff, the query's fallback to PostgreSQL) is the better judge.
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .retry_wait_formula(100, 2);
        let mut node_template = nodes[0].clone();
        if let Some(password) = &config.password {
            builder = builder.password(password.expose());
            let settings = node_template.redis_settings().clone().set_password(password.expose());
            node_template = node_template.set_redis_settings(settings);
        }
        let client = builder.build().map_err(|e| CacheError::Config(format!("redis cluster nodes: {e}")))?;
        let connection = client.get_async_connection().await.map_err(|e| connect_error(e, &target, TRUST))?;
        let cluster = Self {
            connection,
            layout: Arc::new(Layout::default()),
            node_template,
            replica_acks: config.cluster_replica_acks,
            ack_timeout,
        };
        cluster.ping().await.map_err(|e| match e {
            CacheError::Redis(e) => connect_error(e, &target, TRUST),
            other => other,
        })?;
        // On every master now, so the first writes do not each find it missing.
        let _: String = script.load_async(&mut cluster.connection.clone()).await?;
        cluster.layout.fresh(&cluster.connection).await?;
        tracing::debug!(%target, "redis cluster connection ready");
        Ok(cluster)
    }

    /// Reads one entry from the master of its slot.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Cached>, CacheError> {
        let mut connection = self.connection.clone();
        Ok(Cached::from_fields(crate::read_cmd(key).query_async(&mut connection).await?))
    }

    /// Every master answers PING.
    pub(crate) async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let _: Value = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }
}

/// The slot layout snapshot, shared by clones of one [`Cluster`].
#[derive(Debug, Default)]
struct Layout {
    /// The snapshot; `None` until read.
    current: tokio::sync::Mutex<Option<Arc<Topology>>>,
    /// Set when something showed the snapshot wrong: the next use reads it again.
    stale: AtomicBool,
}

impl Layout {
    /// The snapshot, read again when stale or old.
    async fn get(&self, connection: &ClusterConnection) -> Result<Arc<Topology>, CacheError> {
        let mut current = self.current.lock().await;
        match current.as_ref() {
            Some(topology) if !topology.expired() && !self.stale.load(Ordering::Acquire) => {
                Ok(topology.clone())
            }
            _ => {
                let topology = Arc::new(read_topology(connection).await?);
                self.stale.store(false, Ordering::Release);
                *current = Some(topology.clone());
                Ok(topology)
            }
        }
    }

    /// A snapshot read now.
    async fn fresh(&self, connection: &ClusterConnection) -> Result<Arc<Topology>, CacheError> {
        self.mark_stale();
        self.get(connection).await
    }

    /// Makes the next [`get`](Self::get) read the layout again.
    fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }
}

/// `CLUSTER NODES`, from some master.
async fn read_topology(connection: &ClusterConnection) -> Result<Topology, CacheError> {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    let value = connection
        .clone()
        .route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary))
        .await?;
    let text: String = redis::FromRedisValue::from_redis_value(value).map_err(redis::RedisError::from)?;
    Topology::parse(&text).map_err(|detail| {
        CacheError::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unreadable slot layout",
            detail,
        )))
    })
}

/// `host:port` of a node.
fn address(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}
