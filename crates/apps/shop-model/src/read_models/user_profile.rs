//! `user_profile`: one row per user, fed by two aggregate types — the user's own events set
//! the profile fields, order events add to the totals.
//!
//! The two parts are two feeds of the read model, touching different columns: profile fields
//! are folded from the user's own events (one row per user), order totals are summed from order
//! events (orders of one user arrive on many partitions at once, and sums never lose one).

use chrono::{DateTime, Utc};
use prism_events::Event;
use prism_projections::Unprojectable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{existing, shop_event, stored_version};
use crate::events::ShopEvent;

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
        }
    }
}

/// Folds one user event into the profile fields. `view` is the stored row, if any (it may
/// exist with totals only).
pub fn apply_account(view: Option<UserProfile>, event: &Event) -> Result<UserProfile, Unprojectable> {
    let mut profile = match shop_event(event)? {
        ShopEvent::UserRegistered(registered) => {
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
        ShopEvent::UserProfileChanged(changed) => {
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
    Ok(profile)
}

/// The additive columns order events feed.
pub const TOTALS: &[&str] = &["order_count", "paid_order_count", "lifetime_spend_cents"];

/// What an order event adds to its user's totals, as a row of [`TOTALS`] (a user not yet
/// registered gets a row with the totals only); nothing for order events that change no total.
pub fn totals(event: &Event) -> Vec<UserProfile> {
    let credit = |user_id: Uuid, orders: i64, paid: i64, cents: i64| UserProfile {
        order_count: orders,
        paid_order_count: paid,
        lifetime_spend_cents: cents,
        ..UserProfile::empty(user_id)
    };
    match event.body::<ShopEvent>() {
        Some(ShopEvent::OrderPlaced(placed)) => vec![credit(placed.user_id, 1, 0, 0)],
        Some(ShopEvent::OrderPaymentSucceeded(paid)) => vec![credit(paid.user_id, 0, 1, paid.amount_cents)],
        _ => Vec::new(),
    }
}
