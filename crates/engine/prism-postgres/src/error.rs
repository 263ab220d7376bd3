//! [`StoreError`]: what can go wrong talking to PostgreSQL, classed once, here, as transient
//! (wait and retry: outages, failovers, deadlocks, serialization failures, a read-only
//! server) or permanent (retrying the same statement cannot help).

use tokio_postgres::error::SqlState;

/// A PostgreSQL failure with its retry class.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL could not be reached or dropped the connection.
    #[error("PostgreSQL at {target} is unreachable: {detail}")]
    Unreachable {
        /// `host:port/dbname` (or the setting that is wrong).
        target: String,
        /// Why.
        detail: String,
    },
    /// The server refused the configured password.
    #[error("PostgreSQL at {target} refused the password of user {user} (postgres.password)")]
    WrongPassword {
        /// `host:port/dbname`.
        target: String,
        /// The user logging in.
        user: String,
    },
    /// The server refused the login for another reason (no `pg_hba.conf` entry, no such role,
    /// a password needed and none configured).
    #[error("PostgreSQL at {target} refused the login of user {user}: {detail}")]
    LoginRefused {
        /// `host:port/dbname`.
        target: String,
        /// The user logging in.
        user: String,
        /// The server's reason.
        detail: String,
    },
    /// The server's certificate does not chain to a trusted CA, or does not name the host
    /// (`sslmode=verify-full`).
    #[error(
        "PostgreSQL at {target}: the server's certificate is not trusted (checked against {trust}): {detail}"
    )]
    UntrustedCertificate {
        /// `host:port/dbname`.
        target: String,
        /// What the certificate was checked against (`postgres.ssl_root_cert <path>` or the
        /// system's trust store).
        trust: String,
        /// OpenSSL's verdict, e.g. `self-signed certificate in certificate chain`.
        detail: String,
    },
    /// TLS could not be set up or negotiated (e.g. `sslmode=require` and a server without
    /// TLS, or an unreadable `postgres.ssl_root_cert`).
    #[error("TLS to PostgreSQL at {target} failed: {detail}")]
    Tls {
        /// `host:port/dbname`.
        target: String,
        /// What failed.
        detail: String,
    },
    /// No pooled connection became free, or could be opened, in time.
    #[error("no PostgreSQL connection became available in time")]
    PoolTimeout,
    /// A statement failed.
    #[error("PostgreSQL: {}", describe(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// A migration already applied differs from the one in this build.
    #[error("migration {version} ({name}) changed after it was applied (checksum {applied} in the database, {expected} in this build)")]
    MigrationDrift {
        /// The migration's number.
        version: i32,
        /// Its name.
        name: String,
        /// The checksum recorded when it was applied.
        applied: String,
        /// The checksum of this build's text.
        expected: String,
    },
    /// The database holds a migration newer than this build knows.
    #[error("the database has migration {version}, newer than this build knows (latest {latest}); run a newer prismctl")]
    MigrationAhead {
        /// The database's newest migration.
        version: i32,
        /// This build's newest.
        latest: i32,
    },
    /// A concurrent transaction wrote what this one found absent (two batches meeting a new
    /// aggregate at the same time): nothing was kept, and the work is retried like a
    /// serialization failure.
    #[error("a concurrent transaction wrote {what} first: {detail}")]
    Contended {
        /// What was written concurrently.
        what: &'static str,
        /// How it showed.
        detail: String,
    },
    /// Data read back does not have the shape this build expects.
    #[error("unexpected data in {what}: {detail}")]
    Corrupt {
        /// Where it was read.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
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
            Self::Unreachable { .. } | Self::PoolTimeout | Self::Contended { .. } => ErrorClass::Transient,
            // Refused credentials or certificates fail a process at start (connecting proves
            // them). While it runs they mean the server or its configuration changed under
            // us: wait for the operator, never move an event aside for it.
            Self::WrongPassword { .. }
            | Self::LoginRefused { .. }
            | Self::UntrustedCertificate { .. }
            | Self::Tls { .. } => ErrorClass::Transient,
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

    /// True when the statement was refused only because an earlier one of its transaction had
    /// failed (`25P02`): the earlier failure is the cause.
    pub fn is_after_failure(&self) -> bool {
        self.sql_state() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
    }
}

/// The results of statements pipelined in one transaction, all of them or the failure that
/// caused the others.
///
/// Once a statement fails, every statement sent after it in the transaction is refused with
/// `25P02`, and those refusals can reach their callers in the same wake-up as the failure
/// itself: whichever a short-circuiting join polls first would be reported. The cause decides
/// what happens next (a [`StoreError::Contended`] batch is retried, a refused row is isolated
/// and dead-lettered), so this waits for every result and reports the first error that is not
/// merely `25P02`.
pub fn all_or_cause<T>(
    results: impl IntoIterator<Item = Result<T, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    let mut values = Vec::new();
    let mut after_failure = None;
    let mut cause = None;
    for result in results {
        match result {
            Ok(value) => values.push(value),
            Err(error) if error.is_after_failure() => {
                after_failure.get_or_insert(error);
            }
            Err(error) => {
                cause.get_or_insert(error);
            }
        }
    }
    match cause.or(after_failure) {
        Some(error) => Err(error),
        None => Ok(values),
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

/// The server's own words for a refused statement (`ERROR 23505 duplicate key value …`),
/// which tokio-postgres' `Display` reduces to "db error"; other errors as they display.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(table) = db.table() {
                text.push_str(&format!(" (table {table})"));
            }
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => err.to_string(),
    }
}
