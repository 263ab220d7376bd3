//! Readiness: named checks that components flip as they connect, get assigned, stall or
//! recover. `/readyz` answers 200 only when every registered check passes; `/healthz`
//! answers 200 while the process serves at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One check's state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// Whether it passes.
    pub ok: bool,
    /// Why not, or a short note on the state.
    pub detail: String,
}

/// The readiness checks of a process. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<BTreeMap<String, Check>>>,
}

impl Health {
    /// No checks yet: ready until one is registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or registers) a check.
    pub fn set(&self, name: &str, ok: bool, detail: impl Into<String>) {
        let mut checks = self.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        checks.insert(name.to_owned(), Check { ok, detail: detail.into() });
    }

    /// Removes a check (a component that stopped).
    pub fn remove(&self, name: &str) {
        self.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(name);
    }

    /// Whether every check passes.
    pub fn is_ready(&self) -> bool {
        self.snapshot().values().all(|c| c.ok)
    }

    /// The checks as they stand.
    pub fn snapshot(&self) -> BTreeMap<String, Check> {
        self.checks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let health = Health::new();
        assert!(health.is_ready());
        health.set("postgres", true, "connected");
        health.set("kafka", false, "no partitions assigned");
        assert!(!health.is_ready());
        health.set("kafka", true, "4 partitions");
        assert!(health.is_ready());
        health.set("progress", false, "lag 10 and no progress for 30s");
        assert!(!health.is_ready());
        health.remove("progress");
        assert!(health.is_ready());
    }
}
