//! The load generator: workers send a realistic mix of shop commands to the HTTP command API
//! (users register, products are listed, repriced, restocked and now and then delisted,
//! registered users' carts fill and empty and check out, orders within the available stock
//! are placed, paid — about nine in ten payments succeed — shipped or cancelled), with a
//! small share of deliberately invalid commands that must be refused with 400 or 409 (a
//! malformed field, an unpaid order shipped, stock taken below zero, an order for a user
//! never registered, an order for one unit more than is available).
//!
//! A local [`model::Model`] remembers what was created and the state each aggregate should be
//! in, so valid commands are valid; an aggregate is never commanded by two workers at once.
//! The [`LoadReport`] says what happened per route and status, the throughput, and the last
//! version the API reported for every aggregate touched — the addressed one and the others a
//! command appended to (a checkout's order, the products an order reserved): the sum of
//! those versions is the number of events the event store must hold.

pub mod model;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use uuid::Uuid;

use self::model::Model;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL of the command API, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    /// Stop after this many commands (if set).
    pub commands: Option<u64>,
    /// Stop after this long (if set).
    pub duration: Option<Duration>,
    /// Commands in flight at once.
    pub concurrency: usize,
    /// Seed of the workers' random choices and generated ids.
    pub seed: u64,
    /// Share of deliberately invalid commands, 0.0 to 1.0.
    pub invalid_share: f64,
}

/// Why a run could not start or went wrong as a whole.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The configuration cannot run.
    #[error("invalid load configuration: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Commands answered (any status) plus transport failures.
    pub commands: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Answers per route and HTTP status.
    pub by_route: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    /// Deliberately invalid commands sent.
    pub invalid_sent: u64,
    /// Of those, how many were refused with 400 or 409 as they must be.
    pub invalid_refused: u64,
    /// Valid commands that did not succeed (a service problem or a model mistake).
    pub unexpected: u64,
    /// The first few unexpected answers, for diagnosis.
    pub unexpected_examples: Vec<String>,
    /// Requests that got no HTTP answer.
    pub transport_errors: u64,
    /// Last version reported per (aggregate type, aggregate id).
    pub versions: BTreeMap<(String, Uuid), u64>,
}

impl LoadReport {
    /// Answered commands per second.
    pub fn throughput(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The events the runs' successful commands appended, by the API's own account.
    pub fn events_reported(&self) -> u64 {
        self.versions.values().sum()
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let versions: Vec<Value> = self
            .versions
            .iter()
            .map(|((aggregate_type, id), version)| json!({"aggregate_type": aggregate_type, "aggregate_id": id, "version": version}))
            .collect();
        json!({
            "commands": self.commands,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "throughput_per_second": self.throughput(),
            "by_route": self.by_route,
            "invalid_sent": self.invalid_sent,
            "invalid_refused": self.invalid_refused,
            "unexpected": self.unexpected,
            "unexpected_examples": self.unexpected_examples,
            "transport_errors": self.transport_errors,
            "events_reported": self.events_reported(),
            "aggregates": versions,
        })
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} commands in {:.1}s: {:.0} commands/s",
            self.commands,
            self.elapsed.as_secs_f64(),
            self.throughput()
        )?;
        for (route, statuses) in &self.by_route {
            let statuses: Vec<String> = statuses.iter().map(|(status, n)| format!("{status}×{n}")).collect();
            writeln!(f, "  {route:<40} {}", statuses.join(" "))?;
        }
        writeln!(
            f,
            "invalid commands: {} sent, {} refused with 400/409",
            self.invalid_sent, self.invalid_refused
        )?;
        writeln!(f, "unexpected answers: {}; transport errors: {}", self.unexpected, self.transport_errors)?;
        for example in &self.unexpected_examples {
            writeln!(f, "  {example}")?;
        }
        write!(f, "{} aggregates touched, {} events reported", self.versions.len(), self.events_reported())
    }
}

/// Runs the load until the command count or the duration is reached.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    if config.commands.is_none() && config.duration.is_none() {
        return Err(LoadError::Config("give a number of commands or a duration".into()));
    }
    if config.concurrency == 0 {
        return Err(LoadError::Config("concurrency must be at least 1".into()));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.concurrency)
        .build()?;
    let shared = Arc::new(Shared {
        model: Mutex::new(Model::default()),
        report: Mutex::new(LoadReport::default()),
        issued: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = config.duration.map(|d| started + d);
    let mut workers = Vec::with_capacity(config.concurrency);
    for worker in 0..config.concurrency {
        let (shared, http, config) = (shared.clone(), http.clone(), config.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(config.seed.wrapping_add(worker as u64 * 0x9e37_79b9));
            loop {
                let issued = shared.issued.fetch_add(1, Ordering::Relaxed);
                if config.commands.is_some_and(|limit| issued >= limit)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    return;
                }
                step(&shared, &http, &config, &mut rng).await;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let mut report = std::mem::take(&mut *lock(&shared.report));
    report.versions = std::mem::take(&mut lock(&shared.model).versions);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// State the workers share.
struct Shared {
    model: Mutex<Model>,
    report: Mutex<LoadReport>,
    issued: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Plans, sends and settles one command.
async fn step(shared: &Shared, http: &reqwest::Client, config: &LoadConfig, rng: &mut StdRng) {
    let planned = lock(&shared.model).plan(rng, config.invalid_share);
    let mut request = http
        .request(planned.method.clone(), format!("{}{}", config.target.trim_end_matches('/'), planned.path));
    if let Some(body) = &planned.body {
        request = request.json(body);
    }
    let answer = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            Some((status, body))
        }
        Err(_) => None,
    };
    let success = matches!(&answer, Some((status, _)) if (200..300).contains(status));
    lock(&shared.model).settle(
        &planned,
        success && !planned.invalid,
        answer.as_ref().map_or(&Value::Null, |(_, b)| b),
    );
    let mut report = lock(&shared.report);
    report.commands += 1;
    let Some((status, body)) = answer else {
        report.transport_errors += 1;
        return;
    };
    *report.by_route.entry(planned.route).or_default().entry(status).or_default() += 1;
    if planned.invalid {
        report.invalid_sent += 1;
        if status == 400 || status == 409 {
            report.invalid_refused += 1;
        }
    } else if !success {
        report.unexpected += 1;
        if report.unexpected_examples.len() < 5 {
            report
                .unexpected_examples
                .push(format!("{} {} -> {status} {body}", planned.method, planned.path));
        }
    }
}
