//! Redis adapter of Prism: the read-model cache, on one Redis server or a Redis Cluster.
//!
//! An entry is a hash `{rev, ver, doc}` under `<key_prefix>g<generation>:<kind>:<key>` (see
//! `ProjectionInstance::cache_prefix`): the row's revision (its change counter), the aggregate
//! version it reflects (what read-your-writes compares) and the row's JSON. Writers —
//! projectors after their PostgreSQL commit, the query service refilling after a miss — go
//! through `put_if_newer.lua`, a compare-and-set on the revision: the cache is never newer
//! than PostgreSQL (it is written after the commit) and an older writer can never overwrite a
//! newer entry.
//!
//! Where the keys live is `redis.mode`'s business:
//! - `standalone`: one server; a chunk of entries per script call, every chunk of a write in
//!   flight at once.
//! - `cluster`: Redis Cluster. A script call may only touch keys of one hash slot, and
//!   Prism's keys spread over all 16384 slots on purpose (no hash tags), so writes are grouped
//!   per slot and the groups of one master sent together; projector writes wait until the
//!   master's replicas have them (so a failover cannot bring back an older entry); prefix
//!   deletes scan every master; reads follow the cluster's redirections.
//!
//! `rediss://` URLs connect over TLS (native-tls, the system OpenSSL), verifying the server's
//! certificate against `redis.tls_ca_cert` (or the system's trust store) and its host name.
//! [`Cache::connect`] proves the connection, the password, the certificate and the mode, and
//! says which of them failed ([`CacheError`], in `error`).
#![deny(missing_docs)]

mod cluster;
mod error;
mod standalone;

use prism_config::{RedisConfig, RedisMode};
use redis::{Script, ScriptInvocation};

pub use cluster::key_slot;
pub use error::CacheError;

/// How long every connection of the cache waits for Redis to reply (a write to a cluster
/// waits longer by its replica acknowledgement timeout). Public so that tools and tests looking
/// at the same Redis are as patient as the engine: redis-rs's own default is 500 ms, which a
/// busy machine outlasts.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Entries per script call: bounds the time Redis spends in one script.
const ENTRIES_PER_CALL: usize = 200;

/// One entry to write.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The full key.
    pub key: &'a str,
    /// Strictly increasing per key.
    pub revision: i64,
    /// The aggregate version the row reflects (0 for rows no aggregate is folded into).
    pub version: i64,
    /// The cached document.
    pub document: &'a str,
}

/// A cached entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Its revision.
    pub revision: i64,
    /// The aggregate version the row reflects.
    pub version: i64,
    /// Its document.
    pub document: String,
}

impl Cached {
    /// An entry from `HMGET key rev ver doc`; `None` unless it has a revision and a document.
    fn from_fields(
        (revision, version, document): (Option<i64>, Option<i64>, Option<String>),
    ) -> Option<Self> {
        match (revision, document) {
            (Some(revision), Some(document)) => {
                Some(Self { revision, version: version.unwrap_or(0), document })
            }
            _ => None,
        }
    }
}

/// A connection to the cache. Cheap to clone; clones share the connection, which reconnects
/// by itself after Redis comes back (in cluster mode: to whichever nodes then serve the
/// slots).
#[derive(Clone)]
pub struct Cache {
    /// Where the keys live.
    backend: Backend,
    /// `put_if_newer.lua`, sent by hash and loaded when a server does not know it.
    put_if_newer: Script,
}

/// The two shapes of Redis deployment.
#[derive(Clone)]
enum Backend {
    Standalone(standalone::Standalone),
    // Boxed: the cluster keeps more beside its connection than the standalone side.
    Cluster(Box<cluster::Cluster>),
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.backend {
            Backend::Standalone(_) => "standalone",
            Backend::Cluster(_) => "cluster",
        };
        f.debug_struct("Cache").field("mode", &mode).finish_non_exhaustive()
    }
}

impl Cache {
    /// Connects as `redis.mode` says (and proves Redis answers), over TLS for a `rediss://`
    /// URL. A refused password, an untrusted certificate, a failed handshake and a mode that
    /// does not match the server are errors of their own that name the server.
    pub async fn connect(config: &RedisConfig) -> Result<Self, CacheError> {
        let put_if_newer = Script::new(include_str!("put_if_newer.lua"));
        let backend = match config.mode {
            RedisMode::Standalone => Backend::Standalone(standalone::Standalone::connect(config).await?),
            RedisMode::Cluster => {
                Backend::Cluster(Box::new(cluster::Cluster::connect(config, &put_if_newer).await?))
            }
        };
        Ok(Self { backend, put_if_newer })
    }

    /// Writes every entry that is newer than its cached revision; returns how many were. What
    /// projectors call after their PostgreSQL commit: in cluster mode it returns only once the
    /// written masters' replicas have the entries (`redis.cluster_replica_acks`), so an entry
    /// it reported can survive a failover.
    pub async fn put_if_newer(&self, entries: &[Entry<'_>]) -> Result<usize, CacheError> {
        match &self.backend {
            Backend::Standalone(standalone) => standalone.put_if_newer(&self.put_if_newer, entries).await,
            Backend::Cluster(cluster) => cluster.put_if_newer(&self.put_if_newer, entries, true).await,
        }
    }

    /// The same compare-and-set, without waiting for replicas: for a writer that copies a
    /// revision some [`put_if_newer`](Self::put_if_newer) writer also writes, such as the
    /// query service refilling an entry from PostgreSQL after a miss. If a failover loses
    /// such a write, the projector's own write of that revision (or a newer one) still lands
    /// durably, so nothing stays stale; the read path is spared the replication round trip.
    pub async fn refill_if_newer(&self, entries: &[Entry<'_>]) -> Result<usize, CacheError> {
        match &self.backend {
            Backend::Standalone(standalone) => standalone.put_if_newer(&self.put_if_newer, entries).await,
            Backend::Cluster(cluster) => cluster.put_if_newer(&self.put_if_newer, entries, false).await,
        }
    }

    /// Reads one entry (in cluster mode from the master of its slot, following redirections).
    pub async fn get(&self, key: &str) -> Result<Option<Cached>, CacheError> {
        match &self.backend {
            Backend::Standalone(standalone) => standalone.get(key).await,
            Backend::Cluster(cluster) => cluster.get(key).await,
        }
    }

    /// Deletes every key under `prefix` (in cluster mode on every master); returns how many.
    /// For rebuilds and tests.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        match &self.backend {
            Backend::Standalone(standalone) => standalone.delete_prefix(prefix).await,
            Backend::Cluster(cluster) => cluster.delete_prefix(prefix).await,
        }
    }

    /// Answers PING (readiness); in cluster mode every master must answer.
    pub async fn ping(&self) -> Result<(), CacheError> {
        match &self.backend {
            Backend::Standalone(standalone) => standalone.ping().await,
            Backend::Cluster(cluster) => cluster.ping().await,
        }
    }
}

/// The script call for `entries`: `confirm` tells the script that the caller waits for
/// replicas afterwards (see `put_if_newer.lua`).
fn invocation<'a, 'e, 'k: 'e>(
    script: &'a Script,
    entries: impl IntoIterator<Item = &'e Entry<'k>>,
    confirm: bool,
) -> ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(if confirm { "1" } else { "0" });
    for entry in entries {
        invocation.key(entry.key).arg(entry.revision).arg(entry.version).arg(entry.document);
    }
    invocation
}

/// `HMGET key rev ver doc`, as [`Cached::from_fields`] reads it.
fn read_cmd(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(key).arg("rev").arg("ver").arg("doc");
    cmd
}

/// One `SCAN` step over keys matching `pattern`.
fn scan_cmd(cursor: u64, pattern: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
    cmd
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
pub fn escape_glob(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers hold cache calls across awaits in spawned tasks and HTTP handlers: the futures
    /// must be `Send` for any borrow of the entries.
    #[allow(dead_code)]
    fn calls_can_run_in_spawned_tasks(cache: Cache) {
        tokio::spawn(async move {
            let key = String::from("k");
            let entries = [Entry { key: &key, revision: 1, version: 1, document: "{}" }];
            let _ = cache.put_if_newer(&entries).await;
            let _ = cache.refill_if_newer(&entries).await;
            let _ = cache.get(&key).await;
            let _ = cache.delete_prefix(&key).await;
        });
    }
}
