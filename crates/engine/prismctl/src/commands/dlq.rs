//! `prismctl dlq list | show | redrive | discard`: the dead letters recorded by the projectors
//! (the `dead_letters` table is the record of truth; the `<topic>.dlq` topics carry copies).
//!
//! `redrive` re-applies dead letters once their cause was fixed (the missing event published,
//! the stored message corrected). It needs the application's folds, which prismctl does not
//! have: it records a request per projection instance (`operator_requests`) and waits while a
//! worker of the application claims it and runs it — decoding each stored message with the
//! projector's own decoder and applying it through the gate planner, feeds and writers in one
//! transaction per aggregate, then writing the cache version-guarded (Redis is checked before
//! PostgreSQL is touched). The worker's report (applied, already applied, still open and why)
//! is printed here.
//!
//! `redrive` and `discard` change the read models and the record: both ask for confirmation
//! (`--yes`, or a `y` on the terminal) and refuse without one.

use std::time::Duration;

use anyhow::{bail, Context};
use prism_config::PrismConfig;
use prism_postgres::Database;
use prism_read_store::projection::redrive::{
    self, ChainReport, DeadLetter, DeadLetterFilter, DiscardOutcome,
};
use prism_read_store::requests::{self, RedriveRequest};

use super::{confirm, POSTGRES_HINT};
use crate::cli::{DlqCommand, DlqListArgs, DlqRedriveArgs, OutputFormat, StatusFilter};

/// How long `dlq redrive` waits for a worker to take and finish a request.
const REDRIVE_WAIT: Duration = Duration::from_secs(120);

pub async fn run(config: &PrismConfig, command: &DlqCommand) -> anyhow::Result<()> {
    let db = Database::connect(&config.postgres, "prismctl-dlq")
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({POSTGRES_HINT})"))?;
    match command {
        DlqCommand::List(args) => list(&db, args).await,
        DlqCommand::Show { id, output } => show(&db, *id, *output).await,
        DlqCommand::Redrive(args) => redrive_command(&db, args).await,
        DlqCommand::Discard { id, yes } => discard(&db, *id, *yes).await,
    }
}

/// The projection instances `--projection` names: an instance id as is, a projection name as
/// every generation that has dead letters.
async fn resolve_projection(db: &Database, projection: Option<&str>) -> anyhow::Result<Option<Vec<String>>> {
    let Some(projection) = projection else { return Ok(None) };
    if redrive::parse_instance(projection).is_some() {
        return Ok(Some(vec![projection.to_owned()]));
    }
    let client = db.client().await?;
    let known: Vec<&str> =
        prism_read_store::registry::read_models(&**client).await?.iter().map(|m| m.name).collect();
    if !known.contains(&projection) {
        bail!(
            "unknown read model `{projection}`: expected one of {} (optionally with a generation, e.g. {}_g1)",
            known.join(", "),
            known.first().copied().unwrap_or("order_summary")
        );
    }
    let prefix = format!("{projection}_g");
    let instances = redrive::instances_with_dead_letters(db).await?;
    Ok(Some(instances.into_iter().filter(|i| i.starts_with(&prefix)).collect()))
}

async fn list(db: &Database, args: &DlqListArgs) -> anyhow::Result<()> {
    let statuses = match args.status {
        StatusFilter::Open => vec!["open"],
        StatusFilter::Redriven => vec!["redriven"],
        StatusFilter::Discarded => vec!["discarded"],
        StatusFilter::All => vec!["open", "redriven", "discarded"],
    };
    let filter = DeadLetterFilter {
        projections: resolve_projection(db, args.projection.as_deref()).await?,
        kind: args.reason.clone(),
        statuses: statuses.into_iter().map(str::to_owned).collect(),
        aggregate: args.aggregate,
        limit: args.limit,
    };
    let counts = redrive::summary(db, &filter).await?;
    let rows = redrive::list(db, &filter).await?;
    match args.output {
        OutputFormat::Json => {
            let document = serde_json::json!({ "counts": counts, "dead_letters": rows });
            println!("{}", serde_json::to_string(&document)?);
        }
        OutputFormat::Text => {
            if counts.is_empty() {
                println!("no dead letters match");
                return Ok(());
            }
            println!("{:<28} {:<10} {:<24} {:<10} {:>7}", "PROJECTION", "CLASS", "REASON", "STATUS", "COUNT");
            for c in &counts {
                println!(
                    "{:<28} {:<10} {:<24} {:<10} {:>7}",
                    c.projection, c.error_class, c.error_kind, c.status, c.count
                );
            }
            println!();
            println!(
                "{:>7} {:<24} {:<36} {:<54} {:>7} {:<24} STATUS",
                "ID", "PROJECTION", "ORIGIN (topic/partition@offset)", "AGGREGATE", "VERSION", "REASON"
            );
            for r in &rows {
                println!(
                    "{:>7} {:<24} {:<36} {:<54} {:>7} {:<24} {}",
                    r.id,
                    r.projection,
                    format!("{}/{}@{}", r.source_topic, r.source_partition, r.source_offset),
                    aggregate_text(r),
                    r.aggregate_version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                    r.error_kind,
                    r.status
                );
            }
            let total: i64 = counts.iter().map(|c| c.count).sum();
            if total > rows.len() as i64 {
                println!("({} of {total} rows shown; raise --limit for more)", rows.len());
            }
        }
    }
    Ok(())
}

fn aggregate_text(r: &DeadLetter) -> String {
    match (&r.aggregate_type, &r.aggregate_id) {
        (Some(t), Some(id)) => format!("{t}:{id}"),
        _ => "-".to_owned(),
    }
}

/// Bytes for people: UTF-8 as is (pretty when JSON), anything else as hex.
fn bytes_text(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else { return "(none)".to_owned() };
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| text.to_owned()),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("(not UTF-8, {} bytes) {hex}", bytes.len())
        }
    }
}

async fn show(db: &Database, id: i64, output: OutputFormat) -> anyhow::Result<()> {
    let Some(r) = redrive::get(db, id).await? else {
        bail!("no dead letter has id {id} (see `prismctl dlq list`)")
    };
    match output {
        OutputFormat::Json => {
            let mut document = serde_json::to_value(&r)?;
            if let Some(object) = document.as_object_mut() {
                let text = |b: &Option<Vec<u8>>| {
                    b.as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .map_or(serde_json::Value::Null, Into::into)
                };
                object.insert("message_key".into(), text(&r.message_key));
                object.insert("message_value".into(), text(&r.message_value));
            }
            println!("{}", serde_json::to_string(&document)?);
        }
        OutputFormat::Text => {
            println!("dead letter    {}", r.id);
            println!("projection     {}", r.projection);
            println!(
                "status         {}{}",
                r.status,
                r.resolved_at.map_or_else(String::new, |t| format!(" at {t}"))
            );
            println!("recorded       {}", r.dead_lettered_at);
            println!(
                "origin         topic {} partition {} offset {}",
                r.source_topic, r.source_partition, r.source_offset
            );
            println!("copied to dlq  {}", if r.published { "yes" } else { "not yet" });
            println!("aggregate      {}", aggregate_text(&r));
            println!(
                "version        {}",
                r.aggregate_version.map_or_else(|| "-".to_owned(), |v| v.to_string())
            );
            println!("event type     {}", r.event_type.as_deref().unwrap_or("-"));
            if let Some(event_id) = event_id(&r) {
                println!("event id       {event_id}");
            }
            println!("error          {} / {}", r.error_class, r.error_kind);
            println!("message        {}", r.error_message);
            println!("key            {}", bytes_text(r.message_key.as_deref()));
            println!("payload\n{}", bytes_text(r.message_value.as_deref()));
        }
    }
    Ok(())
}

fn event_id(r: &DeadLetter) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(r.message_value.as_deref()?).ok()?;
    value.get("event_id")?.as_str().map(str::to_owned)
}

async fn redrive_command(db: &Database, args: &DlqRedriveArgs) -> anyhow::Result<()> {
    let request = match (args.id, args.aggregate, args.all) {
        (Some(id), _, _) => {
            match redrive::get(db, id).await? {
                None => bail!("no dead letter has id {id} (see `prismctl dlq list`)"),
                Some(letter) if letter.status != "open" => {
                    bail!("dead letter {id} is already {}; nothing to redrive", letter.status)
                }
                Some(_) => {}
            }
            RedriveRequest::One { id }
        }
        (None, Some((aggregate_type, aggregate_id)), _) => {
            RedriveRequest::Aggregate { aggregate_type: aggregate_type.as_str().to_owned(), aggregate_id }
        }
        _ => RedriveRequest::All,
    };
    // The instances concerned: the one named, those with open dead letters of a read model, or
    // (for one dead letter) its own.
    let instances: Vec<String> = match (&request, resolve_projection(db, args.projection.as_deref()).await?) {
        (RedriveRequest::One { id }, _) => {
            vec![redrive::get(db, *id).await?.map(|l| l.projection).context("the dead letter disappeared")?]
        }
        (_, Some(named)) => named,
        (_, None) => redrive::instances_with_dead_letters(db).await?,
    };
    if instances.is_empty() {
        if args.output == OutputFormat::Text {
            println!("no open dead letters match");
        }
        return Ok(());
    }
    let what = match &request {
        RedriveRequest::One { id } => format!("dead letter {id} and the rest of its aggregate's chain"),
        RedriveRequest::Aggregate { aggregate_type, aggregate_id } => {
            format!("the open dead letters of {aggregate_type}:{aggregate_id}")
        }
        RedriveRequest::All => "every open dead letter".to_owned(),
    };
    confirm(
        &format!(
            "redrive {what} in {}: the application's workers apply them to the read models?",
            instances.join(", ")
        ),
        args.yes,
    )?;
    let mut reports: Vec<ChainReport> = Vec::new();
    for instance in &instances {
        let id = requests::request_redrive(db, instance, &request).await?;
        if args.output == OutputFormat::Text {
            println!(
                "redrive of {instance} requested (request {id}); waiting for a worker of the application"
            );
        }
        reports.extend(wait_for(db, id, instance).await?);
    }
    if reports.is_empty() && args.output == OutputFormat::Text {
        println!("no open dead letters match");
        return Ok(());
    }
    print_reports(&reports, args.output)?;
    let open: usize = reports.iter().map(|r| r.still_open.len()).sum();
    if open > 0 {
        bail!(
            "{open} dead letter(s) are still open (reasons above): fix their cause and redrive again, or \
             `prismctl dlq discard <id>` the ones that must never apply"
        );
    }
    Ok(())
}

/// Waits for request `id` to finish; its reports, or its error.
async fn wait_for(db: &Database, id: i64, instance: &str) -> anyhow::Result<Vec<ChainReport>> {
    let deadline = tokio::time::Instant::now() + REDRIVE_WAIT;
    loop {
        let request = requests::get(db, id).await?.context("the request disappeared")?;
        match request.status.as_str() {
            "done" => {
                let chains = request.result.as_ref().and_then(|r| r.get("chains")).cloned().unwrap_or_default();
                return serde_json::from_value(chains).context("the worker's report");
            }
            "failed" => {
                let error = request.result.as_ref().and_then(|r| r.get("error")).and_then(|e| e.as_str()).unwrap_or("?");
                bail!("the redrive of {instance} failed on {}: {error}", request.claimed_by.as_deref().unwrap_or("a worker"));
            }
            status if tokio::time::Instant::now() > deadline => bail!(
                "request {id} is still {status} after {REDRIVE_WAIT:?}: no worker of the application that maintains \
                 {instance} took it. Redrives need the application's folds: start its projector workers (they take \
                 requests while they run); the request stays and is done when one does"
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn print_reports(reports: &[ChainReport], output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string(&serde_json::json!({ "chains": reports }))?)
        }
        OutputFormat::Text => {
            for r in reports {
                println!(
                    "{} {}: applied {}, already applied {}, still open {}",
                    r.projection,
                    r.aggregate.as_deref().unwrap_or("(no aggregate)"),
                    r.applied.len(),
                    r.already_applied.len(),
                    r.still_open.len()
                );
                for open in &r.still_open {
                    println!("  #{} {}: {}", open.id, open.error_kind, open.error_message);
                }
            }
            let applied: usize = reports.iter().map(|r| r.applied.len()).sum();
            let already: usize = reports.iter().map(|r| r.already_applied.len()).sum();
            println!("redriven: {applied} applied, {already} already applied, {} chain(s)", reports.len());
        }
    }
    Ok(())
}

async fn discard(db: &Database, id: i64, yes: bool) -> anyhow::Result<()> {
    let Some(letter) = redrive::get(db, id).await? else {
        bail!("no dead letter has id {id} (see `prismctl dlq list`)")
    };
    if letter.status == "open" {
        confirm(
            &format!(
                "discard dead letter {id} ({} of {} in {}): it will never be applied",
                letter.event_type.as_deref().unwrap_or("message"),
                aggregate_text(&letter),
                letter.projection
            ),
            yes,
        )?;
    }
    match redrive::discard(db, id).await? {
        DiscardOutcome::Discarded { waiting } => {
            println!("discarded dead letter {id}");
            if waiting > 0 {
                println!(
                    "{waiting} open dead letter(s) of {} wait behind it: apply them with \
                     `prismctl dlq redrive --aggregate {} --projection {}`",
                    aggregate_text(&letter),
                    aggregate_text(&letter),
                    letter.projection
                );
            }
            Ok(())
        }
        DiscardOutcome::NotOpen { status } => bail!("dead letter {id} is already {status}; nothing changed"),
        DiscardOutcome::NotFound => bail!("no dead letter has id {id} (see `prismctl dlq list`)"),
    }
}
