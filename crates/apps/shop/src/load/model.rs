//! The generator's local model of the shop: what it created and the state it expects each
//! aggregate to be in, so that most commands it picks are valid. An aggregate with a command
//! in flight is busy and not picked again until the answer is in, so the generator never
//! races itself (a conflict would be its own doing, not the service's).

use std::collections::{BTreeMap, HashSet};

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use uuid::Uuid;

/// A product as the generator listed it.
#[derive(Debug, Clone)]
pub struct Product {
    pub id: Uuid,
    pub price_cents: i64,
    pub stock: i64,
    pub listed: bool,
}

/// A cart as the generator filled it.
#[derive(Debug, Clone)]
pub struct Cart {
    pub id: Uuid,
    pub owner: Uuid,
    pub lines: Vec<(Uuid, u32)>,
    pub checked_out: bool,
}

/// Where an order is, as far as the generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Placed,
    PaymentPending,
    PaymentFailed,
    Paid,
    Shipped,
    Cancelled,
}

/// What a planned command will do to the model when it succeeds.
#[derive(Debug, Clone)]
pub enum Effect {
    User(Uuid),
    Product(Product),
    Cart(Cart),
    /// A cart checked out into a new order.
    CheckedOut(Cart, Uuid),
    Order(Uuid, OrderStatus),
    /// Nothing changes (deliberately invalid commands).
    None,
}

/// One command to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Route label for the report, e.g. `POST /orders/{id}/pay`.
    pub route: &'static str,
    pub method: reqwest::Method,
    pub path: String,
    pub body: Option<Value>,
    /// True for a deliberately invalid command, which must be refused with 400 or 409.
    pub invalid: bool,
    /// The aggregates this command touches (reads or writes): busy until it is answered.
    pub busy: Vec<Uuid>,
    /// The aggregate whose version the response reports: (type, id).
    pub target: (&'static str, Uuid),
    pub effect: Effect,
}

/// The model shared by the workers.
#[derive(Debug, Default)]
pub struct Model {
    pub users: Vec<Uuid>,
    pub products: Vec<Product>,
    pub carts: Vec<Cart>,
    pub orders: BTreeMap<Uuid, OrderStatus>,
    pub busy: HashSet<Uuid>,
    /// Last version the API reported per (aggregate type, id).
    pub versions: BTreeMap<(String, Uuid), u64>,
}

fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

impl Model {
    fn free<'a, T>(&self, items: impl Iterator<Item = &'a T>, id: impl Fn(&T) -> Uuid) -> Vec<&'a T>
    where
        T: 'a,
    {
        items.filter(|item| !self.busy.contains(&id(item))).collect()
    }

    /// Picks the next command. `invalid_share` is the probability of a deliberately invalid
    /// one.
    pub fn plan(&mut self, rng: &mut StdRng, invalid_share: f64) -> Planned {
        let planned = if rng.random_bool(invalid_share.clamp(0.0, 1.0)) {
            self.plan_invalid(rng)
        } else {
            self.plan_valid(rng)
        };
        self.busy.extend(planned.busy.iter().copied());
        planned
    }

    fn plan_valid(&mut self, rng: &mut StdRng) -> Planned {
        if self.users.len() < 5 {
            return self.register(rng);
        }
        if self.products.iter().filter(|p| p.listed).count() < 5 {
            return self.list(rng);
        }
        for _ in 0..20 {
            let pick = rng.random_range(0..100);
            let planned = match pick {
                0..=7 => Some(self.register(rng)),
                8..=11 => Some(self.list(rng)),
                12..=17 => self.change_price(rng),
                18..=22 => self.restock(rng),
                23 => self.delist(rng),
                24..=43 => self.add_item(rng),
                44..=47 => self.remove_item(rng),
                48..=55 => self.check_out(rng),
                56..=65 => self.place_order(rng),
                66..=75 => self.order_step(rng, &[OrderStatus::Placed, OrderStatus::PaymentFailed], "pay"),
                76..=85 => self.order_step(rng, &[OrderStatus::PaymentPending], "payment"),
                86..=93 => self.order_step(rng, &[OrderStatus::Paid], "ship"),
                _ => self.order_step(rng, &[OrderStatus::Placed, OrderStatus::PaymentFailed], "cancel"),
            };
            if let Some(planned) = planned {
                return planned;
            }
        }
        self.register(rng)
    }

    fn register(&self, rng: &mut StdRng) -> Planned {
        let id = uuid(rng);
        let body = json!({"user_id": id, "email": format!("u{}@example.com", &id.simple().to_string()[..12]),
            "display_name": "Load User", "marketing_opt_in": rng.random_bool(0.3)});
        post("POST /users", "/users".into(), body, vec![id], ("user", id), Effect::User(id))
    }

    fn list(&self, rng: &mut StdRng) -> Planned {
        let id = uuid(rng);
        let product = Product {
            id,
            price_cents: rng.random_range(100..50_000),
            stock: rng.random_range(10..500),
            listed: true,
        };
        let body = json!({"product_id": id, "sku": format!("SKU-{}", &id.simple().to_string()[..10]),
            "name": "Load Product", "price_cents": product.price_cents, "stock": product.stock});
        post("POST /products", "/products".into(), body, vec![id], ("product", id), Effect::Product(product))
    }

    fn pick_product(&self, rng: &mut StdRng) -> Option<Product> {
        let free = self.free(self.products.iter().filter(|p| p.listed), |p| p.id);
        (!free.is_empty()).then(|| free[rng.random_range(0..free.len())].clone())
    }

    fn change_price(&self, rng: &mut StdRng) -> Option<Planned> {
        let mut product = self.pick_product(rng)?;
        product.price_cents = if product.price_cents > 200 && rng.random_bool(0.5) {
            product.price_cents - rng.random_range(1..100)
        } else {
            product.price_cents + rng.random_range(1..100)
        };
        let body = json!({"price_cents": product.price_cents});
        let path = format!("/products/{}/price", product.id);
        Some(post(
            "POST /products/{id}/price",
            path,
            body,
            vec![product.id],
            ("product", product.id),
            Effect::Product(product),
        ))
    }

    fn restock(&self, rng: &mut StdRng) -> Option<Planned> {
        let mut product = self.pick_product(rng)?;
        let quantity = if product.stock > 20 && rng.random_bool(0.2) {
            -rng.random_range(1..product.stock / 2)
        } else {
            rng.random_range(1..200)
        };
        product.stock += quantity;
        let path = format!("/products/{}/restock", product.id);
        let body = json!({"quantity": quantity});
        Some(post(
            "POST /products/{id}/restock",
            path,
            body,
            vec![product.id],
            ("product", product.id),
            Effect::Product(product),
        ))
    }

    fn delist(&self, rng: &mut StdRng) -> Option<Planned> {
        if self.products.iter().filter(|p| p.listed).count() < 10 {
            return None;
        }
        let mut product = self.pick_product(rng)?;
        product.listed = false;
        let path = format!("/products/{}/delist", product.id);
        let body = json!({"reason": "end of line"});
        Some(post(
            "POST /products/{id}/delist",
            path,
            body,
            vec![product.id],
            ("product", product.id),
            Effect::Product(product),
        ))
    }

    fn add_item(&self, rng: &mut StdRng) -> Option<Planned> {
        let product = self.pick_product(rng)?;
        let open = self.free(self.carts.iter().filter(|c| !c.checked_out && c.lines.len() < 20), |c| c.id);
        let mut cart = if open.is_empty() || rng.random_bool(0.25) {
            Cart {
                id: uuid(rng),
                owner: self.users[rng.random_range(0..self.users.len())],
                lines: Vec::new(),
                checked_out: false,
            }
        } else {
            open[rng.random_range(0..open.len())].clone()
        };
        let quantity = rng.random_range(1..=3_u32);
        match cart.lines.iter_mut().find(|(id, _)| *id == product.id) {
            Some((_, units)) if *units + quantity > 999 => return None,
            Some((_, units)) => *units += quantity,
            None => cart.lines.push((product.id, quantity)),
        }
        let body = json!({"user_id": cart.owner, "product_id": product.id, "quantity": quantity});
        let path = format!("/carts/{}/items", cart.id);
        let busy = vec![cart.id, product.id];
        Some(post("POST /carts/{id}/items", path, body, busy, ("cart", cart.id), Effect::Cart(cart)))
    }

    fn pick_cart(&self, rng: &mut StdRng) -> Option<Cart> {
        let open = self.free(self.carts.iter().filter(|c| !c.checked_out && !c.lines.is_empty()), |c| c.id);
        (!open.is_empty()).then(|| open[rng.random_range(0..open.len())].clone())
    }

    fn remove_item(&self, rng: &mut StdRng) -> Option<Planned> {
        let mut cart = self.pick_cart(rng)?;
        let (product, _) = cart.lines.remove(rng.random_range(0..cart.lines.len()));
        let path = format!("/carts/{}/items/{product}", cart.id);
        let mut planned = post(
            "DELETE /carts/{id}/items/{product_id}",
            path,
            Value::Null,
            vec![cart.id],
            ("cart", cart.id),
            Effect::None,
        );
        planned.method = reqwest::Method::DELETE;
        planned.body = None;
        planned.effect = Effect::Cart(cart);
        Some(planned)
    }

    fn check_out(&self, rng: &mut StdRng) -> Option<Planned> {
        let mut cart = self.pick_cart(rng)?;
        // A delisted product in the cart is fine: the cart keeps its price.
        cart.checked_out = true;
        let order = uuid(rng);
        let path = format!("/carts/{}/checkout", cart.id);
        let body = json!({"order_id": order});
        Some(post(
            "POST /carts/{id}/checkout",
            path,
            body,
            vec![cart.id, order],
            ("cart", cart.id),
            Effect::CheckedOut(cart, order),
        ))
    }

    fn place_order(&self, rng: &mut StdRng) -> Option<Planned> {
        let count = rng.random_range(1..=3);
        let mut items = Vec::new();
        let mut busy = Vec::new();
        for _ in 0..count {
            let product = self.pick_product(rng)?;
            if !busy.contains(&product.id) {
                busy.push(product.id);
                items.push(json!({"product_id": product.id, "quantity": rng.random_range(1..=4)}));
            }
        }
        let order = uuid(rng);
        busy.push(order);
        let user = self.users[rng.random_range(0..self.users.len())];
        let body = json!({"order_id": order, "user_id": user, "items": items});
        Some(post(
            "POST /orders",
            "/orders".into(),
            body,
            busy,
            ("order", order),
            Effect::Order(order, OrderStatus::Placed),
        ))
    }

    fn order_step(&self, rng: &mut StdRng, from: &[OrderStatus], action: &str) -> Option<Planned> {
        let candidates: Vec<Uuid> = self
            .orders
            .iter()
            .filter(|(id, s)| from.contains(s) && !self.busy.contains(*id))
            .map(|(id, _)| *id)
            .collect();
        let order = *candidates.get(rng.random_range(0..candidates.len().max(1)))?;
        let path = format!("/orders/{order}/{action}");
        let method = ["card", "bank_transfer", "wallet"][rng.random_range(0..3)];
        let (route, body, next) = match action {
            "pay" => ("POST /orders/{id}/pay", json!({"method": method}), OrderStatus::PaymentPending),
            "payment" if rng.random_bool(0.9) => (
                "POST /orders/{id}/payment",
                json!({"outcome": "succeeded", "payment_reference": format!("psp-{}", &order.simple().to_string()[..12])}),
                OrderStatus::Paid,
            ),
            "payment" => (
                "POST /orders/{id}/payment",
                json!({"outcome": "failed", "reason": "card declined"}),
                OrderStatus::PaymentFailed,
            ),
            "ship" => (
                "POST /orders/{id}/ship",
                json!({"carrier": "DHL", "tracking_code": "TRK-1"}),
                OrderStatus::Shipped,
            ),
            _ => ("POST /orders/{id}/cancel", json!({"reason": "changed my mind"}), OrderStatus::Cancelled),
        };
        Some(post(route, path, body, vec![order], ("order", order), Effect::Order(order, next)))
    }

    /// A command that must be refused: 400 (malformed) or 409 (against a rule).
    fn plan_invalid(&mut self, rng: &mut StdRng) -> Planned {
        let mut planned = match rng.random_range(0..4) {
            0 => {
                let placed: Vec<Uuid> = self
                    .orders
                    .iter()
                    .filter(|(id, s)| **s == OrderStatus::Placed && !self.busy.contains(*id))
                    .map(|(id, _)| *id)
                    .collect();
                match placed.first() {
                    // Shipping an unpaid order: 409 order_not_paid.
                    Some(order) => post(
                        "POST /orders/{id}/ship",
                        format!("/orders/{order}/ship"),
                        json!({"carrier": "DHL", "tracking_code": "X"}),
                        vec![*order],
                        ("order", *order),
                        Effect::None,
                    ),
                    None => bad_email(rng),
                }
            }
            1 => {
                // A negative price: 400 naming price_cents.
                let id = uuid(rng);
                post(
                    "POST /products",
                    "/products".into(),
                    json!({"product_id": id, "sku": "BAD", "name": "Bad", "price_cents": -5, "stock": 1}),
                    vec![id],
                    ("product", id),
                    Effect::None,
                )
            }
            2 => match self.pick_product(rng) {
                // Taking more stock than there is: 409 stock_below_zero.
                Some(product) => post(
                    "POST /products/{id}/restock",
                    format!("/products/{}/restock", product.id),
                    json!({"quantity": -(product.stock + 1)}),
                    vec![product.id],
                    ("product", product.id),
                    Effect::None,
                ),
                None => bad_email(rng),
            },
            _ => bad_email(rng),
        };
        planned.invalid = true;
        planned
    }

    /// Applies an answered command: the effect on success, the reported versions, and frees
    /// its aggregates.
    pub fn settle(&mut self, planned: &Planned, success: bool, body: &Value) {
        for id in &planned.busy {
            self.busy.remove(id);
        }
        if !success {
            return;
        }
        if let Some(version) = body.get("version").and_then(Value::as_u64) {
            let key = (planned.target.0.to_owned(), planned.target.1);
            let entry = self.versions.entry(key).or_insert(0);
            *entry = (*entry).max(version);
        }
        if let (Some(order), Some(version)) =
            (body.get("order"), body.pointer("/order/version").and_then(Value::as_u64))
        {
            if let Some(id) =
                order.get("aggregate_id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok())
            {
                self.versions.insert(("order".to_owned(), id), version);
            }
        }
        match &planned.effect {
            Effect::User(id) => self.users.push(*id),
            Effect::Product(product) => match self.products.iter_mut().find(|p| p.id == product.id) {
                Some(existing) => *existing = product.clone(),
                None => self.products.push(product.clone()),
            },
            Effect::Cart(cart) => self.put_cart(cart.clone()),
            Effect::CheckedOut(cart, order) => {
                self.put_cart(cart.clone());
                self.orders.insert(*order, OrderStatus::Placed);
            }
            Effect::Order(id, status) => {
                self.orders.insert(*id, *status);
            }
            Effect::None => {}
        }
    }

    fn put_cart(&mut self, cart: Cart) {
        match self.carts.iter_mut().find(|c| c.id == cart.id) {
            Some(existing) => *existing = cart,
            None => self.carts.push(cart),
        }
    }
}

fn post(
    route: &'static str,
    path: String,
    body: Value,
    busy: Vec<Uuid>,
    target: (&'static str, Uuid),
    effect: Effect,
) -> Planned {
    Planned {
        route,
        method: reqwest::Method::POST,
        path,
        body: Some(body),
        invalid: false,
        busy,
        target,
        effect,
    }
}

fn bad_email(rng: &mut StdRng) -> Planned {
    let id = uuid(rng);
    post(
        "POST /users",
        "/users".into(),
        json!({"user_id": id, "email": "not-an-address", "display_name": "X"}),
        vec![id],
        ("user", id),
        Effect::None,
    )
}
