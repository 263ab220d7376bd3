//! The librdkafka configuration shared by every Prism client.

use prism_config::KafkaConfig;
use rdkafka::ClientConfig;

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
            ("PRISM__KAFKA__SASL_MECHANISM", "PLAIN"),
            ("PRISM__KAFKA__SASL_PASSWORD", "secret"),
        ]);
        assert_eq!(base_client_config(&kafka, "test").get("sasl.password"), Some("secret"));
    }
}
