//! [`ProjectionInstance`]: a read model at one generation, and how its resources are named.
//!
//! Blue/green rebuilds build generation N+1 beside the active N; each generation has its own
//! table, gate rows, dead letters and cache keys, all named from this value — never from
//! event data.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

/// A read model at one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectionInstance {
    /// The read model's name.
    pub projection: &'static str,
    /// Its generation, from 1.
    pub generation: u32,
}

impl ProjectionInstance {
    /// Generation `generation` of the read model `projection`.
    pub const fn new(projection: &'static str, generation: u32) -> Self {
        Self { projection, generation }
    }

    /// `<read model>_g<generation>`: the table name and the key of gate rows and dead letters.
    pub fn id(self) -> String {
        format!("{}_g{}", self.projection, self.generation)
    }

    /// The Redis key prefix of this instance's cached rows under the configured prefix, for a
    /// read model cached as `kind`: `<key_prefix>g<generation>:<kind>:`.
    pub fn cache_prefix(self, kind: &str, key_prefix: &str) -> String {
        format!("{key_prefix}g{}:{kind}:", self.generation)
    }

    /// Parses `<read model>_g<generation>` back (names are interned, see [`intern`]).
    pub fn parse(id: &str) -> Option<Self> {
        let (name, generation) = id.rsplit_once("_g")?;
        let generation = generation.parse().ok().filter(|g| *g >= 1)?;
        crate::read_model::is_identifier(name, 40).then(|| Self::new(intern(name), generation))
    }
}

impl fmt::Display for ProjectionInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_g{}", self.projection, self.generation)
    }
}

/// The text of one key column's value as the engine names rows by it (cache keys, the
/// oracle's row names): a string as it is, anything else as its JSON (`1.5`, `true`). The
/// projector and the query service both name rows this way, so they address the same entries.
pub fn key_value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The `'static` copy of a read-model name read at run time (from the registry, the command
/// line, a dead-letter record). Each distinct name is stored once for the life of the
/// process; names are bounded identifiers and a deployment has a handful.
pub fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(existing) = names.get(name) {
        return existing;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_name_their_resources_and_parse_back() {
        let instance = ProjectionInstance::new("order_summary", 2);
        assert_eq!(instance.id(), "order_summary_g2");
        assert_eq!(instance.cache_prefix("order", "prism:"), "prism:g2:order:");
        assert_eq!(ProjectionInstance::parse("order_summary_g2"), Some(instance));
        assert_eq!(ProjectionInstance::parse("order_summary"), None);
        assert_eq!(ProjectionInstance::parse("Order_g1"), None);
        assert!(std::ptr::eq(intern("x_model"), intern("x_model")));
    }
}
