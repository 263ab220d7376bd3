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
//!
//! `rediss://` URLs connect over TLS (native-tls, the system OpenSSL), verifying the server's
//! certificate against `redis.tls_ca_cert` (or the system's trust store) and its host name.
//! [`Cache::connect`] proves the connection, the password and the certificate, and says which
//! of them failed.

use std::time::Duration;

use prism_config::RedisConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, Script, TlsCertificates};

/// Entries per script call: bounds the time Redis spends in one script.
const ENTRIES_PER_CALL: usize = 200;

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL or settings are wrong.
    #[error("redis configuration: {0}")]
    Config(String),
    /// The server refused the configured password (or asks for one and none is configured).
    #[error("Redis at {target} refused the login: {detail}")]
    LoginRefused {
        /// `host:port` of the server.
        target: String,
        /// What it refused, e.g. `wrong password (redis.password)`.
        detail: String,
    },
    /// The server's certificate does not chain to a trusted CA or does not name the host.
    #[error(
        "Redis at {target}: the server's certificate is not trusted (checked against {trust}): {detail}"
    )]
    UntrustedCertificate {
        /// `host:port` of the server.
        target: String,
        /// What the certificate was checked against.
        trust: String,
        /// OpenSSL's verdict, e.g. `self-signed certificate in certificate chain`.
        detail: String,
    },
    /// TLS could not be set up or negotiated (e.g. `rediss://` to a server without TLS, or an
    /// unreadable `redis.tls_ca_cert`).
    #[error("TLS to Redis at {target} failed: {detail}")]
    Tls {
        /// `host:port` of the server.
        target: String,
        /// What failed.
        detail: String,
    },
    /// The first connection could not be made.
    #[error("Redis at {target} is unreachable: {source}")]
    Unreachable {
        /// `host:port` of the server.
        target: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl CacheError {
    /// True when waiting and retrying can help (Redis down, restarting, loading, timing out).
    pub fn is_transient(&self) -> bool {
        match self {
            // Only `Cache::connect` returns these, and a process fails at start on them:
            // retrying with the same settings cannot help.
            Self::Config(_)
            | Self::LoginRefused { .. }
            | Self::UntrustedCertificate { .. }
            | Self::Tls { .. } => false,
            Self::Unreachable { .. } => true,
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
    /// Connects (and proves Redis answers), over TLS for a `rediss://` URL. A refused
    /// password, an untrusted certificate and a failed handshake are errors of their own that
    /// name the server.
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
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let connection = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|e| connect_error(e, &target, &trust))?;
        let cache = Self { connection, put_if_newer: Script::new(include_str!("put_if_newer.lua")) };
        cache.ping().await.map_err(|e| match e {
            CacheError::Redis(e) => connect_error(e, &target, &trust),
            other => other,
        })?;
        tracing::debug!(%target, tls, "redis connection ready");
        Ok(cache)
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
        let (revision, version, document): (Option<i64>, Option<i64>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("rev")
            .arg("ver")
            .arg("doc")
            .query_async(&mut connection)
            .await?;
        Ok(match (revision, document) {
            (Some(revision), Some(document)) => {
                Some(Cached { revision, version: version.unwrap_or(0), document })
            }
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

/// A failed first connection to `target` as an error that says what is wrong.
fn connect_error(err: redis::RedisError, target: &str, trust: &str) -> CacheError {
    let target = target.to_owned();
    let detail = chain(&err);
    if err.kind() == redis::ErrorKind::AuthenticationFailed || detail.contains("WRONGPASS") {
        return CacheError::LoginRefused { target, detail: "wrong password (redis.password)".into() };
    }
    if detail.contains("NOAUTH") {
        return CacheError::LoginRefused {
            target,
            detail: "the server asks for a password and redis.password is not set".into(),
        };
    }
    if detail.contains("certificate verify failed") {
        return CacheError::UntrustedCertificate { target, trust: trust.to_owned(), detail };
    }
    if detail.contains("SSL routines") || detail.contains("TLS") || detail.contains("handshake") {
        return CacheError::Tls { target, detail };
    }
    if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() || err.is_connection_dropped() {
        return CacheError::Unreachable { target, source: err };
    }
    CacheError::Redis(err)
}

/// An error and its causes, `: `-separated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        let more = current.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = current.source();
    }
    text
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
