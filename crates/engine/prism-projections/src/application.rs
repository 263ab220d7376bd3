//! [`Application`]: an application as the engine runs it — its name, its events and its read
//! models. The projector, the query plumbing, the command library and the test kit all take
//! one; an application builds it once (e.g. `shop::application()`).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use prism_events::{AggregateType, EventRegistry};

use crate::read_model::{is_identifier, DefinitionError, ReadModel};

/// An application built on the engine. Cheap to clone.
#[derive(Clone)]
pub struct Application {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    events: EventRegistry,
    read_models: Vec<ReadModel>,
}

impl fmt::Debug for Application {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inner.read_models.iter().map(ReadModel::name).collect();
        f.debug_struct("Application").field("name", &self.inner.name).field("read_models", &names).finish()
    }
}

impl Application {
    /// The application `name` (lowercase letters, digits and `_`), with its events and read
    /// models, checked: every read model's definition against the events, and read-model
    /// names unique.
    pub fn new(
        name: &'static str,
        events: EventRegistry,
        read_models: Vec<ReadModel>,
    ) -> Result<Self, DefinitionError> {
        if !is_identifier(name, 40) {
            return Err(DefinitionError {
                read_model: String::new(),
                problem: format!("application name `{name}` must be a lowercase identifier"),
            });
        }
        let mut names = BTreeSet::new();
        for model in &read_models {
            model.check(&events)?;
            if !names.insert(model.name()) {
                return Err(DefinitionError {
                    read_model: model.name().to_owned(),
                    problem: "two read models have this name".into(),
                });
            }
        }
        Ok(Self { inner: Arc::new(Inner { name, events, read_models }) })
    }

    /// Its name (in the registry, client ids and logs).
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Its events.
    pub fn events(&self) -> &EventRegistry {
        &self.inner.events
    }

    /// Its aggregate types (one topic each).
    pub fn aggregate_types(&self) -> &[AggregateType] {
        self.inner.events.aggregate_types()
    }

    /// Its read models.
    pub fn read_models(&self) -> &[ReadModel] {
        &self.inner.read_models
    }

    /// The read model called `name`.
    pub fn read_model(&self, name: &str) -> Option<&ReadModel> {
        self.inner.read_models.iter().find(|m| m.name() == name)
    }
}
