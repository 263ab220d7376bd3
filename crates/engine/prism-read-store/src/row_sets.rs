//! Sets of rows sent to PostgreSQL in one statement: one text array per column.
//!
//! A batch's rows are built as one JSON array of objects whose keys are the table's columns
//! (any read model's rows, whatever their shape). PostgreSQL could read that array with
//! `json_populate_recordset`, and did: but it parses the whole text again, value by value, and
//! that parse was most of what a written row cost it (about 28 µs of an `order_summary` row
//! of 10 000 against 13 with one array per column). Here the engine splits the objects into
//! one `text[]` per column, sent in binary, and the statement casts each element with the
//! column type's input function:
//! `SELECT u.c0::uuid, u.c1::timestamptz, … FROM unnest($1::text[], $2::text[], …) AS u(c0, c1, …)`.
//!
//! What is stored is exactly what `json_populate_recordset` stores, value by value: a JSON
//! string goes in as its unescaped text, a number, `true` or `false` as written, JSON `null`
//! or a missing key as SQL `NULL`, and into a `json`/`jsonb` column the value's JSON text.
//! Each element is cast to the column's type without its modifier, and the insert then applies
//! the modifier as an assignment does: a `varchar(4)` refuses a longer value (an explicit cast
//! would cut it), a `numeric(12, 2)` rounds. Array and composite columns (and domains over
//! domains) read JSON arrays and objects in ways no input function does; a table with one of
//! those keeps the JSON form ([`TableColumns::columnar`] is false). `tests/row_sets.rs` writes
//! the same rows both ways and compares what is stored.

use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;

use prism_postgres::StoreError;

/// The query that reads a table's columns, in order, as [`TableColumns::from_rows`] takes them
/// (`$1`: the table's name, in the connection's current schema).
pub const COLUMNS_SQL: &str = "\
SELECT a.attname::text,
       format_type(a.atttypid, NULL),
       CASE WHEN coalesce(b.typtype, t.typtype) IN ('c', 'd') OR coalesce(b.typcategory, t.typcategory) = 'A'
                THEN 'json only'
            WHEN coalesce(b.oid, t.oid) IN ('json'::regtype, 'jsonb'::regtype) THEN 'json'
            ELSE 'text' END,
       a.atttypid
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type b ON t.typtype = 'd' AND b.oid = t.typbasetype
WHERE n.nspname = current_schema() AND c.relname = $1
  AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// How a column's values are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueText {
    /// The element is the input function's text: a JSON string unescaped, anything else as
    /// written.
    Scalar,
    /// A `json` or `jsonb` column: the element is the value's JSON text.
    Json,
}

/// A table's columns, read from the catalog, and how a set of its rows is sent.
#[derive(Debug, Clone)]
pub struct TableColumns {
    names: Vec<String>,
    /// The type each element is cast to (without modifier), as `format_type` names it.
    casts: Vec<String>,
    texts: Vec<ValueText>,
    /// Each column's type (a domain's own, not its base type's).
    type_oids: Vec<u32>,
    columnar: bool,
}

impl TableColumns {
    /// The columns of a [`COLUMNS_SQL`] result; `None` when the table has none (it does not
    /// exist).
    pub fn from_rows(rows: &[tokio_postgres::Row]) -> Option<Self> {
        if rows.is_empty() {
            return None;
        }
        let mut columns = Self {
            names: Vec::new(),
            casts: Vec::new(),
            texts: Vec::new(),
            type_oids: Vec::new(),
            columnar: true,
        };
        for row in rows {
            columns.names.push(row.get(0));
            columns.casts.push(row.get(1));
            columns.type_oids.push(row.get(3));
            let kind: &str = row.get(2);
            columns.columnar &= kind != "json only";
            columns.texts.push(if kind == "json" { ValueText::Json } else { ValueText::Scalar });
        }
        Some(columns)
    }

    /// The column names, in the table's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The OID of the type of the column named `name`.
    pub fn type_oid(&self, name: &str) -> Option<u32> {
        self.names.iter().position(|n| n == name).map(|at| self.type_oids[at])
    }

    /// Whether rows go as one text array per column (else as one JSON array).
    pub fn columnar(&self) -> bool {
        self.columnar
    }

    /// The head of an insert of a row set into `table` (aliased `t`), to be followed by an
    /// `ON CONFLICT` clause: every column, from the parameters [`TableColumns::params`] makes.
    pub fn insert(&self, table: &str) -> String {
        if !self.columnar {
            return format!("INSERT INTO {table} AS t SELECT * FROM json_populate_recordset(NULL::{table}, $1::text::json)");
        }
        let quoted: Vec<String> = self.names.iter().map(|name| quote_identifier(name)).collect();
        let select: Vec<String> = (0..self.names.len()).map(|i| self.element(i)).collect();
        let (arrays, aliases) = self.unnest_columns();
        format!(
            "INSERT INTO {table} AS t ({}) SELECT {} FROM unnest({}) AS u({})",
            quoted.join(", "),
            select.join(", "),
            arrays.join(", "),
            aliases.join(", ")
        )
    }

    /// Column `i`'s value of a row of the `unnest` ([`TableColumns::unnest_columns`]), cast to
    /// the column's type.
    fn element(&self, i: usize) -> String {
        match self.casts[i].as_str() {
            "text" => format!("u.c{i}"),
            cast => format!("u.c{i}::{cast}"),
        }
    }

    /// The `unnest` of the row set's parameters: one `text[]` per column (`$1`, `$2`, …), and
    /// the alias of each (`c0`, `c1`, …).
    fn unnest_columns(&self) -> (Vec<String>, Vec<String>) {
        let arrays = (1..=self.names.len()).map(|n| format!("${n}::text[]")).collect();
        let aliases = (0..self.names.len()).map(|i| format!("c{i}")).collect();
        (arrays, aliases)
    }

    /// An update of a row set into `table` (aliased `t`) at rows whose places the caller knows:
    /// every column but `key` and those in `kept` set from the parameters
    /// [`TableColumns::params`] makes, then `also_set` (SQL, e.g. a counter's step), the row
    /// set's rows found by the `ctid`s in one more parameter after those (their text, one per
    /// row, in order). Each row is also checked to hold the key it is meant for, in a form no
    /// index answers, so that the `ctid` stays the way the row is found: a row that moved
    /// since its place was read is skipped, never another row updated. `None` for a table whose
    /// rows go as JSON ([`TableColumns::columnar`]).
    pub fn update_located(&self, table: &str, key: &str, kept: &[&str], also_set: &str) -> Option<String> {
        if !self.columnar {
            return None;
        }
        let key_at = self.names.iter().position(|name| name == key)?;
        let mut sets: Vec<String> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, name)| name.as_str() != key && !kept.contains(&name.as_str()))
            .map(|(i, name)| format!("{} = {}", quote_identifier(name), self.element(i)))
            .collect();
        sets.push(also_set.to_owned());
        let (mut arrays, mut aliases) = self.unnest_columns();
        arrays.push(format!("${}::text[]::tid[]", self.names.len() + 1));
        aliases.push("row_id".to_owned());
        Some(format!(
            "UPDATE {table} AS t SET {} FROM unnest({}) AS u({}) \
             WHERE t.ctid = u.row_id AND t.{} IS NOT DISTINCT FROM {}",
            sets.join(", "),
            arrays.join(", "),
            aliases.join(", "),
            quote_identifier(key),
            self.element(key_at)
        ))
    }

    /// The parameters of [`TableColumns::insert`] for `rows`, a JSON array of objects keyed by
    /// column name: the text itself, or where each column's values lie in it.
    pub fn params(&self, rows: String) -> Result<RowParams, StoreError> {
        if !self.columnar {
            return Ok(RowParams(Form::Json(rows)));
        }
        let mut split = Split {
            names: &self.names,
            texts: &self.texts,
            base: rows.as_ptr() as usize,
            columns: vec![Vec::new(); self.names.len()],
            unescaped: Vec::new(),
            row: vec![Element::Null; self.names.len()],
        };
        let mut deserializer = serde_json::Deserializer::from_str(&rows);
        serde::de::DeserializeSeed::deserialize(&mut split, &mut deserializer)
            .and_then(|()| deserializer.end())
            .map_err(|e| StoreError::Corrupt {
                what: "read-model row",
                detail: format!("a row set that is not an array of objects: {e}"),
            })?;
        let (columns, unescaped) = (split.columns, split.unescaped);
        Ok(RowParams(Form::Columns { text: rows, unescaped, columns }))
    }
}

/// `name` as an SQL identifier, quoted (the catalog's spelling kept exactly).
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where one value of a column lies.
#[derive(Debug, Clone, Copy)]
enum Element {
    /// SQL `NULL`: JSON `null`, or no such key.
    Null,
    /// A range of the rows' text, as it is.
    Slice(usize, usize),
    /// A string with escapes, unescaped: its index in the unescaped strings.
    Unescaped(usize),
}

/// The parameters of a row set's insert ([`TableColumns::params`]); [`RowParams::values`]
/// borrows them as a statement takes them.
#[derive(Debug)]
pub struct RowParams(Form);

#[derive(Debug)]
enum Form {
    /// The rows as one JSON array (`$1`).
    Json(String),
    /// One text array per column (`$1`, `$2`, …), its values in the rows' text.
    Columns { text: String, unescaped: Vec<String>, columns: Vec<Vec<Element>> },
}

impl RowParams {
    /// How many rows they hold; `None` in the JSON form, which is not split.
    pub fn rows(&self) -> Option<usize> {
        match &self.0 {
            Form::Json(_) => None,
            Form::Columns { columns, .. } => Some(columns.first().map_or(0, Vec::len)),
        }
    }

    /// The values, borrowed.
    pub fn values(&self) -> RowValues<'_> {
        match &self.0 {
            Form::Json(text) => RowValues::Json(text),
            Form::Columns { text, unescaped, columns } => RowValues::Columns(
                columns
                    .iter()
                    .map(|column| {
                        column
                            .iter()
                            .map(|element| match *element {
                                Element::Null => None,
                                Element::Slice(start, end) => Some(&text[start..end]),
                                Element::Unescaped(index) => Some(unescaped[index].as_str()),
                            })
                            .collect()
                    })
                    .collect(),
            ),
        }
    }
}

/// A row set's parameters as a statement takes them.
#[derive(Debug)]
pub enum RowValues<'a> {
    /// The JSON array.
    Json(&'a String),
    /// One array per column.
    Columns(Vec<Vec<Option<&'a str>>>),
}

impl RowValues<'_> {
    /// As a statement's parameter list.
    pub fn as_params(&self) -> Vec<&(dyn ToSql + Sync)> {
        match self {
            Self::Json(text) => vec![*text as &(dyn ToSql + Sync)],
            Self::Columns(columns) => columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect(),
        }
    }
}

/// Splits a JSON array of objects into columns in one pass, without copying a value that needs
/// no unescaping: keys are matched to columns as they are read, values kept as ranges of the
/// text.
struct Split<'c> {
    names: &'c [String],
    texts: &'c [ValueText],
    /// The address of the text's first byte (values are ranges from it).
    base: usize,
    columns: Vec<Vec<Element>>,
    unescaped: Vec<String>,
    /// The row being read.
    row: Vec<Element>,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Split<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Split<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of JSON objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut rows: A) -> Result<(), A::Error> {
        while rows.next_element_seed(Row(&mut *self))?.is_some() {}
        Ok(())
    }
}

/// One object of the array.
struct Row<'s, 'c>(&'s mut Split<'c>);

impl<'de> serde::de::DeserializeSeed<'de> for Row<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Row<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let split = self.0;
        split.row.fill(Element::Null);
        let mut next = 0;
        while let Some(column) = map.next_key_seed(Column { names: split.names, next })? {
            let raw: &'de RawValue = map.next_value()?;
            // Keys the table has no column for are read past, as `json_populate_recordset` does.
            let Some(column) = column else { continue };
            next = column + 1;
            split.row[column] = element(raw, split.texts[column], split.base, &mut split.unescaped)
                .map_err(serde::de::Error::custom)?;
        }
        for (column, element) in split.columns.iter_mut().zip(&split.row) {
            column.push(*element);
        }
        Ok(())
    }
}

/// A key, read as the index of its column (the one after the previous key's tried first: rows
/// are usually written in the table's order).
struct Column<'c> {
    names: &'c [String],
    next: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Column<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for Column<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        if self.names.get(self.next).is_some_and(|name| name == key) {
            return Ok(Some(self.next));
        }
        Ok(self.names.iter().position(|name| name == key))
    }
}

/// Where a JSON value's element lies, as `json_populate_recordset` reads the value (module
/// docs): `base` is the address of the text `raw` is part of.
fn element(
    raw: &RawValue,
    text: ValueText,
    base: usize,
    unescaped: &mut Vec<String>,
) -> Result<Element, serde_json::Error> {
    let json = raw.get();
    if json == "null" {
        return Ok(Element::Null);
    }
    let start = json.as_ptr() as usize - base;
    if text == ValueText::Scalar && json.starts_with('"') {
        if !json.contains('\\') {
            return Ok(Element::Slice(start + 1, start + json.len() - 1));
        }
        unescaped.push(serde_json::from_str::<String>(json)?);
        return Ok(Element::Unescaped(unescaped.len() - 1));
    }
    Ok(Element::Slice(start, start + json.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(spec: &[(&str, ValueText)]) -> TableColumns {
        TableColumns {
            names: spec.iter().map(|(name, _)| (*name).to_owned()).collect(),
            casts: spec.iter().map(|_| "text".to_owned()).collect(),
            texts: spec.iter().map(|(_, text)| *text).collect(),
            type_oids: spec.iter().map(|_| tokio_postgres::types::Type::TEXT.oid()).collect(),
            columnar: true,
        }
    }

    #[test]
    fn values_are_what_json_populate_reads() {
        let table = columns(&[("a", ValueText::Scalar), ("b", ValueText::Scalar), ("j", ValueText::Json)]);
        let rows = r#"[
            {"a": "a \"quoted\"\n\u00e9", "b": 1.50, "j": "text"},
            {"j": [1, {"b": null}], "b": true, "extra": {"x": 1}, "a": {"a":1}},
            {"a": null, "j": null},
            {}
        ]"#;
        let params = table.params(rows.to_owned()).expect("an array of objects");
        let RowValues::Columns(values) = params.values() else { panic!("columnar") };
        assert_eq!(values.len(), 3, "one array per column");
        assert_eq!(values[0], vec![Some("a \"quoted\"\né"), Some(r#"{"a":1}"#), None, None]);
        assert_eq!(values[1], vec![Some("1.50"), Some("true"), None, None]);
        assert_eq!(values[2], vec![Some(r#""text""#), Some(r#"[1, {"b": null}]"#), None, None]);
    }

    #[test]
    fn anything_but_an_array_of_objects_is_refused() {
        let table = columns(&[("a", ValueText::Scalar)]);
        for rows in ["[1]", "{}", "[{\"a\": 1}", "[{\"a\": 1}] trailing", "[{\"a\": \"\\x\"}]"] {
            let refused = table.params(rows.to_owned()).expect_err(rows);
            assert!(refused.to_string().contains("not an array of objects"), "{rows}: {refused}");
        }
        let empty = table.params("[]".to_owned()).expect("empty");
        let RowValues::Columns(values) = empty.values() else { panic!("columnar") };
        assert_eq!(values, vec![Vec::<Option<&str>>::new()], "one empty array for the one column");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("order_id"), "\"order_id\"");
        assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
    }
}
