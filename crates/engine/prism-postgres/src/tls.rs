//! TLS to PostgreSQL, over the system OpenSSL (`postgres-openssl`), and the one place that
//! turns a failed connection attempt into an error an operator can act on: a refused password,
//! an untrusted certificate, a failed handshake or an unreachable server, each naming the server.
//!
//! The `sslmode` of `postgres.url` decides (see [`prism_config::PostgresSslMode`]); with a
//! `postgres.ssl_root_cert`, only the CA certificates in that file are trusted (as libpq's
//! `sslrootcert` does), otherwise the system's trust store.

use std::error::Error as _;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use prism_config::{PostgresConfig, PostgresSslMode};
use tokio_postgres::error::SqlState;

use crate::error::StoreError;

/// The TLS connector every PostgreSQL connection of Prism is made with (also with
/// `sslmode=disable`, where it is never used).
pub type PgTls = MakeTlsConnector;

/// A connection made with [`PgTls`]: drive it (`.await` it, or `poll_message` for
/// notifications) for its client to work.
pub type PgConnection =
    tokio_postgres::Connection<tokio_postgres::Socket, postgres_openssl::TlsStream<tokio_postgres::Socket>>;

/// Where the server's certificate is checked against, for messages.
pub(crate) fn trust_source(config: &PostgresConfig) -> String {
    if config.ssl_root_cert.is_empty() {
        "the system's trust store; set postgres.ssl_root_cert to the CA that signed it".into()
    } else {
        format!("postgres.ssl_root_cert {}", config.ssl_root_cert)
    }
}

/// The connector for `config`'s `sslmode` and root certificate.
pub fn connector(config: &PostgresConfig, mode: PostgresSslMode, target: &str) -> Result<PgTls, StoreError> {
    let tls_error = |detail: String| StoreError::Tls { target: target.to_owned(), detail };
    let openssl_error = |e: openssl::error::ErrorStack| tls_error(format!("setting up TLS: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(openssl_error)?;
    let has_root_cert = !config.ssl_root_cert.is_empty();
    if mode.verifies_chain(has_root_cert) {
        builder.set_verify(SslVerifyMode::PEER);
        if has_root_cert {
            // The configured CAs replace the system's, as libpq's sslrootcert does.
            let path = &config.ssl_root_cert;
            let pem = std::fs::read(path)
                .map_err(|e| tls_error(format!("postgres.ssl_root_cert {path} cannot be read: {e}")))?;
            let certificates = X509::stack_from_pem(&pem).map_err(|e| {
                tls_error(format!("postgres.ssl_root_cert {path} holds no PEM certificate: {e}"))
            })?;
            if certificates.is_empty() {
                return Err(tls_error(format!("postgres.ssl_root_cert {path} holds no PEM certificate")));
            }
            let mut store = X509StoreBuilder::new().map_err(openssl_error)?;
            for certificate in certificates {
                store.add_cert(certificate).map_err(openssl_error)?;
            }
            builder.set_cert_store(store.build());
        }
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if mode != PostgresSslMode::VerifyFull {
        connector.set_callback(|connection, _| {
            connection.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

/// `err` (from opening a connection to `target` as `user`) as a [`StoreError`] that says what
/// is wrong.
pub(crate) fn connect_error(err: tokio_postgres::Error, target: &str, user: &str, trust: &str) -> StoreError {
    let target = target.to_owned();
    let user = user.to_owned();
    match err.code() {
        Some(code) if *code == SqlState::INVALID_PASSWORD => {
            return StoreError::WrongPassword { target, user }
        }
        Some(code) if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            let detail = err.as_db_error().map_or_else(|| chain(&err), |db| db.message().to_owned());
            return StoreError::LoginRefused { target, user, detail };
        }
        Some(_) => return StoreError::Postgres(err),
        None => {}
    }
    let detail = chain(&err);
    if let Some(ssl) = find_ssl_error(&err) {
        let verify_failed = ssl.ssl_error().is_some_and(|stack| {
            stack.errors().iter().any(|e| e.reason() == Some("certificate verify failed"))
        });
        return if verify_failed {
            StoreError::UntrustedCertificate { target, trust: trust.to_owned(), detail }
        } else {
            StoreError::Tls { target, detail }
        };
    }
    if detail.starts_with("error performing TLS handshake") {
        // e.g. sslmode=require and a server without TLS.
        return StoreError::Tls { target, detail };
    }
    if detail.contains("password missing") {
        return StoreError::LoginRefused {
            target,
            user,
            detail: "the server asks for a password and postgres.password is not set".into(),
        };
    }
    StoreError::Unreachable { target, detail }
}

fn find_ssl_error(err: &tokio_postgres::Error) -> Option<&openssl::ssl::Error> {
    let mut source = err.source();
    while let Some(current) = source {
        if let Some(ssl) = current.downcast_ref::<openssl::ssl::Error>() {
            return Some(ssl);
        }
        source = current.source();
    }
    None
}

/// An error and its causes, `: `-separated (tokio-postgres's own text is often just "error
/// performing TLS handshake" or "db error").
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        let more = current.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = current.source();
    }
    text
}
