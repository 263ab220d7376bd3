//! A stored row's document — the JSON object of the application's columns that the cache holds
//! and the query service answers — printed by the engine from the values PostgreSQL returns in
//! binary (a float as its text), instead of by PostgreSQL with `row_to_json`.
//!
//! Every row a batch writes to a cached read model comes back to become its cache entry, and
//! printing it cost PostgreSQL more than writing it: `row_to_json` of an `order_summary` row
//! (uuids, timestamps, a `jsonb` of lines) took about 3.6 µs of a backend's CPU and sending the
//! text about 2 more, against about 4 µs for the upsert itself. Returned in binary, a value is
//! mostly a copy (a `jsonb` is still printed: its binary form is its text), and the engine
//! prints the object.
//!
//! The text is the one `row_to_json` prints in the engine's sessions (`TimeZone` is UTC on
//! every connection, see `prism_postgres::pool`), byte for byte, so a document reads the same
//! whichever side printed it: `tests/documents.rs` compares the two for edge values of every
//! type printed here, and for thousands of random floats. Those are booleans, integers, `real`
//! and `double precision`, `numeric`, text types, `uuid`, `json`, `jsonb`, `date`, `timestamp`
//! and `timestamptz`. A float comes back as PostgreSQL's own text of it: the statement selects
//! `column::text`, which calls `float8out` (`float4out`) as `row_to_json` does. Its shortest
//! round-trip digits are Ryu's with a change of PostgreSQL's own (it never prints a decimal
//! that lies exactly halfway between two floats), which the `ryu` crate does not make (123 of
//! 20 000 random floats came out differently), and one float's text costs PostgreSQL little
//! beside printing the whole row. The engine places that text in the
//! document: as a number, or quoted where it is not a JSON number (`NaN`, `Infinity`), as
//! `row_to_json` does. A table with a column of any other type (arrays, enums, domains,
//! composites, intervals) keeps `row_to_json` ([`DocumentPrinter::for_columns`] says which).

use std::error::Error;

use prism_postgres::StoreError;
use tokio_postgres::types::{FromSql, Type};

/// The days from 4713 BC (the Julian day count) to 2000-01-01, where PostgreSQL's dates and
/// timestamps count from.
const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// Whether the engine prints values of the type with this OID (see the module's header).
fn prints_type(oid: u32) -> bool {
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::UUID,
        Type::JSON,
        Type::JSONB,
        Type::DATE,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
    ]
    .iter()
    .any(|printed| printed.oid() == oid)
        || is_float(oid)
}

/// Whether the type with this OID is `real` or `double precision`, whose values come back as
/// PostgreSQL's text of them (see the module's header).
fn is_float(oid: u32) -> bool {
    oid == Type::FLOAT4.oid() || oid == Type::FLOAT8.oid()
}

/// Prints the documents of one table's rows: the application's columns, in the table's order,
/// as the last columns of each row a statement returns.
#[derive(Debug, Clone)]
pub struct DocumentPrinter {
    /// Each column's key as the object prints it: the name as a JSON string, and `:`.
    keys: Vec<String>,
    /// Which columns are floats, returned as PostgreSQL's text of them
    /// ([`DocumentPrinter::selected`]).
    floats: Vec<bool>,
}

impl DocumentPrinter {
    /// A printer for columns `names` of types `oids` (the same length, in the table's order);
    /// `None` when a column's type is not one the engine prints.
    pub fn for_columns(names: &[&str], oids: &[u32]) -> Option<Self> {
        if names.len() != oids.len() || !oids.iter().all(|oid| prints_type(*oid)) {
            return None;
        }
        let keys = names
            .iter()
            .map(|name| {
                let mut key = String::with_capacity(name.len() + 3);
                escape_json(&mut key, name);
                key.push(':');
                key
            })
            .collect();
        let floats = oids.iter().copied().map(is_float).collect();
        Some(Self { keys, floats })
    }

    /// What a statement returns for the printer's column `index`, given the column as an
    /// expression (`t."ratio"`): the column itself, or a float's text (see the module's header).
    pub fn selected(&self, index: usize, column: &str) -> String {
        if self.floats.get(index).copied().unwrap_or(false) {
            format!("{column}::text")
        } else {
            column.to_owned()
        }
    }

    /// The document of `row`, whose columns from `first` on are the printer's columns as
    /// [`DocumentPrinter::selected`] returns them, as `row_to_json` of them prints it.
    pub fn print(&self, row: &tokio_postgres::Row, first: usize) -> Result<String, StoreError> {
        let columns = row.columns();
        if columns.len() != first + self.keys.len() {
            return Err(StoreError::Corrupt {
                what: "read-model row",
                detail: format!(
                    "{} columns returned where {} were expected",
                    columns.len(),
                    first + self.keys.len()
                ),
            });
        }
        let mut document = String::with_capacity(64 * self.keys.len());
        document.push('{');
        for (index, key) in self.keys.iter().enumerate() {
            if index > 0 {
                document.push(',');
            }
            document.push_str(key);
            let at = first + index;
            let raw: Option<RawValue<'_>> = row.try_get(at).map_err(|e| StoreError::Corrupt {
                what: "read-model row",
                detail: format!("column {}: {e}", columns[at].name()),
            })?;
            match raw {
                None => document.push_str("null"),
                Some(RawValue(bytes)) => {
                    let printed = match (self.floats[index], columns[at].type_()) {
                        (false, ty) => print_value(&mut document, ty, bytes),
                        (true, &Type::TEXT) => utf8(bytes).map(|text| print_float_text(&mut document, text)),
                        (true, ty) => Err(format!("a float returned as {ty}, not as its text")),
                    };
                    printed.map_err(|detail| StoreError::Corrupt {
                        what: "read-model row",
                        detail: format!("column {} ({}): {detail}", columns[at].name(), columns[at].type_()),
                    })?
                }
            }
        }
        document.push('}');
        Ok(document)
    }
}

/// A value as PostgreSQL sent it in binary, of any type.
struct RawValue<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawValue<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Self(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Appends one non-NULL value of type `ty` in binary as `row_to_json` prints it.
fn print_value(out: &mut String, ty: &Type, bytes: &[u8]) -> Result<(), String> {
    match *ty {
        Type::BOOL => out.push_str(if fixed::<1>(bytes)?[0] != 0 { "true" } else { "false" }),
        Type::INT2 => write_number(out, i16::from_be_bytes(fixed(bytes)?)),
        Type::INT4 => write_number(out, i32::from_be_bytes(fixed(bytes)?)),
        Type::INT8 => write_number(out, i64::from_be_bytes(fixed(bytes)?)),
        Type::NUMERIC => print_numeric(out, bytes)?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR => escape_json(out, utf8(bytes)?),
        Type::UUID => print_uuid(out, fixed(bytes)?),
        Type::JSON => out.push_str(utf8(bytes)?),
        // A version byte (1), then the value's text.
        Type::JSONB => match bytes.split_first() {
            Some((1, text)) => out.push_str(utf8(text)?),
            _ => return Err("a jsonb value of an unknown binary version".to_owned()),
        },
        Type::DATE => {
            out.push('"');
            match i32::from_be_bytes(fixed(bytes)?) {
                i32::MIN => out.push_str("-infinity"),
                i32::MAX => out.push_str("infinity"),
                days => {
                    let (year, month, day) = julian_to_date(i64::from(days) + POSTGRES_EPOCH_JDATE);
                    print_date(out, year, month, day);
                    bc_suffix(out, year);
                }
            }
            out.push('"');
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            out.push('"');
            print_timestamp(out, i64::from_be_bytes(fixed(bytes)?), *ty == Type::TIMESTAMPTZ)?;
            out.push('"');
        }
        _ => return Err("a type the engine does not print".to_owned()),
    }
    Ok(())
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| format!("{} bytes where {N} were expected", bytes.len()))
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| format!("text that is not UTF-8: {e}"))
}

fn write_number(out: &mut String, number: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(number));
}

/// Appends `value` in `width` digits at least, zeros in front (`value` is not negative).
fn write_padded(out: &mut String, value: i64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// PostgreSQL's `escape_json`: the string quoted, `"` and `\` escaped, the control characters
/// below U+0020 as `\b`, `\f`, `\n`, `\r`, `\t` or `\u00xx`, everything else as it is.
/// serde_json escapes alike, but only into an `io::Write`: into this `String` that would cost
/// an allocation per value or a second UTF-8 check of every byte, on every row a batch returns.
fn escape_json(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    let mut plain_from = 0;
    for (at, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[plain_from..at]);
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        } else {
            out.push_str(escaped);
        }
        plain_from = at + 1;
    }
    out.push_str(&text[plain_from..]);
    out.push('"');
}

fn print_uuid(out: &mut String, bytes: [u8; 16]) {
    out.push('"');
    out.push_str(uuid::Uuid::from_bytes(bytes).hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    out.push('"');
}

/// A float's text as `float4out`/`float8out` printed it, as `row_to_json` places it: as it is
/// where it is a JSON number, quoted otherwise (`NaN`, `Infinity`, `-Infinity`).
fn print_float_text(out: &mut String, text: &str) {
    if is_json_number(text) {
        out.push_str(text);
    } else {
        escape_json(out, text);
    }
}

/// Whether `text` is a number as JSON writes one (serde_json reads numbers by JSON's grammar:
/// no leading `+` or zeros, digits on both sides of a point).
fn is_json_number(text: &str) -> bool {
    text.parse::<serde_json::Number>().is_ok()
}

/// `numeric_send`'s form printed as `numeric_out` prints it: base-10 000 digits, the weight of
/// the first, the sign, and the digits shown after the point. NaN and the infinities are not
/// JSON numbers, so `row_to_json` quotes them.
fn print_numeric(out: &mut String, bytes: &[u8]) -> Result<(), String> {
    const NEGATIVE: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const PLUS_INFINITY: u16 = 0xD000;
    const MINUS_INFINITY: u16 = 0xF000;
    if bytes.len() < 8 {
        return Err(format!("a numeric of {} bytes", bytes.len()));
    }
    let word = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let count = usize::from(word(0));
    let weight = i64::from(word(2) as i16);
    let sign = word(4);
    let scale = i64::from(word(6));
    if bytes.len() != 8 + 2 * count {
        return Err(format!("a numeric of {count} digits in {} bytes", bytes.len()));
    }
    match sign {
        NAN => {
            out.push_str("\"NaN\"");
            return Ok(());
        }
        PLUS_INFINITY => {
            out.push_str("\"Infinity\"");
            return Ok(());
        }
        MINUS_INFINITY => {
            out.push_str("\"-Infinity\"");
            return Ok(());
        }
        0 | NEGATIVE => {}
        other => return Err(format!("a numeric of sign {other:#06x}")),
    }
    let digit = |index: i64| -> u16 {
        if index >= 0 && (index as usize) < count {
            word(8 + 2 * index as usize)
        } else {
            0
        }
    };
    if sign == NEGATIVE {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for index in 0..=weight {
            let group = digit(index);
            if index == 0 {
                write_number(out, group);
            } else {
                write_padded(out, i64::from(group), 4);
            }
        }
    }
    if scale > 0 {
        out.push('.');
        let end = out.len() + scale as usize;
        let mut index = weight + 1;
        while out.len() < end {
            write_padded(out, i64::from(digit(index)), 4);
            index += 1;
        }
        out.truncate(end);
    }
    Ok(())
}

/// PostgreSQL's `j2date`: the proleptic Gregorian date of a Julian day (year 0 is 1 BC).
fn julian_to_date(julian_day: i64) -> (i64, u32, u32) {
    let mut julian = julian_day as u32;
    julian = julian.wrapping_add(32_044);
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1_461;
    julian -= quad * 1_461;
    let mut year = julian * 4 / 1_461;
    julian = if year != 0 { (julian + 305) % 365 } else { (julian + 306) % 366 } + 123;
    year += quad * 4;
    let quad = julian * 2_141 / 65_536;
    let day = julian - 7_834 * quad / 256;
    let month = (quad + 10) % 12 + 1;
    (i64::from(year) - 4_800, month, day)
}

/// `YYYY-MM-DD`, the year at least four digits, counted from 1 BC backwards before year 1.
fn print_date(out: &mut String, year: i64, month: u32, day: u32) {
    write_padded(out, if year > 0 { year } else { 1 - year }, 4);
    out.push('-');
    write_padded(out, i64::from(month), 2);
    out.push('-');
    write_padded(out, i64::from(day), 2);
}

fn bc_suffix(out: &mut String, year: i64) {
    if year <= 0 {
        out.push_str(" BC");
    }
}

/// A `timestamp` (`with_zone` false) or `timestamptz` in a UTC session, as microseconds from
/// 2000-01-01: `YYYY-MM-DDTHH:MM:SS`, the fraction without trailing zeros, `+00:00` for a
/// `timestamptz`, ` BC` last.
fn print_timestamp(out: &mut String, micros: i64, with_zone: bool) -> Result<(), String> {
    match micros {
        i64::MIN => out.push_str("-infinity"),
        i64::MAX => out.push_str("infinity"),
        _ => {
            let mut date = micros / USECS_PER_DAY;
            let mut time = micros - date * USECS_PER_DAY;
            if time < 0 {
                time += USECS_PER_DAY;
                date -= 1;
            }
            let julian = date + POSTGRES_EPOCH_JDATE;
            if !(0..=i64::from(i32::MAX)).contains(&julian) {
                return Err(format!("a timestamp out of range ({micros} µs)"));
            }
            let (year, month, day) = julian_to_date(julian);
            print_date(out, year, month, day);
            let hour = time / 3_600_000_000;
            time -= hour * 3_600_000_000;
            let minute = time / 60_000_000;
            time -= minute * 60_000_000;
            let second = time / 1_000_000;
            let fraction = time - second * 1_000_000;
            out.push('T');
            write_padded(out, hour, 2);
            out.push(':');
            write_padded(out, minute, 2);
            out.push(':');
            write_padded(out, second, 2);
            if fraction != 0 {
                out.push('.');
                write_padded(out, fraction, 6);
                let kept = out.trim_end_matches('0').len();
                out.truncate(kept);
            }
            if with_zone {
                out.push_str("+00:00");
            }
            bc_suffix(out, year);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn julian_days_are_the_dates_postgresql_gives_them() {
        assert_eq!(julian_to_date(POSTGRES_EPOCH_JDATE), (2000, 1, 1));
        assert_eq!(julian_to_date(POSTGRES_EPOCH_JDATE + 59), (2000, 2, 29));
        assert_eq!(julian_to_date(POSTGRES_EPOCH_JDATE - 1), (1999, 12, 31));
        // Day 0 is 4714-11-24 BC in the proleptic Gregorian calendar (year -4713).
        assert_eq!(julian_to_date(0), (-4713, 11, 24));
    }

    #[test]
    fn strings_are_escaped_as_postgresql_escapes_them() {
        let mut out = String::new();
        escape_json(&mut out, "a\"b\\c\u{8}\u{c}\n\r\t\u{1}\u{1f} é/\u{7f}");
        assert_eq!(out, r#""a\"b\\c\b\f\n\r\t\u0001\u001f é/"#.to_owned() + "\u{7f}\"");
    }

    fn numeric(weight: i16, sign: u16, scale: u16, digits: &[u16]) -> String {
        let mut bytes = Vec::new();
        for word in
            [digits.len() as u16, weight as u16, sign, scale].into_iter().chain(digits.iter().copied())
        {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        let mut out = String::new();
        print_numeric(&mut out, &bytes).expect("a numeric");
        out
    }

    #[test]
    fn float_texts_are_numbers_where_json_has_them_and_quoted_elsewhere() {
        let placed = |text: &str| {
            let mut out = String::new();
            print_float_text(&mut out, text);
            out
        };
        for number in ["0", "-0", "0.1", "-1.5", "100", "1e-05", "1e+15", "1.7976931348623157e+308", "5E-324"]
        {
            assert_eq!(placed(number), number);
        }
        assert_eq!(placed("NaN"), "\"NaN\"");
        assert_eq!(placed("Infinity"), "\"Infinity\"");
        assert_eq!(placed("-Infinity"), "\"-Infinity\"");
        for not_a_number in ["", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1 "] {
            assert!(!is_json_number(not_a_number), "{not_a_number:?}");
        }
    }

    #[test]
    fn numerics_print_their_scale() {
        assert_eq!(numeric(0, 0, 2, &[30, 5000]), "30.50");
        assert_eq!(numeric(-1, 0x4000, 5, &[12]), "-0.00120");
        assert_eq!(numeric(1, 0, 0, &[1, 2]), "10002");
        assert_eq!(numeric(0, 0, 0, &[]), "0");
        assert_eq!(numeric(0, 0xC000, 0, &[]), "\"NaN\"");
    }
}
