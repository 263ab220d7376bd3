//! The `user` aggregate: a shop account, its registration and its profile.
//!
//! A user is created by [`UserCommand::Register`] and then only changes its profile.
//! [`UserCommand::ChangeProfile`] emits only the fields that really differ from the current
//! profile, so a `UserProfileChanged` event always means a change and read models can trust
//! it. E-mail uniqueness across users is not decidable inside one aggregate; it belongs to
//! the command service (e.g. a unique index), not here.

use crate::events::{UserProfileChanged, UserRegistered};
use prism_events::AggregateType;

use crate::aggregates;
use crate::events::ShopEvent;

use crate::domain::error::{validated, DomainError, EvolveError, Rejection};
use crate::domain::Aggregate;

/// What a client can ask of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// Sign up; creates the user.
    Register {
        /// Contact address (checked by the event contract's e-mail rule).
        email: String,
        /// The name shown to other users and on orders.
        display_name: String,
        /// Whether the user agrees to marketing mail.
        marketing_opt_in: bool,
    },
    /// Change some profile fields; `None` leaves a field as it is. At least one is required.
    ChangeProfile {
        /// The new address, if it should change.
        email: Option<String>,
        /// The new display name, if it should change.
        display_name: Option<String>,
        /// The new marketing preference, if it should change.
        marketing_opt_in: Option<bool>,
    },
}

/// A registered user's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    /// Contact address.
    pub email: String,
    /// The name shown to other users and on orders.
    pub display_name: String,
    /// Whether the user agrees to marketing mail; changes are compared against it.
    pub marketing_opt_in: bool,
}

/// The state of one user: nothing until registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    /// The profile; `None` until `UserRegistered`.
    profile: Option<UserProfile>,
}

impl UserState {
    /// The current profile, if the user is registered.
    pub fn profile(&self) -> Option<&UserProfile> {
        self.profile.as_ref()
    }

    fn change_profile(
        &self,
        email: Option<&String>,
        display_name: Option<&String>,
        marketing_opt_in: Option<bool>,
    ) -> Result<Vec<ShopEvent>, DomainError> {
        let profile = self.profile.as_ref().ok_or(DomainError::not_found(Self::TYPE))?;
        if email.is_none() && display_name.is_none() && marketing_opt_in.is_none() {
            return Err(DomainError::invalid(
                DomainError::WHOLE_COMMAND,
                "give at least one of email, display_name, marketing_opt_in",
            ));
        }
        let changed = UserProfileChanged {
            email: email.filter(|new| **new != profile.email).cloned(),
            display_name: display_name.filter(|new| **new != profile.display_name).cloned(),
            marketing_opt_in: marketing_opt_in.filter(|new| *new != profile.marketing_opt_in),
        };
        if changed.email.is_none() && changed.display_name.is_none() && changed.marketing_opt_in.is_none() {
            return Err(DomainError::rejected(
                Rejection::NoChange,
                "every given field already has the requested value",
            ));
        }
        validated(vec![changed.into()])
    }
}

impl Aggregate for UserState {
    const TYPE: AggregateType = aggregates::USER;
    type Command = UserCommand;
    type Event = ShopEvent;
    type Error = DomainError;
    type EvolveError = EvolveError;

    fn evolve(&mut self, event: &ShopEvent) -> Result<(), EvolveError> {
        match event {
            ShopEvent::UserRegistered(registered) => {
                if self.profile.is_some() {
                    return Err(EvolveError::inconsistent(event, "the user is already registered"));
                }
                self.profile = Some(UserProfile {
                    email: registered.email.clone(),
                    display_name: registered.display_name.clone(),
                    marketing_opt_in: registered.marketing_opt_in,
                });
                Ok(())
            }
            ShopEvent::UserProfileChanged(changed) => {
                let Some(profile) = self.profile.as_mut() else {
                    return Err(EvolveError::inconsistent(event, "the user is not registered"));
                };
                if let Some(email) = &changed.email {
                    profile.email.clone_from(email);
                }
                if let Some(display_name) = &changed.display_name {
                    profile.display_name.clone_from(display_name);
                }
                if let Some(opt_in) = changed.marketing_opt_in {
                    profile.marketing_opt_in = opt_in;
                }
                Ok(())
            }
            _ => Err(EvolveError::wrong_aggregate(Self::TYPE, event)),
        }
    }

    fn decide(&self, command: &UserCommand) -> Result<Vec<ShopEvent>, DomainError> {
        match command {
            UserCommand::Register { email, display_name, marketing_opt_in } => {
                if self.profile.is_some() {
                    return Err(DomainError::rejected(
                        Rejection::AlreadyRegistered,
                        "this user is already registered",
                    ));
                }
                validated(vec![UserRegistered {
                    email: email.clone(),
                    display_name: display_name.clone(),
                    marketing_opt_in: *marketing_opt_in,
                }
                .into()])
            }
            UserCommand::ChangeProfile { email, display_name, marketing_opt_in } => {
                self.change_profile(email.as_ref(), display_name.as_ref(), *marketing_opt_in)
            }
        }
    }

    fn exists(&self) -> bool {
        self.profile.is_some()
    }
}

#[cfg(test)]
mod tests;
