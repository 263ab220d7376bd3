//! The shared development services the tests run against, and reachability checks whose
//! failure tells the reader exactly what to start.

use std::time::Duration;

use anyhow::{bail, Context};

/// How a test reaches the shared services. Defaults match `ops/dev-stack up`; each can be
/// overridden with an environment variable.
#[derive(Debug, Clone)]
pub struct Services {
    /// Broker bootstrap list (`PRISM_TEST_KAFKA`, default `127.0.0.1:9092`).
    pub kafka: String,
    /// PostgreSQL server URL without database (`PRISM_TEST_POSTGRES`, default
    /// `postgres://postgres@127.0.0.1:5432`).
    pub postgres: String,
    /// Database the per-test schemas live in (`PRISM_TEST_DATABASE`, default `prism_test`).
    pub database: String,
    /// Redis URL (`PRISM_TEST_REDIS`, default `redis://127.0.0.1:6379/0`).
    pub redis: String,
}

const START_HINT: &str = "start the development stack with `ops/dev-stack up`";

impl Services {
    /// Endpoints from the environment, with the development defaults.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Self {
            kafka: var("PRISM_TEST_KAFKA", "127.0.0.1:9092"),
            postgres: var("PRISM_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432"),
            database: var("PRISM_TEST_DATABASE", "prism_test"),
            redis: var("PRISM_TEST_REDIS", "redis://127.0.0.1:6379/0"),
        }
    }

    /// URL of the test database.
    pub fn database_url(&self) -> String {
        format!("{}/{}", self.postgres.trim_end_matches('/'), self.database)
    }

    /// Proves PostgreSQL answers and the test database exists (creating it if needed).
    pub async fn check_postgres(&self) -> anyhow::Result<()> {
        let maintenance = format!("{}/postgres", self.postgres.trim_end_matches('/'));
        let client = connect_pg(&maintenance).await.with_context(|| {
            format!(
                "PostgreSQL is not reachable at {} ({START_HINT}, or set PRISM_TEST_POSTGRES)",
                self.postgres
            )
        })?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&self.database])
            .await?
            .is_some();
        if !exists {
            if !self.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("PRISM_TEST_DATABASE `{}` is not a plain identifier", self.database);
            }
            if let Err(err) = client.batch_execute(&format!("CREATE DATABASE {}", self.database)).await {
                // Another test process created it first: PostgreSQL reports that as a
                // duplicate database, or, when both ran at once, as a unique violation on
                // its catalog.
                use tokio_postgres::error::SqlState;
                if !matches!(err.code(), Some(c) if *c == SqlState::DUPLICATE_DATABASE || *c == SqlState::UNIQUE_VIOLATION)
                {
                    return Err(err).context("creating the test database");
                }
            }
        }
        Ok(())
    }

    /// Proves Redis answers PING.
    pub async fn check_redis(&self) -> anyhow::Result<()> {
        let attempt = async {
            let mut conn = redis_connection(&self.redis).await?;
            let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
            anyhow::ensure!(pong == "PONG", "unexpected PING reply {pong}");
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 5s"))
            .and_then(|r| r)
            .with_context(|| {
                format!("Redis is not reachable at {} ({START_HINT}, or set PRISM_TEST_REDIS)", self.redis)
            })
    }

    /// Proves the broker answers a metadata request.
    pub async fn check_kafka(&self) -> anyhow::Result<()> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let bootstrap = self.kafka.clone();
        let result = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("log_level", "0")
                .create()?;
            consumer.fetch_metadata(None, Duration::from_secs(5)).map(|_| ())
        })
        .await?;
        result.with_context(|| {
            format!(
                "the Kafka broker is not reachable at {} ({START_HINT}, or set PRISM_TEST_KAFKA)",
                self.kafka
            )
        })
    }

    /// Runs all three checks, reporting every unreachable service at once.
    pub async fn check_all(&self) -> anyhow::Result<()> {
        let (pg, redis, kafka) = tokio::join!(self.check_postgres(), self.check_redis(), self.check_kafka());
        let failures: Vec<String> =
            [pg, redis, kafka].into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("{}", failures.join("\n"))
        }
    }
}

/// A plain connection (no pool), with its driver task spawned.
pub async fn connect_pg(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 5s"))??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A connection for a test's own looks at Redis, as patient as the engine's cache client
/// ([`prism_cache::REPLY_TIMEOUT`]). redis-rs gives up on a reply after 500 ms by default, and
/// a look made while four tests load the machine (a PostgreSQL restart, Redis clusters starting)
/// failed a test that was only waiting for the read models to catch up.
pub async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(prism_cache::REPLY_TIMEOUT));
    Ok(redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a fresh machine the first tests of a run all find the test database missing at
    /// once; every one of them must go on, whoever's `CREATE DATABASE` won.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_checks_all_find_the_test_database() {
        let database = format!("prism_create_race_{:08x}", rand::random::<u32>());
        let services = Services { database: database.clone(), ..Services::from_env() };
        let checks: Vec<_> = (0..6)
            .map(|_| {
                let services = services.clone();
                tokio::spawn(async move { services.check_postgres().await })
            })
            .collect();
        let mut failures = Vec::new();
        for check in checks {
            if let Err(err) = check.await.expect("check task") {
                failures.push(format!("{err:#}"));
            }
        }
        let maintenance = format!("{}/postgres", services.postgres.trim_end_matches('/'));
        let client = connect_pg(&maintenance).await.expect("PostgreSQL (start it with `ops/dev-stack up`)");
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {database}")).await.expect("drop");
        assert!(failures.is_empty(), "concurrent checks failed: {failures:?}");
    }
}
