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
    /// Any other client error.
    #[error("Kafka: {0}")]
    Client(#[from] RdKafkaError),
}

impl KafkaError {
    /// True when waiting and retrying can help: the broker is down, a leader is moving, a
    /// request timed out.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Topic { .. } | Self::Group { .. } => false,
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
