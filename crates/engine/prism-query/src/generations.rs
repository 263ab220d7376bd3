//! Which generation of each read model is active, as this process last saw it.
//!
//! PostgreSQL queries go through the views, which always select the active generation, so they
//! need no generation. Cache keys do: each generation has its own keys
//! (`<prefix>g<N>:<kind>:<key>`), and after a blue/green switch the old generation's entries
//! must stop being read. The map is loaded at start, reloaded when the generations channel says
//! a switch happened, after every reconnect of the listener (a switch may have been missed
//! meanwhile) and on a slow timer as a last resort.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prism_postgres::{Database, StoreError};
use prism_projections::ProjectionInstance;

/// The active generation per read model of one application. Cheap to clone; clones share
/// state.
#[derive(Debug, Clone)]
pub struct ActiveGenerations {
    /// The application's read models: rows of other applications on the same schema are
    /// ignored.
    names: Arc<[&'static str]>,
    /// Read model → active generation; absent when it has none (not migrated).
    active: Arc<RwLock<BTreeMap<&'static str, u32>>>,
}

impl ActiveGenerations {
    /// An empty map for these read models (fill it with [`reload`](Self::reload)).
    pub fn new(names: &[&'static str]) -> Self {
        Self { names: names.into(), active: Arc::default() }
    }

    /// Reads every active generation from `projection_generations` and replaces the map.
    /// Returns the read models whose generation changed.
    pub async fn reload(&self, db: &Database) -> Result<Vec<&'static str>, StoreError> {
        let client = db.client().await?;
        let rows = client.query(include_str!("../sql/active_generations.sql"), &[]).await?;
        let mut fresh = BTreeMap::new();
        for row in rows {
            let name: &str = row.try_get(0)?;
            let generation: i32 = row.try_get(1)?;
            if let (Some(name), Ok(generation)) =
                (self.names.iter().find(|n| **n == name), u32::try_from(generation))
            {
                fresh.insert(*name, generation);
            }
        }
        let mut active = self.active.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = self.names.iter().copied().filter(|n| active.get(n) != fresh.get(n)).collect();
        *active = fresh;
        Ok(changed)
    }

    /// The active instance of `read_model`, if it has one.
    pub fn instance(&self, read_model: &'static str) -> Option<ProjectionInstance> {
        let active = self.active.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        active.get(read_model).map(|generation| ProjectionInstance::new(read_model, *generation))
    }

    /// The read models without an active generation (not set up on this schema).
    pub fn missing(&self) -> Vec<&'static str> {
        let active = self.active.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.names.iter().copied().filter(|n| !active.contains_key(n)).collect()
    }

    /// Sets one read model's generation (tests).
    pub fn set(&self, read_model: &'static str, generation: u32) {
        self.active.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(read_model, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_name_the_active_generation() {
        let generations = ActiveGenerations::new(&["notes", "tallies"]);
        assert_eq!(generations.instance("notes"), None);
        assert_eq!(generations.missing(), vec!["notes", "tallies"]);
        generations.set("notes", 2);
        assert_eq!(generations.instance("notes"), Some(ProjectionInstance::new("notes", 2)));
        assert_eq!(generations.missing(), vec!["tallies"]);
    }
}
