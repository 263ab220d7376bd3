//! Per read model: load the rows a batch needs, run the planner with the read model's fold,
//! write the result set-based, and say what the cache should hold.
//!
//! Rows travel as JSON in both directions (`to_jsonb` out, `jsonb_populate_recordset` in):
//! the row types' field names are the column names, so one parameter carries a whole batch
//! and no per-column array plumbing is needed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use prism_events::{AggregateType, Event};
use prism_projections::gate::{plan_batch, ItemOutcome};
use prism_projections::views::{
    cart_view, order_summary, product_catalog, product_sales_daily, user_profile, CartView, OrderSummary,
    ProductCatalogEntry, SalesDelta, UserProfile, UserTotalsDelta,
};
use prism_projections::{
    AggregateKey, GapPolicy, GateState, PlannedItem, ProjectionInstance, ProjectionName, Unprojectable,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::batch::CacheEntry;
use crate::error::StoreError;
use crate::read_models::for_instance;

type Gates = HashMap<AggregateKey, GateState>;
type Written = (Vec<ItemOutcome>, Vec<CacheEntry>);

/// A row of an entity view: keyed by its aggregate, revised by its version.
trait EntityRow: Serialize + DeserializeOwned + Clone {
    fn id(&self) -> Uuid;
    fn revision(&self) -> i64;
}

impl EntityRow for OrderSummary {
    fn id(&self) -> Uuid {
        self.order_id
    }
    fn revision(&self) -> i64 {
        self.version
    }
}

impl EntityRow for ProductCatalogEntry {
    fn id(&self) -> Uuid {
        self.product_id
    }
    fn revision(&self) -> i64 {
        self.version
    }
}

impl EntityRow for CartView {
    fn id(&self) -> Uuid {
        self.cart_id
    }
    fn revision(&self) -> i64 {
        self.version
    }
}

impl EntityRow for UserProfile {
    fn id(&self) -> Uuid {
        self.user_id
    }
    fn revision(&self) -> i64 {
        self.revision
    }
}

/// How to store one entity view.
struct EntitySpec<V> {
    key_column: &'static str,
    upsert: &'static str,
    fold: fn(Option<V>, &Event) -> Result<V, Unprojectable>,
}

/// Runs the planner over the batch and writes what it decided.
pub(super) async fn fold_and_write(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    items: &[PlannedItem<'_>],
    gates: &mut Gates,
    policy: GapPolicy,
) -> Result<Written, StoreError> {
    let source = items.iter().find_map(|item| match item {
        PlannedItem::Event(e) => Some(e.meta.aggregate_type),
        PlannedItem::Poison { .. } => None,
    });
    match (instance.projection, source) {
        (ProjectionName::OrderSummary, _) => {
            let spec = EntitySpec {
                key_column: "order_id",
                upsert: include_str!("../../sql/projection/order_summary_upsert.sql"),
                fold: order_summary::apply,
            };
            entity(tx, instance, items, gates, policy, spec).await
        }
        (ProjectionName::ProductCatalog, _) => {
            let spec = EntitySpec {
                key_column: "product_id",
                upsert: include_str!("../../sql/projection/product_catalog_upsert.sql"),
                fold: product_catalog::apply,
            };
            entity(tx, instance, items, gates, policy, spec).await
        }
        (ProjectionName::CartView, _) => {
            let spec = EntitySpec {
                key_column: "cart_id",
                upsert: include_str!("../../sql/projection/cart_view_upsert.sql"),
                fold: cart_view::apply,
            };
            entity(tx, instance, items, gates, policy, spec).await
        }
        (ProjectionName::UserProfile, Some(AggregateType::User)) => {
            let spec = EntitySpec {
                key_column: "user_id",
                upsert: include_str!("../../sql/projection/user_profile_account_upsert.sql"),
                fold: user_profile::apply_account,
            };
            let (outcomes, _) = entity(tx, instance, items, gates, policy, spec).await?;
            // Totals may have moved under concurrent increments: cache what is stored now.
            let ids = event_ids(items);
            let cache = reload::<UserProfile>(tx, instance, "user_id", &ids).await?;
            Ok((outcomes, cache))
        }
        (ProjectionName::UserProfile, _) => user_totals(tx, instance, items, gates, policy).await,
        (ProjectionName::ProductSalesDaily, _) => product_sales(tx, instance, items, gates, policy).await,
    }
}

/// Aggregate ids of the batch's events, sorted.
fn event_ids(items: &[PlannedItem<'_>]) -> Vec<Uuid> {
    let ids: BTreeSet<Uuid> = items
        .iter()
        .filter_map(|item| match item {
            PlannedItem::Event(e) => Some(e.meta.aggregate_id),
            PlannedItem::Poison { .. } => None,
        })
        .collect();
    ids.into_iter().collect()
}

async fn load<V: DeserializeOwned>(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    key_column: &str,
    ids: &[Uuid],
) -> Result<Vec<V>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT to_jsonb(t) FROM {} t WHERE {key_column} = ANY($1)", instance.id());
    let rows = tx.query(&sql, &[&ids]).await?;
    rows.into_iter()
        .map(|row| {
            serde_json::from_value(row.get::<_, serde_json::Value>(0)).map_err(|e| StoreError::Corrupt {
                what: "read-model row",
                detail: format!("{}: {e}", instance.id()),
            })
        })
        .collect()
}

fn cache_entry<V: EntityRow>(row: &V) -> Result<CacheEntry, StoreError> {
    let document = serde_json::to_string(row)
        .map_err(|e| StoreError::Corrupt { what: "read-model row", detail: e.to_string() })?;
    Ok(CacheEntry { id: row.id().to_string(), revision: row.revision(), document })
}

async fn reload<V: EntityRow>(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    key_column: &str,
    ids: &[Uuid],
) -> Result<Vec<CacheEntry>, StoreError> {
    load::<V>(tx, instance, key_column, ids).await?.iter().map(cache_entry).collect()
}

async fn entity<V: EntityRow>(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    items: &[PlannedItem<'_>],
    gates: &mut Gates,
    policy: GapPolicy,
    spec: EntitySpec<V>,
) -> Result<Written, StoreError> {
    let ids = event_ids(items);
    let mut rows: HashMap<Uuid, V> = load::<V>(tx, instance, spec.key_column, &ids)
        .await?
        .into_iter()
        .map(|row| (row.id(), row))
        .collect();
    let mut changed = BTreeSet::new();
    let outcomes = plan_batch(items, gates, policy, |event| {
        let id = event.meta.aggregate_id;
        let next = (spec.fold)(rows.get(&id).cloned(), event)?;
        rows.insert(id, next);
        changed.insert(id);
        Ok(())
    });
    if !changed.is_empty() {
        let documents: Vec<serde_json::Value> = changed
            .iter()
            .filter_map(|id| rows.get(id))
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Corrupt { what: "read-model row", detail: e.to_string() })?;
        tx.execute(&for_instance(spec.upsert, instance), &[&serde_json::Value::Array(documents)]).await?;
    }
    let cache = if instance.projection.cache_kind().is_some() {
        ids.iter().filter_map(|id| rows.get(id)).map(cache_entry).collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    Ok((outcomes, cache))
}

async fn user_totals(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    items: &[PlannedItem<'_>],
    gates: &mut Gates,
    policy: GapPolicy,
) -> Result<Written, StoreError> {
    let mut deltas: BTreeMap<Uuid, UserTotalsDelta> = BTreeMap::new();
    let outcomes = plan_batch(items, gates, policy, |event| {
        if let Some((user, delta)) = user_profile::totals_delta(event) {
            deltas.entry(user).or_default().add(delta);
        }
        Ok(())
    });
    let deltas: Vec<(Uuid, UserTotalsDelta)> =
        deltas.into_iter().filter(|(_, d)| *d != UserTotalsDelta::default()).collect();
    if !deltas.is_empty() {
        let users: Vec<Uuid> = deltas.iter().map(|(u, _)| *u).collect();
        let orders: Vec<i64> = deltas.iter().map(|(_, d)| d.order_count).collect();
        let paid: Vec<i64> = deltas.iter().map(|(_, d)| d.paid_order_count).collect();
        let cents: Vec<i64> = deltas.iter().map(|(_, d)| d.lifetime_spend_cents).collect();
        let sql = for_instance(include_str!("../../sql/projection/user_profile_totals_add.sql"), instance);
        tx.execute(&sql, &[&users, &orders, &paid, &cents]).await?;
    }
    // Every user an event of the batch credits, duplicates included (see the module header).
    let touched: BTreeSet<Uuid> = items
        .iter()
        .filter_map(|item| match item {
            PlannedItem::Event(e) => user_profile::totals_delta(e).map(|(user, _)| user),
            PlannedItem::Poison { .. } => None,
        })
        .collect();
    let touched: Vec<Uuid> = touched.into_iter().collect();
    let cache = reload::<UserProfile>(tx, instance, "user_id", &touched).await?;
    Ok((outcomes, cache))
}

async fn product_sales(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    items: &[PlannedItem<'_>],
    gates: &mut Gates,
    policy: GapPolicy,
) -> Result<Written, StoreError> {
    let mut deltas: BTreeMap<(Uuid, NaiveDate), SalesDelta> = BTreeMap::new();
    let outcomes = plan_batch(items, gates, policy, |event| {
        for (key, delta) in product_sales_daily::deltas(event) {
            deltas.entry(key).or_default().add(delta);
        }
        Ok(())
    });
    if !deltas.is_empty() {
        // Sorted keys: concurrent batches lock shared rows in the same order.
        let products: Vec<Uuid> = deltas.keys().map(|(p, _)| *p).collect();
        let days: Vec<NaiveDate> = deltas.keys().map(|(_, d)| *d).collect();
        let units: Vec<i64> = deltas.values().map(|d| d.units).collect();
        let revenue: Vec<i64> = deltas.values().map(|d| d.revenue_cents).collect();
        let orders: Vec<i64> = deltas.values().map(|d| d.order_count).collect();
        let sql = for_instance(include_str!("../../sql/projection/product_sales_daily_add.sql"), instance);
        tx.execute(&sql, &[&products, &days, &units, &revenue, &orders]).await?;
    }
    Ok((outcomes, Vec::new()))
}
