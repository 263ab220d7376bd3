//! The librdkafka configuration shared by every Prism client, and [`check_brokers`], the
//! start-up check that tells a refused SASL password or an untrusted broker certificate
//! from a broker that is merely down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prism_config::{KafkaConfig, SecurityProtocol};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::error::KafkaError;

/// Brokers, identity, security and the configured pass-through properties. `role` is appended
/// to the client id (`prism-projector`, `prism-relay`, …) so broker logs tell clients apart.
///
/// Pass-through properties are applied first: what Prism sets after this (commit behaviour,
/// idempotence) carries its guarantees and is not overridable.
pub fn base_client_config(kafka: &KafkaConfig, role: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", format!("{}-{role}", kafka.client_id))
        .set("security.protocol", kafka.security_protocol.as_librdkafka())
        .set("socket.timeout.ms", kafka.request_timeout_ms.max(10_000).to_string());
    if !kafka.sasl_mechanism.is_empty() {
        config.set("sasl.mechanism", &kafka.sasl_mechanism).set("sasl.username", &kafka.sasl_username);
        if let Some(password) = &kafka.sasl_password {
            config.set("sasl.password", password.expose());
        }
    }
    if !kafka.ssl_ca_location.is_empty() {
        config.set("ssl.ca.location", &kafka.ssl_ca_location);
    }
    config
}

/// Why the brokers could not be used, as [`check_brokers`] tells it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerCheckError {
    /// The brokers refused the SASL credentials.
    #[error("Kafka at {bootstrap} refused the SASL credentials of user {user} ({mechanism}; kafka.sasl_password): {detail}")]
    Credentials {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// `kafka.sasl_username`.
        user: String,
        /// `kafka.sasl_mechanism`.
        mechanism: String,
        /// librdkafka's reason.
        detail: String,
    },
    /// A broker's certificate does not chain to a trusted CA or does not name the broker.
    #[error(
        "Kafka at {bootstrap}: the broker's certificate is not trusted (checked against {trust}): {detail}"
    )]
    UntrustedCertificate {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// What the certificate was checked against.
        trust: String,
        /// librdkafka's reason.
        detail: String,
    },
    /// TLS could not be negotiated (e.g. `ssl`/`sasl_ssl` towards a plaintext listener).
    #[error("TLS to Kafka at {bootstrap} failed: {detail}")]
    Tls {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// librdkafka's reason.
        detail: String,
    },
    /// No broker answered, or the client could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

impl BrokerCheckError {
    /// True when waiting can help (a broker down); refused credentials and certificates stay
    /// refused until the configuration changes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Credentials { .. } | Self::UntrustedCertificate { .. } | Self::Tls { .. } => false,
            Self::Kafka(err) => err.is_transient(),
        }
    }
}

/// [`check_brokers`] at a process's start: refused credentials, an untrusted certificate or a
/// failed handshake stop it with an error saying so; brokers that are merely away are logged
/// and waited for in the background, as librdkafka does.
pub async fn refuse_wrong_credentials(kafka: &KafkaConfig, role: &str) -> Result<(), BrokerCheckError> {
    match check_brokers(kafka, role).await {
        Err(err) if !err.is_transient() => Err(err),
        Err(err) => {
            tracing::warn!(error = %err, "the Kafka brokers do not answer yet; carrying on, they are retried");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Collects librdkafka's error events (with their reasons) while the check runs.
#[derive(Default)]
struct CheckContext {
    /// (code, reason) of every error event, in order.
    errors: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for CheckContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "kafka connection check");
        if let Ok(mut errors) = self.errors.lock() {
            errors.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
}

impl ProducerContext for CheckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Proves the brokers answer a metadata request with this configuration (TLS, SASL), within
/// `kafka.request_timeout_ms`; a process calls it at start so that a wrong password or an
/// untrusted certificate stops it with an error saying so, instead of librdkafka retrying in
/// the background while the process looks healthy.
pub async fn check_brokers(kafka: &KafkaConfig, role: &str) -> Result<(), BrokerCheckError> {
    let producer: BaseProducer<CheckContext> = base_client_config(kafka, role)
        .create_with_context(CheckContext::default())
        .map_err(KafkaError::from)?;
    let kafka = kafka.clone();
    let bootstrap = kafka.bootstrap_servers.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_millis(kafka.request_timeout_ms);
        loop {
            let attempt = producer.client().fetch_metadata(None, Duration::from_millis(500));
            // Serves the error events of the attempt to the context.
            producer.poll(Duration::ZERO);
            let errors = producer.context().errors.lock().map(|e| e.clone()).unwrap_or_default();
            if let Some(err) = refusal(&kafka, &errors) {
                return Err(err);
            }
            match attempt {
                Ok(_) => return Ok(()),
                Err(err) if Instant::now() >= deadline => {
                    // librdkafka reports every reconnection attempt: each reason once, the first few.
                    let mut reasons: Vec<&str> = Vec::new();
                    for (_, reason) in &errors {
                        if !reasons.contains(&reason.as_str()) && reasons.len() < 3 {
                            reasons.push(reason);
                        }
                    }
                    let detail = if reasons.is_empty() {
                        err.to_string()
                    } else {
                        format!("{err} ({})", reasons.join("; "))
                    };
                    return Err(KafkaError::Unreachable {
                        bootstrap: kafka.bootstrap_servers.clone(),
                        detail,
                    }
                    .into());
                }
                Err(_) => {}
            }
        }
    })
    .await
    .map_err(|e| KafkaError::Unreachable { bootstrap, detail: format!("worker thread failed: {e}") })?
}

/// The first error event that says the brokers refused us rather than being away.
fn refusal(kafka: &KafkaConfig, errors: &[(Option<RDKafkaErrorCode>, String)]) -> Option<BrokerCheckError> {
    let bootstrap = kafka.bootstrap_servers.clone();
    errors.iter().find_map(|(code, reason)| {
        let detail = reason.clone();
        let lower = reason.to_ascii_lowercase();
        match code {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                Some(BrokerCheckError::Credentials {
                    bootstrap: bootstrap.clone(),
                    user: kafka.sasl_username.clone(),
                    mechanism: kafka.sasl_mechanism.clone(),
                    detail,
                })
            }
            Some(RDKafkaErrorCode::SSL)
                if lower.contains("certificate verify failed") || lower.contains("could not be verified") =>
            {
                let trust = if kafka.ssl_ca_location.is_empty() {
                    "the system's trust store; set kafka.ssl_ca_location to the CA that signed it".to_owned()
                } else {
                    format!("kafka.ssl_ca_location {}", kafka.ssl_ca_location)
                };
                Some(BrokerCheckError::UntrustedCertificate { bootstrap: bootstrap.clone(), trust, detail })
            }
            Some(RDKafkaErrorCode::SSL) => {
                Some(BrokerCheckError::Tls { bootstrap: bootstrap.clone(), detail })
            }
            _ if matches!(kafka.security_protocol, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
                && lower.contains("ssl")
                && lower.contains("handshake") =>
            {
                Some(BrokerCheckError::Tls { bootstrap: bootstrap.clone(), detail })
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_config::{ConfigSources, PrismConfig};
    use rdkafka::producer::BaseProducer;

    fn kafka_with(vars: &[(&str, &str)]) -> KafkaConfig {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let sources = ConfigSources { env, ..Default::default() };
        PrismConfig::load(&sources).expect("configuration loads").kafka
    }

    /// librdkafka refuses to create a client for a security protocol it was built without,
    /// so this fails unless TLS and SASL/SCRAM are compiled in. Creating a client does not
    /// connect: no broker is needed.
    #[test]
    fn tls_and_scram_clients_can_be_created() {
        for (protocol, mechanism) in [("ssl", ""), ("sasl_ssl", "SCRAM-SHA-512"), ("sasl_plaintext", "PLAIN")]
        {
            let kafka = kafka_with(&[
                ("PRISM__KAFKA__SECURITY_PROTOCOL", protocol),
                ("PRISM__KAFKA__SASL_MECHANISM", mechanism),
                ("PRISM__KAFKA__SASL_USERNAME", "prism"),
                ("PRISM__KAFKA__SASL_PASSWORD", "secret"),
            ]);
            let created: Result<BaseProducer, _> = base_client_config(&kafka, "test").create();
            assert!(created.is_ok(), "{protocol}/{mechanism}: {:?}", created.err());
        }
    }

    #[test]
    fn the_password_reaches_librdkafka_only_with_a_mechanism() {
        let kafka = kafka_with(&[("PRISM__KAFKA__SASL_PASSWORD", "secret")]);
        assert_eq!(base_client_config(&kafka, "test").get("sasl.password"), None);
        let kafka = kafka_with(&[
            ("PRISM__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("PRISM__KAFKA__SASL_MECHANISM", "PLAIN"),
            ("PRISM__KAFKA__SASL_USERNAME", "prism"),
            ("PRISM__KAFKA__SASL_PASSWORD", "secret"),
        ]);
        assert_eq!(base_client_config(&kafka, "test").get("sasl.password"), Some("secret"));
    }
}
