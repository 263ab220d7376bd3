//! Request extractors whose failures are [`ApiError`]s that name what was wrong, instead of
//! axum's default plain-text rejections.
//!
//! - [`JsonBody`]: a JSON body of at most `commands.max_body_bytes`, deserialised with the
//!   path of the offending field, and its digest (for idempotency fingerprints).
//! - [`CommandHeaders`]: `If-Match`, `Idempotency-Key` and `X-Correlation-Id`, plus the
//!   method and path the fingerprint covers.
//! - [`path_id`]: a UUID path segment.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::http::error::ApiError;
use crate::http::AppState;
use crate::service::{IdempotencyKey, RequestMeta};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A JSON request body.
#[derive(Debug)]
pub struct JsonBody<T> {
    /// The deserialised body.
    pub value: T,
    /// SHA-256 of the raw bytes, hex.
    pub digest: String,
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.max_body_bytes;
        if !is_json(req.headers()) {
            return Err(ApiError::unsupported_media_type());
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(ApiError::too_large(limit));
        }
        let bytes = read_limited(req.into_body(), limit).await?;
        let value = parse_json(&bytes)?;
        Ok(Self { value, digest: digest(&bytes) })
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

/// Deserialises `bytes`, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        json_error(&path, &inner)
    })?;
    deserializer.end().map_err(|err| json_error(".", &err))?;
    Ok(value)
}

fn json_error(path: &str, err: &serde_json::Error) -> ApiError {
    let field = if path == "." || path.is_empty() { "body".to_owned() } else { path.to_owned() };
    let message = strip_position(&err.to_string());
    if err.is_syntax() || err.is_eof() {
        return ApiError::malformed_json(
            field,
            format!("the body is not valid JSON at line {}, column {}: {message}", err.line(), err.column()),
        );
    }
    // serde names a missing or unknown field in its message rather than in the path.
    let within = |name: &str| if field == "body" { name.to_owned() } else { format!("{field}.{name}") };
    if let Some(name) = backticked_after(&message, "missing field ") {
        let field = within(&name);
        return ApiError::invalid_field(field.clone(), format!("field `{field}` is missing"));
    }
    if let Some(name) = backticked_after(&message, "unknown field ") {
        let name: String = name.chars().take(64).collect();
        // The path already ends at the unknown key.
        let field =
            if field == name || field.ends_with(&format!(".{name}")) { field.clone() } else { within(&name) };
        return ApiError::invalid_field(field.clone(), format!("field `{field}` is not allowed: {message}"));
    }
    ApiError::invalid_field(field.clone(), format!("field `{field}` has the wrong type or value: {message}"))
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
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

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Order {
        user_id: Uuid,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        product_id: Uuid,
        quantity: u32,
    }

    fn field_of(body: &str) -> (String, Option<String>) {
        let err = parse_json::<Order>(body.as_bytes()).expect_err("invalid");
        (err.code.to_owned(), err.field)
    }

    #[test]
    fn errors_name_the_field() {
        let user = "\"0b6f3c9e-6a3d-4a57-9d8e-2f1c7e5b9a10\"";
        let product = user;
        assert_eq!(field_of("{\"items\": []}"), ("invalid_field".into(), Some("user_id".into())));
        assert_eq!(
            field_of(&format!("{{\"user_id\": {user}, \"items\": [], \"extra\": 1}}")),
            ("invalid_field".into(), Some("extra".into()))
        );
        assert_eq!(
            field_of(&format!(
                "{{\"user_id\": {user}, \"items\": [{{\"product_id\": {product}, \"quantity\": -1}}]}}"
            )),
            ("invalid_field".into(), Some("items[0].quantity".into()))
        );
        assert_eq!(
            field_of(&format!("{{\"user_id\": {user}, \"items\": [{{\"product_id\": {product}}}]}}")),
            ("invalid_field".into(), Some("items[0].quantity".into()))
        );
        assert_eq!(
            field_of(&format!("{{\"user_id\": {user}, \"items\": [{{\"product_id\": {product}, \"quantity\": 1, \"x\": 2}}]}}")),
            ("invalid_field".into(), Some("items[0].x".into()))
        );
        assert_eq!(field_of("{\"user_id\": "), ("malformed_json".into(), Some("user_id".into())));
        assert_eq!(field_of(""), ("malformed_json".into(), Some("body".into())));
        assert_eq!(field_of(&format!("{{\"user_id\": {user}, \"items\": []}} trailing")).0, "malformed_json");
        assert_eq!(field_of("[1]").0, "invalid_field");
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(digest(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
