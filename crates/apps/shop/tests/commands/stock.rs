//! The rules any shop keeps, on the command side, over HTTP against the real PostgreSQL: carts
//! and orders only for registered users; stock reserved when an order is placed (from items
//! or by checkout) in the order's transaction and refused with 409 `insufficient_stock` when
//! short; released when the order is cancelled; shipped with the order; orders racing for the
//! last units never oversell. Stock is read back from the event store through the product
//! aggregate and the `product_catalog` fold ([`product_stock`]).

use futures::future::join_all;
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shop_model::aggregates::{CART, ORDER, PRODUCT};
use uuid::Uuid;

use crate::support::{
    environment, event_count, product_stock, register_user, stored_versions, Answer, Server,
};

async fn env() -> TestEnv {
    environment(&[("PRISM__RELAY__ENABLED", "false")]).await
}

async fn list_product(server: &Server, price_cents: i64, stock: i64) -> Uuid {
    let id = Uuid::new_v4();
    let answer = server
        .post("/products", json!({"product_id": id, "sku": "SKU-S", "name": "Stocked", "price_cents": price_cents, "stock": stock}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    id
}

/// Places an order of `items` (product, units) for `user`.
async fn order(server: &Server, user: Uuid, items: &[(Uuid, i64)]) -> (Uuid, Answer) {
    let id = Uuid::new_v4();
    let items: Vec<Value> = items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect();
    (id, server.post("/orders", json!({"order_id": id, "user_id": user, "items": items})).await)
}

/// Asserts a 409 `rejected` with `reason` and returns its message.
fn rejected(answer: &Answer, reason: &str) -> String {
    assert_eq!(
        (answer.status, answer.error("code"), answer.error("reason")),
        (StatusCode::CONFLICT, Some("rejected"), Some(reason)),
        "{:?}",
        answer.body
    );
    answer.error("message").unwrap_or_default().to_owned()
}

/// A cart or an order for a user id that was never registered is refused with 409
/// `user_not_found`, naming the id, and appends nothing; the same requests for a registered
/// user succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_and_orders_need_a_registered_user() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let lamp = list_product(&server, 1_500, 10).await;
    let before = event_count(&env).await;

    let ghost = Uuid::new_v4();
    let cart = Uuid::new_v4();
    let add = |user: Uuid| json!({"user_id": user, "product_id": lamp, "quantity": 1});
    let refused = server.post(&format!("/carts/{cart}/items"), add(ghost)).await;
    assert!(rejected(&refused, "user_not_found").contains(&ghost.to_string()), "{:?}", refused.body);
    let (order_id, refused) = order(&server, ghost, &[(lamp, 1)]).await;
    assert!(rejected(&refused, "user_not_found").contains(&ghost.to_string()), "{:?}", refused.body);
    assert_eq!(event_count(&env).await, before, "a refused command appends nothing");
    assert!(stored_versions(&env, CART, cart).await.is_empty());
    assert!(stored_versions(&env, ORDER, order_id).await.is_empty());
    assert_eq!(product_stock(&env, lamp).await, (10, 0, 10), "nothing was reserved for the refused order");

    let user = register_user(&server).await;
    let opened = server.post(&format!("/carts/{cart}/items"), add(user)).await;
    assert_eq!(opened.status, StatusCode::CREATED, "{:?}", opened.body);
    let (_, placed) = order(&server, user, &[(lamp, 1)]).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    // The cart's owner is registered; anyone else is still not its owner.
    let stranger = server.post(&format!("/carts/{cart}/items"), add(ghost)).await;
    rejected(&stranger, "not_cart_owner");
    server.stop().await;
}

/// The case: 50 units of a product with 2 in stock. Refused with 409
/// `insufficient_stock`, the message naming the product and the units requested and
/// available; nothing is appended, the stock is unchanged. Within stock, the order reserves
/// its units in the same transaction (the reply names each product's outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_beyond_the_stock_are_refused_and_within_it_reserve() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let user = register_user(&server).await;
    let lamp = list_product(&server, 1_500, 2).await;
    let desk = list_product(&server, 20_000, 10).await;
    let before = event_count(&env).await;

    let (id, refused) = order(&server, user, &[(desk, 1), (lamp, 50)]).await;
    let message = rejected(&refused, "insufficient_stock");
    assert!(
        message.contains(&lamp.to_string()) && message.contains("50 units requested, 2 available"),
        "the message names the product and both quantities: {message}"
    );
    assert!(message.contains("items[1]"), "and the line: {message}");
    assert_eq!(event_count(&env).await, before, "not the order, not the other line's reservation");
    assert!(stored_versions(&env, ORDER, id).await.is_empty());
    assert_eq!(product_stock(&env, lamp).await, (2, 0, 2));
    assert_eq!(product_stock(&env, desk).await, (10, 0, 10));

    let (id, placed) = order(&server, user, &[(desk, 3), (lamp, 2)]).await;
    assert_eq!((placed.status, placed.version()), (StatusCode::CREATED, 1), "{:?}", placed.body);
    assert_eq!(placed.body["events"], json!(["OrderPlaced"]));
    for (line, product) in [(0, desk), (1, lamp)] {
        assert_eq!(
            placed.body[format!("products[{line}]")],
            json!({"aggregate_type": "product", "aggregate_id": product, "version": 2, "events": ["StockReserved"]}),
            "{:?}",
            placed.body
        );
    }
    assert_eq!(product_stock(&env, lamp).await, (2, 2, 0), "on hand, all reserved");
    assert_eq!(product_stock(&env, desk).await, (10, 3, 7));
    let client = env.db.client().await.expect("client");
    let reservation: Value = client
        .query_one(
            "SELECT payload FROM events WHERE aggregate_id = $1 AND event_type = 'StockReserved'",
            &[&lamp],
        )
        .await
        .expect("the reservation is stored")
        .get(0);
    assert_eq!(reservation, json!({"order_id": id, "quantity": 2}));
    let (order_tx, product_tx): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(DISTINCT causation_id) FROM events WHERE aggregate_id = $1), \
                        (SELECT count(*) FROM events WHERE aggregate_id = ANY($2) \
                           AND causation_id = (SELECT causation_id FROM events WHERE aggregate_id = $1))",
                &[&id, &vec![lamp, desk]],
            )
            .await
            .expect("causation");
        (row.get(0), row.get(1))
    };
    assert_eq!((order_tx, product_tx), (1, 2), "the order and both reservations come from one command");

    // The last units are gone: one more is refused; a correction cannot take reserved units.
    let (_, more) = order(&server, user, &[(lamp, 1)]).await;
    assert!(rejected(&more, "insufficient_stock").contains("1 units requested, 0 available"));
    let below = server.post(&format!("/products/{desk}/restock"), json!({"quantity": -8})).await;
    rejected(&below, "stock_below_reserved");
    assert_eq!(stored_versions(&env, PRODUCT, desk).await, vec![1, 2]);
    server.stop().await;
}

/// Checkout reserves the cart's lines with the order, or refuses the whole checkout: the cart
/// stays open, no order, nothing reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_reserves_the_cart_or_refuses_it_whole() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let user = register_user(&server).await;
    let lamp = list_product(&server, 1_500, 10).await;
    let desk = list_product(&server, 20_000, 2).await;
    let cart = Uuid::new_v4();
    for (product, quantity) in [(lamp, 4), (desk, 3)] {
        let added = server
            .post(
                &format!("/carts/{cart}/items"),
                json!({"user_id": user, "product_id": product, "quantity": quantity}),
            )
            .await;
        assert!(added.status.is_success(), "{:?}", added.body);
    }
    let order_id = Uuid::new_v4();
    let checkout = format!("/carts/{cart}/checkout");
    let short = server.post(&checkout, json!({"order_id": order_id})).await;
    let message = rejected(&short, "insufficient_stock");
    assert!(
        message.contains(&desk.to_string()) && message.contains("3 units requested, 2 available"),
        "{message}"
    );
    assert_eq!(stored_versions(&env, CART, cart).await, vec![1, 2, 3], "the cart is still open");
    assert!(stored_versions(&env, ORDER, order_id).await.is_empty());
    assert_eq!(product_stock(&env, lamp).await, (10, 0, 10));

    let removed =
        server.send(reqwest::Method::DELETE, &format!("/carts/{cart}/items/{desk}"), None, &[]).await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    let checked_out = server.post(&checkout, json!({"order_id": order_id})).await;
    assert_eq!(checked_out.status, StatusCode::OK, "{:?}", checked_out.body);
    assert_eq!(checked_out.body["order"]["events"], json!(["OrderPlaced"]));
    assert_eq!(checked_out.body["products[0]"]["events"], json!(["StockReserved"]));
    assert_eq!(product_stock(&env, lamp).await, (10, 4, 6));
    server.stop().await;
}

/// Cancelling an order releases what it reserved (available again, in the cancel's
/// transaction); shipping takes it out of stock; neither touches products of other orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_releases_and_shipping_ships_the_reserved_units() {
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let user = register_user(&server).await;
    let lamp = list_product(&server, 1_500, 5).await;
    let desk = list_product(&server, 20_000, 4).await;

    let (first, placed) = order(&server, user, &[(lamp, 3), (desk, 4)]).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    let (_, none_left) = order(&server, user, &[(desk, 1)]).await;
    rejected(&none_left, "insufficient_stock");

    let cancelled =
        server.post(&format!("/orders/{first}/cancel"), json!({"reason": "changed my mind"})).await;
    assert_eq!((cancelled.status, cancelled.version()), (StatusCode::OK, 2), "{:?}", cancelled.body);
    assert_eq!(cancelled.body["events"], json!(["OrderCancelled"]));
    assert_eq!(cancelled.body["products[0]"]["events"], json!(["StockReleased"]), "{:?}", cancelled.body);
    assert_eq!(cancelled.body["products[1]"]["events"], json!(["StockReleased"]), "{:?}", cancelled.body);
    assert_eq!(product_stock(&env, lamp).await, (5, 0, 5));
    assert_eq!(product_stock(&env, desk).await, (4, 0, 4), "available again");
    let again = server.post(&format!("/orders/{first}/cancel"), json!({"reason": "twice"})).await;
    rejected(&again, "order_cancelled");
    assert_eq!(product_stock(&env, desk).await, (4, 0, 4), "a refused cancel releases nothing");

    // The released units can be ordered again; shipping sends them out of the warehouse,
    // even after the product was delisted.
    let (second, placed) = order(&server, user, &[(desk, 4)]).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    let pay = server.post(&format!("/orders/{second}/pay"), json!({"method": "card"})).await;
    assert_eq!(pay.status, StatusCode::OK, "{:?}", pay.body);
    let paid = server
        .post(
            &format!("/orders/{second}/payment"),
            json!({"outcome": "succeeded", "payment_reference": "psp-9"}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    assert_eq!(product_stock(&env, desk).await, (4, 4, 0), "paying does not move stock");
    let delisted = server.post(&format!("/products/{desk}/delist"), json!({"reason": "last batch"})).await;
    assert_eq!(delisted.status, StatusCode::OK, "{:?}", delisted.body);
    let shipped = server
        .post(&format!("/orders/{second}/ship"), json!({"carrier": "DHL", "tracking_code": "T-1"}))
        .await;
    assert_eq!((shipped.status, shipped.version()), (StatusCode::OK, 4), "{:?}", shipped.body);
    assert_eq!(shipped.body["products[0]"]["events"], json!(["StockShipped"]), "{:?}", shipped.body);
    assert_eq!(product_stock(&env, desk).await, (0, 0, 0), "the units left with the order");
    assert_eq!(product_stock(&env, lamp).await, (5, 0, 5), "another product is untouched");
    server.stop().await;
}

/// Many orders at once for the last units of two products (their lines in both orders, so
/// the transactions take the products in opposite request orders): exactly as many succeed
/// as the stock allows, every other one is refused `insufficient_stock` (not a conflict, not
/// an outage), the stock is never oversold and each product's stream has one reservation per
/// winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_orders_never_oversell() {
    const STOCK: i64 = 5;
    const ORDERS: usize = 16;
    let env = env().await;
    let server = Server::start(env.config.clone()).await;
    let user = register_user(&server).await;
    let lamp = list_product(&server, 1_500, STOCK).await;
    let desk = list_product(&server, 20_000, STOCK).await;

    let requests = (0..ORDERS).map(|n| {
        let items = if n % 2 == 0 { [(lamp, 1), (desk, 1)] } else { [(desk, 1), (lamp, 1)] };
        let server = &server;
        async move { order(server, user, &items).await }
    });
    let answers = join_all(requests).await;
    let mut winners = Vec::new();
    for (id, answer) in &answers {
        match answer.status {
            StatusCode::CREATED => winners.push(*id),
            _ => {
                rejected(answer, "insufficient_stock");
            }
        }
    }
    let outcomes: Vec<(StatusCode, Option<&str>)> =
        answers.iter().map(|(_, a)| (a.status, a.error("reason"))).collect();
    assert_eq!(winners.len() as i64, STOCK, "exactly as many orders as units: {outcomes:?}");
    for product in [lamp, desk] {
        assert_eq!(product_stock(&env, product).await, (STOCK, STOCK, 0), "all reserved, none oversold");
        assert_eq!(
            stored_versions(&env, PRODUCT, product).await,
            (1..=STOCK + 1).collect::<Vec<i64>>(),
            "listing plus one reservation per winning order"
        );
    }
    let client = env.db.client().await.expect("client");
    let mut holders: Vec<Uuid> = client
        .query(
            "SELECT (payload->>'order_id')::uuid FROM events WHERE aggregate_id = $1 AND event_type = 'StockReserved'",
            &[&lamp],
        )
        .await
        .expect("reservations")
        .iter()
        .map(|row| row.get(0))
        .collect();
    holders.sort_unstable();
    winners.sort_unstable();
    assert_eq!(holders, winners, "the reservations belong to the orders that were placed");
    // Every transaction appended its products in product-id order, whatever the order of the
    // request's lines: two transactions never wait on each other's products crosswise.
    for row in client
        .query(
            "SELECT array_agg(aggregate_id ORDER BY global_position) FROM events \
             WHERE aggregate_type = 'product' AND event_type = 'StockReserved' GROUP BY causation_id",
            &[],
        )
        .await
        .expect("reservations per command")
    {
        let appended: Vec<Uuid> = row.get(0);
        let mut sorted = appended.clone();
        sorted.sort_unstable();
        assert_eq!(appended, sorted, "products appended out of id order");
    }
    server.stop().await;
}
