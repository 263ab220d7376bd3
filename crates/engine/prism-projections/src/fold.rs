//! A fold feed as the engine holds it: the application's typed fold behind a type-erased
//! handle, with its rows kept typed while a batch folds them.
//!
//! A batch folds every event of an aggregate into that aggregate's row one after the other.
//! Going through JSON values between events (row → value → row for each event) cost more than
//! the folds themselves, so the engine keeps the application's row type from the stored row
//! it reads to the row it writes: one parse per aggregate per batch, one serialisation, and a
//! clone of the typed row per event (what keeps the row as it was when the next event is
//! refused). What the engine needs of a typed row it cannot name — its key, its JSON — goes
//! through [`Fold`]'s methods.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use prism_events::Event;
use serde::ser::{Impossible, SerializeStruct};
use serde::Serialize;
use serde_json::Value;

use crate::error::Unprojectable;
use crate::read_model::Row;

/// A row being folded, of the read model's own row type (erased).
pub struct FoldedRow(Box<dyn Any + Send + Sync>);

impl fmt::Debug for FoldedRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FoldedRow")
    }
}

/// A read model's fold feed, erased over its row type. Cheap to clone.
#[derive(Clone)]
pub struct Fold(Arc<dyn FoldRows>);

impl fmt::Debug for Fold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fold")
    }
}

/// What [`Fold`] does for one row type.
trait FoldRows: Send + Sync {
    fn fold_stored(&self, stored: Option<&str>, event: &Event) -> Result<FoldedRow, Unprojectable>;
    fn fold_next(&self, current: &FoldedRow, event: &Event) -> Result<FoldedRow, Unprojectable>;
    fn column_text(&self, row: &FoldedRow, column: &'static str) -> Result<Option<String>, Unprojectable>;
    fn write_json(&self, row: &FoldedRow, out: &mut Vec<u8>) -> Result<(), Unprojectable>;
    fn to_value(&self, row: &FoldedRow) -> Result<Value, Unprojectable>;
}

impl Fold {
    pub(crate) fn new<R: Row + Clone>(
        read_model: &'static str,
        fold: fn(Option<R>, &Event) -> Result<R, Unprojectable>,
    ) -> Self {
        Self(Arc::new(TypedFold { read_model, fold }))
    }

    /// Folds `event` into the stored row `stored` (the application's columns as JSON text;
    /// `None` when the aggregate has no row yet).
    pub fn fold_stored(&self, stored: Option<&str>, event: &Event) -> Result<FoldedRow, Unprojectable> {
        self.0.fold_stored(stored, event)
    }

    /// Folds `event` into a row folded earlier in the batch, which stays as it was.
    pub fn fold_next(&self, current: &FoldedRow, event: &Event) -> Result<FoldedRow, Unprojectable> {
        self.0.fold_next(current, event)
    }

    /// The text of `row`'s `column` as the engine names rows by it (a string as is, anything
    /// else as JSON); `None` when the row has no such column or it is null.
    pub fn column_text(
        &self,
        row: &FoldedRow,
        column: &'static str,
    ) -> Result<Option<String>, Unprojectable> {
        self.0.column_text(row, column)
    }

    /// Appends `row` as a JSON object to `out`.
    pub fn write_json(&self, row: &FoldedRow, out: &mut Vec<u8>) -> Result<(), Unprojectable> {
        self.0.write_json(row, out)
    }

    /// `row` as a JSON value.
    pub fn to_value(&self, row: &FoldedRow) -> Result<Value, Unprojectable> {
        self.0.to_value(row)
    }

    /// The fold over JSON values: `current` read as the row type, `event` folded in, the
    /// result as JSON (for tools that hold rows as values, such as benchmarks).
    pub fn fold_value(&self, current: Option<&Value>, event: &Event) -> Result<Value, Unprojectable> {
        let text = current.map(Value::to_string);
        let folded = self.fold_stored(text.as_deref(), event)?;
        self.to_value(&folded)
    }
}

struct TypedFold<R> {
    read_model: &'static str,
    fold: fn(Option<R>, &Event) -> Result<R, Unprojectable>,
}

impl<R: Row + Clone> TypedFold<R> {
    fn typed<'r>(&self, row: &'r FoldedRow) -> Result<&'r R, Unprojectable> {
        row.0.downcast_ref::<R>().ok_or_else(|| {
            Unprojectable::new(format!(
                "a row given to the {} fold is not a {}",
                self.read_model,
                std::any::type_name::<R>()
            ))
        })
    }

    fn wrap(&self, row: R) -> FoldedRow {
        FoldedRow(Box::new(row))
    }
}

impl<R: Row + Clone> FoldRows for TypedFold<R> {
    fn fold_stored(&self, stored: Option<&str>, event: &Event) -> Result<FoldedRow, Unprojectable> {
        let current = match stored {
            Some(text) => Some(serde_json::from_str::<R>(text).map_err(|e| {
                Unprojectable::new(format!(
                    "the stored {} row does not read as {}: {e}",
                    self.read_model,
                    std::any::type_name::<R>()
                ))
            })?),
            None => None,
        };
        Ok(self.wrap((self.fold)(current, event)?))
    }

    fn fold_next(&self, current: &FoldedRow, event: &Event) -> Result<FoldedRow, Unprojectable> {
        let current = self.typed(current)?.clone();
        Ok(self.wrap((self.fold)(Some(current), event)?))
    }

    fn column_text(&self, row: &FoldedRow, column: &'static str) -> Result<Option<String>, Unprojectable> {
        let row = self.typed(row)?;
        let value = match row.serialize(ColumnOf { column }) {
            Ok(value) => value,
            // Not serialised as a plain struct (a map, a flattened struct): the slow way.
            Err(ColumnError::NotAStruct) => self.to_value_of(row)?.get(column).cloned(),
            Err(ColumnError::Serde(e)) => {
                return Err(Unprojectable::new(format!(
                    "the folded {} row does not serialise: {e}",
                    self.read_model
                )))
            }
        };
        Ok(value.filter(|v| !v.is_null()).map(|v| crate::key_value_text(&v)))
    }

    fn write_json(&self, row: &FoldedRow, out: &mut Vec<u8>) -> Result<(), Unprojectable> {
        serde_json::to_writer(out, self.typed(row)?).map_err(|e| {
            Unprojectable::new(format!("the folded {} row does not serialise: {e}", self.read_model))
        })
    }

    fn to_value(&self, row: &FoldedRow) -> Result<Value, Unprojectable> {
        self.to_value_of(self.typed(row)?)
    }
}

impl<R: Row + Clone> TypedFold<R> {
    fn to_value_of(&self, row: &R) -> Result<Value, Unprojectable> {
        serde_json::to_value(row).map_err(|e| {
            Unprojectable::new(format!("the folded {} row does not serialise: {e}", self.read_model))
        })
    }
}

/// A serializer that takes one field of a struct and skips the others without serialising
/// them: how the engine reads a folded row's key after every event at the cost of one field.
struct ColumnOf {
    column: &'static str,
}

#[derive(Debug)]
enum ColumnError {
    NotAStruct,
    Serde(String),
}

impl fmt::Display for ColumnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAStruct => f.write_str("not a struct"),
            Self::Serde(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for ColumnError {}

impl serde::ser::Error for ColumnError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Serde(msg.to_string())
    }
}

struct ColumnOfStruct {
    column: &'static str,
    found: Option<Value>,
}

impl SerializeStruct for ColumnOfStruct {
    type Ok = Option<Value>;
    type Error = ColumnError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ColumnError> {
        if key == self.column {
            self.found = Some(serde_json::to_value(value).map_err(|e| ColumnError::Serde(e.to_string()))?);
        }
        Ok(())
    }

    fn skip_field(&mut self, _key: &'static str) -> Result<(), ColumnError> {
        Ok(())
    }

    fn end(self) -> Result<Option<Value>, ColumnError> {
        Ok(self.found)
    }
}

/// Every shape but a struct's answers [`ColumnError::NotAStruct`].
macro_rules! not_a_struct {
    ($($name:ident($($arg:ty),*);)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<Option<Value>, ColumnError> { Err(ColumnError::NotAStruct) })*
    };
}

impl serde::Serializer for ColumnOf {
    type Ok = Option<Value>;
    type Error = ColumnError;
    type SerializeSeq = Impossible<Option<Value>, ColumnError>;
    type SerializeTuple = Impossible<Option<Value>, ColumnError>;
    type SerializeTupleStruct = Impossible<Option<Value>, ColumnError>;
    type SerializeTupleVariant = Impossible<Option<Value>, ColumnError>;
    type SerializeMap = Impossible<Option<Value>, ColumnError>;
    type SerializeStruct = ColumnOfStruct;
    type SerializeStructVariant = Impossible<Option<Value>, ColumnError>;

    not_a_struct! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<Option<Value>, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<Option<Value>, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Option<Value>, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, ColumnError> {
        Err(ColumnError::NotAStruct)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, ColumnError> {
        Ok(ColumnOfStruct { column: self.column, found: None })
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ColumnError> {
        Err(ColumnError::NotAStruct)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Counter {
        id: String,
        count: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Flattened {
        id: u64,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
    }

    fn column(row: &impl Serialize, column: &'static str) -> Result<Option<Value>, ColumnError> {
        row.serialize(ColumnOf { column })
    }

    #[test]
    fn takes_one_field_of_a_struct_and_says_when_it_is_not_one() {
        let row = Counter { id: "a".into(), count: 3, note: None };
        assert_eq!(column(&row, "id").expect("a column"), Some(json!("a")));
        assert_eq!(column(&row, "count").expect("a column"), Some(json!(3)));
        assert_eq!(column(&row, "note").expect("a column"), None);
        assert!(matches!(column(&json!({"id": 1}), "id"), Err(ColumnError::NotAStruct)));
        let flattened = Flattened { id: 7, rest: BTreeMap::new() };
        assert!(matches!(column(&flattened, "id"), Err(ColumnError::NotAStruct)));
    }

    #[test]
    fn column_text_reads_structs_and_other_shapes_alike() {
        let counter =
            Fold::new::<Counter>("counter", |_, _| Ok(Counter { id: "x".into(), count: 1, note: None }));
        let row = FoldedRow(Box::new(Counter { id: "k/1".into(), count: 2, note: None }));
        assert_eq!(counter.column_text(&row, "id").expect("a column").as_deref(), Some("k/1"));
        assert_eq!(counter.column_text(&row, "count").expect("a column").as_deref(), Some("2"));
        assert_eq!(counter.column_text(&row, "note").expect("a column"), None);
        let flattened = Fold::new::<Flattened>("flat", |_, _| Ok(Flattened { id: 0, rest: BTreeMap::new() }));
        let row = FoldedRow(Box::new(Flattened { id: 9, rest: BTreeMap::new() }));
        assert_eq!(flattened.column_text(&row, "id").expect("a column").as_deref(), Some("9"));
        // A row of another type is an error, not a panic.
        assert!(counter.column_text(&row, "id").is_err());
    }
}
