//! Events of the `user` aggregate: registration and profile changes.

use serde::{Deserialize, Serialize};

use crate::events::fields::email;
use prism_events::fields::text;
use prism_events::DecodeError;

/// A user signed up. Schema version 2 (version 1 called `display_name` `name` and had no
/// `marketing_opt_in`; see [`crate::events::upcast`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    /// Contact address; format-checked, uniqueness is not part of the event contract.
    pub email: String,
    /// The name shown to other users and on orders.
    pub display_name: String,
    /// Whether the user agreed to marketing mail at sign-up.
    pub marketing_opt_in: bool,
}

impl UserRegistered {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        email("payload.email", &self.email)?;
        text("payload.display_name", &self.display_name, 1, 100)
    }
}

/// A user changed some of their profile fields; absent fields are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProfileChanged {
    /// The new address, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The new display name, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The new marketing preference, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketing_opt_in: Option<bool>,
}

impl UserProfileChanged {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        if self.email.is_none() && self.display_name.is_none() && self.marketing_opt_in.is_none() {
            return Err(DecodeError::invalid("payload", "changes no field"));
        }
        if let Some(address) = &self.email {
            email("payload.email", address)?;
        }
        if let Some(name) = &self.display_name {
            text("payload.display_name", name, 1, 100)?;
        }
        Ok(())
    }
}
