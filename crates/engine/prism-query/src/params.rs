//! Reading a request's parameters — path ids, the query string, `limit`, dates and
//! `min_version` / `X-Prism-Min-Version` — each failing with a 400 that names the parameter.
//! Applications use these in their own routes; cursors are theirs (they know the sort keys).
//!
//! Every route declares the query parameters it knows; any other one is refused rather than
//! ignored, so `?min_verison=5` (a typo) is an error instead of a silently stale read.

use axum::extract::{FromRequestParts, Query, RawPathParams};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use chrono::NaiveDate;
use uuid::Uuid;

use crate::error::ApiError;

/// The read-your-writes header, an alternative to `?min_version=`.
pub const MIN_VERSION_HEADER: &str = "x-prism-min-version";
/// Longest accepted query parameter value, in characters.
const MAX_VALUE_CHARS: usize = 4096;
/// Most query parameters accepted in one request.
const MAX_PARAMETERS: usize = 16;

/// The decoded query string of a request.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    /// Name/value pairs, percent-decoded, in request order.
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|_| ApiError::invalid_parameter("query", "the query string cannot be decoded"))?;
        Ok(Self { pairs })
    }
}

impl QueryParams {
    /// Parameters from pairs (tests, and the extractor).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Refuses any parameter not in `allowed`, repeated ones, and oversized ones.
    pub fn only(self, allowed: &[&str]) -> Result<Self, ApiError> {
        if self.pairs.len() > MAX_PARAMETERS {
            return Err(ApiError::invalid_parameter(
                "query",
                format!("at most {MAX_PARAMETERS} query parameters are accepted"),
            ));
        }
        for (index, (name, value)) in self.pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
                return Err(ApiError::invalid_parameter(
                    name.chars().take(64).collect::<String>(),
                    format!("unknown query parameter; this route accepts: {known}"),
                ));
            }
            if self.pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::invalid_parameter(
                    name.clone(),
                    format!("`{name}` is given more than once"),
                ));
            }
            if value.chars().count() > MAX_VALUE_CHARS {
                return Err(ApiError::invalid_parameter(
                    name.clone(),
                    format!("`{name}` is longer than {MAX_VALUE_CHARS} characters"),
                ));
            }
        }
        Ok(self)
    }

    /// The raw value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// `limit`: 1..=`max`, `default` when absent.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(raw) => match raw.parse::<usize>() {
                Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
                _ => Err(ApiError::invalid_parameter(
                    "limit",
                    format!("`limit` must be a whole number from 1 to {max}"),
                )),
            },
        }
    }

    /// `min_version`, when given.
    pub fn min_version(&self) -> Result<Option<i64>, ApiError> {
        self.get("min_version")
            .map(|raw| {
                parse_version(raw).ok_or_else(|| {
                    ApiError::invalid_parameter(
                        "min_version",
                        "`min_version` must be a whole number from 0 to 9223372036854775807",
                    )
                })
            })
            .transpose()
    }

    /// A required `YYYY-MM-DD` date.
    pub fn date(&self, name: &str) -> Result<NaiveDate, ApiError> {
        let raw = self.get(name).ok_or_else(|| {
            ApiError::invalid_parameter(name, format!("`{name}` is required (a date, YYYY-MM-DD)"))
        })?;
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map_err(|_| ApiError::invalid_parameter(name, format!("`{name}` must be a date, YYYY-MM-DD")))
    }
}

fn parse_version(raw: &str) -> Option<i64> {
    // Digits only: `+5` and ` 5` are typos, not versions.
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<i64>().ok()
}

/// The version a client needs to see: the larger of `?min_version=` and
/// `X-Prism-Min-Version:` (either may be absent).
pub fn min_version(query: &QueryParams, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let from_query = query.min_version()?;
    let from_header = match headers.get(MIN_VERSION_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(|v| parse_version(v.trim())).ok_or_else(|| {
            ApiError::invalid_header(
                "X-Prism-Min-Version",
                "`X-Prism-Min-Version` must be a whole number from 0 to 9223372036854775807",
            )
        })?),
    };
    Ok(from_query.max(from_header))
}

/// The raw path parameters, read without axum's plain-text rejection.
#[derive(Debug)]
pub struct PathIds(Vec<(String, String)>);

impl PathIds {
    /// The parameter `name` as text (percent-decoded); empty when the route has none.
    pub fn text(&self, name: &str) -> &str {
        self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).unwrap_or("")
    }

    /// The parameter `name` as a UUID.
    pub fn uuid(&self, name: &str) -> Result<Uuid, ApiError> {
        Uuid::parse_str(self.text(name))
            .map_err(|_| ApiError::invalid_parameter(name, format!("`{name}` in the path must be a UUID")))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_parameter("path", "the path is not valid UTF-8"))?;
        Ok(Self(params.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect()))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        QueryParams::from_pairs(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    fn field(err: ApiError) -> String {
        err.field.unwrap_or_default()
    }

    #[test]
    fn unknown_repeated_and_oversized_parameters_are_named() {
        assert_eq!(
            field(params(&[("min_verison", "3")]).only(&["min_version"]).expect_err("typo")),
            "min_verison"
        );
        assert_eq!(
            field(params(&[("limit", "3"), ("limit", "4")]).only(&["limit"]).expect_err("twice")),
            "limit"
        );
        let long = "x".repeat(MAX_VALUE_CHARS + 1);
        assert_eq!(field(params(&[("cursor", &long)]).only(&["cursor"]).expect_err("long")), "cursor");
        assert!(params(&[("limit", "3"), ("cursor", "ab")]).only(&["limit", "cursor"]).is_ok());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(params(&[]).limit(50, 200), Ok(50));
        assert_eq!(params(&[("limit", "200")]).limit(50, 200), Ok(200));
        for bad in ["0", "201", "-1", "ten", ""] {
            assert_eq!(field(params(&[("limit", bad)]).limit(50, 200).expect_err(bad)), "limit");
        }
    }

    #[test]
    fn min_version_comes_from_query_or_header_and_the_larger_wins() {
        let mut headers = HeaderMap::new();
        assert_eq!(min_version(&params(&[]), &headers), Ok(None));
        assert_eq!(min_version(&params(&[("min_version", "4")]), &headers), Ok(Some(4)));
        headers.insert(MIN_VERSION_HEADER, HeaderValue::from_static("7"));
        assert_eq!(min_version(&params(&[("min_version", "4")]), &headers), Ok(Some(7)));
        assert_eq!(min_version(&params(&[]), &headers), Ok(Some(7)));
        headers.insert(MIN_VERSION_HEADER, HeaderValue::from_static("seven"));
        assert_eq!(field(min_version(&params(&[]), &headers).expect_err("header")), "X-Prism-Min-Version");
        for bad in ["-1", "+1", "1.5", "99999999999999999999", ""] {
            assert_eq!(field(params(&[("min_version", bad)]).min_version().expect_err(bad)), "min_version");
        }
    }

    #[test]
    fn dates_are_required_and_iso() {
        assert_eq!(
            params(&[("from", "2026-11-20")]).date("from"),
            Ok(NaiveDate::from_ymd_opt(2026, 11, 20).expect("date"))
        );
        assert_eq!(field(params(&[]).date("from").expect_err("missing")), "from");
        assert_eq!(field(params(&[("to", "20/11/2026")]).date("to").expect_err("format")), "to");
        assert_eq!(field(params(&[("to", "2026-02-30")]).date("to").expect_err("no such day")), "to");
    }
}
