//! The telemetry contract's own field rules — site ids, metric names, reading values and
//! measurement times — and the bounds the events, the schemas (`schemas/common.schema.json`)
//! and the producer share. The generic helpers (typed decoding that names the field, text
//! length and control characters) are the engine's: [`prism_events::fields`].

use chrono::{DateTime, Datelike, Utc};
use prism_events::fields::text;
use prism_events::DecodeError;

/// Limits shared by the contract, the schemas and the producer.
pub mod bounds {
    /// Longest site id.
    pub const MAX_SITE_ID_CHARS: usize = 63;
    /// Longest device model.
    pub const MAX_MODEL_CHARS: usize = 64;
    /// Longest device name.
    pub const MAX_NAME_CHARS: usize = 100;
    /// Longest metric name.
    pub const MAX_METRIC_CHARS: usize = 40;
    /// Largest magnitude of a reading: beyond it a value is a sensor fault, not a measurement
    /// (and sums in thousandths stay far inside `i64`).
    pub const MAX_ABS_VALUE: f64 = 1.0e9;
    /// Longest free-text reason.
    pub const MAX_REASON_CHARS: usize = 200;
    /// Earliest and latest year a measurement time may carry: outside it is a device whose
    /// clock was never set (1970) or is corrupt.
    pub const YEARS: std::ops::RangeInclusive<i32> = 2000..=2199;
}

/// A site id: 1 to 63 characters, lowercase ASCII letters, digits and `-`, starting with a
/// letter or digit (`berlin-01`). Sites are named by operations, not generated.
pub fn site_id(field: &str, value: &str) -> Result<(), DecodeError> {
    text(field, value, 1, bounds::MAX_SITE_ID_CHARS)?;
    let mut chars = value.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(DecodeError::invalid(
            field,
            "must be lowercase letters, digits and `-`, starting with a letter or digit",
        ))
    }
}

/// A metric name: 1 to 40 characters, lowercase ASCII letters, digits and `_`, starting with
/// a letter, the unit as its last part by convention (`temperature_c`, `co2_ppm`). Any such
/// name is accepted: new sensor types need no new schema version.
pub fn metric(field: &str, value: &str) -> Result<(), DecodeError> {
    text(field, value, 1, bounds::MAX_METRIC_CHARS)?;
    let mut chars = value.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(DecodeError::invalid(field, "must be lowercase letters, digits and `_`, starting with a letter"))
    }
}

/// A reading: a finite number of magnitude at most [`bounds::MAX_ABS_VALUE`]. (JSON has no
/// NaN or infinity, but a number too large for a double parses as infinity in some clients.)
pub fn value(field: &str, value: f64) -> Result<(), DecodeError> {
    if !value.is_finite() {
        return Err(DecodeError::invalid(field, "must be a finite number"));
    }
    if value.abs() > bounds::MAX_ABS_VALUE {
        return Err(DecodeError::invalid(field, format!("{value} is outside ±{}", bounds::MAX_ABS_VALUE)));
    }
    Ok(())
}

/// A measurement time within [`bounds::YEARS`].
pub fn measured_at(field: &str, at: DateTime<Utc>) -> Result<(), DecodeError> {
    if bounds::YEARS.contains(&at.year()) {
        Ok(())
    } else {
        Err(DecodeError::invalid(
            field,
            format!(
                "year {} is outside {}..={}: the device clock is not set",
                at.year(),
                bounds::YEARS.start(),
                bounds::YEARS.end()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_ids_and_metrics_follow_their_patterns() {
        for good in ["berlin-01", "0", "a-b-c"] {
            assert!(site_id("s", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "Berlin", "a_b", "a b", &"x".repeat(64), "a\u{0}b"] {
            assert!(site_id("s", bad).is_err(), "{bad:?}");
        }
        for good in ["temperature_c", "co2_ppm", "v2"] {
            assert!(metric("m", good).is_ok(), "{good}");
        }
        for bad in ["", "2x", "Temp", "temp-c", &"x".repeat(41)] {
            assert!(metric("m", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_must_be_finite_and_bounded() {
        assert!(value("v", 21.5).is_ok());
        assert!(value("v", -1.0e9).is_ok());
        for bad in [f64::NAN, f64::INFINITY, 1.0e9 + 1.0] {
            let err = value("payload.value", bad).expect_err("refused");
            assert!(err.to_string().contains("payload.value"), "{err}");
        }
    }
}
