//! The connection pool: every connection's `search_path` is the configured schema, so SQL
//! names tables unqualified and tests isolate themselves by schema alone.
//!
//! Every PostgreSQL connection Prism makes goes through here, with the TLS the configuration
//! asks for (see [`crate::tls`]): the pool ([`Database::connect`]) and single connections
//! ([`connect_one`], [`connect_with`]) for sessions of their own (LISTEN, advisory locks,
//! creating the database).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prism_config::{PostgresConfig, PostgresSslMode};
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;

use crate::error::StoreError;
use crate::tls::{self, PgConnection};

/// A pool of connections to Prism's schema.
#[derive(Clone)]
pub struct Database {
    /// The pooled connections.
    pool: Pool,
    /// Who and where, for the errors of connections the pool opens later.
    endpoint: Endpoint,
    /// The schema every connection uses.
    schema: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("target", &self.endpoint.target)
            .field("schema", &self.schema)
            .finish()
    }
}

/// The server and login a connection is for, to name them in errors (never the password).
#[derive(Debug, Clone)]
struct Endpoint {
    /// `host:port/dbname`.
    target: String,
    /// The user logging in.
    user: String,
    /// Where the server's certificate is checked against.
    trust: String,
}

impl Endpoint {
    fn new(config: &PostgresConfig, pg: &tokio_postgres::Config) -> Self {
        Self {
            target: describe(pg),
            user: pg.get_user().unwrap_or("(none)").to_owned(),
            trust: tls::trust_source(config),
        }
    }

    fn error(&self, err: tokio_postgres::Error) -> StoreError {
        tls::connect_error(err, &self.target, &self.user, &self.trust)
    }
}

impl Database {
    /// Builds the pool and proves the server answers, so a process fails at start with a clear
    /// message rather than at its first query.
    ///
    /// A refused password or login, an untrusted certificate and a failed TLS handshake are
    /// errors of their own, naming the server and user (see [`StoreError`]).
    pub async fn connect(config: &PostgresConfig, application_name: &str) -> Result<Self, StoreError> {
        let pg_config = client_config(config, application_name)?;
        let endpoint = Endpoint::new(config, &pg_config);
        let mode = ssl_mode(config)?;
        let tls = tls::connector(config, mode, &endpoint.target)?;
        let manager =
            Manager::from_config(pg_config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| StoreError::Unreachable {
                target: endpoint.target.clone(),
                detail: e.to_string(),
            })?;
        let db = Self { pool, endpoint, schema: config.schema.clone() };
        db.ping().await?;
        tracing::debug!(target = %db.endpoint.target, user = %db.endpoint.user, sslmode = mode.as_str(), "postgres pool ready");
        Ok(db)
    }

    /// Runs `SELECT 1` on a pooled connection.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| match err {
            // With fast recycling, a backend error comes from opening a new connection.
            deadpool_postgres::PoolError::Backend(e) => self.endpoint.error(e),
            other => other.into(),
        })
    }

    /// `host:port/dbname` of the server.
    pub fn target(&self) -> &str {
        &self.endpoint.target
    }

    /// The schema holding Prism's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The underlying pool, for adapters that need it directly.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// Opens one connection of its own (not pooled) with the configured TLS, for sessions that
/// must stay put: LISTEN, session advisory locks. Drive the returned connection (spawn it, or
/// poll its messages) for the client to work. Errors are those of [`Database::connect`].
pub async fn connect_one(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<(Client, PgConnection), StoreError> {
    connect_with(config, &client_config(config, application_name)?).await
}

/// As [`connect_one`], with a client configuration the caller adjusted (from
/// [`client_config`], e.g. another database name).
pub async fn connect_with(
    config: &PostgresConfig,
    pg_config: &tokio_postgres::Config,
) -> Result<(Client, PgConnection), StoreError> {
    let endpoint = Endpoint::new(config, pg_config);
    let tls = tls::connector(config, ssl_mode(config)?, &endpoint.target)?;
    pg_config.connect(tls).await.map_err(|e| endpoint.error(e))
}

/// The `sslmode` of `postgres.url`.
fn ssl_mode(config: &PostgresConfig) -> Result<PostgresSslMode, StoreError> {
    config
        .tls()
        .map(|tls| tls.mode)
        .map_err(|e| StoreError::Unreachable { target: "postgres.url".into(), detail: e.to_string() })
}

/// The client configuration: URL (its `sslmode` applied), password, schema as search_path,
/// timeouts. Connect with [`connect_with`], which adds the TLS connector.
pub fn client_config(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<tokio_postgres::Config, StoreError> {
    let tls = config
        .tls()
        .map_err(|e| StoreError::Unreachable { target: "postgres.url".into(), detail: e.to_string() })?;
    let mut pg: tokio_postgres::Config = tls.url.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Unreachable { target: "postgres.url".into(), detail: format!("invalid URL: {e}") }
    })?;
    pg.ssl_mode(match tls.mode {
        PostgresSslMode::Disable => SslMode::Disable,
        PostgresSslMode::Prefer => SslMode::Prefer,
        PostgresSslMode::Require | PostgresSslMode::VerifyCa | PostgresSslMode::VerifyFull => {
            SslMode::Require
        }
    });
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    // The schema name is checked as a plain lowercase identifier when configuration loads.
    // UTC sessions: `to_jsonb` renders timestamps with the session's zone, and the projector's
    // cache writes and the query side's refills must render the same row identically. Floats
    // in their shortest text that reads back exactly (`extra_float_digits` above 0, PostgreSQL's
    // default, which a database or role may have lowered): with 0, a float prints 15 digits, so
    // a fold starting from its stored row, a cache document and a query answer would each carry
    // a rounded value instead of the stored one.
    // Sequential scans priced out: statements are prepared once per connection (see `cached`)
    // and, after a few executions, run a generic plan. One chosen while a table is still small
    // (a new deployment, a new generation) would be a sequential scan, kept as the table grows
    // until an ANALYZE happens to invalidate it. Prism's statements are key lookups on indexed
    // columns, so with sequential scans priced out the generic plan is an index scan whatever
    // the table's size, and executions skip planning (forcing a custom plan per execution
    // instead cost PostgreSQL ~15 % more CPU per event under load, and latency at moderate
    // rates, where batches are small and planning is much of a statement's cost). A statement
    // with no usable index still scans; whole-table work that wants a sequential scan turns it
    // back on locally (the rebuild switch's checksums). Pricing scans out is not enough for a
    // join of a batch's keys with a table, which can still read every row through the index
    // (a bitmap scan on a leading column); the per-batch statements that look keys up are
    // written as one lookup per key instead (`prism-read-store`'s gate_lock.sql).
    pg.options(format!(
        "-c search_path={} -c TimeZone=UTC -c extra_float_digits=1 -c enable_seqscan=off",
        config.schema
    ));
    pg.application_name(application_name);
    pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    pg.keepalives_idle(Duration::from_secs(30));
    Ok(pg)
}

fn describe(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().unwrap_or("postgres"))
}

/// Drives `connection` on a task of its own and forwards its notifications (`LISTEN`), for a
/// session kept open to listen (a pooled connection stops listening when it is returned).
/// The receiver closes when the connection ends or fails; the task's result says which. The
/// task also ends once the receiver is dropped and a notification finds no one.
pub fn forward_notifications(
    mut connection: PgConnection,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (tx, notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(notification))) => {
                    if tx.send(notification).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            }
        }
    });
    (notifications, driver)
}
