//! [`TlsStack`]: Prism's three dependencies, private to one test and reachable only the way a
//! production deployment reaches them — Kafka over SASL_SSL with SCRAM-SHA-512, PostgreSQL
//! over TLS with `sslmode=verify-full` and a password, Redis over TLS (`rediss://`) with a
//! password — every certificate signed by a CA the test generated.
//!
//! [`TlsStack::env_vars`] gives the `PRISM__*` variables that point a configuration (or a Prism
//! binary started as a child process) at it, with the passwords in files (`…_FILE`), and
//! [`TlsStack::secrets`] every configured secret, for tests that grep output for them.

use std::path::PathBuf;

use anyhow::Context;
use prism_config::{ConfigSources, PrismConfig};
use rand::Rng;

use super::tls::{write_private, TestCa};
use super::{PrivateKafka, PrivatePostgres, PrivateRedis, ScratchDir};

/// The SASL user, PostgreSQL role and database of the stack.
pub const TLS_STACK_USER: &str = "prism";

/// The three private servers over TLS, and what a client needs to reach them.
#[derive(Debug)]
pub struct TlsStack {
    /// Apache Kafka with a SASL_SSL listener (its PLAINTEXT listener is the broker's own).
    pub kafka: PrivateKafka,
    /// PostgreSQL accepting only TLS connections with a password over TCP.
    pub postgres: PrivatePostgres,
    /// Redis speaking only TLS, with a password.
    pub redis: PrivateRedis,
    /// The CA that signed all three servers' certificates.
    ca: TestCa,
    /// Holds `ca.pem` and the password files; removed on drop.
    dir: ScratchDir,
    /// Kafka's, PostgreSQL's and Redis's passwords.
    secrets: TlsSecrets,
}

/// The stack's passwords; `Debug` does not show them.
#[derive(Clone)]
struct TlsSecrets {
    /// The SCRAM password of [`TLS_STACK_USER`] on Kafka.
    kafka: String,
    /// The password of the PostgreSQL role [`TLS_STACK_USER`].
    postgres: String,
    /// Redis's `requirepass`.
    redis: String,
}

impl std::fmt::Debug for TlsSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSecrets(***)")
    }
}

/// A password no log line could contain by chance.
fn new_secret(kind: &str) -> String {
    format!("{kind}Secret{:016x}{:016x}", rand::rng().random::<u64>(), rand::rng().random::<u64>())
}

impl TlsStack {
    /// Generates a CA and a certificate per server, random passwords, and starts the three
    /// servers (concurrently); returns when all of them accept connections.
    pub async fn start() -> anyhow::Result<Self> {
        let ca = TestCa::new("Prism test CA")?;
        let dir = ScratchDir::new("tls")?;
        ca.write_cert(&dir.0.join("ca.pem"))?;
        let secrets = TlsSecrets {
            kafka: new_secret("kafka"),
            postgres: new_secret("postgres"),
            redis: new_secret("redis"),
        };
        for (file, secret) in [
            ("kafka-password", &secrets.kafka),
            ("postgres-password", &secrets.postgres),
            ("redis-password", &secrets.redis),
        ] {
            write_private(&dir.0.join(file), secret.as_bytes())?;
        }
        let (kafka_cert, postgres_cert, redis_cert) =
            (ca.issue_localhost("kafka")?, ca.issue_localhost("postgres")?, ca.issue_localhost("redis")?);
        let (kafka, postgres, redis) = tokio::try_join!(
            async {
                PrivateKafka::start_sasl_ssl(&kafka_cert, TLS_STACK_USER, &secrets.kafka)
                    .await
                    .context("starting Kafka with a SASL_SSL listener")
            },
            async {
                PrivatePostgres::start_tls(&postgres_cert, TLS_STACK_USER, &secrets.postgres)
                    .await
                    .context("starting PostgreSQL with TLS")
            },
            async {
                PrivateRedis::start_tls(&redis_cert, &secrets.redis).await.context("starting Redis with TLS")
            },
        )?;
        Ok(Self { kafka, postgres, redis, ca, dir, secrets })
    }

    /// The CA certificate (PEM) that signed every server's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.0.join("ca.pem")
    }

    /// The stack's CA, to issue more certificates.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Writes the certificate of a new CA that signed none of the servers' certificates, for
    /// tests of untrusted certificates; returns its path.
    pub fn untrusted_ca_cert(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.0.join("untrusted-ca.pem");
        if !path.is_file() {
            TestCa::new("Prism test CA")?.write_cert(&path)?;
        }
        Ok(path)
    }

    /// Every configured secret (the three passwords).
    pub fn secrets(&self) -> [&str; 3] {
        [&self.secrets.kafka, &self.secrets.postgres, &self.secrets.redis]
    }

    /// The `PRISM__*` variables for the stack: brokers, URLs, TLS and SASL settings, the CA,
    /// and the passwords as `…_FILE` variables (their files are the stack's).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let ca = self.ca_cert().display().to_string();
        let file = |name: &str| self.dir.0.join(name).display().to_string();
        let mut vars: Vec<(String, String)> = [
            ("PRISM__KAFKA__BOOTSTRAP_SERVERS", self.kafka.sasl_ssl_bootstrap()),
            ("PRISM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl".into()),
            ("PRISM__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512".into()),
            ("PRISM__KAFKA__SASL_USERNAME", TLS_STACK_USER.into()),
            ("PRISM__KAFKA__SASL_PASSWORD_FILE", file("kafka-password")),
            ("PRISM__KAFKA__SSL_CA_LOCATION", ca.clone()),
            (
                "PRISM__POSTGRES__URL",
                format!(
                    "postgres://{TLS_STACK_USER}@127.0.0.1:{}/{TLS_STACK_USER}?sslmode=verify-full",
                    self.postgres.port()
                ),
            ),
            ("PRISM__POSTGRES__PASSWORD_FILE", file("postgres-password")),
            ("PRISM__POSTGRES__SSL_ROOT_CERT", ca.clone()),
            ("PRISM__REDIS__URL", self.redis.url()),
            ("PRISM__REDIS__PASSWORD_FILE", file("redis-password")),
            ("PRISM__REDIS__TLS_CA_CERT", ca),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        vars.sort();
        vars
    }

    /// The configuration from [`TlsStack::env_vars`], with `overrides` replacing or adding
    /// variables (e.g. a wrong password file, an untrusted CA, a topic prefix), loaded
    /// through the real configuration loader.
    pub fn config(&self, overrides: &[(&str, &str)]) -> anyhow::Result<PrismConfig> {
        PrismConfig::load(&ConfigSources { env: self.env_with(overrides), ..Default::default() })
            .context("the TLS stack's configuration")
    }

    /// Readies the stack for `app`, over TLS, as `prismctl migrate`, the application's
    /// `migrate` and `prismctl topics ensure` would: the engine's migrations in the configured
    /// schema, the application's read models registered with their tables, its topics
    /// created. Returns the configuration (from [`TlsStack::config`] with `overrides`); start
    /// Prism binaries with [`TlsStack::env_with`] and the same overrides.
    pub async fn prepare(
        &self,
        app: &prism_projections::Application,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<PrismConfig> {
        let config = self.config(overrides)?;
        let db = prism_postgres::Database::connect(&config.postgres, "prism-testkit").await?;
        let mut client = db.client().await?;
        prism_postgres::migrate(&mut client, &config.postgres.schema).await?;
        let registered = prism_read_store::registry::register(
            &mut client,
            app.name(),
            app.aggregate_types(),
            app.read_models(),
        )
        .await?;
        prism_read_store::read_models::ensure_active(&mut client, &registered).await?;
        let plan = prism_kafka::topic_plan(&config, app.aggregate_types());
        prism_kafka::ensure_topics(&config, &plan).await.context("creating the topics over SASL_SSL")?;
        Ok(config)
    }

    /// [`TlsStack::env_vars`] with `overrides` applied (a variable ending in `_FILE` replaces
    /// the plain one and the other way round).
    pub fn env_with(&self, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = self.env_vars();
        for (key, value) in overrides {
            let plain = key.strip_suffix("_FILE").unwrap_or(key);
            vars.retain(|(k, _)| k != plain && k != &format!("{plain}_FILE"));
            vars.push(((*key).to_owned(), (*value).to_owned()));
        }
        vars.sort();
        vars
    }
}
