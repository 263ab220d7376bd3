//! Redrives requested by operators, done by the application's workers (they hold the folds).
//!
//! `prismctl dlq redrive` records a request for one projection instance; every worker looks
//! for requests concerning the instances of its read models (active and building generations)
//! every [`LOOK_EVERY`], claims one (exactly one worker gets it), and runs the redrive through
//! the same decoder, gate, feeds and writers as a batch: Redis is checked first (a redrive must
//! not land in PostgreSQL while its cache writes cannot follow), the chains are redriven in
//! PostgreSQL, then their cache entries written version-guarded. The result (what was applied,
//! what is still open and why) goes back to the request for prismctl to print.

use std::time::Duration;

use anyhow::Context;
use prism_cache::{Cache, Entry};
use prism_events::Limits;
use prism_postgres::Database;
use prism_projections::{Application, GapPolicy, ProjectionInstance};
use prism_read_store::projection::redrive::{self, ChainReport, DeadLetter};
use prism_read_store::projection::{MessageContent, Poison, SourceMessage, Target};
use prism_read_store::requests::{self, OperatorRequest, RedriveRequest};
use tokio::sync::watch;

/// How often a worker looks for requests.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Serves requests for the instances of `read_models` until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    app: Application,
    db: Database,
    cache: Cache,
    key_prefix: String,
    policy: GapPolicy,
    limits: Limits,
    read_models: Vec<&'static str>,
    mut stop: watch::Receiver<bool>,
) {
    let worker = format!("{}-projector:{}", app.name(), std::process::id());
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        if policy == GapPolicy::DeadLetter && last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = tokio::time::Instant::now();
            if let Err(err) = sweep(&app, &db, &cache, &key_prefix, policy, &limits, &read_models).await {
                tracing::warn!(error = %format!("{err:#}"), "looking for version gaps to heal");
            }
        }
        match next(&db, &read_models, &worker).await {
            Ok(Some(request)) => {
                let outcome = handle(&app, &db, &cache, &key_prefix, policy, &limits, &request).await;
                let (succeeded, result) = match outcome {
                    Ok(reports) => (true, serde_json::json!({ "chains": reports })),
                    Err(err) => (false, serde_json::json!({ "error": format!("{err:#}") })),
                };
                if let Err(err) = requests::finish(&db, request.id, succeeded, &result).await {
                    tracing::warn!(request = request.id, error = %err, "recording a request's outcome");
                }
                continue;
            }
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err, "looking for operator requests"),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// How often a worker looks for version gaps whose missing event arrived without being
/// healed at once (a crash between the batch and its heal).
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Heals every healable chain of the active generations of `read_models`.
async fn sweep(
    app: &Application,
    db: &Database,
    cache: &Cache,
    key_prefix: &str,
    policy: GapPolicy,
    limits: &Limits,
    read_models: &[&'static str],
) -> anyhow::Result<()> {
    let instances = {
        let client = db.client().await?;
        prism_read_store::rebuild::active_generations(&**client, read_models).await?
    };
    for instance in instances {
        let Some(model) = app.read_model(instance.projection) else { continue };
        let targets = [Target { instance, model }];
        let reports =
            redrive::heal(db, &targets, None, policy, |letter| decode_stored(app, limits, letter)).await?;
        if let Some(kind) = model.cache_kind() {
            for report in &reports {
                write_cache(cache, &instance.cache_prefix(kind, key_prefix), report).await?;
            }
        }
    }
    Ok(())
}

async fn next(
    db: &Database,
    read_models: &[&'static str],
    worker: &str,
) -> anyhow::Result<Option<OperatorRequest>> {
    let client = db.client().await?;
    let mut instances = prism_read_store::rebuild::active_generations(&**client, read_models).await?;
    instances.extend(prism_read_store::rebuild::building_instances(&**client, read_models).await?);
    drop(client);
    let ids: Vec<String> = instances.iter().map(|i| i.id()).collect();
    Ok(requests::claim_next(db, &ids, worker).await?)
}

async fn handle(
    app: &Application,
    db: &Database,
    cache: &Cache,
    key_prefix: &str,
    policy: GapPolicy,
    limits: &Limits,
    request: &OperatorRequest,
) -> anyhow::Result<Vec<ChainReport>> {
    let instance = ProjectionInstance::parse(&request.projection)
        .with_context(|| format!("`{}` is not a projection instance", request.projection))?;
    let model = app
        .read_model(instance.projection)
        .with_context(|| format!("{} does not define {}", app.name(), instance.projection))?;
    let redrive_request: RedriveRequest =
        serde_json::from_value(request.arguments.clone()).context("the request's arguments")?;
    tracing::info!(request = request.id, projection = %instance, ?redrive_request, "redriving dead letters");
    cache.ping().await.context("Redis does not answer; nothing was redriven")?;
    let targets = [Target { instance, model }];
    let reports = redrive::redrive(db, &targets, redrive_request.target(), policy, |letter| {
        decode_stored(app, limits, letter)
    })
    .await
    .context("the redrive failed; the chain being redriven was rolled back")?;
    if let Some(kind) = model.cache_kind() {
        let prefix = instance.cache_prefix(kind, key_prefix);
        for report in &reports {
            write_cache(cache, &prefix, report).await?;
        }
    }
    Ok(reports)
}

/// The message the projector would decode from a stored dead letter, through its own decoder.
pub fn decode_stored(app: &Application, limits: &Limits, letter: &DeadLetter) -> SourceMessage {
    let topic_type =
        letter.aggregate_type.as_deref().and_then(|t| app.events().aggregate_type(t)).or_else(|| {
            // `<prefix><type>.events`: the prefix is the deployment's, so match the suffix.
            app.aggregate_types().iter().copied().find(|t| {
                letter
                    .source_topic
                    .strip_suffix(&t.topic(""))
                    .is_some_and(|prefix| prefix.is_empty() || prefix.ends_with('.'))
            })
        });
    let Some(topic_type) = topic_type else {
        return SourceMessage {
            offset: letter.source_offset,
            key: letter.message_key.clone().map(Into::into),
            value: letter.message_value.clone().map(Into::into),
            content: MessageContent::Poison(Poison {
                aggregate: letter.aggregate(),
                aggregate_version: letter.aggregate_version.and_then(|v| u64::try_from(v).ok()),
                event_type: letter.event_type.clone(),
                kind: "unknown_topic".into(),
                message: format!("topic {} is not an event topic of {}", letter.source_topic, app.name()),
            }),
        };
    };
    let message = prism_kafka::ConsumedMessage::new(
        letter.source_offset,
        None,
        letter.message_key.as_deref(),
        letter.message_value.as_deref(),
        &[],
    );
    crate::decode::decode(&message, app.events(), topic_type, limits)
}

/// Writes a chain's cache entries, version-guarded, retrying a few times: PostgreSQL has
/// committed, so the cache must follow.
pub(crate) async fn write_cache(cache: &Cache, prefix: &str, report: &ChainReport) -> anyhow::Result<()> {
    if report.cache_entries.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = report.cache_entries.iter().map(|e| format!("{prefix}{}", e.id)).collect();
    let entries: Vec<Entry<'_>> = report
        .cache_entries
        .iter()
        .zip(&keys)
        .map(|(e, key)| Entry { key, revision: e.revision, version: e.version, document: &e.document })
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
                return Err(anyhow::Error::new(err).context(format!(
                    "the redrive of {} committed in PostgreSQL but its cache entries could not be written; \
                     the cache may serve older rows until the next event of these aggregates",
                    report.projection
                )))
            }
        }
    }
    Ok(())
}
