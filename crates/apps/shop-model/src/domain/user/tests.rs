//! Given/when/then tests of the `user` aggregate: every command's success and refusals.

use crate::events::ShopEvent;
use crate::events::{CartOpened, UserProfileChanged, UserRegistered};
use uuid::Uuid;

use super::{UserCommand, UserState};
use crate::domain::testing::given;
use crate::domain::{Aggregate, EvolveError};

fn registered() -> ShopEvent {
    UserRegistered { email: "ada@example.com".into(), display_name: "Ada".into(), marketing_opt_in: false }
        .into()
}

fn register(email: &str, display_name: &str) -> UserCommand {
    UserCommand::Register { email: email.into(), display_name: display_name.into(), marketing_opt_in: true }
}

fn change(email: Option<&str>, display_name: Option<&str>, opt_in: Option<bool>) -> UserCommand {
    UserCommand::ChangeProfile {
        email: email.map(Into::into),
        display_name: display_name.map(Into::into),
        marketing_opt_in: opt_in,
    }
}

#[test]
fn register_creates_the_user() {
    let state =
        given::<UserState>([]).when(register("bob@example.com", "Bob")).then_events([UserRegistered {
            email: "bob@example.com".into(),
            display_name: "Bob".into(),
            marketing_opt_in: true,
        }
        .into()]);
    let profile = state.profile().expect("registered");
    assert_eq!((profile.email.as_str(), profile.marketing_opt_in), ("bob@example.com", true));
}

#[test]
fn register_twice_is_rejected() {
    given::<UserState>([registered()])
        .when(register("bob@example.com", "Bob"))
        .then_rejected("already_registered");
}

#[test]
fn register_checks_fields_with_the_contract() {
    given::<UserState>([]).when(register("not-an-address", "Bob")).then_invalid("email");
    given::<UserState>([]).when(register("bob@example.com", "")).then_invalid("display_name");
    given::<UserState>([]).when(register("bob@example.com", &"x".repeat(101))).then_invalid("display_name");
}

#[test]
fn change_profile_emits_only_the_fields_that_differ() {
    let state = given::<UserState>([registered()])
        .when(change(Some("ada@example.com"), Some("Ada L."), Some(true)))
        .then_events([UserProfileChanged {
            email: None,
            display_name: Some("Ada L.".into()),
            marketing_opt_in: Some(true),
        }
        .into()]);
    let profile = state.profile().expect("registered");
    assert_eq!((profile.display_name.as_str(), profile.marketing_opt_in), ("Ada L.", true));
    assert_eq!(profile.email, "ada@example.com");
}

#[test]
fn change_profile_of_a_missing_user_is_not_found() {
    given::<UserState>([]).when(change(Some("bob@example.com"), None, None)).then_not_found();
}

#[test]
fn change_profile_without_fields_is_invalid() {
    given::<UserState>([registered()]).when(change(None, None, None)).then_invalid("body");
}

#[test]
fn change_profile_to_the_current_values_is_rejected() {
    given::<UserState>([registered()])
        .when(change(Some("ada@example.com"), Some("Ada"), Some(false)))
        .then_rejected("no_change");
}

#[test]
fn change_profile_checks_changed_fields_with_the_contract() {
    given::<UserState>([registered()]).when(change(Some("ada@"), None, None)).then_invalid("email");
    given::<UserState>([registered()])
        .when(change(None, Some("tab\there"), None))
        .then_invalid("display_name");
}

#[test]
fn evolve_refuses_streams_a_user_cannot_have() {
    let mut state = UserState::default();
    let changed: ShopEvent =
        UserProfileChanged { email: None, display_name: Some("X".into()), marketing_opt_in: None }.into();
    assert!(matches!(state.evolve(&changed), Err(EvolveError::Inconsistent { .. })));
    state.evolve(&registered()).expect("first registration applies");
    assert!(matches!(state.evolve(&registered()), Err(EvolveError::Inconsistent { .. })));
    let foreign: ShopEvent = CartOpened { user_id: Uuid::nil() }.into();
    assert!(matches!(state.evolve(&foreign), Err(EvolveError::WrongAggregate { .. })));
}
