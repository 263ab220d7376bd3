//! A batch whose rows are more text than one statement carries (a replay chunk, a large live
//! batch) is written in several statements within its transaction: every row lands once, folds
//! go on from what the earlier batch stored, sums are read back for the cache only after every
//! piece was added, and the cache's documents are the stored rows.

use std::collections::BTreeMap;

use prism_events::{Event, EventRegistry};
use prism_projections::{Application, GapPolicy, ProjectionInstance, ReadModel, Unprojectable};
use prism_read_store::projection::{apply_batch, Target};
use prism_testkit::probe::{as_batch, batch_of, noted, Noted, PROBE};
use prism_testkit::TestEnv;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

mod common;
use common::{documents, stored};

/// Aggregates in each batch: with the padding below, each read model's rows are more than
/// the text of one statement (1 MiB): about 1.5 MiB.
const AGGREGATES: usize = 4_000;

/// Text every row carries, so that few rows fill a statement.
fn padding(id: Uuid) -> String {
    format!("{id}:{}", "p".repeat(300))
}

const WIDE_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    id uuid PRIMARY KEY,
    n bigint NOT NULL,
    events bigint NOT NULL,
    padding text NOT NULL
)";

const TALLY_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    tag text PRIMARY KEY,
    events bigint NOT NULL
)";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wide {
    id: Uuid,
    n: i64,
    events: i64,
    padding: String,
}

fn fold_wide(current: Option<Wide>, event: &Event) -> Result<Wide, Unprojectable> {
    let noted = event.body::<Noted>().ok_or_else(|| Unprojectable::new("not a Noted event"))?;
    Ok(Wide {
        id: event.meta.aggregate_id,
        n: noted.n,
        events: current.map_or(0, |row| row.events) + 1,
        padding: padding(event.meta.aggregate_id),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tally {
    tag: String,
    events: i64,
}

fn tally(event: &Event) -> Vec<Tally> {
    vec![Tally { tag: padding(event.meta.aggregate_id), events: 1 }]
}

#[tokio::test]
async fn a_batch_larger_than_a_statement_lands_every_row_once_and_caches_what_was_stored() {
    let wide = prism_projections::intern("large_wide");
    let tallies = prism_projections::intern("large_tally");
    let models = vec![
        ReadModel::new(wide).table(WIDE_TABLE).key(&["id"]).cached("wide").fold(PROBE, fold_wide),
        ReadModel::new(tallies).table(TALLY_TABLE).key(&["tag"]).cached("tally").sum(
            PROBE,
            &["events"],
            tally,
        ),
    ];
    let app = Application::new(wide, EventRegistry::of::<Noted>().expect("events"), models)
        .expect("the test application");
    let env = TestEnv::new(&app).await.expect("test environment");
    let targets = [
        Target { instance: ProjectionInstance::new(wide, 1), model: app.read_model(wide).expect("model") },
        Target {
            instance: ProjectionInstance::new(tallies, 1),
            model: app.read_model(tallies).expect("model"),
        },
    ];
    let ids: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::new_v4()).collect();

    // The first batch inserts every row (two events each), the second folds on from the stored
    // rows (one more each) and adds to every tally.
    let batches: [Vec<Event>; 2] = [
        ids.iter().flat_map(|id| [noted(*id, 1), noted(*id, 2)]).collect(),
        ids.iter().map(|id| noted(*id, 3)).collect(),
    ];
    let mut offset = 0;
    let mut events_of: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (number, events) in batches.into_iter().enumerate() {
        let count = events.len();
        for event in &events {
            *events_of.entry(event.meta.aggregate_id).or_default() += 1;
        }
        let outcomes =
            apply_batch(&env.db, &targets, GapPolicy::DeadLetter, batch_of(&as_batch(events, offset)))
                .await
                .expect("the batch lands");
        offset += count as i64;
        let applied: u64 = outcomes.iter().map(|(_, o)| o.applied).sum();
        assert_eq!(applied, 2 * count as u64, "batch {number}: every event applies to both read models");

        let expected_wide: Vec<(String, Value)> = events_of
            .iter()
            .map(|(id, events)| {
                let row = json!({"id": id, "n": 10 * events, "events": events, "padding": padding(*id)});
                (id.to_string(), row)
            })
            .collect();
        let wide_rows = stored(&env, "large_wide_g1", "id::text").await;
        assert_eq!(wide_rows.len(), AGGREGATES, "batch {number}: one folded row per aggregate");
        assert!(wide_rows == expected_wide, "batch {number}: every folded row is the fold of its events");
        assert!(
            documents(&outcomes[0].1) == wide_rows,
            "batch {number}: the cache's documents of the folded rows are the stored rows"
        );

        let mut expected_tallies: Vec<(String, Value)> = events_of
            .iter()
            .map(|(id, events)| (padding(*id), json!({"tag": padding(*id), "events": events})))
            .collect();
        expected_tallies.sort_by(|a, b| a.0.cmp(&b.0));
        let tally_rows = stored(&env, "large_tally_g1", "tag").await;
        assert_eq!(tally_rows.len(), AGGREGATES, "batch {number}: one summed row per tag");
        assert!(tally_rows == expected_tallies, "batch {number}: every summed row holds all its events");
        // Read back after every piece's addition: a read sent before the last piece would cache
        // totals without it.
        assert!(
            documents(&outcomes[1].1) == tally_rows,
            "batch {number}: the cache's documents of the summed rows are the stored totals"
        );
    }
}
