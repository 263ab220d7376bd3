//! Request extractors whose failures are [`ApiError`]s that name what was wrong, instead of
//! axum's default plain-text rejections.
//!
//! - [`JsonBody`]: a JSON object of at most `commands.max_body_bytes`, read strictly (see
//!   [`crate::http::json`]), and its digest (for idempotency fingerprints). An empty body is
//!   `{}`, so commands whose fields are all optional can be sent without one.
//! - [`CommandHeaders`]: `If-Match`, `Idempotency-Key` and `X-Correlation-Id`, plus the
//!   method and path the fingerprint covers.
//! - [`PathIds`] and [`path_id`]: UUID path segments.

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::http::error::ApiError;
use crate::http::json::parse_json;
use crate::http::ApiState;
use crate::service::{IdempotencyKey, RequestMeta};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// What an empty body means: no fields.
const EMPTY_OBJECT: &[u8] = b"{}";

/// A JSON object request body.
#[derive(Debug)]
pub struct JsonBody<T> {
    /// The deserialised body.
    pub value: T,
    /// SHA-256 of the body, hex (of `{}` for an empty body).
    pub digest: String,
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
    ApiState: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = ApiState::from_ref(state).max_body_bytes;
        let json = is_json(req.headers());
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > 0) && !json {
            return Err(ApiError::unsupported_media_type());
        }
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::too_large(limit));
        }
        let bytes = read_limited(req.into_body(), limit).await?;
        let bytes: &[u8] = if bytes.is_empty() {
            EMPTY_OBJECT
        } else if !json {
            return Err(ApiError::unsupported_media_type());
        } else {
            &bytes
        };
        let value = parse_json(bytes)?;
        Ok(Self { value, digest: digest(bytes) })
    }
}

/// Reads the whole body, refusing more than `limit` bytes whatever Content-Length said.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::too_large(limit)),
        Err(err) => {
            Err(ApiError::malformed_json("body", format!("the request body could not be read: {err}")))
        }
    }
}

/// `application/json`, or any `application/<something>+json`, with optional parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The headers every command reads, with the method and path of the request.
#[derive(Debug, Clone)]
pub struct CommandHeaders {
    /// `If-Match: <version>` (quotes allowed, as for an entity tag).
    pub if_match: Option<u64>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `X-Correlation-Id`, when it is a UUID; otherwise a new one.
    pub correlation_id: Uuid,
    /// `METHOD /path`, the request part of the idempotency fingerprint.
    pub target: String,
}

impl CommandHeaders {
    /// The request's metadata for the service; `body_digest` completes the fingerprint.
    pub fn meta(&self, body_digest: &str) -> RequestMeta {
        RequestMeta {
            correlation_id: self.correlation_id,
            command_id: Uuid::new_v4(),
            if_match: self.if_match,
            idempotency: self.idempotency_key.as_ref().map(|key| IdempotencyKey {
                key: key.clone(),
                fingerprint: format!("{} {body_digest}", self.target),
            }),
        }
    }

    /// The metadata of a request without a body (e.g. a `DELETE`).
    pub fn meta_without_body(&self) -> RequestMeta {
        self.meta(&digest(b""))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CommandHeaders {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            match parts.headers.get(name) {
                None => Ok(None),
                Some(value) => value
                    .to_str()
                    .map(|v| Some(v.trim()))
                    .map_err(|_| ApiError::invalid_header(name, format!("{name} must be visible ASCII"))),
            }
        };
        let if_match = match text("If-Match")? {
            None => None,
            Some(raw) => Some(raw.trim_matches('"').parse::<u64>().map_err(|_| {
                ApiError::invalid_header(
                    "If-Match",
                    "If-Match must be the aggregate version the client expects, e.g. `3`",
                )
            })?),
        };
        let idempotency_key = match text("Idempotency-Key")? {
            None => None,
            Some(key) => {
                let valid = !key.is_empty()
                    && key.len() <= MAX_IDEMPOTENCY_KEY_LEN
                    && key.bytes().all(|b| b.is_ascii_graphic());
                if !valid {
                    return Err(ApiError::invalid_header(
                        "Idempotency-Key",
                        format!(
                            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                        ),
                    ));
                }
                Some(key.to_owned())
            }
        };
        let correlation_id =
            text("X-Correlation-Id")?.and_then(|raw| Uuid::parse_str(raw).ok()).unwrap_or_else(Uuid::new_v4);
        Ok(Self {
            if_match,
            idempotency_key,
            correlation_id,
            target: format!("{} {}", parts.method, parts.uri.path()),
        })
    }
}

/// Parses the path segment `name` as a UUID.
pub fn path_id(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::invalid_field(name, format!("`{name}` in the path must be a UUID")))
}

/// The raw path parameters, read without axum's plain-text rejection.
#[derive(Debug)]
pub struct PathIds(Vec<(String, String)>);

impl PathIds {
    /// The parameter `name` as a UUID (400 naming `name` otherwise).
    pub fn uuid(&self, name: &str) -> Result<Uuid, ApiError> {
        let raw = self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).unwrap_or("");
        path_id(name, raw)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_field("path", "the path is not valid UTF-8"))?;
        Ok(Self(params.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(digest(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn json_content_types() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
