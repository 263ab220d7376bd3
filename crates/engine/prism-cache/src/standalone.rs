//! One Redis server (`redis.mode = "standalone"`): every key on one node, so a whole chunk of
//! entries goes into one script call, and a prefix delete is one SCAN.

use std::time::Duration;

use prism_config::RedisConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, Script, TlsCertificates};

use crate::error::{chain, connect_error, CacheError};
use crate::{escape_glob, Cached, Entry, ENTRIES_PER_CALL};

/// The connection to the one server. Cheap to clone; clones share the connection, which
/// reconnects by itself after Redis comes back.
#[derive(Clone)]
pub(crate) struct Standalone {
    /// Multiplexed, reconnecting connection.
    connection: ConnectionManager,
}

impl Standalone {
    /// Connects over TLS for a `rediss://` URL, proves the server answers, and refuses a
    /// server that is a cluster node (whose slots the one-call batches would cross).
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Self, CacheError> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| CacheError::Config(format!("redis.url: {e}")))?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let (target, tls) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), false),
            ConnectionAddr::TcpTls { host, port, .. } => (format!("{host}:{port}"), true),
            other => (other.to_string(), false),
        };
        let trust = if config.tls_ca_cert.is_empty() {
            "the system's trust store; set redis.tls_ca_cert to the CA that signed it".to_owned()
        } else {
            format!("redis.tls_ca_cert {}", config.tls_ca_cert)
        };
        let client = if tls {
            let root_cert = if config.tls_ca_cert.is_empty() {
                None
            } else {
                let path = &config.tls_ca_cert;
                Some(std::fs::read(path).map_err(|e| CacheError::Tls {
                    target: target.clone(),
                    detail: format!("redis.tls_ca_cert {path} cannot be read: {e}"),
                })?)
            };
            redis::Client::build_with_tls(info, TlsCertificates { client_tls: None, root_cert })
                .map_err(|e| CacheError::Tls { target: target.clone(), detail: chain(&e) })?
        } else {
            redis::Client::open(info)?
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(crate::REPLY_TIMEOUT))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|e| connect_error(e, &target, &trust))?;
        let standalone = Self { connection };
        standalone.ping().await.map_err(|e| match e {
            CacheError::Redis(e) => connect_error(e, &target, &trust),
            other => other,
        })?;
        if standalone.is_cluster_node().await {
            return Err(CacheError::Config(format!(
                "redis.mode is \"standalone\" but Redis at {target} is a Redis Cluster node (cluster_enabled:1); \
                 set redis.mode = \"cluster\" (PRISM__REDIS__MODE=cluster)"
            )));
        }
        tracing::debug!(%target, tls, "redis connection ready");
        Ok(standalone)
    }

    /// Whether the server says it runs in cluster mode. A server that does not answer
    /// `INFO cluster` (some proxies and managed services refuse it) is taken as not one.
    async fn is_cluster_node(&self) -> bool {
        let mut connection = self.connection.clone();
        let info: Result<String, _> = redis::cmd("INFO").arg("cluster").query_async(&mut connection).await;
        info.is_ok_and(|text| text.lines().any(|line| line.trim() == "cluster_enabled:1"))
    }

    /// One script call per chunk of [`ENTRIES_PER_CALL`] entries, all of them in flight at
    /// once on the multiplexed connection: a batch's entries cost one round trip, not one per
    /// chunk waited for in turn. Redis runs the calls in the order they were sent, and each
    /// entry's compare-and-set makes that order irrelevant anyway.
    pub(crate) async fn put_if_newer(
        &self,
        script: &Script,
        entries: &[Entry<'_>],
    ) -> Result<usize, CacheError> {
        let calls = entries.chunks(ENTRIES_PER_CALL).map(|chunk| {
            let invocation = crate::invocation(script, chunk, false);
            let mut connection = self.connection.clone();
            async move { invocation.invoke_async::<usize>(&mut connection).await }
        });
        let counts = futures::future::try_join_all(calls).await?;
        Ok(counts.into_iter().sum())
    }

    /// Reads one entry.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Cached>, CacheError> {
        let mut connection = self.connection.clone();
        Ok(Cached::from_fields(crate::read_cmd(key).query_async(&mut connection).await?))
    }

    /// SCAN + UNLINK over the one keyspace.
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", escape_glob(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) =
                crate::scan_cmd(cursor, &pattern).query_async(&mut connection).await?;
            if !keys.is_empty() {
                let count: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut connection).await?;
                deleted += count;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// Answers PING.
    pub(crate) async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }
}
