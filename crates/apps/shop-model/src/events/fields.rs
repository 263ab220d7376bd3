//! The shop's own field rules (e-mail, SKU) and the bounds its contract, aggregates and
//! schemas share. The generic helpers (typed decoding that names the field, text and range
//! rules) are the engine's: [`prism_events::fields`].

use prism_events::fields::text;
use prism_events::DecodeError;

/// The contract's e-mail rule: one `@` with text on both sides and a dot in the domain, at
/// most 254 characters. Deliverability is not the contract's business.
pub fn email(field: &str, value: &str) -> Result<(), DecodeError> {
    text(field, value, 3, 254)?;
    let valid = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !value.contains(char::is_whitespace)
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(DecodeError::invalid(field, "is not an e-mail address"))
    }
}

/// A SKU: 1 to 64 characters from `A-Z a-z 0-9 - _`.
pub fn sku(field: &str, value: &str) -> Result<(), DecodeError> {
    text(field, value, 1, 64)?;
    if value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(())
    } else {
        Err(DecodeError::invalid(field, "may contain only letters, digits, `-` and `_`"))
    }
}

/// Limits shared by the contract, the domain and the schemas.
pub mod bounds {
    /// Highest price of one unit, in cents.
    pub const MAX_PRICE_CENTS: i64 = 100_000_000;
    /// Highest stock level of one product.
    pub const MAX_STOCK: i64 = 1_000_000_000;
    /// Largest quantity of one product in one cart or order line.
    pub const MAX_LINE_QUANTITY: u32 = 999;
    /// Most lines in one cart or order.
    pub const MAX_LINES: usize = 100;
    /// Longest free-text reason.
    pub const MAX_REASON_CHARS: usize = 500;
}
