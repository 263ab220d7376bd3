//! `prismctl rebuild <projection>… | --all --mode in-place|blue-green`: rebuild read models
//! from the event topics.
//!
//! Several read models (or `--all`) rebuild in one run: in place, the checks, the confirmation
//! and the wait are shared — each read model is cleared and registered in a transaction of its
//! own, and one start of the workers replays them all (one process start and one set of
//! partition readers instead of one per read model); blue/green, every new generation is
//! registered from one look at the topics' offsets and built at once by the running workers
//! (a topic that feeds several of them is read once for all), then each is verified and
//! switched as it catches up, and the replaced generations are retired after one grace period.
//! A read model whose verification fails stays building while the others are switched.
//!
//! **In place** (the read model is empty while it replays; workers must be stopped):
//! check the projector group has no members (DescribeConsumerGroups, either protocol), commit
//! the group's own committed offsets again from outside it (assign + commit, never subscribe:
//! Apache Kafka refuses such a commit while the group has members, which is a second guard;
//! nothing moves), then in one transaction clear the projection's current generation (table,
//! gate rows, dead letters, parked aggregates) and register, per source partition, the range
//! from the earliest offset to the group's committed offset as a bulk replay
//! (`prism_read_store::projection::replay`), then delete its Redis keys and report the replay
//! and the group's lag until both have caught up (`--no-wait` returns at once). The workers,
//! when they start, read those ranges directly from the partitions and land them in large
//! chunks before they apply any later event of those partitions to the projection; the group's
//! offsets never move, so the other read models fed by the same topics see nothing again.
//!
//! **Blue/green** (the active generation keeps serving throughout): register generation N+1
//! as `building` and create its table (from the SQL the application registered); the
//! application's running workers notice and build it — a projector of this read model alone at
//! generation N+1 in the group `<prefix>prism.rebuild.<projection>.g<N+1>` (prismctl has no
//! folds; see `prism_projector::builder`). What the source partitions hold when the generation
//! is registered is a bulk replay of N+1, registered with it; the build group's offsets are
//! committed at the replay's ends first, so the group delivers only what came after. prismctl
//! reports the replay until it has landed, then the build group's lag until its committed
//! offsets reach the end offsets seen then; then verify at a common position
//! (`prism_read_store::rebuild::verify`: in one snapshot, without holding any batch, every
//! aggregate's last applied version equal in both generations, counts and checksums equal) and
//! switch (`prism_read_store::rebuild::switch`: under a share lock on the gate and both tables,
//! the versions equal again, then view + registry + `NOTIFY` in the same transaction), each
//! retried briefly while live traffic keeps one side ahead. Live projector workers
//! (`projector.generation = 0`) follow the switch at their next batch: a batch that began
//! before the switch committed lands in the old generation first (the switch waits for it),
//! one that began after finds the switch and is applied to the new one instead (duplicates
//! skipped), so the live group simply continues from its own offsets, and no offsets are
//! copied between groups. After
//! `--retire-grace` the old generation is retired: table dropped, gate rows and parked
//! aggregates deleted, open dead letters discarded, Redis keys deleted, and the rebuild group
//! (stopped by then) is deleted from the broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use prism_cache::Cache;
use prism_config::PrismConfig;
use prism_kafka::admin::{self, GroupMembership, OutsideCommit, PartitionOffsets};
use prism_postgres::Database;
use prism_projections::{intern, ProjectionInstance};
use prism_read_store::rebuild::{self as store, Apart, SwitchOutcome, Verification};
use prism_read_store::RegisteredReadModel;

use super::{confirm, KAFKA_HINT, POSTGRES_HINT, REDIS_HINT};

/// Arguments of `prismctl rebuild`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct RebuildArgs {
    /// The read models to rebuild (of those `prismctl read-models` lists). In place, several
    /// are cleared together and replayed by one start of the workers; blue/green, their new
    /// generations are built at once and each is switched to as it catches up.
    #[arg(value_parser = parse_projection, required_unless_present = "all", conflicts_with = "all")]
    pub projections: Vec<&'static str>,
    /// Rebuild every registered read model.
    #[arg(long)]
    pub all: bool,
    /// in-place: clear and replay the active generation (workers stopped, read model empty
    /// meanwhile). blue-green: build a new generation beside the serving one, verify, switch.
    #[arg(long, value_enum)]
    pub mode: RebuildMode,
    /// Print the plan and the current positions; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rebuild without asking for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// In place: return after the reset instead of reporting progress until caught up.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting (catch-up, switch) after this many seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub timeout: u64,
    /// Blue/green: seconds between the switch and dropping the old generation, so batches of
    /// live workers that started before the switch have finished.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub retire_grace: u64,
    /// Blue/green: drop generations left `building` by an earlier rebuild that did not finish.
    #[arg(long)]
    pub abandon_previous: bool,
    /// Blue/green: switch even when the new generation's rows differ from the old one's at the
    /// common position (the rebuild is meant to change the model, e.g. after a fold was fixed).
    /// Without it a difference stops the rebuild before the switch.
    #[arg(long)]
    pub allow_changes: bool,
}

/// What `prismctl rebuild --help` adds after the options.
const AFTER_HELP: &str = "\
Several read models may be named, or --all for every registered one: in place they are cleared
by one run and replayed by one start of the workers; blue/green their new generations are built
at once, each is verified and switched to as it catches up (one that fails stays building and
fails the run), and the replaced ones are retired together.

In place: stop the projector workers first. The projection's table, gate rows, dead letters and
parked aggregates are cleared and the events before the projector group's committed offsets on
its source topics are registered for a bulk replay, in one transaction; then its Redis keys are
deleted. Start the workers: they read those events directly from the partitions and land them
in large chunks, then take the group's batches as before, and the command reports the replay and
the group's lag until both have caught up. The group's offsets do not move, so the other read
models fed by the same topics see nothing again.

Blue/green: the serving generation keeps serving. A new generation is built by the
application's running projector workers (prismctl has no folds): what the source topics hold
when it is registered is replayed in bulk, the rest follows under its own group
(<topics.prefix>prism.rebuild.<projection>.g<N>), then switched to in one transaction at a
common position: both generations have applied the same version of every aggregate, and their
row counts and checksums are equal (or --allow-changes). Live workers follow the switch at their
next batch and continue from their own offsets. The old generation is dropped after
--retire-grace, and the rebuild group is deleted from the broker.";

/// How to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebuildMode {
    /// Clear the active generation and replay into it.
    InPlace,
    /// Build a new generation, verify it, switch atomically, retire the old one.
    BlueGreen,
}

fn parse_projection(s: &str) -> Result<&'static str, String> {
    if prism_projections::read_model::is_identifier(s, 40) {
        Ok(intern(s))
    } else {
        Err(format!("`{s}` is not a read-model name (lowercase letters, digits and `_`)"))
    }
}

/// Broker and database requests give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Runs `prismctl rebuild`.
pub async fn run(config: &PrismConfig, args: RebuildArgs) -> anyhow::Result<()> {
    let db = Database::connect(&config.postgres, "prismctl-rebuild")
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({POSTGRES_HINT})"))?;
    let registered = super::read_models::registered(config, &db).await?;
    let chosen: Vec<RegisteredReadModel> = if args.all {
        registered
    } else {
        let mut chosen: Vec<RegisteredReadModel> = Vec::new();
        for name in &args.projections {
            if !chosen.iter().any(|m| m.name == *name) {
                chosen.push(super::read_models::find(&registered, name)?);
            }
        }
        chosen
    };
    let client = db.client().await?;
    let mut models = Vec::with_capacity(chosen.len());
    for model in chosen {
        let name = model.name;
        let active = prism_read_store::read_models::active_generation(&**client, name)
            .await?
            .with_context(|| format!("{name} has no active generation: run `prismctl migrate` first"))?;
        models.push((model, ProjectionInstance::new(name, active)));
    }
    drop(client);
    match args.mode {
        RebuildMode::InPlace => in_place(config, &db, &models, &args).await,
        RebuildMode::BlueGreen => blue_green(config, &db, &models, &args).await,
    }
}

/// The event topics `model` is built from.
fn source_topics(config: &PrismConfig, model: &RegisteredReadModel) -> Vec<String> {
    model.sources.iter().map(|t| format!("{}{t}.events", config.topics.prefix)).collect()
}

/// The projector group of the deployment (`projector.group` under the topic prefix).
fn projector_group(config: &PrismConfig) -> String {
    admin::projector_group_id(config)
}

/// The group the application's workers build `instance` in: a builder is a projector whose
/// `projector.group` is `prism.rebuild.<projection>.g<N>` (`prism_projector::builder`), so its
/// group id comes from the same derivation as the workers' own.
fn build_group(config: &PrismConfig, instance: ProjectionInstance) -> String {
    let mut builder = config.clone();
    builder.projector.group = format!("prism.rebuild.{}.g{}", instance.projection, instance.generation);
    admin::projector_group_id(&builder)
}

async fn offsets(
    config: &PrismConfig,
    group: &str,
    topics: &[String],
) -> anyhow::Result<Vec<PartitionOffsets>> {
    admin::group_offsets(&config.kafka, group, topics, REQUEST_TIMEOUT)
        .await
        .map_err(|e| super::kafka_error(e, format!("reading the offsets of group {group}")))
}

/// Messages between the group's position and the end, over all partitions.
fn lag(offsets: &[PartitionOffsets]) -> i64 {
    offsets.iter().map(|p| (p.high - p.committed.unwrap_or(p.low).max(p.low)).max(0)).sum()
}

/// Messages in the partitions (high watermarks summed; topics here are never compacted).
fn end_total(offsets: &[PartitionOffsets]) -> i64 {
    offsets.iter().map(|p| p.high).sum()
}

fn committed_total(offsets: &[PartitionOffsets]) -> i64 {
    offsets.iter().map(|p| p.committed.unwrap_or(0)).sum()
}

/// Whether `offsets` has reached `target` ((topic, partition) -> offset) everywhere.
fn reached(offsets: &[PartitionOffsets], target: &BTreeMap<(String, i32), i64>) -> bool {
    target.iter().all(|((topic, partition), end)| {
        offsets
            .iter()
            .find(|p| &p.topic == topic && p.partition == *partition)
            .is_some_and(|p| p.committed.unwrap_or(p.low).max(p.low) >= *end)
    })
}

/// Prints `group`'s progress every [`PROGRESS_EVERY`] until its committed offsets reach
/// `target`; `Ok(None)` then, `Ok(Some(lag))` at `deadline`. `check` runs before each look
/// (e.g. to fail when the projector doing the work has died).
async fn follow_progress(
    config: &PrismConfig,
    group: &str,
    topics: &[String],
    target: &BTreeMap<(String, i32), i64>,
    deadline: Instant,
    label: &str,
    mut builders: Option<&mut BuilderWatch>,
) -> anyhow::Result<Option<i64>> {
    let mut last_print = Instant::now() - PROGRESS_EVERY;
    loop {
        if let Some(builders) = builders.as_deref_mut() {
            builders.check().await?;
        }
        let now = offsets(config, group, topics).await?;
        let done = reached(&now, target);
        if done || last_print.elapsed() >= PROGRESS_EVERY {
            println!(
                "progress: {label} committed {} of {} messages, lag {}",
                committed_total(&now),
                end_total(&now),
                lag(&now)
            );
            last_print = Instant::now();
        }
        if done {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Ok(Some(lag(&now)));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Prints the bulk replay of `instance` every [`PROGRESS_EVERY`] until every range of it has
/// landed; fails at `deadline`.
async fn follow_replay(db: &Database, instance: ProjectionInstance, deadline: Instant) -> anyhow::Result<()> {
    let mut last_print = Instant::now() - PROGRESS_EVERY;
    loop {
        let client = db.client().await?;
        let ranges = prism_read_store::projection::replay::ranges(&**client, &[instance.id()]).await?;
        drop(client);
        let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
        let loaded: i64 = ranges.iter().map(|r| r.settled_to - r.start).sum();
        let done = ranges.iter().all(|r| r.is_settled());
        if done || last_print.elapsed() >= PROGRESS_EVERY {
            println!(
                "progress: {instance} replayed {loaded} of {total} messages in {} range(s), {} still loading",
                ranges.len(),
                ranges.iter().filter(|r| !r.is_settled()).count()
            );
            last_print = Instant::now();
        }
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the replay of {instance} has not finished ({loaded} of {total} messages): are the workers running?");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn ends(offsets: &[PartitionOffsets]) -> BTreeMap<(String, i32), i64> {
    offsets.iter().map(|p| ((p.topic.clone(), p.partition), p.high)).collect()
}

async fn connect_cache(config: &PrismConfig) -> anyhow::Result<Cache> {
    Cache::connect(&config.redis).await.with_context(|| format!("cannot connect to Redis ({REDIS_HINT})"))
}

/// Deletes `instance`'s Redis keys; returns how many there were (0 for uncached read models).
async fn delete_cache(
    cache: &Cache,
    config: &PrismConfig,
    model: &RegisteredReadModel,
    instance: ProjectionInstance,
) -> anyhow::Result<u64> {
    match cache_prefix(config, model, instance) {
        Some(prefix) => cache
            .delete_prefix(&prefix)
            .await
            .with_context(|| format!("deleting the Redis keys under {prefix}")),
        None => Ok(0),
    }
}

/// The Redis key prefix of `instance`, when `model` is cached.
fn cache_prefix(
    config: &PrismConfig,
    model: &RegisteredReadModel,
    instance: ProjectionInstance,
) -> Option<String> {
    model.cache_kind.as_deref().map(|kind| instance.cache_prefix(kind, &config.redis.key_prefix))
}

/// One read model of an in-place rebuild, at its active generation.
struct InPlaceTarget<'a> {
    model: &'a RegisteredReadModel,
    instance: ProjectionInstance,
    topics: Vec<String>,
}

/// Rebuilds `targets` in place together: one check that the workers are stopped, one
/// confirmation, each read model cleared and its ranges registered in a transaction of its own,
/// then (unless `--no-wait`) one wait while the workers, started once, replay them all.
async fn in_place(
    config: &PrismConfig,
    db: &Database,
    models: &[(RegisteredReadModel, ProjectionInstance)],
    args: &RebuildArgs,
) -> anyhow::Result<()> {
    let group = projector_group(config);
    let targets: Vec<InPlaceTarget<'_>> = models
        .iter()
        .map(|(model, instance)| InPlaceTarget {
            model,
            instance: *instance,
            topics: source_topics(config, model),
        })
        .collect();
    let mut topics: Vec<String> = targets.iter().flat_map(|t| t.topics.iter().cloned()).collect();
    topics.sort();
    topics.dedup();
    let names: Vec<&str> = targets.iter().map(|t| t.instance.projection).collect();
    for target in &targets {
        let instance = target.instance;
        println!("rebuild {} in place (generation {})", instance.projection, instance);
        println!("  1. check that the projector group {group} has no members (its workers must be stopped)");
        println!(
            "  2. in one transaction: clear table {instance}, its gate rows, dead letters and parked aggregates, \
             and register the events of {} before {group}'s committed offsets as ranges the workers replay \
             into {instance} in bulk (the group's offsets do not move: the other read models fed by these \
             topics see nothing again)",
            target.topics.join(", ")
        );
        println!("  3. (the group's committed offsets are committed again from outside it first: the broker refuses that while it has members)");
        match cache_prefix(config, target.model, instance) {
            Some(prefix) => println!("  4. delete the Redis keys under {prefix}"),
            None => println!("  4. (not cached: no Redis keys)"),
        }
    }
    println!(
        "  5. start the workers again; {}",
        if args.no_wait {
            "returns at once (--no-wait)"
        } else if targets.len() > 1 {
            "they replay every read model above at once; reports the replays and then the group's lag until all have caught up"
        } else {
            "reports the replay and then the group's lag until both have caught up"
        }
    );
    let before = offsets(config, &group, &topics).await?;
    for p in &before {
        println!(
            "     {}[{}]: committed {} of {}..{}",
            p.topic,
            p.partition,
            p.committed.map_or("-".into(), |c| c.to_string()),
            p.low,
            p.high
        );
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    let client = db.client().await?;
    for target in &targets {
        let projection = target.instance.projection;
        let building = store::building_generations(&**client, projection).await?;
        if !building.is_empty() {
            bail!(
                "{projection} has generation(s) {building:?} in state building: a blue/green rebuild is running or \
                 did not finish. Let it finish, or drop them with `prismctl rebuild {projection} --mode \
                 blue-green --abandon-previous`, before rebuilding in place. Nothing was changed"
            );
        }
    }
    drop(client);
    let question = match names.as_slice() {
        [one] => format!("rebuild {one} in place, emptying it until the replay is done?"),
        many => format!("rebuild {} in place, emptying them until their replays are done?", many.join(", ")),
    };
    confirm(&question, args.yes)?;

    let membership = admin::group_membership(&config.kafka, &group, REQUEST_TIMEOUT)
        .await
        .with_context(|| format!("asking the broker about group {group} ({KAFKA_HINT})"))?;
    match membership {
        GroupMembership::Empty { state } => println!("group {group} has no members (state {state})"),
        GroupMembership::Active { state, members } => bail!(
            "group {group} has {} active member(s) (state {state}): {}. Stop the projector workers first: \
             a running worker would keep writing and committing its own offsets over the reset",
            members.len(),
            members.join(", ")
        ),
        GroupMembership::Unknown { detail } => bail!(
            "the broker cannot say whether group {group} has members ({detail}); nothing was changed. \
             Resetting offsets under running workers would be overwritten by their next commit, leaving \
             the cleared read model unfilled: check that the broker is reachable and this user may \
             describe the group, then run again"
        ),
    }

    // A second guard: the broker refuses a commit from outside a group that has members. The
    // offsets committed are the group's own, so nothing moves.
    let committed: Vec<(String, i32, i64)> =
        before.iter().filter_map(|p| p.committed.map(|c| (p.topic.clone(), p.partition, c))).collect();
    if !committed.is_empty() {
        match admin::commit_offsets_outside_group(&config.kafka, &group, &committed, REQUEST_TIMEOUT)
            .await
            .with_context(|| format!("checking that group {group} has no members ({KAFKA_HINT})"))?
        {
            OutsideCommit::Committed => {}
            OutsideCommit::RefusedGroupActive { code } => bail!(
                "the broker refused a commit for group {group} because it has live members ({code}): stop the \
                 projector workers first. Nothing was cleared"
            ),
        }
    }
    let cache = connect_cache(config).await?;
    for (done, target) in targets.iter().enumerate() {
        let instance = target.instance;
        // What the group will not deliver again: from the earliest offset still in the log to
        // its committed offset. Partitions it never committed on are read from the earliest
        // offset by the workers anyway.
        let replays: Vec<(String, i32, i64, i64)> = before
            .iter()
            .filter(|p| target.topics.contains(&p.topic))
            .filter_map(|p| p.committed.map(|c| (p.topic.clone(), p.partition, p.low, c.min(p.high))))
            .filter(|(_, _, low, end)| low < end)
            .collect();
        let mut client = db.client().await?;
        let cleared = store::clear_instance(&mut client, instance, &replays).await.with_context(|| {
            let earlier: Vec<String> = targets[..done].iter().map(|t| t.instance.id()).collect();
            if earlier.is_empty() {
                format!("clearing {instance} (nothing was changed; run again)")
            } else {
                format!(
                    "clearing {instance} (nothing of it was changed; {} already cleared and registered for replay: \
                     run again for {instance} and the read models after it)",
                    earlier.join(", ")
                )
            }
        })?;
        drop(client);
        println!(
            "cleared {instance}: {} rows, {} gate rows, {} dead letters, {} parked aggregates",
            cleared.rows, cleared.gate_rows, cleared.dead_letters, cleared.parked
        );
        println!(
            "registered {} replay range(s) of {} message(s) for {instance}",
            cleared.replay_ranges,
            replays.iter().map(|(_, _, start, end)| end - start).sum::<i64>()
        );
        let keys = delete_cache(&cache, config, target.model, instance).await?;
        if let Some(prefix) = cache_prefix(config, target.model, instance) {
            println!("deleted {keys} Redis keys under {prefix}");
        }
    }
    let instances: Vec<String> = targets.iter().map(|t| t.instance.id()).collect();
    if args.no_wait {
        println!(
            "start the projector workers; they replay {} from {} in bulk",
            instances.join(", "),
            topics.join(", ")
        );
        return Ok(());
    }

    let target_offsets = ends(&offsets(config, &group, &topics).await?);
    println!(
        "waiting for the projector workers (group {group}) to replay {} and reach the end offsets \
         seen now (start them if they are stopped)",
        instances.join(", ")
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    for target in &targets {
        follow_replay(db, target.instance, deadline).await?;
    }
    if let Some(lag) =
        follow_progress(config, &group, &topics, &target_offsets, deadline, &group, None).await?
    {
        bail!(
            "the projector group {group} has not caught up after {}s (lag {lag}): are the workers running?",
            args.timeout
        );
    }
    let client = db.client().await?;
    for target in &targets {
        let sum = store::checksum(&**client, target.instance).await?;
        println!("caught up: {} checksum {sum}", target.instance);
    }
    Ok(())
}

/// One read model's blue/green rebuild: what it serves now and what it builds.
struct GreenBuild<'m> {
    model: &'m RegisteredReadModel,
    /// The serving generation.
    old: ProjectionInstance,
    /// The generation it builds.
    next: ProjectionInstance,
    /// The group the workers build `next` in.
    build_group: String,
    /// Its source topics.
    topics: Vec<String>,
    /// Generations an earlier rebuild left `building`.
    abandoned: Vec<u32>,
}

/// Rebuilds `models` blue/green together: one plan and one confirmation; every new generation
/// is registered from one look at the topics' offsets, so the workers build them all at once
/// (a topic feeding several of them is read once for all, as in place); then each is verified
/// and switched as it catches up, and after one grace period every replaced generation is
/// retired. A read model that fails (a difference at the common position, a timeout) stays
/// building while the others go on; the run then fails naming it.
async fn blue_green(
    config: &PrismConfig,
    db: &Database,
    models: &[(RegisteredReadModel, ProjectionInstance)],
    args: &RebuildArgs,
) -> anyhow::Result<()> {
    let live_group = projector_group(config);
    let mut builds: Vec<GreenBuild<'_>> = Vec::with_capacity(models.len());
    let client = db.client().await?;
    for (model, old) in models {
        let projection = old.projection;
        let abandoned = store::building_generations(&**client, projection).await?;
        let next = ProjectionInstance::new(projection, store::next_generation(&**client, projection).await?);
        builds.push(GreenBuild {
            model,
            old: *old,
            next,
            build_group: build_group(config, next),
            topics: source_topics(config, model),
            abandoned,
        });
    }
    drop(client);
    for build in &builds {
        print_blue_green_plan(config, build, args);
    }
    if builds.len() > 1 {
        println!(
            "  the {} new generations are registered together and built at once; each is verified and switched \
             as it catches up, and the replaced ones are retired together after {}s",
            builds.len(),
            args.retire_grace
        );
    }
    if args.dry_run {
        println!("dry run: nothing changed");
        return Ok(());
    }
    if !args.abandon_previous {
        if let Some(build) = builds.iter().find(|b| !b.abandoned.is_empty()) {
            bail!(
                "{} has generation(s) {:?} in state building (a rebuild in progress or one that did not finish). \
                 Make sure no other rebuild runs, then pass --abandon-previous to drop them. Nothing was changed",
                build.old.projection,
                build.abandoned
            );
        }
    }
    let names: Vec<&str> = builds.iter().map(|b| b.old.projection).collect();
    confirm(&format!("rebuild {} blue/green?", names.join(", ")), args.yes)?;
    let cache = connect_cache(config).await?;
    for build in &builds {
        for generation in &build.abandoned {
            let instance = ProjectionInstance::new(build.old.projection, *generation);
            let mut client = db.client().await?;
            let retired = store::retire_instance(&mut client, instance, REQUEST_TIMEOUT).await?;
            let keys = delete_cache(&cache, config, build.model, instance).await?;
            println!("dropped abandoned {instance}: {retired:?}, {keys} Redis keys");
        }
    }

    // Everything in the source partitions now is replayed in bulk into the new generations;
    // their build groups deliver the rest. One look for all of them: read models of the same
    // topic get ranges of the same offsets, which the workers load with one reader.
    let mut topics: Vec<String> = builds.iter().flat_map(|b| b.topics.iter().cloned()).collect();
    topics.sort();
    topics.dedup();
    let positions = offsets(config, &live_group, &topics).await?;
    register_generations(config, db, &builds, &positions).await?;

    let mut switched: Vec<&GreenBuild<'_>> = Vec::with_capacity(builds.len());
    let mut failed: Vec<anyhow::Error> = Vec::new();
    for build in &builds {
        let (old, new) = (build.old, build.next);
        let mut builders = BuilderWatch::new(config, &build.build_group);
        let result = build_and_switch(
            config,
            db,
            old,
            new,
            &live_group,
            &build.build_group,
            &build.topics,
            &mut builders,
            args,
        )
        .await;
        match result {
            Ok((old_sum, new_sum)) => {
                if old_sum != new_sum {
                    println!("the rebuilt model differs from the one it replaces (--allow-changes)");
                }
                println!("switched: {old} ({old_sum}) -> {new} ({new_sum})");
                println!("checksum {new}: {new_sum}");
                switched.push(build);
            }
            Err(err) => {
                let err = err.context(format!(
                    "{new} was not switched to and stays building (the workers keep building it); {old} still \
                     serves. Run again with --abandon-previous to start over"
                ));
                if builds.len() > 1 {
                    println!("{err:#}");
                }
                failed.push(err);
            }
        }
    }

    if !switched.is_empty() {
        let replaced: Vec<String> = switched.iter().map(|b| b.old.id()).collect();
        println!(
            "retiring {} in {}s (batches of live workers started before the switch finish first)",
            replaced.join(", "),
            args.retire_grace
        );
        tokio::time::sleep(Duration::from_secs(args.retire_grace)).await;
    }
    for build in &switched {
        retire_replaced(config, db, &cache, build).await?;
    }
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        _ => bail!(
            "{} of {} read models were not switched to:\n{}",
            failed.len(),
            builds.len(),
            failed.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("\n")
        ),
    }
}

/// Prints what a blue/green rebuild of one read model will do.
fn print_blue_green_plan(config: &PrismConfig, build: &GreenBuild<'_>, args: &RebuildArgs) {
    let GreenBuild { model, old, next, build_group, topics, abandoned } = build;
    let projection = old.projection;
    println!("rebuild {projection} blue/green: {old} keeps serving while {next} is built");
    if !abandoned.is_empty() {
        println!(
            "  0. generation(s) {abandoned:?} were left building by an unfinished rebuild: {}",
            if args.abandon_previous {
                "they are dropped first (--abandon-previous)"
            } else {
                "pass --abandon-previous to drop them"
            }
        );
    }
    println!("  1. register {next} as building and create its table");
    println!(
        "  2. the application's projector workers build it (they notice at once): what {} hold now is \
         replayed in bulk, and group {build_group} follows from where the replay ends (its start offsets \
         are committed first) until it reaches the end offsets seen when the replay is done",
        topics.join(", ")
    );
    println!(
        "  3. verify at a common position, without holding the workers' batches: in one snapshot, every \
         aggregate's last applied version must be equal in {old} and {next} (retried while live traffic \
         keeps one side ahead), and row counts and checksums must be equal (unless --allow-changes); \
         then switch: under a share lock on the gate and both tables, the versions equal again, and the \
         view {projection}, the registry and a NOTIFY switch in that transaction. Live workers follow at \
         their next batch"
    );
    println!(
        "  4. after {}s: drop {old}, its gate rows and parked aggregates, discard its open dead letters{}",
        args.retire_grace,
        cache_prefix(config, model, *old)
            .map_or(String::new(), |p| format!(", delete the Redis keys under {p}"))
    );
    println!("     then delete the stopped rebuild group {build_group} from the broker");
}

/// Registers every build's new generation, in one transaction, with a replay of what
/// `positions` (the source partitions' offsets, looked at once for all of them) hold, after
/// committing each build group's start offsets at its replay's ends.
async fn register_generations(
    config: &PrismConfig,
    db: &Database,
    builds: &[GreenBuild<'_>],
    positions: &[PartitionOffsets],
) -> anyhow::Result<()> {
    let replays_of: Vec<Vec<(String, i32, i64, i64)>> = builds
        .iter()
        .map(|build| {
            positions
                .iter()
                .filter(|p| build.topics.contains(&p.topic))
                .map(|p| (p.topic.clone(), p.partition, p.low, p.high))
                .collect()
        })
        .collect();
    // The build group starts where the replay ends: committed before the generation exists,
    // so the builders, which start when it is registered, never read the replayed part again.
    // Every group's at once: each commit is a client of its own.
    futures::future::try_join_all(builds.iter().zip(&replays_of).map(|(build, replays)| async move {
        let (projection, build_group) = (build.old.projection, &build.build_group);
        let starts: Vec<(String, i32, i64)> =
            replays.iter().map(|(t, p, _, high)| (t.clone(), *p, *high)).collect();
        if starts.is_empty() {
            return Ok(());
        }
        match admin::commit_offsets_outside_group(&config.kafka, build_group, &starts, REQUEST_TIMEOUT)
            .await
            .with_context(|| format!("committing the start offsets of {build_group} ({KAFKA_HINT})"))?
        {
            OutsideCommit::Committed => Ok(()),
            OutsideCommit::RefusedGroupActive { code } => bail!(
                "the broker refused to set the start offsets of {build_group}, which has live members ({code}): \
                 another rebuild of {projection} is running. Nothing was registered"
            ),
        }
    }))
    .await?;
    let requests: Vec<store::NewGeneration<'_>> = builds
        .iter()
        .zip(&replays_of)
        .map(|(build, replays)| store::NewGeneration {
            projection: build.old.projection,
            table_sql: &build.model.table_sql,
            replays,
        })
        .collect();
    let mut client = db.client().await?;
    let allocated = store::allocate_generations(&mut client, db.schema(), &requests)
        .await
        .context("registering the new generations (nothing was registered)")?;
    drop(client);
    let unexpected: Vec<String> = builds
        .iter()
        .zip(&allocated)
        .filter(|(build, (_, new))| *new != build.next)
        .map(|(build, (_, new))| format!("{new} instead of {}", build.next))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "another rebuild allocated generations meanwhile; registered {} and left building",
            unexpected.join(", ")
        );
    }
    for (_, new) in &allocated {
        println!(
            "registered {new} (building), table created; waiting for the application's workers to build it"
        );
    }
    Ok(())
}

/// Retires the generation `build` replaced (its switch is done): table, gate rows, parked
/// aggregates, open dead letters and Redis keys; then deletes the stopped build group.
async fn retire_replaced(
    config: &PrismConfig,
    db: &Database,
    cache: &Cache,
    build: &GreenBuild<'_>,
) -> anyhow::Result<()> {
    let (old, build_group) = (build.old, &build.build_group);
    let mut client = db.client().await?;
    let retired = store::retire_instance(&mut client, old, REQUEST_TIMEOUT)
        .await
        .with_context(|| format!("retiring {old} (the switch is done; run the retire again later)"))?;
    let keys = delete_cache(cache, config, build.model, old).await?;
    println!(
        "retired {old}: table dropped {}, {} gate rows, {} parked aggregates, {} open dead letters discarded, {keys} Redis keys deleted",
        retired.table_dropped, retired.gate_rows, retired.parked, retired.dead_letters_discarded
    );
    // The workers stop their builders once the generation is no longer building (within a few
    // seconds); the group can be deleted once it is empty.
    let deleted = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match admin::delete_group(&config.kafka, build_group, REQUEST_TIMEOUT).await {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() < deadline => {
                    tracing::info!(error = %err, "the rebuild group is not empty yet");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => return Err(err),
            }
        }
    };
    match deleted.await {
        Ok(()) => println!("deleted the rebuild group {build_group}"),
        // The rebuild itself is done; a leftover group only holds offsets nobody reads.
        Err(err) => println!(
            "the rebuild group {build_group} could not be deleted ({err}); remove it later with \
             kafka-consumer-groups --delete --group {build_group}"
        ),
    }
    Ok(())
}

/// Watches that workers of the application are building the new generation: its build group
/// must get members. prismctl builds nothing itself (it has no folds).
struct BuilderWatch {
    kafka: prism_config::KafkaConfig,
    group: String,
    started: Instant,
    last_look: Option<Instant>,
    members: usize,
}

impl BuilderWatch {
    fn new(config: &PrismConfig, group: &str) -> Self {
        Self {
            kafka: config.kafka.clone(),
            group: group.to_owned(),
            started: Instant::now(),
            last_look: None,
            members: 0,
        }
    }

    /// Looks at the build group now and then; fails when nobody has joined it for a while.
    async fn check(&mut self) -> anyhow::Result<()> {
        if self.last_look.is_some_and(|at| at.elapsed() < Duration::from_secs(3)) {
            return Ok(());
        }
        self.last_look = Some(Instant::now());
        if let GroupMembership::Active { members, .. } =
            admin::group_membership(&self.kafka, &self.group, REQUEST_TIMEOUT).await?
        {
            if self.members == 0 {
                println!(
                    "{} worker(s) of the application are building it: {}",
                    members.len(),
                    members.join(", ")
                );
            }
            self.members = members.len();
            return Ok(());
        }
        if self.members == 0 && self.started.elapsed() > BUILDERS_WAIT {
            bail!(
                "no worker of the application has joined the build group {} after {BUILDERS_WAIT:?}: blue/green \
                 rebuilds are built by the application's projector workers (prismctl has no folds). Start them",
                self.group
            );
        }
        Ok(())
    }
}

/// How long a blue/green rebuild waits for the first worker to start building.
const BUILDERS_WAIT: Duration = Duration::from_secs(60);

#[allow(clippy::too_many_arguments)]
async fn build_and_switch(
    config: &PrismConfig,
    db: &Database,
    old: ProjectionInstance,
    new: ProjectionInstance,
    live_group: &str,
    build_group: &str,
    topics: &[String],
    builders: &mut BuilderWatch,
    args: &RebuildArgs,
) -> anyhow::Result<(store::Checksum, store::Checksum)> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let started = Instant::now();
    follow_replay(db, new, deadline).await.with_context(|| format!("replaying into {new}"))?;
    let target = ends(&offsets(config, build_group, topics).await?);
    let label = format!("building {new}:");
    if let Some(lag) =
        follow_progress(config, build_group, topics, &target, deadline, &label, Some(builders)).await?
    {
        bail!("{new} has not caught up after {}s (lag {lag})", args.timeout);
    }
    println!(
        "caught up with the end offsets in {:.1}s; verifying at a common position",
        started.elapsed().as_secs_f64()
    );

    let now = Instant::now();
    let mut waiting = CommonPositionWait {
        config,
        live_group,
        build_group,
        topics,
        deadline,
        timeout_seconds: args.timeout,
        started: now,
        last_print: now,
        attempts: 1,
    };
    let verified = loop {
        let mut client = db.client().await?;
        let outcome = store::verify(&mut client, old, new, args.allow_changes).await;
        drop(client);
        match outcome.context("verifying the new generation")? {
            Verification::Verified(verified) => break verified,
            Verification::Mismatch { old: old_sum, new: new_sum } => bail!(
                "verification failed at a common position: {old} has {old_sum}, {new} has {new_sum}; \
                 the rebuilt model differs from the serving one. If the rebuild is meant to change it \
                 (a fixed fold, a repaired table), run again with --allow-changes --abandon-previous"
            ),
            Verification::NotAtCommonPosition(apart) => waiting.apart(old, new, apart).await?,
        }
    };
    println!(
        "verified at a common position after {} attempt(s), without holding the workers' batches: {old} \
         ({}) and {new} ({})",
        waiting.attempts, verified.old_sum, verified.new_sum
    );
    waiting.attempts = 1;
    loop {
        let mut client = db.client().await?;
        let outcome = store::switch(&mut client, db.schema(), &verified, Duration::from_secs(5)).await;
        drop(client);
        match outcome {
            Ok(SwitchOutcome::Switched) => {
                let live = offsets(config, live_group, topics).await?;
                let build = offsets(config, build_group, topics).await?;
                println!(
                    "common position reached again under the switch's lock after {} attempt(s): both \
                     generations applied the same versions of every aggregate",
                    waiting.attempts
                );
                println!(
                    "committed offsets after the switch: live group {live_group} {} / rebuild group {build_group} {} (of {} at the end)",
                    committed_total(&live),
                    committed_total(&build),
                    live.iter().map(|p| p.high).sum::<i64>()
                );
                return Ok((verified.old_sum, verified.new_sum));
            }
            Ok(SwitchOutcome::NotAtCommonPosition(apart)) => waiting.apart(old, new, apart).await?,
            Err(err) if err.sql_state() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                println!("switch attempt {}: tables busy (lock timeout); retrying", waiting.attempts);
                waiting.pause().await?;
            }
            Err(err) => return Err(err).context("switching generations"),
        }
    }
}

/// The wait for a common position of two generations, shared by the verification and the
/// switch: counts attempts, prints progress every [`PROGRESS_EVERY`], gives up at the deadline.
struct CommonPositionWait<'a> {
    config: &'a PrismConfig,
    live_group: &'a str,
    build_group: &'a str,
    topics: &'a [String],
    deadline: Instant,
    timeout_seconds: u64,
    started: Instant,
    last_print: Instant,
    /// Attempts so far, the one in progress included.
    attempts: u32,
}

impl CommonPositionWait<'_> {
    /// An attempt found `old` and `new` apart: says so now and then, and waits before the next.
    async fn apart(
        &mut self,
        old: ProjectionInstance,
        new: ProjectionInstance,
        apart: Apart,
    ) -> anyhow::Result<()> {
        let Apart { new_behind, new_ahead } = apart;
        if self.last_print.elapsed() >= PROGRESS_EVERY {
            let live = offsets(self.config, self.live_group, self.topics).await?;
            let build = offsets(self.config, self.build_group, self.topics).await?;
            println!(
                "waiting for a common position: {new} behind on {new_behind} and ahead on {new_ahead} aggregate(s); \
                 committed: live {} / rebuild {}{}",
                committed_total(&live),
                committed_total(&build),
                if new_ahead > 0 && self.started.elapsed() > Duration::from_secs(30) {
                    " (still ahead after 30s: are the live projector workers running?)"
                } else {
                    ""
                }
            );
            self.last_print = Instant::now();
        }
        if Instant::now() >= self.deadline {
            bail!(
                "no common position within {}s: live traffic kept {old} and {new} apart, or the live projector \
                 workers are not running",
                self.timeout_seconds
            );
        }
        self.pause().await
    }

    /// Waits before the next attempt; fails past the deadline.
    async fn pause(&mut self) -> anyhow::Result<()> {
        if Instant::now() >= self.deadline {
            bail!("no switch within {}s: the tables stayed busy", self.timeout_seconds);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.attempts += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<RebuildArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("prismctl").chain(args.iter().copied()))?;
        match cli.command {
            Command::Rebuild(args) => Ok(args),
            other => panic!("not a rebuild: {other:?}"),
        }
    }

    #[test]
    fn parses_rebuild() {
        let args = parse(&["rebuild", "order_summary", "--mode", "in-place"]).expect("parses");
        assert_eq!((args.projections.as_slice(), args.mode), (&["order_summary"][..], RebuildMode::InPlace));
        assert!(!args.dry_run && !args.yes && !args.no_wait && !args.all);
        let args = parse(&["rebuild", "order_summary", "cart_view", "--mode", "in-place"]).expect("parses");
        assert_eq!(args.projections, ["order_summary", "cart_view"]);
        let args = parse(&["rebuild", "--all", "--mode", "in-place"]).expect("parses");
        assert!(args.all && args.projections.is_empty());
        let args = parse(&[
            "rebuild",
            "user_profile",
            "--mode",
            "blue-green",
            "--dry-run",
            "--yes",
            "--timeout",
            "30",
            "--retire-grace",
            "0",
            "--abandon-previous",
            "--allow-changes",
        ])
        .expect("parses");
        assert_eq!((args.projections.as_slice(), args.mode), (&["user_profile"][..], RebuildMode::BlueGreen));
        assert!(args.dry_run && args.yes && args.abandon_previous && args.allow_changes);
        assert_eq!((args.timeout, args.retire_grace), (30, 0));
    }

    #[test]
    fn rejects_bad_rebuild_arguments() {
        assert!(parse(&["rebuild", "Orders!", "--mode", "in-place"]).is_err(), "not a read-model name");
        assert!(parse(&["rebuild", "order_summary"]).is_err(), "mode is required");
        assert!(parse(&["rebuild", "order_summary", "--mode", "sideways"]).is_err());
        assert!(parse(&["rebuild", "--mode", "in-place"]).is_err(), "a read model or --all is required");
        assert!(
            parse(&["rebuild", "cart_view", "--all", "--mode", "in-place"]).is_err(),
            "names or --all, not both"
        );
        assert!(
            parse(&["rebuild", "cart_view", "Orders!", "--mode", "in-place"]).is_err(),
            "every name is checked"
        );
        assert!(parse(&["rebuild", "order_summary", "--mode", "in-place", "--timeout", "x"]).is_err());
    }

    #[test]
    fn lag_and_reached_compare_committed_with_ends() {
        let p = |partition, low, high, committed| PartitionOffsets {
            topic: "t".into(),
            partition,
            low,
            high,
            committed,
        };
        let now = vec![p(0, 0, 10, Some(4)), p(1, 2, 5, None)];
        assert_eq!(lag(&now), 6 + 3);
        let target: BTreeMap<(String, i32), i64> = [(("t".into(), 0), 4), (("t".into(), 1), 2)].into();
        assert!(reached(&now, &target));
        let target: BTreeMap<(String, i32), i64> = [(("t".into(), 0), 5)].into();
        assert!(!reached(&now, &target));
    }
}
