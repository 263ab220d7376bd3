//! The shop command service's own settings, read from the `[application]` section of Prism's
//! configuration (`PRISM__APPLICATION__<KEY>` variables set them like any other key).
//!
//! ```toml
//! [application]
//! # Which bounded contexts this process serves; default all four. An empty list serves no
//! # routes: a process that only runs the outbox relay.
//! contexts = ["users", "catalog", "carts", "orders"]
//! ```

use prism_config::{ConfigError, PrismConfig};
use serde::Deserialize;

/// The shop's bounded contexts, each a group of routes. They share only the event store, so
/// they can run together or in separate processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    /// `POST /users`, `PATCH /users/{id}`.
    Users,
    /// `POST /products`, `POST /products/{id}/price|restock|delist`.
    Catalog,
    /// `POST /carts/{id}/items`, `DELETE /carts/{id}/items/{product_id}`,
    /// `POST /carts/{id}/checkout`.
    Carts,
    /// `POST /orders`, `POST /orders/{id}/pay|payment|ship|cancel`.
    Orders,
}

impl Context {
    /// Every context, in a stable order.
    pub const ALL: [Context; 4] = [Context::Users, Context::Catalog, Context::Carts, Context::Orders];

    /// The name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Catalog => "catalog",
            Self::Carts => "carts",
            Self::Orders => "orders",
        }
    }
}

/// `[application]` as the shop's command service reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The contexts this process serves (default: all four).
    #[serde(default = "all_contexts")]
    pub contexts: Vec<Context>,
}

fn all_contexts() -> Vec<Context> {
    Context::ALL.to_vec()
}

impl Default for Settings {
    fn default() -> Self {
        Self { contexts: all_contexts() }
    }
}

impl Settings {
    /// The settings in `config`'s `[application]` section; an unknown key or context is an
    /// error naming it.
    pub fn from_config(config: &PrismConfig) -> Result<Self, ConfigError> {
        config.application_section()
    }
}

#[cfg(test)]
mod tests {
    use prism_config::ConfigSources;

    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let config = PrismConfig::load(&ConfigSources { env, ..Default::default() })?;
        Settings::from_config(&config)
    }

    #[test]
    fn contexts_default_to_all_and_come_from_the_application_section() {
        assert_eq!(load(&[]).expect("defaults").contexts, Context::ALL.to_vec());
        let users = load(&[("PRISM__APPLICATION__CONTEXTS", "[\"users\", \"orders\"]")]).expect("two");
        assert_eq!(users.contexts, vec![Context::Users, Context::Orders]);
        assert!(load(&[("PRISM__APPLICATION__CONTEXTS", "[]")]).expect("none").contexts.is_empty());
        let typo = load(&[("PRISM__APPLICATION__CONTEXTS", "[\"user\"]")]).expect_err("unknown context");
        assert!(typo.to_string().contains("[application]") && typo.to_string().contains("user"), "{typo}");
        let key = load(&[("PRISM__APPLICATION__CONTEXT", "[\"users\"]")]).expect_err("unknown key");
        assert!(key.to_string().contains("context"), "{key}");
    }
}
