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
    /// How many recently used aggregates' states are kept between commands (0: none).
    pub cached_aggregates: usize,
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
    /// No TLS, no authentication (development only).
    Plaintext,
    /// TLS, no SASL authentication.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS: what production clusters use.
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
    /// One Redis server, or a Redis Cluster: decides how keys are spread and how writes are
    /// grouped (a cluster refuses one call over keys of different hash slots).
    pub mode: RedisMode,
    /// Connection URL, without a password: `redis://` in the clear, `rediss://` over TLS. In
    /// cluster mode, one node of the cluster, from which the client learns the others.
    pub url: String,
    /// Cluster mode: further nodes to learn the cluster from when `url`'s node is down at
    /// start (same scheme as `url`, no password). Empty in standalone mode.
    pub cluster_seeds: Vec<String>,
    /// Cluster mode: a projector's cache write counts as done only when this many replicas of
    /// the written master have it (or every replica it has, if fewer are online), so that a
    /// failover cannot bring back an entry older than PostgreSQL. 0 does not wait.
    pub cluster_replica_acks: u32,
    /// Cluster mode: how long a write waits for those replicas before it fails as a transient
    /// error (and is retried), in milliseconds.
    pub cluster_replica_ack_timeout_ms: u64,
    /// Password (secret).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (`rediss://`
    /// only); empty means the system's trust store. Standalone mode only.
    pub tls_ca_cert: String,
    /// Prefix of every key Prism writes.
    pub key_prefix: String,
}

/// What `redis.url` points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One Redis server (or the primary endpoint of a managed Redis without cluster mode):
    /// every key on one node, writes batched into one script call.
    Standalone,
    /// Redis Cluster (or a managed Redis in cluster mode): keys spread over hash slots and
    /// masters; writes grouped per slot, prefix deletes run on every master, reads follow the
    /// cluster's redirections.
    Cluster,
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
    /// Largest batch, in bytes of its messages (a larger single message is a batch of its own).
    pub batch_max_bytes: usize,
    /// How long a batch waits to fill, in milliseconds.
    pub batch_max_wait_ms: u64,
    /// Per-partition backlog that pauses fetching, in messages.
    pub max_buffered_per_partition: usize,
    /// Per-partition backlog that pauses fetching, in bytes of its messages.
    pub max_buffered_bytes_per_partition: usize,
    /// Batches one worker applies at once, over all its partitions.
    pub max_concurrent_batches: usize,
    /// Messages the batches one worker applies at once may hold together, over all its
    /// partitions (at least `batch_max_events`).
    pub max_messages_in_flight: usize,
    /// Bytes of messages the batches one worker applies at once may hold together (at least
    /// `batch_max_bytes`).
    pub max_bytes_in_flight: usize,
    /// Offset commit interval, in milliseconds.
    pub commit_interval_ms: u64,
    /// Whether a worker that landed everything it received commits at once.
    pub commit_when_caught_up: bool,
    /// Events per chunk of a bulk replay (a rebuilt instance loading a range of a partition).
    pub replay_chunk_events: usize,
    /// Bytes of messages per chunk of a bulk replay, reached first when events are large.
    pub replay_chunk_bytes: usize,
    /// Ranges one worker replays at once.
    pub replay_concurrency: usize,
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
    /// PostgreSQL read replicas (hot standbys streaming from `postgres.url`) that answer reads
    /// in place of the primary, as URLs without a password. Each uses the primary's
    /// `postgres.password`, `ssl_root_cert`, schema, pool size and connect timeout, and the
    /// primary's `sslmode` unless its URL names its own (see
    /// [`QueryConfig::replica_postgres`]). Empty: every read goes to the primary. A TOML list,
    /// or in `PRISM__QUERY__REPLICA_URLS` a comma-separated string.
    #[serde(deserialize_with = "replica_urls")]
    pub replica_urls: Vec<String>,
    /// A replica not seen caught up with the primary for longer than this, in milliseconds, is
    /// skipped (the primary answers); 0 means no bound. It bounds the staleness of reads
    /// without `min_version`; read-your-writes is exact whatever it is (a replica's row must
    /// carry the version asked for).
    pub replica_max_lag_ms: u64,
    /// Longest a read waits for a replica before the primary answers it instead, in
    /// milliseconds; a replica that did not answer is skipped until it answers a probe again.
    pub replica_timeout_ms: u64,
}

impl QueryConfig {
    /// The connection settings of each of [`replica_urls`](Self::replica_urls): `postgres`
    /// with the replica's URL, which keeps `postgres`'s `sslmode` when it names none (so a
    /// replica is never reached with less TLS than the primary by omission). An error names
    /// the entry and what is wrong with it.
    pub fn replica_postgres(
        &self,
        postgres: &PostgresConfig,
    ) -> Result<Vec<PostgresConfig>, crate::ConfigError> {
        let primary_mode = postgres.tls()?.mode;
        self.replica_urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let url = if url.contains("sslmode=") {
                    url.clone()
                } else if url.contains("://") {
                    let separator = if url.contains('?') { '&' } else { '?' };
                    format!("{url}{separator}sslmode={}", primary_mode.as_str())
                } else {
                    format!("{url} sslmode={}", primary_mode.as_str())
                };
                let replica = PostgresConfig { url, ..postgres.clone() };
                replica.tls().map_err(|err| {
                    crate::ConfigError::Invalid(format!(
                        "query.replica_urls[{index}] (`{}`): {err}",
                        self.replica_urls[index]
                    ))
                })?;
                Ok(replica)
            })
            .collect()
    }
}

/// `query.replica_urls`: a list, or a comma-separated string (what an environment variable
/// holds); entries must be distinct, non-empty and without a password.
fn replica_urls<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        List(Vec<String>),
        Text(String),
    }
    let urls: Vec<String> = match Urls::deserialize(deserializer)? {
        Urls::List(urls) => urls.into_iter().map(|url| url.trim().to_owned()).collect(),
        Urls::Text(text) => {
            text.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect()
        }
    };
    for (index, url) in urls.iter().enumerate() {
        if url.is_empty() {
            return Err(D::Error::custom(format!("entry {index} is empty")));
        }
        if names_password(url) {
            return Err(D::Error::custom(format!(
                "entry {index} contains a password; replicas log in with postgres.password \
                 (PRISM__POSTGRES__PASSWORD or PRISM__POSTGRES__PASSWORD_FILE), so it stays out of logs"
            )));
        }
        if urls[..index].contains(url) {
            return Err(D::Error::custom(format!("`{url}` is listed twice")));
        }
    }
    Ok(urls)
}

/// Whether a PostgreSQL connection string carries a password (`user:secret@` in the URL form,
/// `password=` in the key-value form).
fn names_password(url: &str) -> bool {
    match url.split_once("://") {
        Some((_, rest)) => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
                || rest.split(['?', '&']).any(|parameter| parameter.starts_with("password="))
        }
        None => url.split_whitespace().any(|pair| pair.starts_with("password=")),
    }
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

#[cfg(test)]
mod query_replica_tests {
    use crate::{ConfigSources, PrismConfig};

    fn load(vars: &[(&str, &str)]) -> Result<PrismConfig, String> {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        PrismConfig::load(&ConfigSources { env, ..Default::default() }).map_err(|e| e.to_string())
    }

    #[test]
    fn replica_urls_default_to_none_and_load_as_a_list_or_a_comma_separated_string() {
        let config = load(&[]).expect("defaults");
        assert!(config.query.replica_urls.is_empty());
        assert_eq!((config.query.replica_max_lag_ms, config.query.replica_timeout_ms), (5000, 1000));
        let listed =
            load(&[("PRISM__QUERY__REPLICA_URLS", r#"["postgres://r1:5432/prism", "postgres://r2/prism"]"#)])
                .expect("a list");
        let comma =
            load(&[("PRISM__QUERY__REPLICA_URLS", " postgres://r1:5432/prism , postgres://r2/prism,")])
                .expect("a comma-separated string");
        let expected = vec!["postgres://r1:5432/prism".to_owned(), "postgres://r2/prism".to_owned()];
        assert_eq!(listed.query.replica_urls, expected);
        assert_eq!(comma.query.replica_urls, expected);
        assert!(load(&[("PRISM__QUERY__REPLICA_URLS", "")]).expect("empty").query.replica_urls.is_empty());
    }

    #[test]
    fn replica_urls_with_a_password_or_listed_twice_are_refused_naming_the_key() {
        let err = load(&[("PRISM__QUERY__REPLICA_URLS", "postgres://prism:hunter2@r1/prism")])
            .expect_err("password");
        assert!(err.contains("replica_urls") && err.contains("postgres.password"), "{err}");
        assert!(!err.contains("hunter2"), "the password is not repeated: {err}");
        let err = load(&[("PRISM__QUERY__REPLICA_URLS", "host=r1 password=hunter2")])
            .expect_err("key-value password");
        assert!(err.contains("replica_urls"), "{err}");
        let err = load(&[("PRISM__QUERY__REPLICA_URLS", "postgres://r1/prism,postgres://r1/prism")])
            .expect_err("twice");
        assert!(err.contains("replica_urls") && err.contains("twice"), "{err}");
    }

    #[test]
    fn a_replica_keeps_the_primary_sslmode_unless_it_names_its_own() {
        let config = load(&[
            ("PRISM__POSTGRES__URL", "postgres://prism@primary/prism?sslmode=verify-full"),
            ("PRISM__POSTGRES__SSL_ROOT_CERT", "/etc/prism/ca.pem"),
            (
                "PRISM__QUERY__REPLICA_URLS",
                "postgres://prism@r1/prism,postgres://prism@r2/prism?sslmode=require,host=r3 dbname=prism",
            ),
        ])
        .expect("loads");
        let replicas = config.query.replica_postgres(&config.postgres).expect("replica settings");
        let modes: Vec<&str> = replicas.iter().map(|r| r.tls().expect("tls").mode.as_str()).collect();
        assert_eq!(modes, ["verify-full", "require", "verify-full"]);
        assert!(replicas
            .iter()
            .all(|r| r.ssl_root_cert == "/etc/prism/ca.pem" && r.schema == config.postgres.schema));
        assert_eq!(replicas[0].tls().expect("tls").url, "postgres://prism@r1/prism");

        let config =
            load(&[("PRISM__QUERY__REPLICA_URLS", "postgres://r1/prism?sslmode=sometimes")]).expect("loads");
        let err = config.query.replica_postgres(&config.postgres).expect_err("bad sslmode").to_string();
        assert!(err.contains("query.replica_urls[0]") && err.contains("sometimes"), "{err}");
    }
}
