//! Reading the read models: Redis first for entities, PostgreSQL (through the views) on a
//! miss, refilling Redis with the projector's own version guard; read-your-writes waits;
//! the paginated lists and the sales range, which are served from PostgreSQL only.
//!
//! Why a refill can never make the cache wrong: it goes through [`Cache::put_if_newer`],
//! the same compare-and-set on the revision the projector uses. If the projector wrote a
//! newer row between our PostgreSQL read and our refill, the refill is refused; if ours is
//! newer than what the projector wrote before, it is the truth anyway (it came from
//! PostgreSQL, which is never behind the cache).
//!
//! A blue/green switch between our PostgreSQL read and our refill can at worst put a row of
//! the old generation under a key of the new one (or the reverse) at the same revision; the
//! folds are deterministic, so a row at revision N is the same row in either generation.
//!
//! Why a read-your-writes re-check reads PostgreSQL rather than Redis: the projector commits
//! (which delivers the notification) before it writes the cache, so right after a
//! notification Redis may still hold the previous version.

use std::time::Duration;

use prism_cache::{Cache, CacheError, Entry};
use prism_projections::views::{OrderSummary, ProductCatalogEntry, ProductSalesDaily};
use prism_projections::ProjectionName;
use prism_store::{Database, StoreError};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::cursor::{OrdersCursor, ProductsCursor};
use crate::generations::ActiveGenerations;
use crate::metrics;
use crate::models::{cache_key, EntityModel};
use crate::notify::AppliedSignals;

/// An entity as served, with whether it satisfies the version the client asked for.
#[derive(Debug, Clone)]
pub struct Served<V> {
    /// The row; `None` when there is none (yet).
    pub row: Option<V>,
    /// False when the client asked for a version the read model did not reach in time.
    pub fresh: bool,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<V> {
    /// The rows, in list order.
    pub items: Vec<V>,
    /// The cursor of the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Everything a read needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadModels {
    /// PostgreSQL, for misses, lists and ranges.
    db: Database,
    /// Redis.
    cache: Cache,
    /// `redis.key_prefix`.
    key_prefix: String,
    /// Which cache keys are current.
    generations: ActiveGenerations,
    /// Wake-ups for read-your-writes waits.
    signals: AppliedSignals,
}

impl ReadModels {
    /// Wires the readers.
    pub fn new(
        db: Database,
        cache: Cache,
        key_prefix: String,
        generations: ActiveGenerations,
        signals: AppliedSignals,
    ) -> Self {
        Self { db, cache, key_prefix, generations, signals }
    }

    /// The Redis key of `id` in `V`'s active generation; `None` when the projection has no
    /// active generation (then the cache is bypassed).
    pub fn key_of<V: EntityModel>(&self, id: Uuid) -> Option<String> {
        let instance = self.generations.instance(V::PROJECTION)?;
        instance.cache_prefix(&self.key_prefix).map(|prefix| cache_key(&prefix, id))
    }

    /// The entity, from Redis when it holds a version at least `min` (any version when
    /// `min` is `None`), otherwise from PostgreSQL, refilling Redis.
    pub async fn entity<V: EntityModel>(&self, id: Uuid, min: Option<i64>) -> Result<Option<V>, StoreError> {
        let key = self.key_of::<V>(id);
        if let Some(key) = &key {
            if let Some(cached) = self.cached::<V>(key).await {
                if min.is_none_or(|min| cached.version() >= min) {
                    return Ok(Some(cached));
                }
            }
        }
        let row = self.from_postgres::<V>(id).await?;
        if let (Some(row), Some(key)) = (&row, &key) {
            self.refill_key(key, row).await;
        }
        Ok(row)
    }

    /// The entity at version `min` or later, waiting up to `wait` for the projector to get
    /// there. Re-reads only when a batch of `V`'s projection lands (see [`crate::notify`]).
    pub async fn entity_at_least<V: EntityModel>(
        &self,
        id: Uuid,
        min: i64,
        wait: Duration,
    ) -> Result<Served<V>, StoreError> {
        // Subscribe before the first read: a batch landing between the read and the wait
        // still wakes us.
        let mut landed = self.signals.subscribe(V::PROJECTION);
        let row = self.entity::<V>(id, Some(min)).await?;
        if satisfies(&row, min) {
            return Ok(Served { row, fresh: true });
        }
        let deadline = Instant::now() + wait;
        if let Some(landed) = &mut landed {
            // Ends at the deadline (or if the signal closed, which only happens at shutdown).
            while let Ok(Ok(())) = tokio::time::timeout_at(deadline, landed.changed()).await {
                drop(landed.borrow_and_update());
                let row = self.from_postgres::<V>(id).await?;
                if let Some(current) = row.as_ref().filter(|r| r.version() >= min) {
                    self.refill(current).await;
                    return Ok(Served { row, fresh: true });
                }
            }
        }
        // One last read at the deadline: covers a notification lost while the listener
        // reconnected. A single query, not a poll.
        let row = self.from_postgres::<V>(id).await?;
        let fresh = satisfies(&row, min);
        if let (true, Some(current)) = (fresh, &row) {
            self.refill(current).await;
        }
        Ok(Served { row, fresh })
    }

    /// The entity as PostgreSQL's view has it.
    pub async fn from_postgres<V: EntityModel>(&self, id: Uuid) -> Result<Option<V>, StoreError> {
        let rows = self.query::<V>(V::PROJECTION, V::BY_ID, &[&id]).await?;
        Ok(rows.into_iter().next())
    }

    /// Writes `row` to Redis unless Redis holds the same or a newer revision. Returns
    /// whether it was written; a cache failure is counted and logged (the answer came from
    /// PostgreSQL, so the client is served regardless).
    pub async fn refill<V: EntityModel>(&self, row: &V) -> bool {
        match self.key_of::<V>(row.id()) {
            Some(key) => self.refill_key(&key, row).await,
            None => false,
        }
    }

    async fn refill_key<V: EntityModel>(&self, key: &str, row: &V) -> bool {
        let document = match serde_json::to_string(row) {
            Ok(document) => document,
            Err(err) => {
                tracing::error!(error = %err, "cannot serialise a row for the cache");
                return false;
            }
        };
        let entry = Entry { key, revision: row.revision(), document: &document };
        match self.cache.put_if_newer(&[entry]).await {
            Ok(written) => written > 0,
            Err(err) => {
                metrics::cache_error(V::PROJECTION);
                tracing::warn!(error = %err, transient = err.is_transient(), "cache refill failed");
                false
            }
        }
    }

    /// The cached row, if Redis has a readable one. Errors count as misses: PostgreSQL
    /// answers instead.
    async fn cached<V: EntityModel>(&self, key: &str) -> Option<V> {
        match self.cache.get(key).await {
            Ok(Some(cached)) => match serde_json::from_str::<V>(&cached.document) {
                Ok(row) => {
                    metrics::cache_lookup(V::PROJECTION, true);
                    Some(row)
                }
                Err(err) => {
                    // Unreadable (e.g. written by an incompatible build): PostgreSQL answers and
                    // the refill cannot replace it (same revision), so say so loudly.
                    metrics::cache_error(V::PROJECTION);
                    tracing::warn!(error = %err, key, "unreadable cache entry");
                    None
                }
            },
            Ok(None) => {
                metrics::cache_lookup(V::PROJECTION, false);
                None
            }
            Err(err) => {
                metrics::cache_error(V::PROJECTION);
                log_cache_error(&err);
                None
            }
        }
    }

    /// A user's orders, newest first.
    pub async fn user_orders(
        &self,
        user_id: Uuid,
        after: Option<OrdersCursor>,
        limit: usize,
    ) -> Result<Page<OrderSummary>, StoreError> {
        let placed_at = after.map(|c| c.placed_at);
        let order_id = after.map(|c| c.order_id);
        let fetch = page_fetch(limit);
        let rows: Vec<OrderSummary> = self
            .query(
                ProjectionName::OrderSummary,
                include_str!("../sql/orders_by_user.sql"),
                &[&user_id, &placed_at, &order_id, &fetch],
            )
            .await?;
        Ok(paginate(rows, limit, |last| {
            OrdersCursor { placed_at: last.placed_at, order_id: last.order_id }.encode()
        }))
    }

    /// Listed products by name.
    pub async fn listed_products(
        &self,
        after: Option<ProductsCursor>,
        limit: usize,
    ) -> Result<Page<ProductCatalogEntry>, StoreError> {
        let (name, product_id) = match after {
            Some(cursor) => (Some(cursor.name), Some(cursor.product_id)),
            None => (None, None),
        };
        let fetch = page_fetch(limit);
        let rows: Vec<ProductCatalogEntry> = self
            .query(
                ProjectionName::ProductCatalog,
                include_str!("../sql/listed_products.sql"),
                &[&name, &product_id, &fetch],
            )
            .await?;
        Ok(paginate(rows, limit, |last| {
            ProductsCursor { name: last.name.clone(), product_id: last.product_id }.encode()
        }))
    }

    /// A product's daily sales from `from` to `to` inclusive; `None` when neither the
    /// catalog nor the sales table knows the product.
    pub async fn product_sales(
        &self,
        product_id: Uuid,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Option<Vec<ProductSalesDaily>>, StoreError> {
        let days: Vec<ProductSalesDaily> = self
            .query(
                ProjectionName::ProductSalesDaily,
                include_str!("../sql/product_sales.sql"),
                &[&product_id, &from, &to],
            )
            .await?;
        if !days.is_empty() {
            return Ok(Some(days));
        }
        metrics::postgres_read(ProjectionName::ProductCatalog);
        let client = self.db.client().await?;
        let statement = client.prepare_cached(include_str!("../sql/product_exists.sql")).await?;
        let exists: bool = client.query_one(&statement, &[&product_id]).await?.try_get(0)?;
        Ok(exists.then_some(days))
    }

    /// Runs a `SELECT to_jsonb(t) …` and decodes each row.
    async fn query<V: DeserializeOwned>(
        &self,
        read_model: ProjectionName,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<V>, StoreError> {
        metrics::postgres_read(read_model);
        let client = self.db.client().await?;
        let statement = client.prepare_cached(sql).await?;
        let rows = client.query(&statement, params).await?;
        rows.into_iter()
            .map(|row| {
                let value: serde_json::Value = row.try_get(0)?;
                serde_json::from_value(value)
                    .map_err(|e| StoreError::Corrupt { what: "read-model row", detail: e.to_string() })
            })
            .collect()
    }

    /// Whether PostgreSQL and Redis answer (readiness).
    pub async fn probe(&self) -> (Result<(), StoreError>, Result<(), CacheError>) {
        tokio::join!(self.db.ping(), self.cache.ping())
    }
}

fn satisfies<V: EntityModel>(row: &Option<V>, min: i64) -> bool {
    row.as_ref().is_some_and(|row| row.version() >= min)
}

/// Rows to fetch for a page of `limit`: one more, to know whether a next page exists.
fn page_fetch(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX - 1).saturating_add(1)
}

fn paginate<V>(mut rows: Vec<V>, limit: usize, cursor_of: impl Fn(&V) -> String) -> Page<V> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more { rows.last().map(cursor_of) } else { None };
    Page { items: rows, next_cursor }
}

fn log_cache_error(err: &CacheError) {
    tracing::warn!(error = %err, transient = err.is_transient(), "cache read failed; serving from PostgreSQL");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_know_whether_more_follow() {
        let page = paginate(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let page = paginate(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(page.next_cursor, None);
        assert_eq!(page_fetch(200), 201);
    }
}
