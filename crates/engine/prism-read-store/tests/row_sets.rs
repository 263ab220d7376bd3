//! A set of rows sent one text array per column (`prism_read_store::row_sets`) stores exactly
//! what `json_populate_recordset` stores from the same JSON, for every kind of column a read
//! model may have; a value its column refuses is refused the same way; and a table whose
//! columns only the JSON form can fill (arrays, composites) keeps that form.

use prism_read_store::row_sets::{TableColumns, COLUMNS_SQL};
use prism_testkit::TestEnv;
use serde_json::{json, Value};

/// Every scalar kind, JSON kinds, an enum, a domain, type modifiers, a quoted column name.
const WIDE_TABLE: &str = "
    id integer PRIMARY KEY,
    label text,
    short varchar(4),
    amount numeric(12, 2),
    ratio float8,
    small real,
    big bigint,
    flag boolean,
    day date,
    at timestamptz,
    at_ms timestamptz(3),
    local timestamp,
    ref uuid,
    doc jsonb,
    raw json,
    mood row_sets_mood,
    positive row_sets_positive,
    \"Mixed Case\" text";

async fn columns_of(client: &tokio_postgres::Client, table: &str) -> TableColumns {
    let rows = client.query(COLUMNS_SQL, &[&table]).await.expect("the catalog read");
    TableColumns::from_rows(&rows).unwrap_or_else(|| panic!("{table} has no columns"))
}

/// Inserts `rows` into `table` through the row-set statement; the error's text if refused.
async fn insert_as_row_set(
    client: &tokio_postgres::Client,
    table: &str,
    rows: &Value,
) -> Result<u64, String> {
    let columns = columns_of(client, table).await;
    let params = columns.params(rows.to_string()).map_err(|e| e.to_string())?;
    client
        .execute(&columns.insert(table), &params.values().as_params())
        .await
        .map_err(|e| e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned()))
}

/// Inserts `rows` into `table` through `json_populate_recordset`; the error's text if refused.
async fn insert_as_json(client: &tokio_postgres::Client, table: &str, rows: &Value) -> Result<u64, String> {
    client
        .execute(
            &format!(
                "INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1::text::json)"
            ),
            &[&rows.to_string()],
        )
        .await
        .map_err(|e| e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_owned()))
}

async fn stored(client: &tokio_postgres::Client, table: &str) -> Vec<Value> {
    client
        .query(&format!("SELECT to_jsonb(t) FROM {table} t ORDER BY id"), &[])
        .await
        .expect("the rows read back")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn row_sets_store_what_json_populate_stores() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    client
        .batch_execute(&format!(
            "CREATE TYPE row_sets_mood AS ENUM ('calm', 'busy');
             CREATE DOMAIN row_sets_positive AS integer CHECK (VALUE > 0);
             CREATE TABLE by_columns ({WIDE_TABLE});
             CREATE TABLE by_json ({WIDE_TABLE});"
        ))
        .await
        .expect("the tables");
    assert!(
        columns_of(&client, "by_columns").await.columnar(),
        "scalar and JSON columns go column by column"
    );

    let rows = json!([
        {
            "id": 1, "label": "\"quoted\"\n\ttabbed \u{e9} \u{1F600}", "short": "abcd", "amount": 1.5,
            "ratio": 0.1, "small": 1.25, "big": 9007199254740993_i64, "flag": true, "day": "2026-12-03",
            "at": "2026-12-03T10:11:12.123456Z", "at_ms": "2026-12-03T10:11:12.123456+02:00",
            "local": "2026-12-03 10:11:12", "ref": "9b2f2f0e-8c1e-4a36-9a53-1c6f0f7b2a10",
            "doc": {"n": 1, "nested": [1, "two", null, {"\u{e9}": "\u{fc}"}]}, "raw": {"b": 2, "a": [1.50]},
            "mood": "busy", "positive": 7, "Mixed Case": "kept"
        },
        // Strings where numbers go and the other way round, JSON scalars in JSON columns,
        // nulls, and keys the table does not have.
        {
            "id": "2", "label": 12.50, "short": null, "amount": "3.456", "ratio": "1e-3", "small": -0.0,
            "big": "42", "flag": "false", "day": null, "at": "2026-12-03 10:11:12+05:30", "at_ms": null,
            "local": null, "ref": null, "doc": "a string", "raw": 3, "mood": null, "positive": null,
            "unknown": "ignored"
        },
        // Only the key: every other column NULL.
        {"id": 3},
        // JSON objects where text goes, a JSON null in JSON columns, true/false as text.
        {"id": 4, "label": {"x": [1, 2]}, "doc": null, "raw": null, "flag": false, "short": true}
    ]);
    assert_eq!(insert_as_row_set(&client, "by_columns", &rows).await, Ok(4));
    assert_eq!(insert_as_json(&client, "by_json", &rows).await, Ok(4));
    let (by_columns, by_json) = (stored(&client, "by_columns").await, stored(&client, "by_json").await);
    assert_eq!(by_columns, by_json, "the same rows stored both ways");
    // And the values are the ones written (not, say, all NULL both ways).
    assert_eq!(by_columns[0]["amount"], json!(1.50));
    assert_eq!(by_columns[0]["Mixed Case"], json!("kept"));
    assert_eq!(by_columns[1]["doc"], json!("a string"));
    assert_eq!(by_columns[3]["label"], json!("{\"x\":[1,2]}"));

    // A value its column refuses is refused both ways, for the same reason.
    for (column, value, reason) in [
        ("short", json!("abcde"), "value too long for type character varying(4)"),
        ("positive", json!(0), "violates check constraint"),
        ("mood", json!("angry"), "invalid input value for enum row_sets_mood"),
        ("at", json!("yesterday-ish"), "invalid input syntax for type timestamp with time zone"),
        ("label", json!("nul \u{0} inside"), ""),
    ] {
        let row = json!([{ "id": 10, column: value }]);
        let by_columns = insert_as_row_set(&client, "by_columns", &row).await;
        let by_json = insert_as_json(&client, "by_json", &row).await;
        let (Err(by_columns), Err(by_json)) = (&by_columns, &by_json) else {
            panic!("{column} = {value}: refused both ways, got {by_columns:?} and {by_json:?}");
        };
        assert!(
            by_columns.contains(reason) && by_json.contains(reason),
            "{column} = {value}: {by_columns} / {by_json}"
        );
    }
    // Not an array of objects: a clear error, nothing sent.
    let columns = columns_of(&client, "by_columns").await;
    let refused = columns.params("[1, 2]".to_owned()).expect_err("not objects");
    assert!(refused.to_string().contains("not an array of objects"), "{refused}");
}

#[tokio::test]
async fn tables_with_array_or_composite_columns_keep_the_json_form() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    client
        .batch_execute(
            "CREATE TYPE row_sets_pair AS (a integer, b text);
             CREATE TABLE with_array (id integer PRIMARY KEY, tags text[]);
             CREATE TABLE with_composite (id integer PRIMARY KEY, pair row_sets_pair);",
        )
        .await
        .expect("the tables");
    for (table, row, read) in [
        ("with_array", json!([{"id": 1, "tags": ["a", "b"]}]), json!({"id": 1, "tags": ["a", "b"]})),
        (
            "with_composite",
            json!([{"id": 1, "pair": {"a": 1, "b": "x"}}]),
            json!({"id": 1, "pair": {"a": 1, "b": "x"}}),
        ),
    ] {
        assert!(!columns_of(&client, table).await.columnar(), "{table} keeps the JSON form");
        assert_eq!(insert_as_row_set(&client, table, &row).await, Ok(1), "{table}");
        assert_eq!(stored(&client, table).await, vec![read], "{table}");
    }
}

/// The update of rows at places read before (`TableColumns::update_located`): the rows still
/// there are updated, a row that moved since is skipped (the caller counts it), a place that
/// now holds another key's row leaves that row alone, and the lookup stays a `ctid` lookup
/// however large the table is.
#[tokio::test]
async fn rows_are_updated_only_where_they_were_read() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    client
        .batch_execute(
            "CREATE TABLE located (id uuid PRIMARY KEY, label text NOT NULL, amount numeric(12, 2), \
                                   prism_version bigint NOT NULL, prism_revision bigint NOT NULL);
             INSERT INTO located
                 SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, 'row ' || i, i, 1, 1
                 FROM generate_series(1, 20000) AS i;
             ANALYZE located;",
        )
        .await
        .expect("the table");
    let columns = columns_of(&client, "located").await;
    let update = columns
        .update_located("located", "id", &["prism_revision"], "prism_revision = t.prism_revision + 1")
        .expect("a table written as text arrays");
    let id = |i: u32| format!("00000000-0000-0000-0000-{i:012}");
    let place = |i: u32| {
        let client = &client;
        let key = id(i);
        async move {
            let row = client
                .query_one("SELECT ctid::text FROM located WHERE id = $1::text::uuid", &[&key])
                .await
                .expect("the row's place");
            row.get::<_, String>(0)
        }
    };
    let (one, two, three) = (place(1).await, place(2).await, place(3).await);
    // Row 2 moves (an update writes a new version elsewhere); row 3's place is given for row 4.
    client
        .execute("UPDATE located SET label = 'moved' WHERE id = $1::text::uuid", &[&id(2)])
        .await
        .expect("move");
    let rows = json!([
        {"id": id(1), "label": "one", "amount": "1.50", "prism_version": 2, "prism_revision": 1},
        {"id": id(2), "label": "two", "amount": "2.50", "prism_version": 2, "prism_revision": 1},
        {"id": id(4), "label": "four", "amount": "4.50", "prism_version": 2, "prism_revision": 1},
    ]);
    let params = columns.params(rows.to_string()).expect("the row set");
    assert_eq!(params.rows(), Some(3));
    let places = vec![one.as_str(), two.as_str(), three.as_str()];
    let values = params.values();
    let mut arguments = values.as_params();
    arguments.push(&places);
    let updated = client.execute(&update, &arguments).await.expect("the update");
    assert_eq!(updated, 1, "only the row still where it was read is updated");

    let stored = |i: u32| {
        let client = &client;
        let key = id(i);
        async move {
            let row = client
                .query_one(
                    "SELECT label, amount::text, prism_version, prism_revision FROM located WHERE id = $1::text::uuid",
                    &[&key],
                )
                .await
                .expect("a row");
            (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, i64>(2), row.get::<_, i64>(3))
        }
    };
    assert_eq!(
        stored(1).await,
        ("one".to_owned(), "1.50".to_owned(), 2, 2),
        "updated, its revision counted up"
    );
    assert_eq!(stored(2).await, ("moved".to_owned(), "2.00".to_owned(), 1, 1), "moved: left as it was");
    assert_eq!(
        stored(3).await,
        ("row 3".to_owned(), "3.00".to_owned(), 1, 1),
        "another key's row: untouched"
    );
    assert_eq!(
        stored(4).await,
        ("row 4".to_owned(), "4.00".to_owned(), 1, 1),
        "its row is elsewhere: untouched"
    );

    // The plan finds rows by their place, not through the key's index.
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {update}"), &arguments)
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("Tid Scan") && !plan.contains("Index"), "not a lookup by place:\n{plan}");
}
