//! The correctness oracle: what every read-model row must be, folded in memory from the
//! events that were produced, with code of its own (not the projector's folds, so a bug there
//! cannot hide itself), then compared with every row in PostgreSQL and every entry in Redis.
//! Equal or a diff.
//!
//! Per aggregate the oracle applies versions 1, 2, 3, … once each, in order, stopping at the
//! first missing version: exactly what the projector must converge to after duplicates,
//! redeliveries and reorderings (a gap parks the rest until it is redriven).
//!
//! Fields compared: all columns, timestamps normalised to microseconds in UTC. `revision` (a
//! change counter whose value depends on batching) is not predicted; instead each Redis
//! entry's revision must equal its PostgreSQL row's.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use prism_events::{AggregateType, DomainEvent, Event};
use prism_projections::{ProjectionInstance, ProjectionName};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// Expected rows per read model, by row key (`<id>`, or `<product_id>/<day>` for sales).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expected {
    pub rows: BTreeMap<ProjectionName, BTreeMap<String, Value>>,
}

fn ts(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn lines_json(lines: &[prism_events::events::OrderLine]) -> Value {
    Value::Array(
        lines
            .iter()
            .map(|l| json!({"product_id": l.product_id.to_string(), "quantity": l.quantity, "unit_price_cents": l.unit_price_cents}))
            .collect(),
    )
}

fn set(row: &mut Value, field: &str, value: Value) {
    if let Value::Object(map) = row {
        map.insert(field.to_owned(), value);
    }
}

fn get_i64(row: &Value, field: &str) -> i64 {
    row.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// Folds `events` into the rows every read model must hold.
pub fn fold(events: &[Event]) -> Expected {
    // Each aggregate's distinct versions, then its contiguous prefix from 1.
    let mut streams: HashMap<(AggregateType, Uuid), BTreeMap<u64, &Event>> = HashMap::new();
    for event in events {
        streams
            .entry((event.meta.aggregate_type, event.meta.aggregate_id))
            .or_default()
            .entry(event.meta.aggregate_version)
            .or_insert(event);
    }
    let mut applicable: Vec<&Event> = Vec::new();
    for stream in streams.values() {
        for (expected, (version, event)) in (1..).zip(stream) {
            if *version != expected {
                break;
            }
            applicable.push(event);
        }
    }
    applicable.sort_by_key(|e| (e.meta.aggregate_type, e.meta.aggregate_id, e.meta.aggregate_version));

    let mut out = Expected::default();
    for p in ProjectionName::ALL {
        out.rows.insert(p, BTreeMap::new());
    }
    for event in applicable {
        apply(&mut out, event);
    }
    out
}

fn table(out: &mut Expected, p: ProjectionName) -> &mut BTreeMap<String, Value> {
    out.rows.entry(p).or_default()
}

fn apply(out: &mut Expected, e: &Event) {
    let id = e.meta.aggregate_id.to_string();
    let at = ts(e.meta.occurred_at);
    let version = json!(e.meta.aggregate_version);
    match &e.body {
        DomainEvent::UserRegistered(u) => {
            let row = table(out, ProjectionName::UserProfile)
                .entry(id.clone())
                .or_insert_with(|| empty_profile(&id));
            set(row, "registered", json!(true));
            set(row, "email", json!(u.email));
            set(row, "display_name", json!(u.display_name));
            set(row, "marketing_opt_in", json!(u.marketing_opt_in));
            set(row, "registered_at", at);
            set(row, "version", version);
        }
        DomainEvent::UserProfileChanged(c) => {
            let row = table(out, ProjectionName::UserProfile)
                .entry(id.clone())
                .or_insert_with(|| empty_profile(&id));
            if let Some(email) = &c.email {
                set(row, "email", json!(email));
            }
            if let Some(name) = &c.display_name {
                set(row, "display_name", json!(name));
            }
            if let Some(opt_in) = c.marketing_opt_in {
                set(row, "marketing_opt_in", json!(opt_in));
            }
            set(row, "version", version);
        }
        DomainEvent::ProductListed(p) => {
            table(out, ProjectionName::ProductCatalog).insert(
                id.clone(),
                json!({"product_id": id, "sku": p.sku, "name": p.name, "price_cents": p.price_cents, "stock": p.stock,
                       "listed": true, "delist_reason": null, "listed_at": at, "delisted_at": null, "updated_at": at, "version": version}),
            );
        }
        body @ (DomainEvent::ProductPriceChanged(_)
        | DomainEvent::ProductRestocked(_)
        | DomainEvent::ProductDelisted(_)) => {
            if let Some(row) = table(out, ProjectionName::ProductCatalog).get_mut(&id) {
                match body {
                    DomainEvent::ProductPriceChanged(c) => set(row, "price_cents", json!(c.price_cents)),
                    DomainEvent::ProductRestocked(r) => set(row, "stock", json!(r.stock_after)),
                    DomainEvent::ProductDelisted(d) => {
                        set(row, "listed", json!(false));
                        set(row, "delist_reason", json!(d.reason));
                        set(row, "delisted_at", at.clone());
                    }
                    _ => {}
                }
                set(row, "updated_at", at);
                set(row, "version", version);
            }
        }
        DomainEvent::CartOpened(c) => {
            table(out, ProjectionName::CartView).insert(
                id.clone(),
                json!({"cart_id": id, "user_id": c.user_id.to_string(), "status": "open", "lines": [], "item_count": 0,
                       "total_cents": 0, "order_id": null, "opened_at": at, "checked_out_at": null, "updated_at": at, "version": version}),
            );
        }
        body @ (DomainEvent::CartItemAdded(_)
        | DomainEvent::CartItemRemoved(_)
        | DomainEvent::CartCheckedOut(_)) => {
            if let Some(row) = table(out, ProjectionName::CartView).get_mut(&id) {
                let mut lines: Vec<Value> =
                    row.get("lines").and_then(Value::as_array).cloned().unwrap_or_default();
                match body {
                    DomainEvent::CartItemAdded(a) => {
                        let pid = a.product_id.to_string();
                        match lines.iter_mut().find(|l| l["product_id"] == json!(pid)) {
                            Some(line) => {
                                let q = line["quantity"].as_i64().unwrap_or(0) + i64::from(a.quantity);
                                line["quantity"] = json!(q);
                                line["unit_price_cents"] = json!(a.unit_price_cents);
                            }
                            None => lines.push(json!({"product_id": pid, "quantity": a.quantity, "unit_price_cents": a.unit_price_cents})),
                        }
                    }
                    DomainEvent::CartItemRemoved(r) => {
                        lines.retain(|l| l["product_id"] != json!(r.product_id.to_string()))
                    }
                    DomainEvent::CartCheckedOut(c) => {
                        set(row, "status", json!("checked_out"));
                        set(row, "order_id", json!(c.order_id.to_string()));
                        set(row, "checked_out_at", at.clone());
                    }
                    _ => {}
                }
                let count: i64 = lines.iter().map(|l| l["quantity"].as_i64().unwrap_or(0)).sum();
                let total: i64 = lines
                    .iter()
                    .map(|l| {
                        l["quantity"].as_i64().unwrap_or(0) * l["unit_price_cents"].as_i64().unwrap_or(0)
                    })
                    .sum();
                set(row, "lines", Value::Array(lines));
                set(row, "item_count", json!(count));
                set(row, "total_cents", json!(total));
                set(row, "updated_at", at);
                set(row, "version", version);
            }
        }
        DomainEvent::OrderPlaced(o) => {
            let items: i64 = o.lines.iter().map(|l| i64::from(l.quantity)).sum();
            table(out, ProjectionName::OrderSummary).insert(
                id.clone(),
                json!({"order_id": id, "user_id": o.user_id.to_string(), "cart_id": o.cart_id.map(|c| c.to_string()),
                       "status": "placed", "lines": lines_json(&o.lines), "item_count": items, "total_cents": o.total_cents,
                       "payment_method": null, "payment_reference": null, "payment_failure_reason": null, "carrier": null,
                       "tracking_code": null, "cancel_reason": null, "placed_at": at, "payment_requested_at": null,
                       "paid_at": null, "shipped_at": null, "cancelled_at": null, "updated_at": at, "version": version}),
            );
            let user = o.user_id.to_string();
            let profile = table(out, ProjectionName::UserProfile)
                .entry(user.clone())
                .or_insert_with(|| empty_profile(&user));
            let count = get_i64(profile, "order_count") + 1;
            set(profile, "order_count", json!(count));
        }
        body @ (DomainEvent::OrderPaymentRequested(_)
        | DomainEvent::OrderPaymentSucceeded(_)
        | DomainEvent::OrderPaymentFailed(_)
        | DomainEvent::OrderShipped(_)
        | DomainEvent::OrderCancelled(_)) => {
            if let Some(row) = table(out, ProjectionName::OrderSummary).get_mut(&id) {
                match body {
                    DomainEvent::OrderPaymentRequested(r) => {
                        set(row, "status", json!("payment_pending"));
                        set(row, "payment_method", json!(r.method.as_str()));
                        set(row, "payment_requested_at", at.clone());
                    }
                    DomainEvent::OrderPaymentSucceeded(p) => {
                        set(row, "status", json!("paid"));
                        set(row, "payment_reference", json!(p.payment_reference));
                        set(row, "paid_at", at.clone());
                    }
                    DomainEvent::OrderPaymentFailed(f) => {
                        set(row, "status", json!("payment_failed"));
                        set(row, "payment_failure_reason", json!(f.reason));
                    }
                    DomainEvent::OrderShipped(s) => {
                        set(row, "status", json!("shipped"));
                        set(row, "carrier", json!(s.carrier));
                        set(row, "tracking_code", json!(s.tracking_code));
                        set(row, "shipped_at", at.clone());
                    }
                    DomainEvent::OrderCancelled(c) => {
                        set(row, "status", json!("cancelled"));
                        set(row, "cancel_reason", json!(c.reason));
                        set(row, "cancelled_at", at.clone());
                    }
                    _ => {}
                }
                set(row, "updated_at", at);
                set(row, "version", version);
            }
            if let DomainEvent::OrderPaymentSucceeded(p) = body {
                let user = p.user_id.to_string();
                let profile = table(out, ProjectionName::UserProfile)
                    .entry(user.clone())
                    .or_insert_with(|| empty_profile(&user));
                let paid = get_i64(profile, "paid_order_count") + 1;
                let spend = get_i64(profile, "lifetime_spend_cents") + p.amount_cents;
                set(profile, "paid_order_count", json!(paid));
                set(profile, "lifetime_spend_cents", json!(spend));
                let day = e.meta.occurred_at.date_naive().to_string();
                for line in &p.lines {
                    let key = format!("{}/{day}", line.product_id);
                    let row = table(out, ProjectionName::ProductSalesDaily).entry(key).or_insert_with(|| {
                        json!({"product_id": line.product_id.to_string(), "day": day, "units": 0, "revenue_cents": 0, "order_count": 0})
                    });
                    let units = get_i64(row, "units") + i64::from(line.quantity);
                    let revenue =
                        get_i64(row, "revenue_cents") + i64::from(line.quantity) * line.unit_price_cents;
                    let orders = get_i64(row, "order_count") + 1;
                    set(row, "units", json!(units));
                    set(row, "revenue_cents", json!(revenue));
                    set(row, "order_count", json!(orders));
                }
            }
        }
    }
}

fn empty_profile(user: &str) -> Value {
    json!({"user_id": user, "registered": false, "email": null, "display_name": null, "marketing_opt_in": false,
           "registered_at": null, "order_count": 0, "paid_order_count": 0, "lifetime_spend_cents": 0, "version": 0})
}

/// The key of a stored row, as the oracle keys it.
fn row_key(p: ProjectionName, row: &Value) -> String {
    let field = |name: &str| row.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    match p {
        ProjectionName::OrderSummary => field("order_id"),
        ProjectionName::ProductCatalog => field("product_id"),
        ProjectionName::CartView => field("cart_id"),
        ProjectionName::UserProfile => field("user_id"),
        ProjectionName::ProductSalesDaily => format!("{}/{}", field("product_id"), field("day")),
    }
}

/// Canonical form for comparison: timestamps to microseconds in UTC, `revision` removed.
pub fn normalize(row: &Value) -> Value {
    match row {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if k == "revision" {
                    continue;
                }
                let v = match v {
                    Value::String(s) if k.ends_with("_at") => DateTime::parse_from_rfc3339(s)
                        .map(|t| ts(t.with_timezone(&Utc)))
                        .unwrap_or_else(|_| v.clone()),
                    other => normalize(other),
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Differences between expected and actual rows, as readable lines.
fn diff_rows(
    what: &str,
    expected: &BTreeMap<String, Value>,
    actual: &BTreeMap<String, Value>,
    out: &mut Vec<String>,
) {
    for (key, want) in expected {
        match actual.get(key) {
            None => out.push(format!("{what} {key}: missing; expected {want}")),
            Some(got) if normalize(got) != normalize(want) => {
                let (want, got) = (normalize(want), normalize(got));
                let fields: Vec<String> = want
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| got.get(k.as_str()) != Some(*v))
                    .map(|(k, v)| {
                        format!("{k}: expected {v}, got {}", got.get(k.as_str()).unwrap_or(&Value::Null))
                    })
                    .collect();
                let extra: Vec<&String> = got
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| want.get(k.as_str()).is_none())
                    .collect();
                out.push(format!(
                    "{what} {key}: {}{}",
                    fields.join("; "),
                    if extra.is_empty() { String::new() } else { format!(" (unexpected fields {extra:?})") }
                ));
            }
            Some(_) => {}
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("{what} {key}: present but no event produced it"));
    }
}

/// Every row of `instances` in PostgreSQL, keyed as the oracle keys them (raw, with revision).
pub async fn stored_rows(
    client: &tokio_postgres::Client,
    instance: ProjectionInstance,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let rows = client.query(&format!("SELECT to_jsonb(t) FROM {} t", instance.id()), &[]).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row: Value = r.get(0);
            (row_key(instance.projection, &row), row)
        })
        .collect())
}

/// How strictly to check the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCheck {
    /// Every cached row must be present (no flush happened).
    Complete,
    /// Entries may be missing (the cache was flushed); present ones must be right.
    PresentOnly,
}

/// Compares every read-model row in PostgreSQL, and every cache entry in Redis, with the
/// fold of `events`. `Ok` when equal; otherwise every difference, one per line.
pub async fn check(
    events: &[Event],
    client: &tokio_postgres::Client,
    redis_url: &str,
    key_prefix: &str,
    instances: &[ProjectionInstance],
    cache: CacheCheck,
) -> anyhow::Result<Result<CheckSummary, String>> {
    check_expected(&fold(events), client, redis_url, key_prefix, instances, cache).await
}

/// [`check`] against rows already folded (fold once, check repeatedly while waiting).
pub async fn check_expected(
    expected: &Expected,
    client: &tokio_postgres::Client,
    redis_url: &str,
    key_prefix: &str,
    instances: &[ProjectionInstance],
    cache: CacheCheck,
) -> anyhow::Result<Result<CheckSummary, String>> {
    let mut diffs = Vec::new();
    let mut summary = CheckSummary::default();
    let redis = redis::Client::open(redis_url)?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    for &instance in instances {
        let want = expected.rows.get(&instance.projection).cloned().unwrap_or_default();
        let stored = stored_rows(client, instance).await?;
        summary.rows += stored.len();
        diff_rows(&format!("postgres {}", instance.id()), &want, &stored, &mut diffs);

        let Some(prefix) = instance.cache_prefix(key_prefix) else { continue };
        let mut cached: BTreeMap<String, Value> = BTreeMap::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", crate::env::escape_glob(&prefix)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                let (revision, document): (Option<i64>, Option<String>) =
                    redis::cmd("HMGET").arg(&key).arg("rev").arg("doc").query_async(&mut conn).await?;
                let id = key.trim_start_matches(&prefix).to_owned();
                let (Some(revision), Some(document)) = (revision, document) else {
                    diffs.push(format!("redis {key}: not a {{rev, doc}} entry"));
                    continue;
                };
                let doc: Value = serde_json::from_str(&document)?;
                let stored_revision = stored.get(&id).map(|row| {
                    row.get("revision").or_else(|| row.get("version")).and_then(Value::as_i64).unwrap_or(-1)
                });
                if stored_revision.is_some_and(|r| r != revision) {
                    diffs.push(format!(
                        "redis {key}: revision {revision}, PostgreSQL row has {stored_revision:?}"
                    ));
                }
                cached.insert(id, doc);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        summary.cache_entries += cached.len();
        let want_cached: BTreeMap<String, Value> = match cache {
            CacheCheck::Complete => want.clone(),
            CacheCheck::PresentOnly => want
                .iter()
                .filter(|(k, _)| cached.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        diff_rows(&format!("redis {prefix}"), &want_cached, &cached, &mut diffs);
    }
    if diffs.is_empty() {
        Ok(Ok(summary))
    } else {
        let total = diffs.len();
        diffs.truncate(12);
        let shown: Vec<String> = diffs
            .into_iter()
            .map(|d| {
                if d.chars().count() > 400 {
                    format!("{}…", d.chars().take(400).collect::<String>())
                } else {
                    d
                }
            })
            .collect();
        Ok(Err(format!(
            "{total} difference(s) from the oracle (first {} shown):\n{}",
            shown.len(),
            shown.join("\n")
        )))
    }
}

/// What a passing check compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckSummary {
    /// PostgreSQL rows compared.
    pub rows: usize,
    /// Redis entries compared.
    pub cache_entries: usize,
}
