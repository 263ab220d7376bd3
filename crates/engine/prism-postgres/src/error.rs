//! [`StoreError`]: what can go wrong talking to PostgreSQL, classed once, here, as transient
//! (wait and retry: outages, failovers, deadlocks, serialization failures, a read-only
//! server) or permanent (retrying the same statement cannot help).

use tokio_postgres::error::SqlState;

/// A PostgreSQL failure with its retry class.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached or dropped the connection.
    #[error("PostgreSQL at {target} is unreachable: {detail}")]
    Unreachable { target: String, detail: String },
    /// No pooled connection became free, or could be opened, in time.
    #[error("no PostgreSQL connection became available in time")]
    PoolTimeout,
    /// A statement failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] tokio_postgres::Error),
    /// A migration already applied differs from the one in this build.
    #[error("migration {version} ({name}) changed after it was applied (checksum {applied} in the database, {expected} in this build)")]
    MigrationDrift { version: i32, name: String, applied: String, expected: String },
    /// The database holds a migration newer than this build knows.
    #[error("the database has migration {version}, newer than this build knows (latest {latest}); run a newer prismctl")]
    MigrationAhead { version: i32, latest: i32 },
    /// Data read back does not have the shape this build expects.
    #[error("unexpected data in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Wait and retry: the same statement can succeed later.
    Transient,
    /// Retrying the same statement fails the same way.
    Permanent,
}

impl StoreError {
    /// The retry class of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unreachable { .. } | Self::PoolTimeout => ErrorClass::Transient,
            Self::Postgres(err) => classify(err),
            Self::MigrationDrift { .. } | Self::MigrationAhead { .. } | Self::Corrupt { .. } => {
                ErrorClass::Permanent
            }
        }
    }

    /// True when retrying can help.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The SQLSTATE, when the server sent one.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            Self::Postgres(err) => err.code(),
            _ => None,
        }
    }

    /// True for a unique-constraint violation (e.g. a concurrent append won).
    pub fn is_unique_violation(&self) -> bool {
        self.sql_state() == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Postgres(err)
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match err {
            PoolError::Backend(err) => Self::Postgres(err),
            PoolError::Timeout(_) => Self::PoolTimeout,
            other => Self::Unreachable { target: "pool".into(), detail: other.to_string() },
        }
    }
}

fn classify(err: &tokio_postgres::Error) -> ErrorClass {
    let Some(code) = err.code() else {
        // No SQLSTATE: the connection broke, timed out or was closed under us.
        return ErrorClass::Transient;
    };
    let code = code.code();
    let transient_class = [
        "08", // connection exception
        "53", // insufficient resources (disk full, too many connections)
        "57", // operator intervention (admin shutdown, cannot connect now)
        "58", // system error (I/O)
        "40", // transaction rollback: serialization failure, deadlock
        "55", // object not in prerequisite state (lock not available)
        "HV",
    ];
    // 25006: read-only transaction, e.g. a replica promoted late or
    // default_transaction_read_only switched on for maintenance: writes resume later.
    if transient_class.iter().any(|class| code.starts_with(class)) || code == "25006" {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}
