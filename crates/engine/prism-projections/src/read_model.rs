//! The projection API: how an application defines a read model.
//!
//! A [`ReadModel`] is a value: its name, its PostgreSQL table (the application's `CREATE
//! TABLE`, with `{table}` where the engine puts the generation's table name), its key, whether
//! and under which key kind Redis caches its rows, and the feeds that change it — one per
//! source aggregate type. There are two kinds of feed, named for what they are:
//!
//! - [`ReadModel::fold`] — *one row per aggregate*: the row keyed by the event's aggregate id
//!   is folded from its current value, `fold(Option<Row>, &Event) -> Result<Row, _>`.
//!   `order_summary` is fed this way by the order aggregate.
//! - [`ReadModel::sum`] — *rows fed by many aggregates*: each event names the rows it adds to
//!   and what it adds, `rows(&Event) -> Vec<Row>`, on the declared additive columns. Adding
//!   commutes, so partitions that feed the same row at the same time never lose an update.
//!   `product_sales_daily` is fed this way by orders; a read model may combine both, as
//!   `user_profile` does (its account fields folded from user events, its order totals summed
//!   from order events).
//!
//! The application writes the folds (pure functions, testable without anything running) and
//! nothing else. The engine does the rest for every read model alike: the version gate, order
//! per aggregate, set-based batch writes (one statement per feed per batch, several for a batch
//! of more than a mebibyte of rows, generated from the table's columns), dead letters with
//! parking and redrive, the cache's compare-and-set, generations with in-place and blue/green
//! rebuilds, lag, metrics and readiness.
//!
//! Two bookkeeping columns are the engine's, added to every read-model table: [`VERSION_COLUMN`]
//! (for rows keyed by an aggregate: the version of it the row reflects, what read-your-writes
//! compares) and [`REVISION_COLUMN`] (a change counter, what the cache compares before
//! overwriting). Folds never see them; queries may.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use prism_events::{AggregateType, Event, EventRegistry};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::Unprojectable;
pub use crate::fold::{Fold, FoldedRow};

/// The engine's column holding, for rows keyed by an aggregate, the version of that aggregate
/// the row reflects (0 for rows no aggregate is folded into).
pub const VERSION_COLUMN: &str = "prism_version";
/// The engine's column counting changes to a row: the revision the cache compares.
pub const REVISION_COLUMN: &str = "prism_revision";

/// A read-model row type: plain serde data whose field names are the table's column names.
pub trait Row: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Row for T {}

/// A feed of additive rows over JSON, as the engine calls it.
pub type SumFn = Arc<dyn Fn(&Event) -> Result<Vec<Value>, Unprojectable> + Send + Sync>;

/// How one source aggregate type changes a read model.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // closures; `Feed`'s Debug describes them
pub enum FeedKind {
    /// One row per aggregate, keyed by the aggregate id, folded from its current value.
    Fold(Fold),
    /// Rows named by the event's data, added to on `columns`.
    Sum {
        /// The additive columns: on an existing row each is incremented by the new row's
        /// value; other columns keep their stored value.
        columns: Vec<&'static str>,
        /// The rows an event adds to.
        rows: SumFn,
    },
}

/// One feed of a read model.
#[derive(Clone)]
pub struct Feed {
    /// The aggregate type (topic) whose events it takes.
    pub source: AggregateType,
    /// What it does with them.
    pub kind: FeedKind,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            FeedKind::Fold(_) => write!(f, "fold from {}", self.source),
            FeedKind::Sum { columns, .. } => write!(f, "sum from {} into {columns:?}", self.source),
        }
    }
}

/// A read model, as an application defines it. Build it with [`ReadModel::new`] and the
/// methods after it; check it against the application's events with [`ReadModel::check`]
/// (the projector does at start).
#[derive(Clone, Debug)]
pub struct ReadModel {
    /// The name in configuration, tables (`<name>_g<generation>`, and a view `<name>` on the
    /// active generation), metrics and `prismctl`.
    name: &'static str,
    /// The table's `CREATE TABLE IF NOT EXISTS {table} (…)` (plus any `CREATE INDEX … ON
    /// {table}` statements), with `{table}` for the generation's table name.
    table_sql: &'static str,
    /// The key columns.
    key: Vec<&'static str>,
    /// The Redis key kind (`<prefix>g<N>:<kind>:<key>`) when rows are cached.
    cache_kind: Option<&'static str>,
    /// How each source changes it.
    feeds: Vec<Feed>,
}

/// Why a read model definition cannot be used (a bug in the application).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read model {read_model}: {problem}")]
pub struct DefinitionError {
    /// The read model.
    pub read_model: String,
    /// What is wrong.
    pub problem: String,
}

impl ReadModel {
    /// A read model called `name` (lowercase letters, digits and `_`, starting with a letter,
    /// at most 40 characters: it becomes table names).
    pub fn new(name: &'static str) -> Self {
        Self { name, table_sql: "", key: Vec::new(), cache_kind: None, feeds: Vec::new() }
    }

    /// The table: `CREATE TABLE IF NOT EXISTS {table} (…)`, with `{table}` where the engine
    /// puts the generation's table name, and any `CREATE INDEX IF NOT EXISTS … ON {table}`
    /// after it. Column names are the row type's field names.
    pub fn table(mut self, sql: &'static str) -> Self {
        self.table_sql = sql;
        self
    }

    /// The key columns: the table's primary key. A read model with a [`fold`](Self::fold)
    /// feed or a [cache](Self::cached) has one key column, holding the aggregate id (uuid)
    /// for folded rows.
    pub fn key(mut self, columns: &[&'static str]) -> Self {
        self.key = columns.to_vec();
        self
    }

    /// Caches rows in Redis under `<prefix>g<generation>:<kind>:<key>`, written after the
    /// PostgreSQL commit with a compare-and-set on the row's revision; queries read it first.
    pub fn cached(mut self, kind: &'static str) -> Self {
        self.cache_kind = Some(kind);
        self
    }

    /// One row per aggregate of `source`: the row whose key is the event's aggregate id is
    /// `fold(current row or None, event)`. Refusing an event ([`Unprojectable`]) dead-letters
    /// it and parks the aggregate behind it. The row type is `Clone`: a batch folds an
    /// aggregate's events one after the other on typed rows (see [`Fold`]), and a clone is
    /// what keeps the row as it was when the next event is refused.
    pub fn fold<R: Row + Clone>(
        mut self,
        source: AggregateType,
        fold: fn(Option<R>, &Event) -> Result<R, Unprojectable>,
    ) -> Self {
        self.feeds.push(Feed { source, kind: FeedKind::Fold(Fold::new(self.name, fold)) });
        self
    }

    /// Rows fed by many aggregates of `source`: `rows(event)` names the rows the event adds
    /// to, each a whole row (its key, `columns` holding the amounts to add, other columns the
    /// values for a row that does not exist yet). Rows of one batch with the same key are
    /// summed first; each is then inserted or added to in one statement.
    pub fn sum<R: Row>(
        self,
        source: AggregateType,
        columns: &[&'static str],
        rows: fn(&Event) -> Vec<R>,
    ) -> Self {
        self.sum_feed(source, columns, move |event| Ok(rows(event)))
    }

    /// As [`sum`](Self::sum), for a feed that can refuse an event it cannot use
    /// ([`Unprojectable`]): the event is dead-lettered for this read model and the aggregate
    /// parked behind it, as a fold's refusal does.
    pub fn try_sum<R: Row>(
        self,
        source: AggregateType,
        columns: &[&'static str],
        rows: fn(&Event) -> Result<Vec<R>, Unprojectable>,
    ) -> Self {
        self.sum_feed(source, columns, rows)
    }

    fn sum_feed<R: Row>(
        mut self,
        source: AggregateType,
        columns: &[&'static str],
        rows: impl Fn(&Event) -> Result<Vec<R>, Unprojectable> + Send + Sync + 'static,
    ) -> Self {
        let name = self.name;
        let erased: SumFn = Arc::new(move |event: &Event| {
            rows(event)?
                .into_iter()
                .map(|row| {
                    serde_json::to_value(row)
                        .map_err(|e| Unprojectable::new(format!("a {name} row does not serialise: {e}")))
                })
                .collect()
        });
        self.feeds.push(Feed { source, kind: FeedKind::Sum { columns: columns.to_vec(), rows: erased } });
        self
    }

    /// The name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The table's SQL, with `{table}`.
    pub fn table_sql(&self) -> &'static str {
        self.table_sql
    }

    /// The key columns.
    pub fn key_columns(&self) -> &[&'static str] {
        &self.key
    }

    /// The Redis key kind, when cached.
    pub fn cache_kind(&self) -> Option<&'static str> {
        self.cache_kind
    }

    /// The feeds, in definition order.
    pub fn feeds(&self) -> &[Feed] {
        &self.feeds
    }

    /// The aggregate types that feed it (its topics), without repeats.
    pub fn sources(&self) -> Vec<AggregateType> {
        let mut sources = Vec::new();
        for feed in &self.feeds {
            if !sources.contains(&feed.source) {
                sources.push(feed.source);
            }
        }
        sources
    }

    /// The additive columns of every sum feed.
    pub fn additive_columns(&self) -> Vec<&'static str> {
        let set: BTreeSet<&'static str> = self
            .feeds
            .iter()
            .flat_map(|feed| match &feed.kind {
                FeedKind::Sum { columns, .. } => columns.clone(),
                FeedKind::Fold(_) => Vec::new(),
            })
            .collect();
        set.into_iter().collect()
    }

    /// Whether `source` feeds it.
    pub fn is_fed_by(&self, source: AggregateType) -> bool {
        self.feeds.iter().any(|feed| feed.source == source)
    }

    /// Checks the definition against the application's events: a valid name, a table with
    /// `{table}`, a key, single-column keys where folds or the cache need them, additive
    /// columns outside the key, and sources the application has.
    pub fn check(&self, events: &EventRegistry) -> Result<(), DefinitionError> {
        let fail = |problem: String| Err(DefinitionError { read_model: self.name.to_owned(), problem });
        if !is_identifier(self.name, 40) {
            return fail("its name must be lowercase letters, digits and `_`, start with a letter and have at most 40 characters".into());
        }
        if !self.table_sql.contains("{table}") {
            return fail("its table SQL must name the table as `{table}`".into());
        }
        if self.key.is_empty() {
            return fail("it has no key columns".into());
        }
        for column in self.key.iter().chain(self.additive_columns().iter()) {
            if !is_identifier(column, 63) {
                return fail(format!("column `{column}` is not a plain lowercase identifier"));
            }
        }
        if self.feeds.is_empty() {
            return fail("no aggregate type feeds it".into());
        }
        let folds = self.feeds.iter().any(|f| matches!(f.kind, FeedKind::Fold(_)));
        if (folds || self.cache_kind.is_some()) && self.key.len() != 1 {
            return fail("a folded or cached read model has exactly one key column".into());
        }
        if let Some(kind) = self.cache_kind {
            if !is_identifier(kind, 40) {
                return fail(format!("cache kind `{kind}` is not a plain lowercase identifier"));
            }
        }
        for feed in &self.feeds {
            if events.aggregate_type(feed.source.as_str()).is_none() {
                return fail(format!(
                    "it is fed by `{}`, which the application's events do not have",
                    feed.source
                ));
            }
            if let FeedKind::Sum { columns, .. } = &feed.kind {
                if columns.is_empty() {
                    return fail(format!("its sum feed from {} names no additive columns", feed.source));
                }
                if let Some(key) = columns.iter().find(|c| self.key.contains(c)) {
                    return fail(format!("key column `{key}` cannot be additive"));
                }
            }
        }
        let mut sources =
            self.feeds.iter().map(|f| (f.source, matches!(f.kind, FeedKind::Fold(_)))).collect::<Vec<_>>();
        sources.sort();
        sources.dedup();
        if sources.len() != self.feeds.len() {
            return fail("two feeds of the same kind from one aggregate type".into());
        }
        Ok(())
    }
}

/// Lowercase ASCII letters, digits and `_`, starting with a letter, at most `max` bytes: safe
/// to put into SQL and Redis keys unquoted.
pub fn is_identifier(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= max
}
