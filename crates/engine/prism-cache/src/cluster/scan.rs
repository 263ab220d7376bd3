//! Prefix deletes on a cluster: every master holds only its own slots' keys, so each master
//! is scanned on a connection of its own (exactly that node, whatever the cluster client's
//! routing thinks), and the keys found are unlinked through the cluster client (which splits
//! them by slot and follows redirections).
//!
//! If the slot layout changed while the masters were scanned (a failover or a resharding
//! moved slots), keys may have moved from a master not yet scanned to one already scanned, so
//! every master is scanned again until a pass sees one unchanged layout from start to end. A
//! resharding still in progress at the end of a pass is not visible in the layout: keys it
//! moves during that pass may survive it (prefix deletes remove retired generations, which
//! nobody reads; a later delete finds what is left).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr};

use super::topology::Master;
use super::Cluster;
use crate::error::CacheError;

/// Passes over every master before giving up on a layout that keeps changing.
const MAX_PASSES: usize = 5;

impl Cluster {
    /// Deletes every key under `prefix` on every master; returns how many.
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let pattern = format!("{}*", crate::escape_glob(prefix));
        let mut deleted = 0;
        for _ in 0..MAX_PASSES {
            let before = self.layout.fresh(&self.connection).await?;
            for (master, _) in before.masters() {
                deleted += self.delete_on(&master, &pattern).await?;
            }
            let after = self.layout.fresh(&self.connection).await?;
            if before.assignment() == after.assignment() {
                return Ok(deleted);
            }
            tracing::info!(
                prefix,
                "the cluster's slot layout changed during a prefix delete; scanning every master again"
            );
        }
        Err(CacheError::Redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain),
            "the cluster's slot layout kept changing during a prefix delete",
        ))))
    }

    /// SCAN on `master`, UNLINK through the cluster.
    async fn delete_on(&self, master: &Master, pattern: &str) -> Result<u64, CacheError> {
        let mut node = self.node_connection(master).await?;
        let mut cluster = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) =
                crate::scan_cmd(cursor, pattern).query_async(&mut node).await?;
            if !keys.is_empty() {
                let count: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut cluster).await?;
                deleted += count;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// A connection to `master` alone, with the cluster's password and TLS settings.
    async fn node_connection(&self, master: &Master) -> Result<MultiplexedConnection, CacheError> {
        let addr = match self.node_template.addr() {
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => ConnectionAddr::TcpTls {
                host: master.host.clone(),
                port: master.port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(master.host.clone(), master.port),
        };
        let client = redis::Client::open(self.node_template.clone().set_addr(addr))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(crate::REPLY_TIMEOUT));
        Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
    }
}
