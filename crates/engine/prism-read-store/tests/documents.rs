//! What the cache is to hold is the row PostgreSQL stored, column for column: the documents a
//! batch returns (printed by the engine from the returned values, or by PostgreSQL with
//! `row_to_json` for a table with a column the engine does not print; see
//! `prism_read_store::documents`) equal what `to_jsonb` reads of the same rows without the
//! engine's bookkeeping, for every kind of column a read model may have, whether the row was
//! inserted, folded on from its stored text, or summed and read back. And where the engine
//! prints a document, it prints the text `row_to_json` prints, byte for byte.

use prism_events::{Event, EventRegistry};
use prism_projections::{
    Application, GapPolicy, ProjectionInstance, ReadModel, Unprojectable, REVISION_COLUMN, VERSION_COLUMN,
};
use prism_read_store::documents::DocumentPrinter;
use prism_read_store::projection::{apply_batch, Target};
use prism_read_store::row_sets::{TableColumns, COLUMNS_SQL};
use prism_testkit::probe::{as_batch, batch_of, noted, Noted, PROBE};
use prism_testkit::TestEnv;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

mod common;
use common::{documents, stored};

/// The folded read model's table, with `ratio` of the type given and any further columns.
macro_rules! varied_table {
    ($ratio_type:literal, $further_columns:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id uuid PRIMARY KEY,
                amount numeric(12, 2) NOT NULL,
                ratio ",
            $ratio_type,
            " NOT NULL,
                at timestamptz NOT NULL,
                tags jsonb NOT NULL,
                label text NOT NULL,
                note text,
                count bigint NOT NULL",
            $further_columns,
            "
            )"
        )
    };
}

/// An `interval` among the columns (one the fold leaves `NULL`): PostgreSQL prints the
/// documents.
const VARIED_TABLE: &str = varied_table!("float8", ", waited interval");

/// Every column of a type the engine prints, a float among them.
const PRINTED_TABLE: &str = varied_table!("float8", "");

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
async fn documents_printed_by_postgresql_are_the_stored_rows_of_every_column_kind() {
    documents_are_the_stored_rows("doc_varied", "doc_totals", VARIED_TABLE, false).await;
}

#[tokio::test]
async fn documents_printed_by_the_engine_are_the_stored_rows_of_every_column_kind() {
    documents_are_the_stored_rows("doc_printed", "doc_printed_totals", PRINTED_TABLE, true).await;
}

/// Two batches into a folded read model of `table` and a summed one, both cached; every
/// document returned must be the stored row. `printed`: whether the engine prints the folded
/// table's documents (checked, so each test runs the path it names).
async fn documents_are_the_stored_rows(varied: &str, summed: &str, table: &'static str, printed: bool) {
    let varied = prism_projections::intern(varied);
    let summed = prism_projections::intern(summed);
    let models = vec![
        ReadModel::new(varied).table(table).key(&["id"]).cached("varied").fold(PROBE, fold_varied),
        ReadModel::new(summed).table(TOTALS_TABLE).key(&["parity"]).cached("totals").sum(
            PROBE,
            &["events", "weight"],
            totals,
        ),
    ];
    let app = Application::new(varied, EventRegistry::of::<Noted>().expect("events"), models)
        .expect("the test application");
    let env = TestEnv::new(&app).await.expect("test environment");
    let varied_table = format!("{varied}_g1");
    let summed_table = format!("{summed}_g1");
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

        if number == 0 {
            // The table exists once the first batch landed.
            let client = env.db.client().await.expect("client");
            let (names, oids) = application_columns(&client, &varied_table).await;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            assert_eq!(
                DocumentPrinter::for_columns(&names, &oids).is_some(),
                printed,
                "whether the engine prints {varied_table}'s documents"
            );
        }
        let (_, varied_outcome) = &outcomes[0];
        let expected = stored(&env, &varied_table, "id::text").await;
        assert_eq!(documents(varied_outcome), expected, "batch {number}: the folded rows' documents");
        let (_, totals_outcome) = &outcomes[1];
        let expected = stored(&env, &summed_table, "parity").await;
        assert_eq!(documents(totals_outcome), expected, "batch {number}: the summed rows' documents");
    }

    // The fold read its own stored text back: counts went on, and the nested JSON of the
    // previous row is the one stored.
    let rows = stored(&env, &varied_table, "id::text").await;
    let row_of = |id: Uuid| rows.iter().find(|(key, _)| *key == id.to_string()).map(|(_, row)| row.clone());
    let a_row = row_of(a).expect("a's row");
    assert_eq!((a_row["count"].clone(), a_row["amount"].clone()), (json!(3), json!(30.50)));
    assert_eq!(a_row["tags"]["previous"]["n"], json!(20));
    assert_eq!(row_of(b).expect("b's row")["count"], json!(4));
    let totals = stored(&env, &summed_table, "parity").await;
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

/// The application's columns of `table` (all but the engine's bookkeeping) and their types.
async fn application_columns(client: &tokio_postgres::Client, table: &str) -> (Vec<String>, Vec<u32>) {
    let rows = client.query(COLUMNS_SQL, &[&table]).await.expect("the catalog read");
    let columns = TableColumns::from_rows(&rows).unwrap_or_else(|| panic!("{table} has no columns"));
    let names: Vec<String> = columns
        .names()
        .iter()
        .filter(|name| ![VERSION_COLUMN, REVISION_COLUMN].contains(&name.as_str()))
        .cloned()
        .collect();
    let oids = names.iter().map(|name| columns.type_oid(name).expect("a listed column")).collect();
    (names, oids)
}

/// Every type the engine prints, and a quoted column name.
const PRINTABLE_TABLE: &str = "
    id integer PRIMARY KEY,
    flag boolean,
    small smallint,
    big bigint,
    amount numeric,
    money numeric(12, 2),
    label text,
    short varchar(8),
    padded char(5),
    ref uuid,
    raw json,
    doc jsonb,
    day date,
    local timestamp,
    at timestamptz,
    \"Mixed \"\"Case\"\" é\" text,
    single real,
    double double precision";

#[tokio::test]
async fn the_engine_prints_what_row_to_json_prints_byte_for_byte() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    // The engine's sessions are in UTC with floats in their shortest text (prism_postgres::pool);
    // so is this one.
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC'; SET extra_float_digits = 1; CREATE TABLE printable ({PRINTABLE_TABLE})"
        ))
        .await
        .expect("the table");
    client
        .batch_execute(
            r#"INSERT INTO printable VALUES
            (1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
            (2, true, -32768, -9223372036854775808, 'NaN', 0, '', '', '', '00000000-0000-0000-0000-000000000000',
             '{ "spaced" : [1, 2.50] , "a":1 }', '{"b": {"z": 1, "a": [true, null]}, "a": 1.50}',
             '-infinity', '-infinity', '-infinity', 'plain', 'NaN', 'NaN'),
            (3, false, 32767, 9223372036854775807, 'Infinity', 123456.78, E'"quoted"\\back\b\f\n\r\t\x01\x1f\x7f é 😀 /',
             'abc', 'ab', 'FFFFFFFF-0000-4000-8000-0123456789AB', '"a string"', '"a string"',
             'infinity', 'infinity', 'infinity', E'tab\there', 'Infinity', '-Infinity'),
            (4, NULL, 0, 0, '-Infinity', -0.5, 'x', NULL, 'abcde', NULL, 'null', 'null',
             '0044-03-15 BC', '0001-01-01 00:00:00 BC', '0001-12-31 23:59:59.999999 BC', NULL, '-0', '-0'),
            (5, NULL, 1, 1, 0, 1, NULL, NULL, NULL, NULL, '3', '3',
             '2000-02-29', '2000-01-01 00:00:00', '1999-12-31 23:59:59.5+00', NULL, 0, 0),
            (6, NULL, -1, -1, -0.0012, 0.10, NULL, NULL, NULL, NULL, '[]', '{}',
             '1970-01-01', '1969-12-31 23:59:59.000001', '2026-12-05 23:34:35.968165+02', NULL, 0.1, 0.1),
            (7, NULL, NULL, 1000000000000, 123456789.000100, 9999999999.99, NULL, NULL, NULL, NULL, NULL, '[1e3, -0.0, 1E-7]',
             '12345-06-07', '294276-12-31 23:59:59.999999', '4713-01-01 00:00:00+00 BC', NULL, 123456, 1e14),
            (8, NULL, NULL, NULL, 0.000000000000000000001, -0.01, NULL, NULL, NULL, NULL, NULL, '"\u00e9\n"',
             '5874897-12-31', '2026-12-05 10:00:00.1', '2026-12-05 10:00:00.000100', NULL, 1234567, 1e15),
            (9, NULL, NULL, NULL, 100000000, 10000, NULL, NULL, NULL, NULL, NULL, NULL,
             '4713-01-01 BC', '2026-01-01 00:00:01', '2038-01-19 03:14:08+00', NULL, 3.4028235e38, 1.7976931348623157e308),
            (10, NULL, NULL, NULL, -12345678901234567890.123456789012345678901, 0, NULL, NULL, NULL, NULL, NULL, NULL,
             '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', NULL, 1e-45, 5e-324)"#,
        )
        .await
        .expect("the rows");

    let (names, oids) = application_columns(&client, "printable").await;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let printer = DocumentPrinter::for_columns(&name_refs, &oids).expect("every column's type is printed");
    let columns: Vec<String> =
        names.iter().map(|name| format!("t.\"{}\"", name.replace('"', "\"\""))).collect();
    let returned: Vec<String> =
        columns.iter().enumerate().map(|(index, column)| printer.selected(index, column)).collect();
    let rows = client
        .query(
            &format!(
                "SELECT (SELECT row_to_json(d) FROM (SELECT {}) AS d)::text, {} FROM printable t ORDER BY id",
                columns.join(", "),
                returned.join(", ")
            ),
            &[],
        )
        .await
        .expect("the rows read back");
    assert_eq!(rows.len(), 10);
    for row in &rows {
        let by_postgresql: String = row.get(0);
        let by_the_engine = printer.print(row, 1).expect("a printed document");
        assert_eq!(by_the_engine, by_postgresql);
    }
}

/// Floats of every magnitude: random bit patterns (most of them far from 1, printed with an
/// exponent) and random decimals of up to 17 digits with the point anywhere around them
/// (printed in plain digits, or with an exponent past the threshold), as `real` and as
/// `double precision`.
#[tokio::test]
async fn the_engine_prints_random_floats_as_row_to_json_prints_them() {
    use rand::{Rng, SeedableRng};
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    client
        .batch_execute(
            "SET extra_float_digits = 1; CREATE TABLE random_floats (id integer PRIMARY KEY, single real, double double precision)",
        )
        .await
        .expect("the table");
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut doubles: Vec<f64> = Vec::new();
    let mut singles: Vec<f32> = Vec::new();
    for index in 0..20_000 {
        if index % 2 == 0 {
            doubles.push(f64::from_bits(rng.random()));
            singles.push(f32::from_bits(rng.random()));
        } else {
            let digits: u64 = rng.random_range(0..100_000_000_000_000_000);
            let scale = 10f64.powi(rng.random_range(-25..25));
            let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
            doubles.push(sign * digits as f64 / scale);
            singles.push((sign * rng.random_range(0..100_000_000u32) as f64 / scale) as f32);
        }
    }
    let ids: Vec<i32> = (0..doubles.len() as i32).collect();
    client
        .execute(
            "INSERT INTO random_floats SELECT * FROM unnest($1::integer[], $2::real[], $3::double precision[])",
            &[&ids, &singles, &doubles],
        )
        .await
        .expect("the floats");
    let (names, oids) = application_columns(&client, "random_floats").await;
    assert_eq!(names, ["id", "single", "double"]);
    let printer =
        DocumentPrinter::for_columns(&["id", "single", "double"], &oids).expect("floats are printed");
    let returned: Vec<String> = ["t.id", "t.single", "t.double"]
        .iter()
        .enumerate()
        .map(|(index, column)| printer.selected(index, column))
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT (SELECT row_to_json(d) FROM (SELECT t.id, t.single, t.double) AS d)::text, {} \
                 FROM random_floats t ORDER BY id",
                returned.join(", ")
            ),
            &[],
        )
        .await
        .expect("the floats read back");
    assert_eq!(rows.len(), doubles.len());
    let mut differing = Vec::new();
    for (row, (single, double)) in rows.iter().zip(singles.iter().zip(&doubles)) {
        let by_postgresql: String = row.get(0);
        let by_the_engine = printer.print(row, 1).expect("a printed document");
        if by_the_engine != by_postgresql {
            differing.push(format!(
                "{single:e} ({:#010x}) and {double:e} ({:#018x}): the engine {by_the_engine}, PostgreSQL {by_postgresql}",
                single.to_bits(),
                double.to_bits()
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "{} of {} documents differ (seed {seed}), the first ones:\n{}",
        differing.len(),
        rows.len(),
        differing.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn a_type_the_engine_does_not_print_leaves_the_table_to_postgresql() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    client
        .batch_execute(
            "CREATE DOMAIN printable_positive AS integer CHECK (VALUE > 0);
             CREATE TYPE printable_mood AS ENUM ('calm', 'busy');",
        )
        .await
        .expect("the types");
    for (column, printed) in [
        ("text", true),
        ("timestamptz", true),
        ("float8", true),
        ("real", true),
        ("text[]", false),
        ("interval", false),
        ("printable_positive", false),
        ("printable_mood", false),
    ] {
        let table = format!("with_{}", column.replace("[]", "_array"));
        client
            .batch_execute(&format!("CREATE TABLE {table} (id uuid PRIMARY KEY, value {column})"))
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        let (names, oids) = application_columns(&client, &table).await;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(DocumentPrinter::for_columns(&names, &oids).is_some(), printed, "a column of {column}");
    }
}
