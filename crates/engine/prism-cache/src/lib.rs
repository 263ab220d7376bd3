//! Redis adapter of Prism: the read-model cache.
//!
//! An entry is a hash `{rev, ver, doc}` under `<key_prefix>g<generation>:<kind>:<key>` (see
//! `ProjectionInstance::cache_prefix`): the row's revision (its change counter), the aggregate
//! version it reflects (what read-your-writes compares) and the row's JSON. Writers — projectors after their PostgreSQL commit,
//! the query service refilling after a miss — go through [`Cache::put_if_newer`], a Lua
//! compare-and-set on the revision: the cache is never newer than PostgreSQL (it is written
//! after the commit) and an older writer can never overwrite a newer entry.
//!
//! The multi-key script assumes one Redis node (or Sentinel); on Redis Cluster every key of
//! one call must share a hash slot, which these keys do not.

use std::time::Duration;

use prism_config::RedisConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};

/// Entries per script call: bounds the time Redis spends in one script.
const ENTRIES_PER_CALL: usize = 200;

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL or settings are wrong.
    #[error("redis configuration: {0}")]
    Config(String),
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl CacheError {
    /// True when waiting and retrying can help (Redis down, restarting, loading, timing out).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Config(_) => false,
            Self::Redis(err) => {
                err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || matches!(
                        err.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::ClusterDown
                                | redis::ServerErrorKind::MasterDown
                                | redis::ServerErrorKind::ReadOnly
                        )
                    )
            }
        }
    }
}

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

/// A connection to the cache. Cheap to clone; clones share the connection, which reconnects
/// by itself after Redis comes back.
#[derive(Clone)]
pub struct Cache {
    connection: ConnectionManager,
    put_if_newer: Script,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

impl Cache {
    /// Connects (and proves Redis answers).
    pub async fn connect(config: &RedisConfig) -> Result<Self, CacheError> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| CacheError::Config(format!("redis.url: {e}")))?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, manager_config).await?;
        Ok(Self { connection, put_if_newer: Script::new(include_str!("put_if_newer.lua")) })
    }

    /// Writes every entry that is newer than its cached revision; returns how many were.
    pub async fn put_if_newer(&self, entries: &[Entry<'_>]) -> Result<usize, CacheError> {
        let mut written = 0;
        let mut connection = self.connection.clone();
        for chunk in entries.chunks(ENTRIES_PER_CALL) {
            let mut invocation = self.put_if_newer.prepare_invoke();
            for entry in chunk {
                invocation.key(entry.key).arg(entry.revision).arg(entry.version).arg(entry.document);
            }
            let count: usize = invocation.invoke_async(&mut connection).await?;
            written += count;
        }
        Ok(written)
    }

    /// Reads one entry.
    pub async fn get(&self, key: &str) -> Result<Option<Cached>, CacheError> {
        let mut connection = self.connection.clone();
        let (revision, version, document): (Option<i64>, Option<i64>, Option<String>) =
            redis::cmd("HMGET").arg(key).arg("rev").arg("ver").arg("doc").query_async(&mut connection).await?;
        Ok(match (revision, document) {
            (Some(revision), Some(document)) => Some(Cached { revision, version: version.unwrap_or(0), document }),
            _ => None,
        })
    }

    /// Deletes every key under `prefix`; returns how many. For rebuilds and tests.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", escape_glob(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
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

    /// Answers PING (readiness).
    pub async fn ping(&self) -> Result<(), CacheError> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }
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
