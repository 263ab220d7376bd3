//! The generator's local model of the shop: what it created and the state it expects each
//! aggregate to be in, so that most commands it picks are valid. An aggregate with a command
//! in flight is busy and not picked again until the answer is in, so the generator never
//! races itself (a conflict would be its own doing, not the service's).
//!
//! The model keeps the shop's rules as the command side does: carts and orders only for
//! registered users (ids in [`Model::users`], added once their registration succeeded),
//! orders only within the available stock. Placing an order or checking a cart out reserves
//! each line's units ([`Product::reserved`]), cancelling releases them, shipping takes them
//! out of stock; those commands hold their products busy too, since they change them.

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
    /// Units on hand.
    pub stock: i64,
    /// Units of `stock` held by open orders.
    pub reserved: i64,
    pub listed: bool,
}

impl Product {
    /// Units a new order can take.
    pub fn available(&self) -> i64 {
        self.stock - self.reserved
    }
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

/// An order as the generator placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub status: OrderStatus,
    /// (product, units) per line: what it holds while open.
    pub lines: Vec<(Uuid, u32)>,
}

/// What a planned command will do to the model when it succeeds.
#[derive(Debug, Clone)]
pub enum Effect {
    User(Uuid),
    Product(Product),
    Cart(Cart),
    /// A new order (from a cart, which is then checked out, or from items) and its products
    /// with the order's units reserved.
    Placed {
        cart: Option<Cart>,
        order: Uuid,
        lines: Vec<(Uuid, u32)>,
        products: Vec<Product>,
    },
    /// An order's new status (payment steps).
    Order(Uuid, OrderStatus),
    /// An order cancelled or shipped, and its products with the units released or shipped.
    Ended {
        order: Uuid,
        status: OrderStatus,
        products: Vec<Product>,
    },
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
    pub orders: BTreeMap<Uuid, Order>,
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
                86..=93 => self.end_order(rng, &[OrderStatus::Paid], OrderStatus::Shipped),
                _ => self.end_order(
                    rng,
                    &[OrderStatus::Placed, OrderStatus::PaymentFailed],
                    OrderStatus::Cancelled,
                ),
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
            reserved: 0,
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
        // A correction never takes away units that orders hold.
        let quantity = if product.available() > 20 && rng.random_bool(0.2) {
            -rng.random_range(1..product.available() / 2)
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
        let cart = self.pick_cart(rng)?;
        let index = rng.random_range(0..cart.lines.len());
        Some(self.remove_line(cart, index))
    }

    /// Takes line `index` out of `cart`.
    fn remove_line(&self, mut cart: Cart, index: usize) -> Planned {
        let (product, _) = cart.lines.remove(index);
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
        planned
    }

    fn check_out(&self, rng: &mut StdRng) -> Option<Planned> {
        let cart = self.pick_cart(rng)?;
        let mut products = Vec::with_capacity(cart.lines.len());
        for (index, (product_id, units)) in cart.lines.iter().enumerate() {
            let product = self.products.iter().find(|p| p.id == *product_id)?;
            if self.busy.contains(product_id) {
                return None;
            }
            if !product.listed || product.available() < i64::from(*units) {
                // The service would refuse the checkout (`product_not_listed`,
                // `insufficient_stock`): the customer takes that line out instead.
                return Some(self.remove_line(cart, index));
            }
            let mut product = product.clone();
            product.reserved += i64::from(*units);
            products.push(product);
        }
        let order = uuid(rng);
        let path = format!("/carts/{}/checkout", cart.id);
        let body = json!({"order_id": order});
        let mut busy = vec![cart.id, order];
        busy.extend(products.iter().map(|p| p.id));
        let lines = cart.lines.clone();
        let mut checked_out = cart;
        checked_out.checked_out = true;
        Some(post(
            "POST /carts/{id}/checkout",
            path,
            body,
            busy,
            ("cart", checked_out.id),
            Effect::Placed { cart: Some(checked_out), order, lines, products },
        ))
    }

    fn place_order(&self, rng: &mut StdRng) -> Option<Planned> {
        let count = rng.random_range(1..=3);
        let mut items = Vec::new();
        let mut lines = Vec::new();
        let mut products: Vec<Product> = Vec::new();
        for _ in 0..count {
            let mut product = self.pick_product(rng)?;
            if products.iter().any(|p| p.id == product.id) || product.available() < 1 {
                continue;
            }
            // Within what is available: more is refused (see `plan_invalid`).
            let quantity = rng.random_range(1..=product.available().min(4)) as u32;
            product.reserved += i64::from(quantity);
            items.push(json!({"product_id": product.id, "quantity": quantity}));
            lines.push((product.id, quantity));
            products.push(product);
        }
        if items.is_empty() {
            return None;
        }
        let order = uuid(rng);
        let mut busy: Vec<Uuid> = products.iter().map(|p| p.id).collect();
        busy.push(order);
        let user = self.users[rng.random_range(0..self.users.len())];
        let body = json!({"order_id": order, "user_id": user, "items": items});
        Some(post(
            "POST /orders",
            "/orders".into(),
            body,
            busy,
            ("order", order),
            Effect::Placed { cart: None, order, lines, products },
        ))
    }

    /// Cancels (`Cancelled`) or ships (`Shipped`) an order in one of the `from` statuses; its
    /// products' reserved units are released or leave the stock.
    fn end_order(&self, rng: &mut StdRng, from: &[OrderStatus], to: OrderStatus) -> Option<Planned> {
        let candidates: Vec<(&Uuid, &Order)> = self
            .orders
            .iter()
            .filter(|(id, o)| {
                from.contains(&o.status)
                    && !self.busy.contains(*id)
                    && o.lines.iter().all(|(product, _)| !self.busy.contains(product))
            })
            .collect();
        let (order, placed) = *candidates.get(rng.random_range(0..candidates.len().max(1)))?;
        let mut products = Vec::with_capacity(placed.lines.len());
        for (product_id, units) in &placed.lines {
            let mut product = self.products.iter().find(|p| p.id == *product_id)?.clone();
            product.reserved -= i64::from(*units);
            if to == OrderStatus::Shipped {
                product.stock -= i64::from(*units);
            }
            products.push(product);
        }
        let (route, action, body) = match to {
            OrderStatus::Shipped => {
                ("POST /orders/{id}/ship", "ship", json!({"carrier": "DHL", "tracking_code": "TRK-1"}))
            }
            _ => ("POST /orders/{id}/cancel", "cancel", json!({"reason": "changed my mind"})),
        };
        let mut busy = vec![*order];
        busy.extend(products.iter().map(|p| p.id));
        Some(post(
            route,
            format!("/orders/{order}/{action}"),
            body,
            busy,
            ("order", *order),
            Effect::Ended { order: *order, status: to, products },
        ))
    }

    fn order_step(&self, rng: &mut StdRng, from: &[OrderStatus], action: &str) -> Option<Planned> {
        let candidates: Vec<Uuid> = self
            .orders
            .iter()
            .filter(|(id, o)| from.contains(&o.status) && !self.busy.contains(*id))
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
            _ => (
                "POST /orders/{id}/payment",
                json!({"outcome": "failed", "reason": "card declined"}),
                OrderStatus::PaymentFailed,
            ),
        };
        Some(post(route, path, body, vec![order], ("order", order), Effect::Order(order, next)))
    }

    /// A command that must be refused: 400 (malformed) or 409 (against a rule).
    fn plan_invalid(&mut self, rng: &mut StdRng) -> Planned {
        let mut planned = match rng.random_range(0..6) {
            0 => {
                let placed: Vec<Uuid> = self
                    .orders
                    .iter()
                    .filter(|(id, o)| o.status == OrderStatus::Placed && !self.busy.contains(*id))
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
            3 => match self.pick_product(rng) {
                // An order for a user id never registered: 409 user_not_found.
                Some(product) => {
                    let order = uuid(rng);
                    let body = json!({"order_id": order, "user_id": uuid(rng),
                        "items": [{"product_id": product.id, "quantity": 1}]});
                    post(
                        "POST /orders",
                        "/orders".into(),
                        body,
                        vec![order, product.id],
                        ("order", order),
                        Effect::None,
                    )
                }
                None => bad_email(rng),
            },
            4 => match self.pick_product(rng).filter(|p| p.available() < 999) {
                // One unit more than is available: 409 insufficient_stock.
                Some(product) if !self.users.is_empty() => {
                    let order = uuid(rng);
                    let user = self.users[rng.random_range(0..self.users.len())];
                    let body = json!({"order_id": order, "user_id": user,
                        "items": [{"product_id": product.id, "quantity": product.available() + 1}]});
                    post(
                        "POST /orders",
                        "/orders".into(),
                        body,
                        vec![order, product.id],
                        ("order", order),
                        Effect::None,
                    )
                }
                _ => bad_email(rng),
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
        // The other streams the command appended to (a checkout's `order`, the products an
        // order reserved, released or shipped under `products[<line>]`).
        for related in body.as_object().into_iter().flat_map(|object| object.values()) {
            let (Some(aggregate_type), Some(id), Some(version)) = (
                related.get("aggregate_type").and_then(Value::as_str),
                related.get("aggregate_id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok()),
                related.get("version").and_then(Value::as_u64),
            ) else {
                continue;
            };
            let entry = self.versions.entry((aggregate_type.to_owned(), id)).or_insert(0);
            *entry = (*entry).max(version);
        }
        match &planned.effect {
            Effect::User(id) => self.users.push(*id),
            Effect::Product(product) => self.put_product(product.clone()),
            Effect::Cart(cart) => self.put_cart(cart.clone()),
            Effect::Placed { cart, order, lines, products } => {
                if let Some(cart) = cart {
                    self.put_cart(cart.clone());
                }
                self.orders.insert(*order, Order { status: OrderStatus::Placed, lines: lines.clone() });
                products.iter().cloned().for_each(|product| self.put_product(product));
            }
            Effect::Order(id, status) => {
                if let Some(order) = self.orders.get_mut(id) {
                    order.status = *status;
                }
            }
            Effect::Ended { order, status, products } => {
                if let Some(order) = self.orders.get_mut(order) {
                    order.status = *status;
                }
                products.iter().cloned().for_each(|product| self.put_product(product));
            }
            Effect::None => {}
        }
    }

    fn put_product(&mut self, product: Product) {
        match self.products.iter_mut().find(|p| p.id == product.id) {
            Some(existing) => *existing = product,
            None => self.products.push(product),
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
