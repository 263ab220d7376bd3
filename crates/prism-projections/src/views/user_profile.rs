//! `user_profile`: one row per user, fed by two aggregate types — the user's own events set
//! the profile fields, order events add to the totals.
//!
//! The two parts are written by different statements that touch different columns: profile
//! fields by upsert from the folded row (the user aggregate's gate serialises those), totals
//! by atomic increments (orders of one user arrive on many partitions at once).

use chrono::{DateTime, Utc};
use prism_events::{DomainEvent, Event};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{existing, stored_version};
use crate::error::Unprojectable;

/// One user's profile and order totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    /// The user (the user aggregate's id).
    pub user_id: Uuid,
    /// Whether the user's registration has been applied (totals can arrive first: orders
    /// and users are separate topics).
    pub registered: bool,
    /// Contact address.
    pub email: Option<String>,
    /// Display name.
    pub display_name: Option<String>,
    /// Marketing preference.
    pub marketing_opt_in: bool,
    /// When the user registered.
    pub registered_at: Option<DateTime<Utc>>,
    /// Orders placed.
    pub order_count: i64,
    /// Orders paid.
    pub paid_order_count: i64,
    /// Sum of successful payments, in cents.
    pub lifetime_spend_cents: i64,
    /// The user aggregate's version the profile fields reflect (0 before registration).
    pub version: i64,
    /// Change counter of the whole row: the cache revision (orders change the row without
    /// changing the user's version).
    pub revision: i64,
}

impl UserProfile {
    /// A row that has seen nothing yet.
    pub fn empty(user_id: Uuid) -> Self {
        Self {
            user_id,
            registered: false,
            email: None,
            display_name: None,
            marketing_opt_in: false,
            registered_at: None,
            order_count: 0,
            paid_order_count: 0,
            lifetime_spend_cents: 0,
            version: 0,
            revision: 0,
        }
    }
}

/// Folds one user event into the profile fields. `view` is the stored row, if any (it may
/// exist with totals only).
pub fn apply_account(view: Option<UserProfile>, event: &Event) -> Result<UserProfile, Unprojectable> {
    let mut profile = match &event.body {
        DomainEvent::UserRegistered(registered) => {
            let mut profile = view.unwrap_or_else(|| UserProfile::empty(event.meta.aggregate_id));
            if profile.registered {
                return Err(Unprojectable::new(format!(
                    "UserRegistered at version {} for user {}, who is already registered",
                    event.meta.aggregate_version, event.meta.aggregate_id
                )));
            }
            profile.registered = true;
            profile.email = Some(registered.email.clone());
            profile.display_name = Some(registered.display_name.clone());
            profile.marketing_opt_in = registered.marketing_opt_in;
            profile.registered_at = Some(event.meta.occurred_at);
            profile
        }
        DomainEvent::UserProfileChanged(changed) => {
            let mut profile = existing(view.filter(|p| p.registered), event)?;
            if let Some(email) = &changed.email {
                profile.email = Some(email.clone());
            }
            if let Some(name) = &changed.display_name {
                profile.display_name = Some(name.clone());
            }
            if let Some(opt_in) = changed.marketing_opt_in {
                profile.marketing_opt_in = opt_in;
            }
            profile
        }
        other => return Err(Unprojectable::new(format!("{} is not a user event", other.event_type()))),
    };
    profile.version = stored_version(event);
    profile.revision += 1;
    Ok(profile)
}

/// What an order event adds to its user's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserTotalsDelta {
    /// Orders placed.
    pub order_count: i64,
    /// Orders paid.
    pub paid_order_count: i64,
    /// Cents paid.
    pub lifetime_spend_cents: i64,
}

impl UserTotalsDelta {
    /// Adds another delta (deltas of one batch are summed per user before writing).
    pub fn add(&mut self, other: Self) {
        self.order_count += other.order_count;
        self.paid_order_count += other.paid_order_count;
        self.lifetime_spend_cents += other.lifetime_spend_cents;
    }
}

/// The user an order event credits, and with what; `None` for order events that change no
/// total.
pub fn totals_delta(event: &Event) -> Option<(Uuid, UserTotalsDelta)> {
    match &event.body {
        DomainEvent::OrderPlaced(placed) => {
            Some((placed.user_id, UserTotalsDelta { order_count: 1, ..Default::default() }))
        }
        DomainEvent::OrderPaymentSucceeded(paid) => Some((
            paid.user_id,
            UserTotalsDelta {
                paid_order_count: 1,
                lifetime_spend_cents: paid.amount_cents,
                ..Default::default()
            },
        )),
        _ => None,
    }
}
