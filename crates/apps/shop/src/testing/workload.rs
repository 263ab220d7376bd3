//! A realistic event workload without the command service: users, products, carts and
//! orders driven through the real aggregates of `shop-model`, so every stream is one the
//! write side could have produced. Deterministic for a given seed.
//!
//! Events come out in a global order that keeps each aggregate's versions in order (the
//! order one Kafka partition delivers them in); timestamps advance by seconds to minutes per
//! command, so a few thousand events span several days (exercising per-day totals).

use chrono::{DateTime, Duration, TimeZone, Utc};
use prism_events::{Event, EventPosition};
use shop_model::domain::{
    CartCommand, CartState, OrderCommand, OrderState, OrderStatus, ProductCommand, ProductSnapshot, ProductState,
    ShopAggregate, UserCommand, UserState,
};
use shop_model::events::{OrderLine, PaymentMethod};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
        self.clock += Duration::seconds(self.rng.random_range(1..=240));
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
            self.products.push(stream);
        }
    }

    fn change_product(&mut self) {
        let i = self.out.rng.random_range(0..self.products.len());
        let command = match self.out.rng.random_range(0..10) {
            0 => ProductCommand::Delist { reason: "discontinued".into() },
            1..=4 => ProductCommand::ChangePrice { price_cents: self.out.rng.random_range(99..=25_000) },
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
        let command = CartCommand::AddItem { user_id, product_id, quantity, product };
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
        if self.out.apply(&mut self.carts[i], &CartCommand::CheckOut { order_id }) {
            let mut order = Stream { id: order_id, state: OrderState::default(), version: 0 };
            if self.out.apply(&mut order, &OrderCommand::Place { user_id, cart_id: Some(cart_id), lines }) {
                self.orders.push(order);
            }
        }
    }

    fn place_order(&mut self) {
        let user_id = self.users[self.out.rng.random_range(0..self.users.len())].id;
        let mut lines: Vec<OrderLine> = Vec::new();
        for _ in 0..self.out.rng.random_range(1..=3) {
            let (product_id, product) = self.random_product();
            let Some(product) = product.filter(|p| p.listed) else { continue };
            if lines.iter().all(|l| l.product_id != product_id) {
                let quantity = self.out.rng.random_range(1..=4);
                lines.push(OrderLine { product_id, quantity, unit_price_cents: product.price_cents });
            }
        }
        if lines.is_empty() {
            return;
        }
        let mut order = Stream { id: self.out.uuid(), state: OrderState::default(), version: 0 };
        if self.out.apply(&mut order, &OrderCommand::Place { user_id, cart_id: None, lines }) {
            self.orders.push(order);
        }
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
        self.out.apply(&mut self.orders[i], &command);
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
            event.body.validate().expect("every event satisfies the contract");
        }
        let kinds: std::collections::BTreeSet<_> = events.iter().map(|e| e.event_type()).collect();
        assert!(kinds.len() >= 14, "the workload covers most event types: {kinds:?}");
        assert_eq!(events, Workload::generate(7, 3000), "same seed, same events");
        let days: std::collections::BTreeSet<_> =
            events.iter().map(|e| e.meta.occurred_at.date_naive()).collect();
        assert!(days.len() >= 3, "spans several days: {days:?}");
    }
}
