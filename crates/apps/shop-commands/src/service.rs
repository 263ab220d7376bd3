//! The shop's commands that read or write more than one aggregate, on the engine's
//! [`CommandService::execute_with`]: adding a product to a cart at the catalog's price,
//! checking a cart out into a new order (both appended in one transaction), and placing an
//! order from items priced by the catalog. Commands to one aggregate go straight to
//! [`CommandService::execute`].

use futures::future::try_join_all;
use prism_commands::{CommandService, Decision, Reply, RequestMeta, ServiceError};
use shop_model::domain::{
    Aggregate, CartCommand, CartState, DomainError, OrderCommand, OrderState, ProductSnapshot, ProductState,
    Rejection,
};
use shop_model::events::fields::bounds::MAX_LINES;
use shop_model::events::OrderLine;
use uuid::Uuid;

/// What a shop command can fail with.
pub type ShopError = ServiceError<DomainError>;

/// An order line as the client asks for it: the price comes from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedItem {
    /// The product.
    pub product_id: Uuid,
    /// Units.
    pub quantity: u32,
}

/// Adds units of a product to a cart (opening it), at the catalog's current price.
pub async fn add_cart_item(
    service: &CommandService,
    cart_id: Uuid,
    user_id: Uuid,
    item: RequestedItem,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    service
        .execute_with(meta, || async {
            let product = service.load::<ProductState>(item.product_id).await?;
            let snapshot = product
                .state()
                .product()
                .map(|p| ProductSnapshot { listed: p.listed, price_cents: p.price_cents });
            let command = CartCommand::AddItem {
                user_id,
                product_id: item.product_id,
                quantity: item.quantity,
                product: snapshot,
            };
            let cart = service.load::<CartState>(cart_id).await?;
            Ok(Decision::new(cart.decide(&command, meta)?))
        })
        .await
}

/// Checks a cart out and places the order from its lines, in one transaction. The reply is the
/// cart's outcome with the order's under `order`.
pub async fn check_out(
    service: &CommandService,
    cart_id: Uuid,
    order_id: Uuid,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    service
        .execute_with(meta, || async {
            let cart = service.load::<CartState>(cart_id).await?;
            let cart_append = cart.decide(&CartCommand::CheckOut { order_id }, meta)?;
            let order = service.load::<OrderState>(order_id).await?;
            let place = OrderCommand::Place {
                // The cart exists: deciding the checkout succeeded.
                user_id: cart.state().owner().unwrap_or_default(),
                cart_id: Some(cart_id),
                lines: cart.state().order_lines(),
            };
            // If-Match speaks of the cart, the addressed aggregate, not of the new order.
            let order_append = order.decide(&place, &meta.without_precondition())?;
            Ok(Decision::new(cart_append).with_related("order", order_append))
        })
        .await
}

/// Places an order from items priced by the catalog. A product the catalog does not have or
/// has delisted refuses the order (`product_not_found`, `product_not_listed`).
pub async fn place_order(
    service: &CommandService,
    order_id: Uuid,
    user_id: Uuid,
    items: &[RequestedItem],
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    service
        .execute_with(meta, || async {
            let order = service.load::<OrderState>(order_id).await?;
            let lines = if !order.state().exists() && items.len() <= MAX_LINES {
                priced_lines(service, items).await?
            } else {
                // Already placed, or more lines than the contract allows: let the aggregate
                // answer before reading up to that many products.
                items
                    .iter()
                    .map(|i| OrderLine {
                        product_id: i.product_id,
                        quantity: i.quantity,
                        unit_price_cents: 1,
                    })
                    .collect()
            };
            let command = OrderCommand::Place { user_id, cart_id: None, lines };
            Ok(Decision::new(order.decide(&command, meta)?))
        })
        .await
}

/// The items with the catalog's prices, or the refusal of the first that cannot be ordered.
async fn priced_lines(
    service: &CommandService,
    items: &[RequestedItem],
) -> Result<Vec<OrderLine>, ShopError> {
    let products =
        try_join_all(items.iter().map(|item| service.load::<ProductState>(item.product_id))).await?;
    let mut lines = Vec::with_capacity(items.len());
    for (index, (item, product)) in items.iter().zip(products).enumerate() {
        let Some(product) = product.state().product() else {
            return Err(ServiceError::Refused(DomainError::rejected(
                Rejection::ProductNotFound,
                format!("items[{index}]: the catalog has no product {}", item.product_id),
            )));
        };
        if !product.listed {
            return Err(ServiceError::Refused(DomainError::rejected(
                Rejection::ProductNotListed,
                format!("items[{index}]: product {} was delisted", item.product_id),
            )));
        }
        lines.push(OrderLine {
            product_id: item.product_id,
            quantity: item.quantity,
            unit_price_cents: product.price_cents,
        });
    }
    Ok(lines)
}
