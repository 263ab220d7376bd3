//! A realistic event workload without the command service: users, products, carts and
//! orders driven through the real aggregates of `shop-model`, so every stream is one the
//! write side could have produced. Deterministic for a given seed.
//!
//! Events come out in a global order that keeps each aggregate's versions in order (the
//! order one Kafka partition delivers them in); timestamps advance by seconds to minutes per
//! command, so a few thousand events span several days (exercising per-day totals).
//!
//! Commands that span aggregates are decided as the command service decides them, all or
//! nothing: a checkout or a placed order also reserves each line's units with its product
//! (an order only within the available stock), cancelling releases them, shipping takes them
//! out of stock; carts and orders are only for registered users.

use std::collections::HashMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use prism_events::{Event, EventPosition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shop_model::domain::{
    Aggregate, CartCommand, CartState, OrderCommand, OrderState, OrderStatus, ProductCommand,
    ProductSnapshot, ProductState, ShopAggregate, UserCommand, UserState,
};
use shop_model::events::{OrderLine, PaymentMethod};
use shop_model::ShopEvent;
use uuid::Uuid;

/// One aggregate's state and how many events it has.
struct Stream<A> {
    id: Uuid,
    state: A,
    version: u64,
}

/// The random source, the simulated clock and the events recorded so far.
struct Recorder {
    rng: StdRng,
    clock: DateTime<Utc>,
    events: Vec<Event>,
}

impl Recorder {
    fn uuid(&mut self) -> Uuid {
        // A version-4 UUID drawn from the seeded generator, so runs repeat exactly.
        Uuid::from_u128(self.rng.random::<u128>() & !(0xF000 << 64) | (0x4000 << 64))
    }

    /// Runs `command` against an aggregate; on success its events are recorded.
    fn apply<A: ShopAggregate>(&mut self, stream: &mut Stream<A>, command: &A::Command) -> bool {
        let Ok(bodies) = stream.state.decide(command) else { return false };
        self.tick();
        self.record(stream, bodies)
    }

    /// Advances the simulated clock by one command's worth.
    fn tick(&mut self) {
        self.clock += Duration::seconds(self.rng.random_range(1..=240));
    }

    /// Records decided events of one aggregate at the current time, evolving its state.
    fn record<A: ShopAggregate>(&mut self, stream: &mut Stream<A>, bodies: Vec<ShopEvent>) -> bool {
        for body in bodies {
            if stream.state.evolve(&body).is_err() {
                return false;
            }
            stream.version += 1;
            let event_id = self.uuid();
            let correlation_id = self.uuid();
            let position = EventPosition {
                event_id,
                aggregate_id: stream.id,
                aggregate_version: stream.version,
                occurred_at: self.clock,
                correlation_id,
                causation_id: correlation_id,
            };
            self.events.push(Event::new(position, body));
        }
        true
    }

    /// A random index among the streams `wanted` accepts.
    fn pick<T>(&mut self, streams: &[Stream<T>], wanted: impl Fn(&Stream<T>) -> bool) -> Option<usize> {
        let candidates: Vec<usize> =
            streams.iter().enumerate().filter(|(_, s)| wanted(s)).map(|(i, _)| i).collect();
        (!candidates.is_empty()).then(|| candidates[self.rng.random_range(0..candidates.len())])
    }
}

/// Generates events.
pub struct Workload {
    out: Recorder,
    users: Vec<Stream<UserState>>,
    products: Vec<Stream<ProductState>>,
    /// Where each product is in `products`: orders look their lines' products up, and a
    /// workload of millions of events lists tens of thousands of products.
    product_indexes: HashMap<Uuid, usize>,
    carts: Vec<Stream<CartState>>,
    orders: Vec<Stream<OrderState>>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload").field("events", &self.out.events.len()).finish_non_exhaustive()
    }
}

impl Workload {
    /// About `target` events from `seed`.
    pub fn generate(seed: u64, target: usize) -> Vec<Event> {
        let mut workload = Self {
            out: Recorder {
                rng: StdRng::seed_from_u64(seed),
                clock: Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).single().unwrap_or_else(Utc::now),
                events: Vec::with_capacity(target + 8),
            },
            users: Vec::new(),
            products: Vec::new(),
            product_indexes: HashMap::new(),
            carts: Vec::new(),
            orders: Vec::new(),
        };
        while workload.out.events.len() < target {
            workload.step();
        }
        workload.out.events
    }

    fn step(&mut self) {
        let roll = self.out.rng.random_range(0..100);
        match roll {
            _ if self.users.len() < 3 || roll < 8 => self.register_user(),
            _ if self.products.len() < 4 || roll < 13 => self.list_product(),
            13..=19 => self.change_product(),
            20..=22 => self.change_profile(),
            23..=49 => self.add_to_cart(),
            50..=54 => self.remove_from_cart(),
            55..=64 => self.check_out(),
            65..=69 => self.place_order(),
            _ => self.advance_order(),
        }
    }

    fn register_user(&mut self) {
        let n = self.users.len();
        let mut stream = Stream { id: self.out.uuid(), state: UserState::default(), version: 0 };
        let command = UserCommand::Register {
            email: format!("user{n}@example.com"),
            display_name: format!("User {n}"),
            marketing_opt_in: self.out.rng.random_bool(0.3),
        };
        if self.out.apply(&mut stream, &command) {
            self.users.push(stream);
        }
    }

    fn change_profile(&mut self) {
        let i = self.out.rng.random_range(0..self.users.len());
        let command = UserCommand::ChangeProfile {
            email: None,
            display_name: Some(format!("User {i} v{}", self.users[i].version + 1)),
            marketing_opt_in: Some(self.out.rng.random_bool(0.5)),
        };
        self.out.apply(&mut self.users[i], &command);
    }

    fn list_product(&mut self) {
        let n = self.products.len();
        let mut stream = Stream { id: self.out.uuid(), state: ProductState::default(), version: 0 };
        let command = ProductCommand::List {
            sku: format!("SKU-{n:05}"),
            name: format!("Product {n}"),
            price_cents: self.out.rng.random_range(99..=25_000),
            stock: self.out.rng.random_range(0..=500),
        };
        if self.out.apply(&mut stream, &command) {
            self.product_indexes.insert(stream.id, self.products.len());
            self.products.push(stream);
        }
    }

    fn change_product(&mut self) {
        let i = self.out.rng.random_range(0..self.products.len());
        let available = self.products[i].state.product().map_or(0, |p| p.available());
        let command = match self.out.rng.random_range(0..12) {
            0 => ProductCommand::Delist { reason: "discontinued".into() },
            1..=4 => ProductCommand::ChangePrice { price_cents: self.out.rng.random_range(99..=25_000) },
            // A correction takes units off, never below what orders hold.
            5 if available > 0 => {
                ProductCommand::Restock { quantity: -self.out.rng.random_range(1..=available.min(10)) }
            }
            _ => ProductCommand::Restock { quantity: self.out.rng.random_range(1..=50) },
        };
        self.out.apply(&mut self.products[i], &command);
    }

    /// A random product's id and what a cart needs to know of it.
    fn random_product(&mut self) -> (Uuid, Option<ProductSnapshot>) {
        let stream = &self.products[self.out.rng.random_range(0..self.products.len())];
        (
            stream.id,
            stream.state.product().map(|p| ProductSnapshot { listed: p.listed, price_cents: p.price_cents }),
        )
    }

    fn add_to_cart(&mut self) {
        let user_id = self.users[self.out.rng.random_range(0..self.users.len())].id;
        let (product_id, product) = self.random_product();
        let quantity = self.out.rng.random_range(1..=3);
        // Carts are opened by registered users only: every id in `users` is one.
        let command = CartCommand::AddItem { user_id, user_registered: true, product_id, quantity, product };
        // Mostly fill one of the user's open carts; sometimes start another.
        let open = self
            .carts
            .iter()
            .position(|c| c.state.owner() == Some(user_id) && c.state.checked_out_into().is_none());
        match open {
            Some(i) if self.out.rng.random_bool(0.8) => {
                self.out.apply(&mut self.carts[i], &command);
            }
            _ => {
                let mut stream = Stream { id: self.out.uuid(), state: CartState::default(), version: 0 };
                if self.out.apply(&mut stream, &command) {
                    self.carts.push(stream);
                }
            }
        }
    }

    fn remove_from_cart(&mut self) {
        let open =
            |c: &Stream<CartState>| c.state.checked_out_into().is_none() && !c.state.lines().is_empty();
        let Some(i) = self.out.pick(&self.carts, open) else { return };
        let product_id = self.carts[i].state.lines()[0].product_id;
        self.out.apply(&mut self.carts[i], &CartCommand::RemoveItem { product_id });
    }

    fn check_out(&mut self) {
        let open =
            |c: &Stream<CartState>| c.state.checked_out_into().is_none() && !c.state.lines().is_empty();
        let Some(i) = self.out.pick(&self.carts, open) else { return };
        let order_id = self.out.uuid();
        let lines = self.carts[i].state.order_lines();
        let user_id = self.carts[i].state.owner().unwrap_or_default();
        let cart_id = self.carts[i].id;
        let Ok(cart_events) = self.carts[i].state.decide(&CartCommand::CheckOut { order_id }) else { return };
        let mut order = Stream { id: order_id, state: OrderState::default(), version: 0 };
        let place = OrderCommand::Place { user_id, user_registered: true, cart_id: Some(cart_id), lines };
        let Ok(order_events) = order.state.decide(&place) else { return };
        let Some(reservations) = self.reservations(order_id, &place) else {
            // A line the catalog can no longer deliver (delisted, or not enough available):
            // the customer takes the first such line out and tries again later.
            if let Some(product_id) = self.undeliverable_line(&place) {
                self.out.apply(&mut self.carts[i], &CartCommand::RemoveItem { product_id });
            }
            return;
        };
        // One transaction: cart, order and products, at one time.
        self.out.tick();
        self.out.record(&mut self.carts[i], cart_events);
        self.out.record(&mut order, order_events);
        self.record_products(reservations);
        self.orders.push(order);
    }

    /// Each line's reservation, decided with its product: (product index, events); `None` when
    /// one line cannot be reserved (the whole order is then refused).
    fn reservations(&self, order_id: Uuid, place: &OrderCommand) -> Option<Vec<(usize, Vec<ShopEvent>)>> {
        let OrderCommand::Place { lines, .. } = place else { return None };
        lines
            .iter()
            .map(|line| {
                let index = self.product_index(line.product_id)?;
                let command = ProductCommand::Reserve { order_id, quantity: line.quantity };
                self.products[index].state.decide(&command).ok().map(|events| (index, events))
            })
            .collect()
    }

    /// The first line of `place` its product cannot reserve.
    fn undeliverable_line(&self, place: &OrderCommand) -> Option<Uuid> {
        let OrderCommand::Place { lines, .. } = place else { return None };
        lines
            .iter()
            .find(|line| {
                self.product_index(line.product_id)
                    .and_then(|i| self.products[i].state.product())
                    .is_none_or(|p| !p.listed || p.available() < i64::from(line.quantity))
            })
            .map(|line| line.product_id)
    }

    fn product_index(&self, product_id: Uuid) -> Option<usize> {
        self.product_indexes.get(&product_id).copied()
    }

    /// Records decided product events (of the transaction whose clock already ticked).
    fn record_products(&mut self, decided: Vec<(usize, Vec<ShopEvent>)>) {
        for (index, events) in decided {
            self.out.record(&mut self.products[index], events);
        }
    }

    fn place_order(&mut self) {
        let user_id = self.users[self.out.rng.random_range(0..self.users.len())].id;
        let mut lines: Vec<OrderLine> = Vec::new();
        for _ in 0..self.out.rng.random_range(1..=3) {
            let index = self.out.rng.random_range(0..self.products.len());
            let product_id = self.products[index].id;
            let Some(product) = self.products[index].state.product().filter(|p| p.listed) else { continue };
            // Within what is available: the service would refuse more.
            let available = product.available().min(4);
            if available < 1 || lines.iter().any(|l| l.product_id == product_id) {
                continue;
            }
            let quantity = self.out.rng.random_range(1..=available) as u32;
            lines.push(OrderLine { product_id, quantity, unit_price_cents: product.price_cents });
        }
        if lines.is_empty() {
            return;
        }
        let mut order = Stream { id: self.out.uuid(), state: OrderState::default(), version: 0 };
        let place = OrderCommand::Place { user_id, user_registered: true, cart_id: None, lines };
        let Ok(order_events) = order.state.decide(&place) else { return };
        let Some(reservations) = self.reservations(order.id, &place) else { return };
        self.out.tick();
        self.out.record(&mut order, order_events);
        self.record_products(reservations);
        self.orders.push(order);
    }

    fn advance_order(&mut self) {
        let live = |o: &Stream<OrderState>| {
            !matches!(o.state.status(), Some(OrderStatus::Shipped | OrderStatus::Cancelled) | None)
        };
        let Some(i) = self.out.pick(&self.orders, live) else { return };
        let reference = format!("pay-{}", self.out.rng.random_range(0..1_000_000u32));
        let rng = &mut self.out.rng;
        let command = match self.orders[i].state.status() {
            Some(OrderStatus::Placed | OrderStatus::PaymentFailed) if rng.random_bool(0.15) => {
                OrderCommand::Cancel { reason: "changed my mind".into() }
            }
            Some(OrderStatus::Placed | OrderStatus::PaymentFailed) => {
                let methods = [PaymentMethod::Card, PaymentMethod::BankTransfer, PaymentMethod::Wallet];
                OrderCommand::RequestPayment { method: methods[rng.random_range(0..3)] }
            }
            Some(OrderStatus::PaymentPending) if rng.random_bool(0.85) => {
                OrderCommand::RecordPaymentSucceeded { payment_reference: reference }
            }
            Some(OrderStatus::PaymentPending) => {
                OrderCommand::RecordPaymentFailed { reason: "card declined".into() }
            }
            _ => OrderCommand::Ship { carrier: "DHL".into(), tracking_code: reference },
        };
        // Cancelling releases the order's reservations, shipping ships them: same transaction.
        let product_command: Option<fn(Uuid) -> ProductCommand> = match command {
            OrderCommand::Cancel { .. } => Some(|order_id| ProductCommand::Release { order_id }),
            OrderCommand::Ship { .. } => Some(|order_id| ProductCommand::ShipReserved { order_id }),
            _ => None,
        };
        let Ok(order_events) = self.orders[i].state.decide(&command) else { return };
        let order_id = self.orders[i].id;
        let mut decided = Vec::new();
        if let Some(product_command) = product_command {
            let lines = self.orders[i].state.order().map(|o| o.lines.clone()).unwrap_or_default();
            for line in lines {
                let Some(index) = self.product_index(line.product_id) else { continue };
                let Ok(events) = self.products[index].state.decide(&product_command(order_id)) else {
                    return;
                };
                if !events.is_empty() {
                    decided.push((index, events));
                }
            }
        }
        self.out.tick();
        self.out.record(&mut self.orders[i], order_events);
        self.record_products(decided);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn streams_are_contiguous_valid_and_deterministic() {
        let events = Workload::generate(7, 3000);
        assert!(events.len() >= 3000);
        let mut last: HashMap<Uuid, u64> = HashMap::new();
        for event in &events {
            let previous = last.insert(event.meta.aggregate_id, event.meta.aggregate_version).unwrap_or(0);
            assert_eq!(event.meta.aggregate_version, previous + 1, "versions contiguous per aggregate");
            let body = event.body::<ShopEvent>().expect("a shop event");
            body.validate().expect("every event satisfies the contract");
        }
        let kinds: std::collections::BTreeSet<_> = events.iter().map(|e| e.event_type()).collect();
        assert!(kinds.len() >= 17, "the workload covers most event types: {kinds:?}");
        for stock_event in ["StockReserved", "StockReleased", "StockShipped"] {
            assert!(kinds.contains(stock_event), "no {stock_event} in {kinds:?}");
        }
        assert_eq!(events, Workload::generate(7, 3000), "same seed, same events");
        let days: std::collections::BTreeSet<_> =
            events.iter().map(|e| e.meta.occurred_at.date_naive()).collect();
        assert!(days.len() >= 3, "spans several days: {days:?}");
    }

    /// The rules of the command side hold in what the workload writes: every order is for a
    /// registered user and reserved exactly its lines, no product ever reserves more than it
    /// has on hand, and every product stream folds through the real aggregate.
    #[test]
    fn orders_are_for_registered_users_and_within_stock() {
        use shop_model::domain::{rehydrate, ProductState};

        let events = Workload::generate(11, 4000);
        let registered: std::collections::HashSet<Uuid> = events
            .iter()
            .filter(|e| matches!(e.body::<ShopEvent>(), Some(ShopEvent::UserRegistered(_))))
            .map(|e| e.meta.aggregate_id)
            .collect();
        let mut reserved_for: HashMap<Uuid, Vec<(Uuid, u32)>> = HashMap::new();
        let mut streams: HashMap<Uuid, Vec<ShopEvent>> = HashMap::new();
        let mut orders = Vec::new();
        for event in &events {
            let body = event.body::<ShopEvent>().expect("a shop event").clone();
            match &body {
                ShopEvent::OrderPlaced(placed) => {
                    assert!(
                        registered.contains(&placed.user_id),
                        "an order for unregistered {}",
                        placed.user_id
                    );
                    orders.push((event.meta.aggregate_id, placed.lines.clone()));
                }
                ShopEvent::CartOpened(opened) => {
                    assert!(
                        registered.contains(&opened.user_id),
                        "a cart for unregistered {}",
                        opened.user_id
                    );
                }
                ShopEvent::StockReserved(r) => {
                    reserved_for.entry(r.order_id).or_default().push((event.meta.aggregate_id, r.quantity));
                }
                _ => {}
            }
            if body.aggregate_type() == shop_model::aggregates::PRODUCT {
                let stream = streams.entry(event.meta.aggregate_id).or_default();
                stream.push(body);
                let state: ProductState = rehydrate(stream.iter()).expect("the product stream folds");
                let product = state.product().expect("listed");
                assert!(
                    (0..=product.stock).contains(&product.reserved),
                    "{} reserved of {}",
                    product.reserved,
                    product.stock
                );
            }
        }
        assert!(orders.len() > 50, "only {} orders", orders.len());
        for (order_id, lines) in orders {
            let mut expected: Vec<(Uuid, u32)> = lines.iter().map(|l| (l.product_id, l.quantity)).collect();
            let mut got = reserved_for.remove(&order_id).unwrap_or_default();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "order {order_id} reserved other units than it ordered");
        }
        assert!(reserved_for.is_empty(), "reservations for orders never placed: {reserved_for:?}");
    }
}
