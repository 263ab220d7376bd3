//! TLS towards the three dependencies, as configuration sees it: the `sslmode` a PostgreSQL
//! URL asks for (read here once, because the PostgreSQL client library knows only `disable`,
//! `prefer` and `require`), and the rules across keys that keep a configured certificate from
//! being silently unused or verification from being silently switched off.
//!
//! The connections themselves are made by `prism-postgres`, `prism-cache` and `prism-kafka`.

use crate::load::ConfigError;
use crate::sections::{KafkaConfig, PostgresConfig, RedisConfig, SecurityProtocol};

/// How a PostgreSQL connection uses TLS: libpq's `sslmode`, with the values Prism accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostgresSslMode {
    /// No TLS. Also what a URL without `sslmode` means (unlike libpq, whose default is
    /// `prefer`): a connection is encrypted only when the operator asked for it.
    Disable,
    /// TLS when the server offers it, without verifying its certificate (protects against
    /// eavesdropping, not against an impostor).
    Prefer,
    /// TLS or no connection. The certificate is verified against `postgres.ssl_root_cert`
    /// when that is set (as libpq does with a root certificate file), otherwise not.
    Require,
    /// TLS, and the certificate must chain to `postgres.ssl_root_cert` (or the system's
    /// trust store); the host name is not checked.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host the URL connects to.
    VerifyFull,
}

impl PostgresSslMode {
    /// The URL's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// True when the server's certificate chain is checked.
    pub fn verifies_chain(self, has_root_cert: bool) -> bool {
        match self {
            Self::Disable | Self::Prefer => false,
            Self::Require => has_root_cert,
            Self::VerifyCa | Self::VerifyFull => true,
        }
    }

    fn parse(value: &str) -> Result<Self, ConfigError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "postgres.url: sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }
}

/// A PostgreSQL URL split into what the client library parses and the `sslmode` Prism
/// applies itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTls {
    /// `postgres.url` without its `sslmode` parameter.
    pub url: String,
    /// The `sslmode` the URL asked for ([`PostgresSslMode::Disable`] when none).
    pub mode: PostgresSslMode,
}

impl PostgresConfig {
    /// The URL's `sslmode`, and the URL without it. Accepts both URL
    /// (`postgres://host/db?sslmode=verify-full`) and key-value (`host=… sslmode=…`) forms.
    pub fn tls(&self) -> Result<PostgresTls, ConfigError> {
        let url = self.url.trim();
        let (rest, values) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            split_url_parameter(url, "sslmode")
        } else {
            split_key_value_parameter(url, "sslmode")
        };
        let mode = match values.as_slice() {
            [] => PostgresSslMode::Disable,
            [value] => PostgresSslMode::parse(value)?,
            _ => return Err(ConfigError::Invalid("postgres.url names sslmode more than once".into())),
        };
        for unsupported in ["sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl"] {
            let (_, found) = if rest.contains("://") {
                split_url_parameter(&rest, unsupported)
            } else {
                split_key_value_parameter(&rest, unsupported)
            };
            if !found.is_empty() {
                let hint = if unsupported == "sslrootcert" {
                    "set postgres.ssl_root_cert instead"
                } else {
                    "client certificates are not supported; authenticate with postgres.password"
                };
                return Err(ConfigError::Invalid(format!(
                    "postgres.url: `{unsupported}` is not read from the URL; {hint}"
                )));
            }
        }
        Ok(PostgresTls { url: rest, mode })
    }
}

/// Removes every `name=value` query parameter of a URL; returns the URL and the values.
fn split_url_parameter(url: &str, name: &str) -> (String, Vec<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), Vec::new()) };
    let mut kept = Vec::new();
    let mut values = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((key, value)) if key == name => values.push(value.to_owned()),
            _ if pair == name => values.push(String::new()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, values)
}

/// Removes every `name=value` pair of a key-value connection string.
fn split_key_value_parameter(text: &str, name: &str) -> (String, Vec<String>) {
    let mut kept = Vec::new();
    let mut values = Vec::new();
    for token in text.split_whitespace() {
        match token.split_once('=') {
            Some((key, value)) if key == name => values.push(value.trim_matches('\'').to_owned()),
            _ => kept.push(token),
        }
    }
    (kept.join(" "), values)
}

/// Rules across the TLS keys; called when configuration loads.
pub(crate) fn check(
    kafka: &KafkaConfig,
    postgres: &PostgresConfig,
    redis: &RedisConfig,
) -> Result<(), ConfigError> {
    let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));

    let tls = postgres.tls()?;
    if !postgres.ssl_root_cert.is_empty()
        && matches!(tls.mode, PostgresSslMode::Disable | PostgresSslMode::Prefer)
    {
        return Err(ConfigError::Invalid(format!(
            "postgres.ssl_root_cert is set but postgres.url has sslmode={}, which does not verify certificates; \
             add sslmode=verify-full to the URL (or verify-ca, require)",
            tls.mode.as_str()
        )));
    }

    let rediss = redis.url.trim_start().starts_with("rediss://");
    if redis.url.contains("#insecure") {
        return invalid(
            "redis.url ends in #insecure, which turns certificate verification off; \
             set redis.tls_ca_cert to the CA that signed the server's certificate instead",
        );
    }
    if !redis.tls_ca_cert.is_empty() && !rediss {
        return invalid(
            "redis.tls_ca_cert is set but redis.url is not rediss://, so the connection would not use TLS",
        );
    }

    let sasl = matches!(kafka.security_protocol, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl);
    let ssl = matches!(kafka.security_protocol, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl);
    if sasl && (kafka.sasl_mechanism.is_empty() || kafka.sasl_username.is_empty()) {
        return invalid(
            "kafka.security_protocol is sasl_plaintext or sasl_ssl: set kafka.sasl_mechanism and kafka.sasl_username \
             (and the password with PRISM__KAFKA__SASL_PASSWORD or PRISM__KAFKA__SASL_PASSWORD_FILE)",
        );
    }
    if !sasl && !kafka.sasl_mechanism.is_empty() {
        return invalid(
            "kafka.sasl_mechanism is set but kafka.security_protocol is not sasl_ssl or sasl_plaintext, \
             so the credentials would never be used",
        );
    }
    if !ssl && !kafka.ssl_ca_location.is_empty() {
        return invalid(
            "kafka.ssl_ca_location is set but kafka.security_protocol is not ssl or sasl_ssl, \
             so the connection would not use TLS",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(url: &str) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            password: None,
            ssl_root_cert: String::new(),
            schema: "prism".into(),
            pool_size: 1,
            connect_timeout_ms: 1000,
        }
    }

    #[test]
    fn sslmode_is_read_from_both_url_forms_and_removed() {
        let tls =
            pg("postgres://prism@db:5432/prism?application_name=x&sslmode=verify-full").tls().expect("tls");
        assert_eq!(
            tls,
            PostgresTls {
                url: "postgres://prism@db:5432/prism?application_name=x".into(),
                mode: PostgresSslMode::VerifyFull
            }
        );
        let tls = pg("postgresql://db/prism?sslmode=verify-ca").tls().expect("tls");
        assert_eq!(tls, PostgresTls { url: "postgresql://db/prism".into(), mode: PostgresSslMode::VerifyCa });
        let tls = pg("host=db user=prism sslmode='require' dbname=prism").tls().expect("tls");
        assert_eq!(
            tls,
            PostgresTls { url: "host=db user=prism dbname=prism".into(), mode: PostgresSslMode::Require }
        );
        assert_eq!(pg("postgres://db/prism").tls().expect("tls").mode, PostgresSslMode::Disable);
    }

    fn load(vars: &[(&str, &str)]) -> Result<crate::PrismConfig, String> {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        crate::PrismConfig::load(&crate::ConfigSources { env, ..Default::default() })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_settings_load_from_the_environment() {
        let config = load(&[
            ("PRISM__POSTGRES__URL", "postgres://prism@db:5432/prism?sslmode=verify-full"),
            ("PRISM__POSTGRES__SSL_ROOT_CERT", "/etc/prism/pg-ca.pem"),
            ("PRISM__REDIS__URL", "rediss://cache:6380/0"),
            ("PRISM__REDIS__TLS_CA_CERT", "/etc/prism/redis-ca.pem"),
            ("PRISM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("PRISM__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("PRISM__KAFKA__SASL_USERNAME", "prism"),
            ("PRISM__KAFKA__SSL_CA_LOCATION", "/etc/prism/kafka-ca.pem"),
        ])
        .expect("loads");
        assert_eq!(config.postgres.tls().expect("tls").mode, PostgresSslMode::VerifyFull);
        assert_eq!(config.postgres.ssl_root_cert, "/etc/prism/pg-ca.pem");
        assert_eq!(config.redis.tls_ca_cert, "/etc/prism/redis-ca.pem");
    }

    #[test]
    fn a_certificate_or_credential_that_would_go_unused_is_refused() {
        for (vars, expected) in [
            (
                vec![("PRISM__POSTGRES__SSL_ROOT_CERT", "/ca.pem")],
                "postgres.ssl_root_cert is set but postgres.url has sslmode=disable",
            ),
            (vec![("PRISM__REDIS__TLS_CA_CERT", "/ca.pem")], "redis.url is not rediss://"),
            (vec![("PRISM__REDIS__URL", "rediss://cache:6380/0#insecure")], "#insecure"),
            (vec![("PRISM__KAFKA__SSL_CA_LOCATION", "/ca.pem")], "kafka.ssl_ca_location is set"),
            (vec![("PRISM__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")], "kafka.sasl_mechanism is set"),
            (vec![("PRISM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl")], "set kafka.sasl_mechanism"),
            (vec![("PRISM__POSTGRES__URL", "postgres://db/prism?sslmode=verify")], "sslmode `verify`"),
        ] {
            let err = load(&vars).expect_err(expected);
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn bad_sslmodes_and_url_certificates_are_refused_with_the_way_out() {
        let err = pg("postgres://db/prism?sslmode=verify_full").tls().expect_err("typo").to_string();
        assert!(err.contains("verify_full") && err.contains("verify-full"), "{err}");
        let err = pg("postgres://db/prism?sslmode=require&sslrootcert=/ca.pem")
            .tls()
            .expect_err("url cert")
            .to_string();
        assert!(err.contains("postgres.ssl_root_cert"), "{err}");
        assert!(pg("postgres://db/prism?sslmode=require&sslmode=disable").tls().is_err());
    }
}
