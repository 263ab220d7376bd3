//! One module per subcommand.

pub mod dlq;
pub mod groups;
pub mod lag;
pub mod migrate;
pub mod offsets;
pub mod read_models;
pub mod rebuild;
pub mod topics;

/// What to tell an operator whose PostgreSQL is not answering.
pub const POSTGRES_HINT: &str =
    "is PostgreSQL running and postgres.url right? On a development machine `ops/dev-stack up` starts it";
/// What to tell an operator whose Redis is not answering.
pub const REDIS_HINT: &str =
    "is Redis running and redis.url right? On a development machine `ops/dev-stack up` starts it";
/// What to tell an operator whose broker is not answering.
pub const KAFKA_HINT: &str =
    "is the broker running and kafka.bootstrap_servers right? On a development machine `ops/dev-stack up` starts one";

/// Asks `question` on the terminal before a destructive step; `Ok` for yes. `--yes` answers
/// in advance. Without a terminal on stdin (scripts, CI, a pipe) there is nobody to ask, and
/// a destructive step is never taken on a guess: the command stops, having changed nothing.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "{question} Refusing without confirmation: stdin is not a terminal, so there is nobody to ask. \
             Nothing was changed. Pass --yes to proceed without asking."
        );
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing was changed")
    }
}

/// A broker failure while doing `what`: the hint about starting a broker only when the broker
/// did not answer. A topic or group the broker answered about is named as such, not blamed on
/// a broker that is running fine, and a configuration librdkafka refused is named as that.
pub fn kafka_error(err: prism_kafka::KafkaError, what: impl std::fmt::Display) -> anyhow::Error {
    match err {
        prism_kafka::KafkaError::Topic { .. } | prism_kafka::KafkaError::Group { .. } => {
            anyhow::Error::new(err).context(what.to_string())
        }
        config if config.is_client_config() => anyhow::Error::new(config).context(format!(
            "{what} (librdkafka refused its configuration: check kafka.properties and its \
             PRISM__KAFKA__PROPERTIES__* variables)"
        )),
        other => anyhow::Error::new(other).context(format!("{what} ({KAFKA_HINT})")),
    }
}
