//! The connection pool: every connection's `search_path` is the configured schema, so SQL
//! names tables unqualified and tests isolate themselves by schema alone.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prism_config::PostgresConfig;
use tokio_postgres::NoTls;

use crate::error::StoreError;

/// A pool of connections to Prism's schema.
#[derive(Clone)]
pub struct Database {
    /// The pooled connections.
    pool: Pool,
    /// `host:port/dbname`, for messages (never the password).
    target: String,
    /// The schema every connection uses.
    schema: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("target", &self.target).field("schema", &self.schema).finish()
    }
}

impl Database {
    /// Builds the pool and proves the server answers, so a process fails at start with a clear
    /// message rather than at its first query.
    pub async fn connect(config: &PostgresConfig, application_name: &str) -> Result<Self, StoreError> {
        let pg_config = client_config(config, application_name)?;
        let target = describe(&pg_config);
        let manager =
            Manager::from_config(pg_config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(connect_timeout))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| StoreError::Unreachable { target: target.clone(), detail: e.to_string() })?;
        let db = Self { pool, target, schema: config.schema.clone() };
        db.ping().await?;
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
            deadpool_postgres::PoolError::Backend(e) if e.code().is_none() => {
                StoreError::Unreachable { target: self.target.clone(), detail: e.to_string() }
            }
            other => other.into(),
        })
    }

    /// `host:port/dbname` of the server.
    pub fn target(&self) -> &str {
        &self.target
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

/// The client configuration: URL, password, schema as search_path, timeouts.
pub fn client_config(
    config: &PostgresConfig,
    application_name: &str,
) -> Result<tokio_postgres::Config, StoreError> {
    let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Unreachable { target: "postgres.url".into(), detail: format!("invalid URL: {e}") }
    })?;
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    // The schema name is checked as a plain lowercase identifier when configuration loads.
    pg.options(format!("-c search_path={}", config.schema));
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
