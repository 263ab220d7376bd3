//! `prismctl dlq list | show | redrive | discard`: the dead letters recorded by the projectors
//! (the `dead_letters` table is the record of truth; the `<topic>.dlq` topics carry copies).
//!
//! `redrive` re-applies dead letters once their cause was fixed (the missing event published,
//! the stored message corrected): each stored message is decoded by the projector's own decoder
//! and applied by `prism_store::projection::redrive`, which runs the projector's gate planner,
//! folds and writers in one transaction per aggregate. The cache entries it returns are then
//! written to Redis, version-guarded like the projector does after its commit. Redis is checked
//! before PostgreSQL is touched, so a redrive never lands in PostgreSQL with Redis known down.

use std::time::Duration;

use anyhow::{bail, Context};
use prism_cache::{Cache, Entry};
use prism_config::{GapPolicyConfig, PrismConfig};
use prism_events::AggregateType;
use prism_projections::{GapPolicy, ProjectionName};
use prism_store::projection::redrive::{
    self, ChainReport, DeadLetter, DeadLetterFilter, DiscardOutcome, RedriveTarget,
};
use prism_store::projection::{MessageContent, Poison, SourceMessage};
use prism_store::Database;
use rdkafka::message::{OwnedMessage, Timestamp};

use super::{confirm, POSTGRES_HINT, REDIS_HINT};
use crate::cli::{DlqCommand, DlqListArgs, DlqRedriveArgs, OutputFormat, StatusFilter};

pub async fn run(config: &PrismConfig, command: &DlqCommand) -> anyhow::Result<()> {
    let db = Database::connect(&config.postgres, "prismctl-dlq")
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({POSTGRES_HINT})"))?;
    match command {
        DlqCommand::List(args) => list(&db, args).await,
        DlqCommand::Show { id, output } => show(&db, *id, *output).await,
        DlqCommand::Redrive(args) => redrive_command(config, &db, args).await,
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
    let name: ProjectionName = projection.parse().map_err(|_| {
        let known: Vec<&str> = ProjectionName::ALL.iter().map(|p| p.as_str()).collect();
        anyhow::anyhow!(
            "unknown projection `{projection}`: expected one of {} (optionally with a generation, e.g. order_summary_g1)",
            known.join(", ")
        )
    })?;
    let prefix = format!("{}_g", name.as_str());
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

/// The message the projector would decode from a stored dead letter, through its own decoder.
pub fn decode_stored(config: &PrismConfig, letter: &DeadLetter) -> SourceMessage {
    let topic_type = AggregateType::from_topic(&letter.source_topic, &config.topics.prefix)
        .or_else(|| letter.aggregate_type.as_deref().and_then(|t| t.parse().ok()));
    let Some(topic_type) = topic_type else {
        return SourceMessage {
            offset: letter.source_offset,
            key: letter.message_key.clone(),
            value: letter.message_value.clone(),
            content: MessageContent::Poison(Poison {
                aggregate: letter.aggregate(),
                aggregate_version: letter.aggregate_version.and_then(|v| u64::try_from(v).ok()),
                event_type: letter.event_type.clone(),
                kind: "unknown_topic".into(),
                message: format!(
                    "topic {} is no event topic under prefix `{}`",
                    letter.source_topic, config.topics.prefix
                ),
            }),
        };
    };
    let message = OwnedMessage::new(
        letter.message_value.clone(),
        letter.message_key.clone(),
        letter.source_topic.clone(),
        Timestamp::NotAvailable,
        letter.source_partition,
        letter.source_offset,
        None,
    );
    prism_projector::decode::decode(&message, topic_type, &config.events.limits())
}

async fn redrive_command(config: &PrismConfig, db: &Database, args: &DlqRedriveArgs) -> anyhow::Result<()> {
    // Redis first: a redrive must not land in PostgreSQL while its cache writes cannot follow.
    let cache = Cache::connect(&config.redis)
        .await
        .with_context(|| format!("cannot connect to Redis ({REDIS_HINT}); nothing was redriven"))?;
    let target = match (args.id, args.aggregate, args.all) {
        (Some(id), _, _) => {
            match redrive::get(db, id).await? {
                None => bail!("no dead letter has id {id} (see `prismctl dlq list`)"),
                Some(letter) if letter.status != "open" => {
                    bail!("dead letter {id} is already {}; nothing to redrive", letter.status)
                }
                Some(_) => {}
            }
            RedriveTarget::One(id)
        }
        (None, Some(aggregate), _) => RedriveTarget::Aggregate(aggregate),
        _ => RedriveTarget::All,
    };
    let projections = resolve_projection(db, args.projection.as_deref()).await?;
    let policy = match config.projector.gap_policy {
        GapPolicyConfig::DeadLetter => GapPolicy::DeadLetter,
        GapPolicyConfig::Apply => GapPolicy::Apply,
    };
    let reports =
        redrive::redrive(db, projections.as_deref(), target, policy, |letter| decode_stored(config, letter))
            .await
            .context("redrive failed; the chain being redriven was rolled back")?;
    for report in &reports {
        write_cache(&cache, &config.redis.key_prefix, report).await?;
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

/// Writes a chain's cache entries, version-guarded, retrying a few times: PostgreSQL has
/// committed, so the cache must follow.
async fn write_cache(cache: &Cache, key_prefix: &str, report: &ChainReport) -> anyhow::Result<()> {
    let Some(instance) = redrive::parse_instance(&report.projection) else { return Ok(()) };
    let Some(prefix) = instance.cache_prefix(key_prefix) else { return Ok(()) };
    if report.cache_entries.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = report.cache_entries.iter().map(|e| format!("{prefix}{}", e.id)).collect();
    let entries: Vec<Entry<'_>> = report
        .cache_entries
        .iter()
        .zip(&keys)
        .map(|(e, key)| Entry { key, revision: e.revision, document: &e.document })
        .collect();
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=5 {
        match cache.put_if_newer(&entries).await {
            Ok(_) => return Ok(()),
            Err(err) if attempt < 5 => {
                tracing::warn!(error = %err, attempt, "cache write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(err) => {
                let what = format!(
                    "the redrive of {} committed in PostgreSQL but its cache entries could not be written \
                     ({REDIS_HINT}); the cache may serve older rows until the next event of these \
                     aggregates or a cache flush",
                    report.projection
                );
                return Err(anyhow::Error::new(err).context(what));
            }
        }
    }
    Ok(())
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
