//! The payloads of the `device` aggregate's events, at their current schema versions, with
//! their rules. Every struct rejects unknown fields: a new field is a new schema version with
//! an upcaster ([`super::upcast`]).

use chrono::{DateTime, Utc};
use prism_events::fields::text;
use prism_events::DecodeError;
use serde::{Deserialize, Serialize};

use super::fields::{self, bounds};

/// A device was installed at a site and registered. Always a device's first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistered {
    /// The site it was installed at (see [`fields::site_id`]).
    pub site_id: String,
    /// The hardware model, as printed on the device (`TH-200`).
    pub model: String,
    /// What people call it (`Cold room 2, north wall`).
    pub name: String,
}

impl DeviceRegistered {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        fields::site_id("payload.site_id", &self.site_id)?;
        text("payload.model", &self.model, 1, bounds::MAX_MODEL_CHARS)?;
        text("payload.name", &self.name, 1, bounds::MAX_NAME_CHARS)
    }
}

/// A device reported one reading of one metric (schema version 2).
///
/// The gateway that receives a reading stamps the device's `site_id` on it, as real device
/// gateways do: per-site aggregates (`site_hourly_readings`, fed by every device of a site)
/// then need no lookup of the device's registration, and their feed stays a pure function of
/// the event.
///
/// Version 1 had no `measured_at`: those devices report readings as they take them. Version 2
/// carries the time the device measured (readings may be buffered and sent late), or `null`
/// when the device has no clock; an upcast version 1 reading holds `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingReported {
    /// The site of the device, stamped by the gateway.
    pub site_id: String,
    /// What was measured, with its unit (see [`fields::metric`]).
    pub metric: String,
    /// The measured value, in the metric's unit.
    pub value: f64,
    /// When the device measured it, in UTC; `null`: when the event occurred.
    #[serde(with = "prism_events::fields::optional_utc_timestamp")]
    pub measured_at: Option<DateTime<Utc>>,
}

impl ReadingReported {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        fields::site_id("payload.site_id", &self.site_id)?;
        fields::metric("payload.metric", &self.metric)?;
        fields::value("payload.value", self.value)?;
        if let Some(at) = self.measured_at {
            fields::measured_at("payload.measured_at", at)?;
        }
        Ok(())
    }

    /// When the reading was measured: its own time, or the event's when it has none.
    pub fn measured_or(&self, occurred_at: DateTime<Utc>) -> DateTime<Utc> {
        self.measured_at.unwrap_or(occurred_at)
    }
}

/// The device stopped reporting, or said it would (battery, maintenance, network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceWentOffline {
    /// Why, as the gateway or the device put it.
    pub reason: String,
}

impl DeviceWentOffline {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        text("payload.reason", &self.reason, 1, bounds::MAX_REASON_CHARS)
    }
}

/// An offline device is reporting again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCameBack {}

impl DeviceCameBack {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}
