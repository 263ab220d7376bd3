//! The shop's commands that read or write more than one aggregate, on the engine's
//! [`CommandService::execute_with`]. Commands to one aggregate go straight to
//! [`CommandService::execute`].
//!
//! - [`add_cart_item`]: a cart reads the user (registered?) and the catalog (listed? price?).
//! - [`check_out`]: the cart is checked out, the order placed for its owner and each line's
//!   units reserved with its product — one transaction.
//! - [`place_order`]: items priced by the catalog, the order placed, each line's units
//!   reserved — one transaction.
//! - [`cancel_order`], [`ship_order`]: the order's status changes and each product it holds
//!   units of releases them, or ships them out of stock — one transaction.
//!
//! References: an order or a cart for a user id that was never registered is refused with
//! 409 `user_not_found` (like `product_not_found`, the id is in the request body; a 404 would
//! read as "no such cart/order").
//!
//! Stock: the product streams are appended under the event store's optimistic concurrency
//! check like the addressed one, so of two orders racing for the last units one appends and
//! the other is decided again with the product's new state — and refused with 409
//! `insufficient_stock` (naming the product and the requested and available units) when the
//! units are gone. Deciding again after a *product* changed is the service's own business
//! (the client named no product version), so it happens here, a bounded number of times
//! ([`STOCK_ATTEMPTS`]); a conflict on the addressed cart or order is the client's and is
//! answered 409 `concurrent_modification` as everywhere else. Product streams are appended in
//! product-id order, so two transactions never wait on each other's products in opposite
//! orders. Each product's outcome is in the reply under `products[<line>]`.

use std::future::Future;
use std::sync::LazyLock;

use futures::future::try_join_all;
use prism_commands::{CommandService, Decision, Loaded, Reply, RequestMeta, ServiceError, StreamAppend};
use shop_model::aggregates::PRODUCT;
use shop_model::domain::{
    Aggregate, CartCommand, CartState, DomainError, OrderCommand, OrderState, ProductCommand,
    ProductSnapshot, ProductState, Rejection, UserState,
};
use shop_model::events::fields::bounds::MAX_LINES;
use shop_model::events::OrderLine;
use uuid::Uuid;

/// What a shop command can fail with.
pub type ShopError = ServiceError<DomainError>;

/// How many times a command that moves stock is decided at most when other commands keep
/// changing its products between load and append. Each such conflict means another command
/// on the product succeeded, so this bounds the wait under contention, not the progress.
pub const STOCK_ATTEMPTS: usize = 32;

/// An order line as the client asks for it: the price comes from the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedItem {
    /// The product.
    pub product_id: Uuid,
    /// Units.
    pub quantity: u32,
}

/// Adds units of a product to a cart (opening it), at the catalog's current price, for a
/// registered user.
pub async fn add_cart_item(
    service: &CommandService,
    cart_id: Uuid,
    user_id: Uuid,
    item: RequestedItem,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    service
        .execute_with(meta, || async {
            let (cart, user, product) = futures::try_join!(
                service.load::<CartState>(cart_id),
                service.load::<UserState>(user_id),
                service.load::<ProductState>(item.product_id),
            )?;
            let snapshot = product
                .state()
                .product()
                .map(|p| ProductSnapshot { listed: p.listed, price_cents: p.price_cents });
            let command = CartCommand::AddItem {
                user_id,
                user_registered: user.state().exists(),
                product_id: item.product_id,
                quantity: item.quantity,
                product: snapshot,
            };
            Ok(Decision::new(cart.decide(&command, meta)?))
        })
        .await
}

/// Checks a cart out, places the order from its lines for the cart's owner and reserves the
/// lines' units, in one transaction. The reply is the cart's outcome with the order's under
/// `order` and each product's under `products[<line>]`.
pub async fn check_out(
    service: &CommandService,
    cart_id: Uuid,
    order_id: Uuid,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    retry_stock_conflicts(|| {
        service.execute_with(meta, || async {
            let cart = service.load::<CartState>(cart_id).await?;
            let cart_append = cart.decide(&CartCommand::CheckOut { order_id }, meta)?;
            // The cart exists and has lines: deciding the checkout succeeded.
            let owner = cart.state().owner().unwrap_or_default();
            let lines = cart.state().order_lines();
            let (order, user, products) = futures::try_join!(
                service.load::<OrderState>(order_id),
                service.load::<UserState>(owner),
                load_products(service, lines.iter().map(|line| line.product_id)),
            )?;
            let place = OrderCommand::Place {
                user_id: owner,
                user_registered: user.state().exists(),
                cart_id: Some(cart_id),
                lines: lines.clone(),
            };
            // If-Match speaks of the cart, the addressed aggregate, not of the new order.
            let related = meta.without_precondition();
            let order_append = order.decide(&place, &related)?;
            let reservations = reserve(order_id, &lines, &products, "lines", &related)?;
            Ok(with_products(Decision::new(cart_append).with_related("order", order_append), reservations))
        })
    })
    .await
}

/// Places an order from items priced by the catalog for a registered user and reserves the
/// items' units, in one transaction. A product the catalog does not have or has delisted
/// refuses the order (`product_not_found`, `product_not_listed`), so does an item for more
/// units than the product has available (`insufficient_stock`).
pub async fn place_order(
    service: &CommandService,
    order_id: Uuid,
    user_id: Uuid,
    items: &[RequestedItem],
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    retry_stock_conflicts(|| {
        service.execute_with(meta, || async {
            let (order, user) =
                futures::try_join!(service.load::<OrderState>(order_id), service.load::<UserState>(user_id))?;
            let user_registered = user.state().exists();
            if order.state().exists() || items.len() > MAX_LINES {
                // Already placed, or more lines than the contract allows: let the aggregate
                // answer before reading up to that many products.
                let lines = items
                    .iter()
                    .map(|i| OrderLine {
                        product_id: i.product_id,
                        quantity: i.quantity,
                        unit_price_cents: 1,
                    })
                    .collect();
                let command = OrderCommand::Place { user_id, user_registered, cart_id: None, lines };
                return Ok(Decision::new(order.decide(&command, meta)?));
            }
            let products = load_products(service, items.iter().map(|item| item.product_id)).await?;
            let lines = priced_lines(items, &products)?;
            let command =
                OrderCommand::Place { user_id, user_registered, cart_id: None, lines: lines.clone() };
            // The order's own rules (user, lines) come before the stock: a malformed quantity
            // is the request's field, not a shortage.
            let order_append = order.decide(&command, meta)?;
            let reservations = reserve(order_id, &lines, &products, "items", &meta.without_precondition())?;
            Ok(with_products(Decision::new(order_append), reservations))
        })
    })
    .await
}

/// Cancels an order and releases the units it holds, in one transaction.
pub async fn cancel_order(
    service: &CommandService,
    order_id: Uuid,
    reason: String,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    let command = OrderCommand::Cancel { reason };
    end_reservations(service, order_id, &command, |order_id| ProductCommand::Release { order_id }, meta).await
}

/// Ships a paid order and takes the units it holds out of stock, in one transaction.
pub async fn ship_order(
    service: &CommandService,
    order_id: Uuid,
    carrier: String,
    tracking_code: String,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    let command = OrderCommand::Ship { carrier, tracking_code };
    end_reservations(service, order_id, &command, |order_id| ProductCommand::ShipReserved { order_id }, meta)
        .await
}

/// Runs `command` on the order and `product_command` on every product of its lines that holds
/// units for it (products holding nothing — an order placed before reservations existed —
/// decide nothing and append nothing).
async fn end_reservations(
    service: &CommandService,
    order_id: Uuid,
    command: &OrderCommand,
    product_command: fn(Uuid) -> ProductCommand,
    meta: &RequestMeta,
) -> Result<Reply, ShopError> {
    retry_stock_conflicts(|| {
        service.execute_with(meta, || async {
            let order = service.load::<OrderState>(order_id).await?;
            let order_append = order.decide(command, meta)?;
            // Deciding succeeded: the order exists.
            let lines = order.state().order().map(|o| o.lines.clone()).unwrap_or_default();
            let products = load_products(service, lines.iter().map(|line| line.product_id)).await?;
            let related = meta.without_precondition();
            let mut appends = Vec::with_capacity(products.len());
            for (index, product) in products.iter().enumerate() {
                let append = product.decide(&product_command(order_id), &related)?;
                if !append.events.is_empty() {
                    appends.push((index, append));
                }
            }
            Ok(with_products(Decision::new(order_append), appends))
        })
    })
    .await
}

/// Runs `attempt` again while it loses a race on a product stream (see the module docs), at
/// most [`STOCK_ATTEMPTS`] times in all.
async fn retry_stock_conflicts<F, Fut>(mut attempt: F) -> Result<Reply, ShopError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Reply, ShopError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(ServiceError::Conflict { aggregate_type, aggregate_id })
                if aggregate_type == PRODUCT && tries < STOCK_ATTEMPTS =>
            {
                tracing::debug!(%aggregate_id, tries, "product changed concurrently; deciding again");
                tries += 1;
            }
            outcome => return outcome,
        }
    }
}

/// The products, loaded concurrently, in the order given.
async fn load_products(
    service: &CommandService,
    ids: impl Iterator<Item = Uuid>,
) -> Result<Vec<Loaded<ProductState>>, ShopError> {
    try_join_all(ids.map(|id| service.load::<ProductState>(id))).await
}

/// The items with the catalog's prices, or the refusal of the first that cannot be ordered.
fn priced_lines(
    items: &[RequestedItem],
    products: &[Loaded<ProductState>],
) -> Result<Vec<OrderLine>, ShopError> {
    items
        .iter()
        .zip(products)
        .enumerate()
        .map(|(index, (item, product))| {
            let product = on_sale(product, "items", index)?;
            Ok(OrderLine {
                product_id: item.product_id,
                quantity: item.quantity,
                unit_price_cents: product.price_cents,
            })
        })
        .collect()
}

/// The product of line `index` of `field`, if the catalog has it on sale; the refusal otherwise.
fn on_sale<'a>(
    product: &'a Loaded<ProductState>,
    field: &str,
    index: usize,
) -> Result<&'a shop_model::domain::Product, ShopError> {
    let id = product.aggregate_id();
    let Some(entry) = product.state().product() else {
        return Err(ServiceError::Refused(DomainError::rejected(
            Rejection::ProductNotFound,
            format!("{field}[{index}]: the catalog has no product {id}"),
        )));
    };
    if !entry.listed {
        return Err(ServiceError::Refused(DomainError::rejected(
            Rejection::ProductNotListed,
            format!("{field}[{index}]: product {id} was delisted"),
        )));
    }
    Ok(entry)
}

/// Each line's reservation with its product (`products[i]` is line `i`'s), or the refusal of
/// the first line that cannot be reserved, its message naming the line and the product.
fn reserve(
    order_id: Uuid,
    lines: &[OrderLine],
    products: &[Loaded<ProductState>],
    field: &str,
    meta: &RequestMeta,
) -> Result<Vec<(usize, StreamAppend)>, ShopError> {
    let mut appends = Vec::with_capacity(lines.len());
    for (index, (line, product)) in lines.iter().zip(products).enumerate() {
        on_sale(product, field, index)?;
        let command = ProductCommand::Reserve { order_id, quantity: line.quantity };
        let append = product.decide(&command, meta).map_err(|err| {
            err.map_refusal(|refusal| match refusal {
                DomainError::Rejected { reason, message } => DomainError::Rejected {
                    reason,
                    message: format!("{field}[{index}]: product {}: {message}", line.product_id),
                },
                other => other,
            })
        })?;
        appends.push((index, append));
    }
    Ok(appends)
}

/// The reply-body names of the product outcomes, by line: `products[0]`, `products[1]`, …
/// (the engine names related streams with static strings; an order has at most
/// `bounds::MAX_LINES` lines).
static PRODUCT_NAMES: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..MAX_LINES).map(|index| format!("products[{index}]")).collect());

/// `decision` with the products' appends, in product-id order (see the module docs), each
/// named after its line.
fn with_products(mut decision: Decision, mut products: Vec<(usize, StreamAppend)>) -> Decision {
    products.sort_by_key(|(_, append)| append.aggregate_id);
    for (index, append) in products {
        let name = PRODUCT_NAMES.get(index).map_or("products[…]", String::as_str);
        decision = decision.with_related(name, append);
    }
    decision
}
