//! The deployment a command acts on, printed to stderr before anything else, so an operator
//! with the wrong configuration (production instead of staging, another team's prefix) sees it
//! before reading or changing anything: the brokers and topic prefix, the PostgreSQL server,
//! database and schema, the Redis server and key prefix.
//!
//! Never a credential: URLs are printed without their user information and query string
//! (PostgreSQL accepts `?password=…`), and secrets come from their own keys, which are not
//! printed at all.

use prism_config::PrismConfig;

/// One line naming the deployment `config` points at, without credentials.
pub fn header(config: &PrismConfig) -> String {
    format!(
        "deployment: kafka {} (topic prefix {}), postgres {} schema {}, redis {} (key prefix {})",
        brokers_without_credentials(&config.kafka.bootstrap_servers),
        quoted(&config.topics.prefix),
        postgres_without_credentials(&config.postgres.url),
        config.postgres.schema,
        url_without_credentials(&config.redis.url),
        quoted(&config.redis.key_prefix),
    )
}

/// `"value"`, or `(none)` for an empty prefix, so an empty one is seen as such.
fn quoted(value: &str) -> String {
    if value.is_empty() {
        "(none)".to_owned()
    } else {
        format!("\"{value}\"")
    }
}

/// `scheme://host:port/path` of a URL: user, password, query and fragment removed.
pub fn url_without_credentials(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

/// A PostgreSQL URL, or a `key=value` connection string, without credentials: for the latter
/// only `host`, `port` and `dbname` are kept.
pub fn postgres_without_credentials(url: &str) -> String {
    if url.contains("://") {
        return url_without_credentials(url);
    }
    let value = |key: &str| {
        url.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim_matches('\'').to_owned())
    };
    format!(
        "{}:{}/{}",
        value("host").unwrap_or_else(|| "localhost".into()),
        value("port").unwrap_or_else(|| "5432".into()),
        value("dbname").unwrap_or_else(|| "?".into())
    )
}

/// A bootstrap list with any `user:password@` (or scheme) removed from each entry.
pub fn brokers_without_credentials(servers: &str) -> String {
    servers
        .split(',')
        .map(|server| {
            let server = server.trim();
            let server = server.split_once("://").map_or(server, |(_, rest)| rest);
            server.rsplit_once('@').map_or(server, |(_, host)| host)
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            url_without_credentials(
                "postgres://admin:hunter2@db.internal:5432/prism?sslmode=verify-full&password=x"
            ),
            "postgres://db.internal:5432/prism"
        );
        assert_eq!(url_without_credentials("redis://:hunter2@cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(url_without_credentials("rediss://cache:6380"), "rediss://cache:6380");
        assert_eq!(url_without_credentials("postgres://p%40ss@h/db"), "postgres://h/db");
        assert_eq!(
            postgres_without_credentials("host=db port=6432 user=prism password=hunter2 dbname=prism"),
            "db:6432/prism"
        );
        assert_eq!(brokers_without_credentials("a:9092, SASL_SSL://u:hunter2@b:9093"), "a:9092,b:9093");
    }

    #[test]
    fn the_header_names_every_service_and_no_secret() {
        let env: Vec<(String, String)> = [
            ("PRISM__KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092"),
            ("PRISM__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("PRISM__KAFKA__SASL_MECHANISM", "PLAIN"),
            ("PRISM__KAFKA__SASL_USERNAME", "prism"),
            ("PRISM__KAFKA__SASL_PASSWORD", "kafka-secret"),
            ("PRISM__TOPICS__PREFIX", "staging."),
            ("PRISM__POSTGRES__URL", "postgres://prism@db:5432/shop?password=query-secret"),
            ("PRISM__POSTGRES__PASSWORD", "pg-secret"),
            ("PRISM__POSTGRES__SCHEMA", "shop"),
            ("PRISM__REDIS__URL", "redis://cache:6379/2"),
            ("PRISM__REDIS__PASSWORD", "redis-secret"),
            ("PRISM__REDIS__KEY_PREFIX", "shop:"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = PrismConfig::load(&prism_config::ConfigSources { env, ..Default::default() })
            .expect("configuration");
        let header = header(&config);
        assert_eq!(
            header,
            "deployment: kafka k1:9092,k2:9092 (topic prefix \"staging.\"), postgres postgres://db:5432/shop \
             schema shop, redis redis://cache:6379/2 (key prefix \"shop:\")"
        );
        for secret in ["secret", "prism@"] {
            assert!(!header.contains(secret), "{header}");
        }
    }
}
