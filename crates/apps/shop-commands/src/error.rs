//! The shop's refusals as the engine's HTTP errors: [`DomainError::NotFound`] 404,
//! [`DomainError::Rejected`] 409 `rejected` with the rule's code as `reason`,
//! [`DomainError::InvalidField`] 400 naming the field. Everything else (conflicts, idempotency,
//! outages) is the engine's table (see `prism_commands::http::error`).

use prism_commands::http::ApiError;
use shop_model::domain::DomainError;

use crate::service::ShopError;

/// A domain refusal as an HTTP error.
pub fn refusal(err: DomainError) -> ApiError {
    match err {
        DomainError::NotFound { aggregate_type } => {
            ApiError::not_found(format!("{aggregate_type} not found"))
        }
        DomainError::Rejected { reason, message } => ApiError::rejected(reason.as_str(), message),
        DomainError::InvalidField { field, reason } => {
            let message = format!("field `{field}` is invalid: {reason}");
            ApiError::invalid_field(field, message)
        }
    }
}

/// A failed shop command as an HTTP error.
pub fn api_error(err: ShopError) -> ApiError {
    ApiError::from_service(err, refusal)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use shop_model::domain::Rejection;

    use super::*;

    #[test]
    fn refusals_map_to_their_statuses() {
        let missing = refusal(DomainError::not_found(shop_model::aggregates::ORDER));
        assert_eq!(
            (missing.status, missing.code, missing.message.as_str()),
            (StatusCode::NOT_FOUND, "not_found", "order not found")
        );
        let rule = refusal(DomainError::rejected(Rejection::CartEmpty, "the cart has no items"));
        assert_eq!((rule.status, rule.reason.as_deref()), (StatusCode::CONFLICT, Some("cart_empty")));
        let field = refusal(DomainError::invalid("lines[0].quantity", "must be at least 1"));
        assert_eq!(
            (field.status, field.field.as_deref()),
            (StatusCode::BAD_REQUEST, Some("lines[0].quantity"))
        );
    }
}
