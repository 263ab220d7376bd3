//! Checks a running telemetry deployment against what its producer wrote: reads the events
//! file of `producer/produce.py --events-out FILE`, folds it with the same oracle the tests use
//! (`tests/it/oracle.rs`, code of its own), and compares every `device_status` and
//! `site_hourly_readings` row in PostgreSQL and every cache entry in Redis with it, waiting up
//! to `--wait` seconds for the workers to catch up. The deployment is the one the `PRISM__*`
//! settings describe, as for the application's own binaries.
//!
//! ```sh
//! cargo run -p telemetry --example verify -- --events events.jsonl --wait 120
//! ```
//!
//! Exit status 0 when every row and entry equals the fold, 1 when they still differ (the
//! differences are printed), 2 on bad arguments or an unreachable service.

#[path = "../tests/it/oracle.rs"]
#[allow(dead_code)]
mod oracle;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use prism_config::{ConfigSources, PrismConfig};
use prism_events::{decode_event, Event, Limits, WireHeaders};
use prism_testkit::oracle::{check_expected, CacheCheck};
use serde_json::Value;

const USAGE: &str = "usage: verify --events FILE [--wait SECONDS]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut events_file, mut wait) = (None, 120u64);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--events", Some(file)) => events_file = Some(file),
            ("--wait", Some(seconds)) => match seconds.parse() {
                Ok(seconds) => wait = seconds,
                Err(_) => return usage(&format!("--wait takes whole seconds, not `{seconds}`")),
            },
            (other, _) => return usage(&format!("unexpected argument `{other}`")),
        }
    }
    let Some(events_file) = events_file else { return usage("--events FILE is required") };
    let events = match read_events(&events_file) {
        Ok(events) => events,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let config = match PrismConfig::load(&ConfigSources::from_process(Vec::new())) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(verify(&config, &events, Duration::from_secs(wait))) {
        Ok(Ok(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Err(differences)) => {
            eprintln!("the read models differ from the fold of the produced events:\n{differences}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("error: {problem}\n{USAGE}");
    ExitCode::from(2)
}

/// The events of an events file (its `event` lines; hostile ones are not events).
fn read_events(path: &str) -> Result<Vec<Event>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the events file {path}: {e}"))?;
    let registry = telemetry::registry();
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let record: Value =
            serde_json::from_str(line).map_err(|e| format!("{path} line {}: not JSON: {e}", n + 1))?;
        if record["kind"] != "event" {
            continue;
        }
        let value = record["value"].as_str().ok_or_else(|| format!("{path} line {}: no value", n + 1))?;
        let event =
            decode_event(&registry, Some(value.as_bytes()), WireHeaders::default(), &Limits::default())
                .map_err(|e| format!("{path} line {}: an invalid event ({e})", n + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// Compares until equal or `wait` is over; `Ok(Err(..))` holds the last differences.
async fn verify(
    config: &PrismConfig,
    events: &[Event],
    wait: Duration,
) -> anyhow::Result<Result<String, String>> {
    let app = telemetry::application();
    let db = prism_postgres::Database::connect(&config.postgres, "telemetry-verify").await?;
    let client = db.client().await?;
    let names: Vec<&'static str> = app.read_models().iter().map(|m| m.name()).collect();
    let targets =
        prism_testkit::oracle::active_targets(&**client, &app, &names, "telemetry-projector migrate").await?;
    let expected = oracle::fold(events);
    let started = Instant::now();
    loop {
        let outcome = check_expected(
            &expected,
            &client,
            &config.redis.url,
            &config.redis.key_prefix,
            &targets,
            CacheCheck::Complete,
        )
        .await?;
        match outcome {
            Ok(summary) => {
                return Ok(Ok(format!(
                    "telemetry: {} events -> {} rows and {} cache entries, all equal to the fold ({:.1}s)",
                    events.len(),
                    summary.rows,
                    summary.cache_entries,
                    started.elapsed().as_secs_f64()
                )))
            }
            Err(differences) if started.elapsed() >= wait => return Ok(Err(differences)),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
