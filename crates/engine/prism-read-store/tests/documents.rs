//! What the cache is to hold is the row PostgreSQL stored, column for column: the documents a
//! batch returns (read with `row_to_json`, see `writers::stored_columns`) equal what
//! `to_jsonb` reads of the same rows without the engine's bookkeeping, for every kind of column
//! a read model may have, whether the row was inserted, folded on from its stored text, or
//! summed and read back.

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

const VARIED_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    id uuid PRIMARY KEY,
    amount numeric(12, 2) NOT NULL,
    ratio float8 NOT NULL,
    at timestamptz NOT NULL,
    tags jsonb NOT NULL,
    label text NOT NULL,
    note text,
    count bigint NOT NULL
)";

const TOTALS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    parity text PRIMARY KEY,
    events bigint NOT NULL,
    weight numeric(12, 2) NOT NULL
)";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Varied {
    id: Uuid,
    amount: Value,
    ratio: f64,
    at: chrono::DateTime<chrono::Utc>,
    tags: Value,
    label: String,
    note: Option<String>,
    count: i64,
}

/// Every kind of value: a numeric with trailing zeros, a float, a timestamp with microseconds,
/// nested JSON, text that needs escaping, a null; the next event folds on from what is stored.
fn fold_varied(current: Option<Varied>, event: &Event) -> Result<Varied, Unprojectable> {
    let noted = event.body::<Noted>().ok_or_else(|| Unprojectable::new("not a Noted event"))?;
    let count = current.as_ref().map_or(0, |row| row.count) + 1;
    Ok(Varied {
        id: event.meta.aggregate_id,
        amount: json!(format!("{}.50", noted.n)),
        ratio: 0.1 * noted.n as f64,
        at: event.meta.occurred_at,
        tags: json!({"n": noted.n, "nested": [1, "two", null, {"é": "ü"}], "previous": current.map(|row| row.tags)}),
        label: format!("\"quoted\"\n\ttabbed \u{1F600} {}", noted.n),
        note: (noted.n % 20 == 0).then(|| "even tens".to_owned()),
        count,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Total {
    parity: String,
    events: i64,
    weight: f64,
}

fn totals(event: &Event) -> Vec<Total> {
    let n = event.body::<Noted>().map_or(0, |noted| noted.n);
    vec![Total { parity: if n % 20 == 0 { "even" } else { "odd" }.to_owned(), events: 1, weight: 0.25 }]
}

#[tokio::test]
async fn documents_are_the_stored_rows_of_every_column_kind() {
    let varied = prism_projections::intern("doc_varied");
    let summed = prism_projections::intern("doc_totals");
    let models = vec![
        ReadModel::new(varied).table(VARIED_TABLE).key(&["id"]).cached("varied").fold(PROBE, fold_varied),
        ReadModel::new(summed).table(TOTALS_TABLE).key(&["parity"]).cached("totals").sum(
            PROBE,
            &["events", "weight"],
            totals,
        ),
    ];
    let app = Application::new(varied, EventRegistry::of::<Noted>().expect("events"), models)
        .expect("the test application");
    let env = TestEnv::new(&app).await.expect("test environment");
    let targets = [
        Target {
            instance: ProjectionInstance::new(varied, 1),
            model: app.read_model(varied).expect("model"),
        },
        Target {
            instance: ProjectionInstance::new(summed, 1),
            model: app.read_model(summed).expect("model"),
        },
    ];
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

    // First batch: every row inserted. Second: folded on from the stored text and summed into.
    let batches = [
        vec![noted(a, 1), noted(b, 1), noted(a, 2)],
        vec![noted(a, 3), noted(b, 2), noted(b, 3), noted(b, 4)],
    ];
    let mut offset = 0;
    for (number, events) in batches.into_iter().enumerate() {
        let count = events.len();
        let outcomes =
            apply_batch(&env.db, &targets, GapPolicy::DeadLetter, batch_of(&as_batch(events, offset)))
                .await
                .expect("the batch lands");
        offset += count as i64;
        let applied: u64 = outcomes.iter().map(|(_, o)| o.applied).sum();
        assert_eq!(applied, 2 * count as u64, "batch {number}: every event applies to both read models");

        let (_, varied_outcome) = &outcomes[0];
        let expected = stored(&env, "doc_varied_g1", "id::text").await;
        assert_eq!(documents(varied_outcome), expected, "batch {number}: the folded rows' documents");
        let (_, totals_outcome) = &outcomes[1];
        let expected = stored(&env, "doc_totals_g1", "parity").await;
        assert_eq!(documents(totals_outcome), expected, "batch {number}: the summed rows' documents");
    }

    // The fold read its own stored text back: counts went on, and the nested JSON of the
    // previous row is the one stored.
    let rows = stored(&env, "doc_varied_g1", "id::text").await;
    let row_of = |id: Uuid| rows.iter().find(|(key, _)| *key == id.to_string()).map(|(_, row)| row.clone());
    let a_row = row_of(a).expect("a's row");
    assert_eq!((a_row["count"].clone(), a_row["amount"].clone()), (json!(3), json!(30.50)));
    assert_eq!(a_row["tags"]["previous"]["n"], json!(20));
    assert_eq!(row_of(b).expect("b's row")["count"], json!(4));
    let totals = stored(&env, "doc_totals_g1", "parity").await;
    assert_eq!(
        totals,
        vec![
            ("even".to_owned(), json!({"parity": "even", "events": 3, "weight": 0.75})),
            ("odd".to_owned(), json!({"parity": "odd", "events": 4, "weight": 1.00})),
        ]
    );
}

#[tokio::test]
async fn a_table_with_a_column_named_like_the_document_alias_is_refused_by_name() {
    let name = prism_projections::intern("doc_reserved");
    const RESERVED_TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
        id uuid PRIMARY KEY, amount numeric(12, 2) NOT NULL, ratio float8 NOT NULL, at timestamptz NOT NULL,
        tags jsonb NOT NULL, label text NOT NULL, note text, count bigint NOT NULL, prism_document text
    )";
    let model =
        ReadModel::new(name).table(RESERVED_TABLE).key(&["id"]).cached("reserved").fold(PROBE, fold_varied);
    let app = Application::new(name, EventRegistry::of::<Noted>().expect("events"), vec![model])
        .expect("the test application");
    let env = TestEnv::new(&app).await.expect("test environment");
    let target =
        Target { instance: ProjectionInstance::new(name, 1), model: app.read_model(name).expect("model") };
    let refused = apply_batch(
        &env.db,
        &[target],
        GapPolicy::DeadLetter,
        batch_of(&as_batch(vec![noted(Uuid::new_v4(), 1)], 0)),
    )
    .await
    .expect_err("the table is refused");
    let said = refused.to_string();
    assert!(
        said.contains("prism_document") && said.contains("doc_reserved_g1"),
        "names the column and table: {said}"
    );
}
