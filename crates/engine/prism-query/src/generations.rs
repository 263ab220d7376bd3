//! Which generation of each projection is active, as this process last saw it.
//!
//! PostgreSQL queries go through the views, which always select the active generation, so
//! they need no generation. Cache keys do: each generation has its own keys
//! (`<prefix>g<N>:<kind>:<id>`), and after a blue/green switch the old generation's entries
//! must stop being read. The map is loaded at start, reloaded when `generations_channel`
//! says a switch happened, after every reconnect of the listener (a switch may have been
//! missed meanwhile) and on a slow timer as a last resort.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prism_projections::{ProjectionInstance, ProjectionName};
use prism_store::{Database, StoreError};

/// The active generation per projection. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct ActiveGenerations {
    /// Projection → active generation; absent when the projection has none (not migrated).
    active: Arc<RwLock<BTreeMap<ProjectionName, u32>>>,
}

impl ActiveGenerations {
    /// Reads every active generation from `projection_generations` and replaces the map.
    /// Returns the projections whose generation changed.
    pub async fn reload(&self, db: &Database) -> Result<Vec<ProjectionName>, StoreError> {
        let client = db.client().await?;
        let rows = client.query(include_str!("../sql/active_generations.sql"), &[]).await?;
        let mut fresh = BTreeMap::new();
        for row in rows {
            let name: String = row.try_get(0)?;
            let generation: i32 = row.try_get(1)?;
            // Rows of projections this build does not know (a newer deployment's) are skipped.
            if let (Ok(projection), Ok(generation)) =
                (name.parse::<ProjectionName>(), u32::try_from(generation))
            {
                fresh.insert(projection, generation);
            }
        }
        let mut active = self.active.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = ProjectionName::ALL.into_iter().filter(|p| active.get(p) != fresh.get(p)).collect();
        *active = fresh;
        Ok(changed)
    }

    /// The active instance of `projection`, if it has one.
    pub fn instance(&self, projection: ProjectionName) -> Option<ProjectionInstance> {
        let active = self.active.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        active.get(&projection).map(|generation| ProjectionInstance::new(projection, *generation))
    }

    /// Sets one projection's generation (tests).
    pub fn set(&self, projection: ProjectionName, generation: u32) {
        self.active.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(projection, generation);
    }
}
