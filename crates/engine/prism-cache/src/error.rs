//! [`CacheError`]: every way a cache call can fail, classed transient or permanent once, here.

use std::time::Duration;

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The URL or settings are wrong, or do not match what the server is (e.g. `redis.mode`
    /// is `standalone` but the server is a cluster node).
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
        /// `host:port` of the server (in cluster mode, every seed node).
        target: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// Cluster mode: a write landed on its master, but fewer of the master's online replicas
    /// confirmed it in time than `redis.cluster_replica_acks` asks for. Until they do, a
    /// failover could bring back the older entry, so the write does not count as done.
    #[error(
        "redis cluster: a cache write reached {acked} of the {wanted} replica(s) of its master within {timeout:?}"
    )]
    NotReplicated {
        /// Replicas that confirmed.
        acked: u32,
        /// Replicas that had to.
        wanted: u32,
        /// How long the write waited.
        timeout: Duration,
    },
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl CacheError {
    /// True when waiting and retrying can help (Redis down, restarting, loading, timing out,
    /// a cluster failing over or moving slots).
    pub fn is_transient(&self) -> bool {
        match self {
            // Only `Cache::connect` returns these, and a process fails at start on them:
            // retrying with the same settings cannot help.
            Self::Config(_)
            | Self::LoginRefused { .. }
            | Self::UntrustedCertificate { .. }
            | Self::Tls { .. } => false,
            Self::Unreachable { .. } | Self::NotReplicated { .. } => true,
            Self::Redis(err) => {
                err.is_io_error()
                    || err.is_timeout()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_cluster_error()
                    || matches!(
                        err.kind(),
                        redis::ErrorKind::Server(
                            redis::ServerErrorKind::BusyLoading
                                | redis::ServerErrorKind::TryAgain
                                | redis::ServerErrorKind::ClusterDown
                                | redis::ServerErrorKind::MasterDown
                                | redis::ServerErrorKind::ReadOnly
                                | redis::ServerErrorKind::Moved
                                | redis::ServerErrorKind::Ask
                        ) | redis::ErrorKind::ClusterConnectionNotFound
                    )
            }
        }
    }
}

/// A failed first connection to `target` as an error that says what is wrong.
pub(crate) fn connect_error(err: redis::RedisError, target: &str, trust: &str) -> CacheError {
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
    if detail.contains("cluster support disabled") {
        return CacheError::Config(format!(
            "redis.mode is \"cluster\" but Redis at {target} is not a Redis Cluster node (cluster support \
             disabled); set redis.mode = \"standalone\" (PRISM__REDIS__MODE=standalone)"
        ));
    }
    if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() || err.is_connection_dropped() {
        return CacheError::Unreachable { target, source: err };
    }
    CacheError::Redis(err)
}

/// An error and its causes, `: `-separated.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
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
