//! [`KafkaError`]: broker failures as Prism sees them, with a retry class decided here once.

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};

/// A failure talking to the brokers.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// No broker answered within the timeout.
    #[error("Kafka at {bootstrap} is unreachable: {detail}")]
    Unreachable {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// What librdkafka said.
        detail: String,
    },
    /// The broker refused a topic operation.
    #[error("topic {topic}: {detail}")]
    Topic {
        /// The topic.
        topic: String,
        /// What the broker said.
        detail: String,
    },
    /// The broker refused a consumer-group operation.
    #[error("consumer group {group}: {detail}")]
    Group {
        /// The group.
        group: String,
        /// What the broker said.
        detail: String,
    },
    /// Any other client error. librdkafka's error is part of this one's message, not a cause
    /// of its own, so that an error chain (`{:#}`) says it once.
    #[error("Kafka: {0}")]
    Client(RdKafkaError),
}

impl From<RdKafkaError> for KafkaError {
    fn from(error: RdKafkaError) -> Self {
        Self::Client(error)
    }
}

impl KafkaError {
    /// True when librdkafka refused its configuration (a property of `kafka.properties` it does
    /// not know, or a value it does not take) before any broker was asked anything.
    pub fn is_client_config(&self) -> bool {
        matches!(self, Self::Client(RdKafkaError::ClientConfig(..)))
    }

    /// True when waiting and retrying can help: the broker is down, a leader is moving, a
    /// request timed out. A configuration librdkafka refused stays refused.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Topic { .. } | Self::Group { .. } => false,
            Self::Client(_) if self.is_client_config() => false,
            Self::Client(err) => is_transient_code(err.rdkafka_error_code()),
        }
    }
}

/// librdkafka codes that describe a passing state of the cluster rather than a bad request.
pub fn is_transient_code(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        None | Some(
            BrokerTransportFailure
                | AllBrokersDown
                | OperationTimedOut
                | RequestTimedOut
                | MessageTimedOut
                | LeaderNotAvailable
                | NotLeaderForPartition
                | NetworkException
                | NotCoordinator
                | CoordinatorNotAvailable
                | CoordinatorLoadInProgress
                | RebalanceInProgress
                | QueueFull
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | UnknownTopicOrPartition
                | Resolve
                | WaitingForCoordinator
                | InProgress
                | BrokerNotAvailable
                | ReplicaNotAvailable
                | TimedOutQueue
                | Retry
        )
    )
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::BaseProducer;
    use rdkafka::ClientConfig;

    use super::KafkaError;

    #[test]
    fn a_refused_configuration_is_named_as_such_and_not_retried() {
        let refused = ClientConfig::new()
            .set("no.such.property", "1")
            .create::<BaseProducer>()
            .map(|_| ())
            .map_err(KafkaError::from)
            .expect_err("librdkafka refuses a property it does not know");
        assert!(refused.is_client_config(), "{refused}");
        assert!(!refused.is_transient(), "{refused}");
        assert!(refused.to_string().contains("no.such.property"), "{refused}");
        let timed_out = KafkaError::Client(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ));
        assert!(!timed_out.is_client_config() && timed_out.is_transient());
    }
}
