//! Loading: the layers in order, then checks that serde alone cannot express.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use crate::sections::PrismConfig;

/// The built-in defaults, `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../../../config/default.toml");

/// Prefix of the environment variables that override configuration keys.
const ENV_PREFIX: &str = "PRISM__";
/// Suffix of a variable whose value is the path of a file holding the real value.
const FILE_SUFFIX: &str = "_FILE";

/// Where configuration comes from, given explicitly so tests can drive every layer.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// Directory of `<env>.toml` files (usually `config/`).
    pub config_dir: Option<PathBuf>,
    /// The environment name selecting `<config_dir>/<env>.toml`, from `PRISM_ENV`.
    pub environment: Option<String>,
    /// Further TOML files, applied in order (from `--config`).
    pub files: Vec<PathBuf>,
    /// Environment variables; only `PRISM__*` ones are read.
    pub env: Vec<(String, String)>,
}

impl ConfigSources {
    /// The sources of a running process: its environment, `PRISM_ENV` and
    /// `PRISM_CONFIG_DIR` (default `config`), plus the given `--config` files.
    pub fn from_process(files: Vec<PathBuf>) -> Self {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Self {
            config_dir: Some(lookup("PRISM_CONFIG_DIR").unwrap_or_else(|| "config".into()).into()),
            environment: lookup("PRISM_ENV").filter(|e| !e.is_empty()),
            files,
            env,
        }
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or parsed, or a key is unknown or of the wrong type.
    #[error("configuration: {0}")]
    Invalid(String),
    /// A file named by a layer does not exist.
    #[error("configuration: {what} {path} does not exist")]
    MissingFile {
        /// What the file is (e.g. `configuration file`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        // figment reports every problem at once; one per line reads best.
        let lines: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        Self::Invalid(lines.join("; "))
    }
}

impl PrismConfig {
    /// Loads and checks the whole configuration.
    pub fn load(sources: &ConfigSources) -> Result<Self, ConfigError> {
        let config: Self = extract(sources)?;
        config.check()?;
        Ok(config)
    }

    /// Rules across keys or on values that types alone do not catch.
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if !is_sql_identifier(&self.postgres.schema) {
            return invalid(format!(
                "postgres.schema `{}` must be a lowercase SQL identifier ([a-z_][a-z0-9_]*, at most 48 characters)",
                self.postgres.schema
            ));
        }
        if url_has_password(&self.postgres.url) {
            return invalid("postgres.url contains a password; set postgres.password (PRISM__POSTGRES__PASSWORD or PRISM__POSTGRES__PASSWORD_FILE) instead, so it stays out of logs".into());
        }
        if url_has_password(&self.redis.url) {
            return invalid("redis.url contains a password; set redis.password (PRISM__REDIS__PASSWORD or PRISM__REDIS__PASSWORD_FILE) instead, so it stays out of logs".into());
        }
        if self.postgres.pool_size == 0 {
            return invalid("postgres.pool_size must be at least 1".into());
        }
        if self.topics.partitions < 1 || self.topics.dead_letter_partitions < 1 {
            return invalid("topics.partitions and topics.dead_letter_partitions must be at least 1".into());
        }
        if self.topics.replication_factor < 1 {
            return invalid("topics.replication_factor must be at least 1".into());
        }
        if !self.topics.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return invalid(format!(
                "topics.prefix `{}` may contain only letters, digits, `.`, `_` and `-`",
                self.topics.prefix
            ));
        }
        if self.redis.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("redis.key_prefix must not contain whitespace or control characters".into());
        }
        self.redis.check_mode()?;
        if self.events.max_event_bytes < 1024 || self.events.max_depth < 4 {
            return invalid(
                "events.max_event_bytes must be at least 1024 and events.max_depth at least 4".into(),
            );
        }
        if self.projector.batch_max_events == 0
            || self.projector.batch_max_bytes == 0
            || self.projector.max_buffered_per_partition == 0
            || self.projector.max_buffered_bytes_per_partition == 0
            || self.projector.max_concurrent_batches == 0
            || self.projector.replay_chunk_events == 0
            || self.projector.replay_chunk_bytes == 0
            || self.projector.replay_concurrency == 0
        {
            return invalid(
                "projector.batch_max_events, projector.batch_max_bytes, projector.max_buffered_per_partition, projector.max_buffered_bytes_per_partition, projector.max_concurrent_batches, projector.replay_chunk_events, projector.replay_chunk_bytes and projector.replay_concurrency must be at least 1"
                    .into(),
            );
        }
        if self.projector.max_messages_in_flight < self.projector.batch_max_events {
            return invalid(format!(
                "projector.max_messages_in_flight ({}) must be at least projector.batch_max_events ({}): a full batch could never run",
                self.projector.max_messages_in_flight, self.projector.batch_max_events
            ));
        }
        if self.projector.max_bytes_in_flight < self.projector.batch_max_bytes {
            return invalid(format!(
                "projector.max_bytes_in_flight ({}) must be at least projector.batch_max_bytes ({}): a full batch could never run",
                self.projector.max_bytes_in_flight, self.projector.batch_max_bytes
            ));
        }
        if self.projector.retry_initial_backoff_ms == 0
            || self.projector.retry_max_backoff_ms < self.projector.retry_initial_backoff_ms
        {
            return invalid("projector.retry_initial_backoff_ms must be at least 1 and at most projector.retry_max_backoff_ms".into());
        }
        if self.query.max_page_size == 0
            || self.query.default_page_size == 0
            || self.query.default_page_size > self.query.max_page_size
        {
            return invalid("query.max_page_size and query.default_page_size must be at least 1, and query.default_page_size at most query.max_page_size".into());
        }
        if self.query.max_sales_days == 0 {
            return invalid("query.max_sales_days must be at least 1".into());
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrap_servers must name at least one broker".into());
        }
        crate::tls::check(&self.kafka, &self.postgres, &self.redis)?;
        Ok(())
    }
}

/// Layers the sources and deserialises them into `T`. Exposed for binaries that add
/// sections of their own around [`PrismConfig`].
pub fn extract<T: DeserializeOwned>(sources: &ConfigSources) -> Result<T, ConfigError> {
    let mut figment = Figment::new().merge(Toml::string(DEFAULT_TOML));
    if let Some(environment) = &sources.environment {
        if !environment.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError::Invalid(format!(
                "PRISM_ENV `{environment}` may contain only letters, digits, `-` and `_`"
            )));
        }
        let dir = sources.config_dir.as_deref().unwrap_or(Path::new("config"));
        let path = dir.join(format!("{environment}.toml"));
        if !path.is_file() {
            return Err(ConfigError::MissingFile { what: "PRISM_ENV file", path });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    for path in &sources.files {
        if !path.is_file() {
            return Err(ConfigError::MissingFile { what: "--config file", path: path.clone() });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    for provider in env_providers(&sources.env)? {
        figment = figment.merge(provider);
    }
    Ok(figment.extract()?)
}

/// One `PRISM__SECTION__KEY` variable as a figment layer, so errors name the variable.
struct EnvVar {
    name: String,
    path: String,
    value: Value,
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("environment variable {}", self.name))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default
            .collect(figment::util::nest(&self.path, self.value.clone()).into_dict().unwrap_or_default()))
    }
}

fn env_providers(env: &[(String, String)]) -> Result<Vec<EnvVar>, ConfigError> {
    let mut providers = Vec::new();
    let mut sorted: Vec<&(String, String)> = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    // Deterministic order whatever the process environment's order.
    sorted.sort();
    for (name, raw) in sorted {
        let rest = &name[ENV_PREFIX.len()..];
        // A file's text is taken as it is; a variable's value is parsed (a number, a boolean,
        // an array), as figment does.
        let (key, text, from_file) = match rest.strip_suffix(FILE_SUFFIX) {
            Some(key) => {
                if env.iter().any(|(other, _)| other == &format!("{ENV_PREFIX}{key}")) {
                    return Err(ConfigError::Invalid(format!(
                        "both {ENV_PREFIX}{key} and {name} are set; set only one"
                    )));
                }
                let text = std::fs::read_to_string(raw)
                    .map_err(|e| ConfigError::Invalid(format!("{name}: cannot read {raw}: {e}")))?;
                // Files written by editors and `echo` end in a newline that is not part of
                // the secret.
                (key, text.trim_end_matches(['\n', '\r']).to_owned(), true)
            }
            None => (rest, raw.clone(), false),
        };
        let segments: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid(format!(
                "{name}: expected {ENV_PREFIX}<SECTION>__<KEY> with no empty parts"
            )));
        }
        if let Some(property) = librdkafka_property(&segments) {
            // Kept as text, as librdkafka takes every property (a parsed `true` or `50` would
            // not deserialize into the map's strings), and nested by hand: the dotted name is
            // one key, not a path.
            let mut dict = Dict::new();
            dict.insert(property, Value::from(text));
            providers.push(EnvVar {
                name: name.clone(),
                path: "kafka.properties".into(),
                value: Value::from(dict),
            });
            continue;
        }
        let value = if from_file {
            Value::from(text)
        } else {
            text.parse::<Value>().unwrap_or_else(|never| match never {})
        };
        providers.push(EnvVar { name: name.clone(), path: segments.join("."), value });
    }
    Ok(providers)
}

/// The librdkafka property a `PRISM__KAFKA__PROPERTIES__<NAME>` variable sets: `<NAME>`
/// lowercased with `_` for `.` (`FETCH_WAIT_MAX_MS` is `fetch.wait.max.ms`). No property
/// librdkafka takes as text has an underscore in its name (the few that do are callbacks and
/// pointers, set through its API only), so the mapping is exact. A variable name cannot carry
/// the dots themselves.
fn librdkafka_property(segments: &[String]) -> Option<String> {
    match segments {
        [section, properties, name] if section == "kafka" && properties == "properties" => {
            Some(name.replace('_', "."))
        }
        _ => None,
    }
}

/// Identifiers Prism splices into SQL must pass this: lowercase, no quoting needed, with
/// room for the suffixes Prism appends (generations, index names) within PostgreSQL's 63.
pub fn is_sql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 48
}

impl crate::sections::RedisConfig {
    /// The rules of `redis.mode` and the cluster keys.
    fn check_mode(&self) -> Result<(), ConfigError> {
        use crate::sections::RedisMode;
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        match self.mode {
            RedisMode::Standalone => {
                if !self.cluster_seeds.is_empty() {
                    return invalid(
                        "redis.cluster_seeds is set but redis.mode is \"standalone\"; set redis.mode = \"cluster\" \
                         (PRISM__REDIS__MODE=cluster) or remove the seeds"
                            .into(),
                    );
                }
            }
            RedisMode::Cluster => {
                let scheme = |url: &str| url.trim_start().split_once("://").map(|(s, _)| s.to_owned());
                let url_scheme = scheme(&self.url);
                for seed in &self.cluster_seeds {
                    if url_has_password(seed) {
                        return invalid(format!(
                            "redis.cluster_seeds entry `{}` contains a password; set redis.password instead",
                            mask_userinfo(seed)
                        ));
                    }
                    if scheme(seed).is_none() || scheme(seed) != url_scheme {
                        return invalid(format!(
                            "redis.cluster_seeds entry `{seed}` must be a URL with the same scheme as redis.url ({})",
                            url_scheme.as_deref().unwrap_or("none")
                        ));
                    }
                }
                if !self.tls_ca_cert.is_empty() {
                    // The cluster client verifies certificates against the system's trust store
                    // only (the TLS library's default paths).
                    return invalid(
                        "redis.tls_ca_cert is not supported with redis.mode = \"cluster\": add the CA to the \
                         system's trust store (or point SSL_CERT_FILE at it) and leave redis.tls_ca_cert empty"
                            .into(),
                    );
                }
                if self.cluster_replica_acks > 0 && self.cluster_replica_ack_timeout_ms == 0 {
                    return invalid(
                        "redis.cluster_replica_ack_timeout_ms must be at least 1 when redis.cluster_replica_acks is set"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// `url` with anything between `://` and `@` replaced, for error messages.
fn mask_userinfo(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_owned(),
    }
}

fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}
