//! Opaque pagination cursors: the keyset position after the last row of a page.
//!
//! A cursor is the position as text, tagged with the list it belongs to, hex-encoded so it
//! travels in a URL unescaped and clients do not build their own. Keyset (not offset) paging
//! keeps every page one index range scan, and rows inserted meanwhile never shift a page.
//! Decoding checks the tag, so a products cursor given to the orders route is a 400, not
//! rows from the wrong place.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Longest cursor accepted, in characters (a product name is bounded well below this).
pub const MAX_CURSOR_CHARS: usize = 2048;

/// Where a user's order list continues: after this (placed_at, order_id), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrdersCursor {
    /// `placed_at` of the last order served.
    pub placed_at: DateTime<Utc>,
    /// Its id, the tie-break.
    pub order_id: Uuid,
}

/// Where the product list continues: after this (name, product_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductsCursor {
    /// `name` of the last product served.
    pub name: String,
    /// Its id, the tie-break.
    pub product_id: Uuid,
}

/// Why a cursor was refused (the message goes to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`cursor` is not a cursor this route issued")]
pub struct BadCursor;

impl OrdersCursor {
    /// The opaque form.
    pub fn encode(&self) -> String {
        hex(&format!("o|{}|{}", self.placed_at.timestamp_micros(), self.order_id))
    }

    /// Parses a cursor this type encoded.
    pub fn decode(text: &str) -> Result<Self, BadCursor> {
        let plain = unhex(text)?;
        let mut parts = plain.splitn(3, '|');
        let (Some("o"), Some(micros), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(BadCursor);
        };
        let micros: i64 = micros.parse().map_err(|_| BadCursor)?;
        let placed_at = DateTime::from_timestamp_micros(micros).ok_or(BadCursor)?;
        let order_id = Uuid::parse_str(id).map_err(|_| BadCursor)?;
        Ok(Self { placed_at, order_id })
    }
}

impl ProductsCursor {
    /// The opaque form.
    pub fn encode(&self) -> String {
        // The id goes before the name: names may contain `|`.
        hex(&format!("p|{}|{}", self.product_id, self.name))
    }

    /// Parses a cursor this type encoded.
    pub fn decode(text: &str) -> Result<Self, BadCursor> {
        let plain = unhex(text)?;
        let mut parts = plain.splitn(3, '|');
        let (Some("p"), Some(id), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(BadCursor);
        };
        let product_id = Uuid::parse_str(id).map_err(|_| BadCursor)?;
        Ok(Self { name: name.to_owned(), product_id })
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<String, BadCursor> {
    if text.is_empty() || text.len() > MAX_CURSOR_CHARS || text.len() % 2 != 0 {
        return Err(BadCursor);
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()).ok_or(BadCursor))
        .collect::<Result<_, _>>()?;
    String::from_utf8(bytes).map_err(|_| BadCursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_each_other_and_garbage() {
        let orders = OrdersCursor {
            placed_at: DateTime::from_timestamp_micros(1_763_625_600_123_456).expect("time"),
            order_id: Uuid::new_v4(),
        };
        assert_eq!(OrdersCursor::decode(&orders.encode()), Ok(orders));
        let products = ProductsCursor { name: "Mug | large ☕".into(), product_id: Uuid::new_v4() };
        assert_eq!(ProductsCursor::decode(&products.encode()), Ok(products.clone()));

        assert_eq!(OrdersCursor::decode(&products.encode()), Err(BadCursor));
        assert_eq!(ProductsCursor::decode(&orders.encode()), Err(BadCursor));
        for garbage in ["", "zz", "abc", "6f7c", &"00".repeat(MAX_CURSOR_CHARS)] {
            assert_eq!(OrdersCursor::decode(garbage), Err(BadCursor), "{garbage}");
            assert_eq!(ProductsCursor::decode(garbage), Err(BadCursor), "{garbage}");
        }
    }
}
