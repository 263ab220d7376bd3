//! The typed configuration sections. Field docs say what each key is for; the defaults are
//! in `config/default.toml`, which is the one place they are written down.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::secret::Secret;

/// Everything any Prism process can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrismConfig {
    /// How to reach the brokers.
    pub kafka: KafkaConfig,
    /// Topic names and shapes.
    pub topics: TopicsConfig,
    /// The event store, outbox and read models.
    pub postgres: PostgresConfig,
    /// The read-model cache.
    pub redis: RedisConfig,
    /// Input bounds for events.
    pub events: EventsConfig,
    /// The HTTP command API.
    pub commands: CommandsConfig,
    /// The outbox relay.
    pub relay: RelayConfig,
    /// The projector workers.
    pub projector: ProjectorConfig,
    /// The HTTP query API.
    pub query: QueryConfig,
    /// Logging.
    pub log: LogConfig,
    /// The application's own settings (`[application]`), which the engine passes through
    /// untouched; the application reads them into its own typed section (see
    /// [`PrismConfig::application_section`]).
    #[serde(default)]
    pub application: serde_json::Map<String, serde_json::Value>,
}

impl PrismConfig {
    /// The `[application]` settings as the application's own type `T` (which should deny
    /// unknown fields and give defaults), with an error naming the section when they do not
    /// fit.
    pub fn application_section<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::ConfigError> {
        serde_json::from_value(serde_json::Value::Object(self.application.clone()))
            .map_err(|e| crate::ConfigError::Invalid(format!("[application]: {e}")))
    }
}

/// The HTTP command API (`prism-commands`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsConfig {
    /// Listen address of the API and its operations endpoints.
    pub listen: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Retention of idempotency records, in seconds.
    pub idempotency_ttl_seconds: u64,
}

/// The outbox relay (runs inside `prism-commands`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Whether this process runs the relay.
    pub enabled: bool,
    /// Outbox rows published per round trip.
    pub batch_size: usize,
    /// Fallback polling interval, in milliseconds.
    pub poll_interval_ms: u64,
}

/// How to reach the brokers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Client id reported to the brokers.
    pub client_id: String,
    /// Transport security towards the brokers.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism; empty for none.
    pub sasl_mechanism: String,
    /// SASL user; empty for none.
    pub sasl_username: String,
    /// SASL password (secret).
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// CA bundle for TLS; empty for the system's.
    pub ssl_ca_location: String,
    /// Upper bound for one admin or metadata request.
    pub request_timeout_ms: u64,
    /// The consumer group rebalance protocol the projector workers (and every other group
    /// member Prism runs) speak.
    pub group_protocol: GroupProtocol,
    /// Extra librdkafka properties passed through verbatim.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka expects.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

/// librdkafka's `group.protocol`: how a consumer group assigns partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupProtocol {
    /// The classic protocol: members join, the group leader assigns (cooperative-sticky),
    /// session and heartbeat timeouts are the client's.
    Classic,
    /// KIP-848: the broker assigns partitions incrementally and owns the session and
    /// heartbeat timeouts (`group.consumer.*` broker or group settings). Needs Kafka 4.0+.
    Consumer,
}

impl GroupProtocol {
    /// The value librdkafka expects.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

/// Topic names and shapes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Prefix of every topic and consumer group name.
    pub prefix: String,
    /// Partitions of each event topic.
    pub partitions: i32,
    /// Partitions of each dead-letter topic.
    pub dead_letter_partitions: i32,
    /// Replicas of every topic.
    pub replication_factor: i32,
    /// The topics' `max.message.bytes`.
    pub max_message_bytes: usize,
}

/// The PostgreSQL database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, without a password. Its `sslmode` (`disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`; none means `disable`) decides TLS, see
    /// [`PostgresConfig::tls`].
    pub url: String,
    /// Password (secret).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (libpq's
    /// `sslrootcert`); empty means the system's trust store. Needs an `sslmode` that uses it.
    pub ssl_root_cert: String,
    /// Schema holding Prism's tables; every connection's `search_path`.
    pub schema: String,
    /// Connections per process.
    pub pool_size: usize,
    /// Connection establishment timeout.
    pub connect_timeout_ms: u64,
}

/// The Redis cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Connection URL, without a password: `redis://` in the clear, `rediss://` over TLS.
    pub url: String,
    /// Password (secret).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (`rediss://`
    /// only); empty means the system's trust store.
    pub tls_ca_cert: String,
    /// Prefix of every key Prism writes.
    pub key_prefix: String,
}

/// Input bounds for events, wherever they enter.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Largest accepted event, in bytes.
    pub max_event_bytes: usize,
    /// Deepest accepted JSON nesting.
    pub max_depth: usize,
}

impl EventsConfig {
    /// The decoder's limits.
    pub fn limits(&self) -> prism_events::Limits {
        prism_events::Limits { max_event_bytes: self.max_event_bytes, max_depth: self.max_depth }
    }
}

/// The projector workers (`prism-projector`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Listen address of the operations endpoints.
    pub listen: String,
    /// Consumer group of the workers, under `topics.prefix`.
    pub group: String,
    /// Read models this process maintains (checked against the application's at start);
    /// empty means every read model the application defines.
    pub projections: Vec<String>,
    /// Generation to build; 0 for the active one.
    pub generation: u32,
    /// Static membership id; empty for dynamic membership.
    pub group_instance_id: String,
    /// Largest batch, in messages.
    pub batch_max_events: usize,
    /// How long a batch waits to fill, in milliseconds.
    pub batch_max_wait_ms: u64,
    /// Per-partition backlog that pauses fetching.
    pub max_buffered_per_partition: usize,
    /// Offset commit interval, in milliseconds.
    pub commit_interval_ms: u64,
    /// Group session timeout, in milliseconds.
    pub session_timeout_ms: u64,
    /// Grace for in-flight batches on revocation or shutdown, in milliseconds.
    pub shutdown_deadline_ms: u64,
    /// First retry delay, in milliseconds.
    pub retry_initial_backoff_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_backoff_ms: u64,
    /// Version gap policy.
    pub gap_policy: GapPolicyConfig,
    /// Stall threshold for readiness, in seconds.
    pub stall_after_seconds: u64,
}

/// The HTTP query API (`prism-query`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Listen address of the API and its operations endpoints.
    pub listen: String,
    /// Longest a read-your-writes request (`min_version`) waits for the read model, in
    /// milliseconds; after it the current, older row is answered as stale.
    pub min_version_wait_ms: u64,
    /// Largest `limit` a paginated route accepts.
    pub max_page_size: usize,
    /// Page size when a request gives no `limit`.
    pub default_page_size: usize,
    /// Widest `from`..`to` range of the daily sales route, in days.
    pub max_sales_days: u32,
    /// `Retry-After` of a stale answer, in seconds.
    pub retry_after_seconds: u64,
}

/// What to do with an event whose version skips ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapPolicyConfig {
    /// Dead-letter it and park the aggregate.
    DeadLetter,
    /// Apply it and count the gap.
    Apply,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// tracing-subscriber filter directives.
    pub filter: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}
