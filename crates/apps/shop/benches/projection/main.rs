//! The projection benchmark: Prism side by side with its ceilings and its peer, in one run, on
//! one machine, on the same topics and events, each contender a process of its own started from
//! the beginning of the topics under its own consumer group and timed until that group has
//! committed every partition's end.
//!
//! Contenders (in the order they run):
//!
//! 1. **consume only** — reads and commits, nothing else: the ceiling the broker sets;
//! 2. **Prism** — the real `shop-projector` binary, default configuration: all five read models
//!    with their version gates in PostgreSQL, the hot ones in Redis, offsets committed after
//!    landing; afterwards (untimed) every row and cache entry is compared with the oracle's fold;
//! 3. **set-write ceiling** — the final rows Prism's read models hold after each event,
//!    precomputed outside the window and upserted with one set-based statement per read model
//!    per batch, no gate, no fold, no cache ([`ceiling`]): the database's ceiling for this work.
//!    It runs twice, into emptied tables, once before Prism and once after; the faster window
//!    counts, so a slow window cannot flatter Prism's ratio to it;
//! 4. **per-record upsert sink** — the in-repo JDBC-sink-style sink ([`children`]);
//! 5. **Debezium JDBC sink, defaults** and 6. **tuned** — the real connector in Kafka Connect
//!    standalone, reading the same events converted to the JSON-with-schema form it needs
//!    ([`connect`]).
//!
//! For each: events/s (steady window and whole run), ratios against consume only, the
//! set-write ceiling and both Debezium profiles; CPU µs per event of the contender, the broker,
//! PostgreSQL and Redis ([`procs`], [`contender`]); the contender's peak RSS. Then the rebuild
//! rate of every read model, in place and blue/green ([`rebuild`]); then latency at half of
//! Prism's steady rate ([`latency`]). The results are printed with every target's PASS or MISS
//! and written into BENCHMARKS.md and `docs/benchmarks/` ([`report`]), plotted by
//! `ops/bench/plot`.
//!
//! `ops/dev-stack up && cargo bench -p shop --bench projection` runs everything (the stack is
//! never started by the benchmark: it fails naming `ops/dev-stack up` when a service is down).
//! Settings, all optional:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `PRISM_BENCH_EVENTS` | 300000 | events in the throughput run |
//! | `PRISM_BENCH_PARTITIONS` | 4 | partitions per topic |
//! | `PRISM_BENCH_PARTS` | `throughput,rebuild,latency` | which parts run (rebuild needs throughput) |
//! | `PRISM_BENCH_DEBEZIUM` | 1 | 0 leaves the Debezium peer out (no Java needed) |
//! | `PRISM_BENCH_LATENCY_SECONDS` | 60 | length of the latency run |
//! | `PRISM_BENCH_LATENCY_SAMPLE` | 10 | the latency checker follows every n-th event (1: all) |
//! | `PRISM_BENCH_LATENCY_RATE` | half Prism's steady rate | events/s of the latency run (required without the throughput part) |
//! | `PRISM_BENCH_CLIENTS` | 16 | command-then-read clients |
//! | `PRISM_BENCH_CEILING_WRITERS` | 4 | the set-write ceiling's writers |
//! | `PRISM_BENCH_WRITE` | 1 | 0 prints the results without writing BENCHMARKS.md and `docs/benchmarks/` |
//! | `PRISM_BENCH_PLOT` | 1 | 0 skips `ops/bench/plot` |
//! | `PRISM_BENCH_SHOW_BATCHES` | 0 | 1 prints the projector's batch metrics after its run |
//! | `PRISM_BENCH_TIMEOUT` | 900 | seconds one contender may take |
//! | `PRISM_BENCH_PROJECTOR_VARS` | none | `PRISM__…=value` settings, space-separated, for every projector it starts (the shell's `PRISM*` variables are not passed on) |
//!
//! Working files (logs of every process, the precomputed rows, every latency sample) go to
//! `target/bench/projection/`.

mod binaries;
mod ceiling;
mod children;
mod connect;
mod contender;
mod latency;
mod offsets;
mod procs;
mod rebuild;
mod report;
mod statements;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use shop::testing::workload::Workload;

use crate::binaries::Binaries;
use crate::contender::Contender;
use crate::offsets::{GroupWatch, Watch};
use crate::procs::Services;

/// What to run, from the `PRISM_BENCH_*` variables.
#[derive(Debug, Clone)]
struct Settings {
    events: usize,
    partitions: i32,
    throughput: bool,
    rebuild: bool,
    latency: bool,
    debezium: bool,
    latency_seconds: u64,
    latency_sample: usize,
    latency_rate: Option<f64>,
    clients: usize,
    write: bool,
    plot: bool,
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(value) => {
            value.trim().parse().map_err(|_| anyhow::anyhow!("{name}={value} is not a valid number"))
        }
        Err(_) => Ok(default),
    }
}

fn flag(name: &str, default: bool) -> anyhow::Result<bool> {
    match std::env::var(name).as_deref() {
        Err(_) => Ok(default),
        Ok("1" | "true" | "yes") => Ok(true),
        Ok("0" | "false" | "no") => Ok(false),
        Ok(other) => bail!("{name}={other}: use 1 or 0"),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let parts =
            std::env::var("PRISM_BENCH_PARTS").unwrap_or_else(|_| "throughput,rebuild,latency".into());
        let parts: Vec<&str> = parts.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        for part in &parts {
            if !["throughput", "rebuild", "latency"].contains(part) {
                bail!("PRISM_BENCH_PARTS: unknown part `{part}` (throughput, rebuild, latency)");
            }
        }
        let settings = Self {
            events: number("PRISM_BENCH_EVENTS", 300_000)?,
            partitions: number("PRISM_BENCH_PARTITIONS", 4)?,
            throughput: parts.contains(&"throughput"),
            rebuild: parts.contains(&"rebuild"),
            latency: parts.contains(&"latency"),
            debezium: flag("PRISM_BENCH_DEBEZIUM", true)?,
            latency_seconds: number("PRISM_BENCH_LATENCY_SECONDS", 60)?,
            latency_sample: number("PRISM_BENCH_LATENCY_SAMPLE", 10)?,
            latency_rate: std::env::var("PRISM_BENCH_LATENCY_RATE")
                .ok()
                .map(|_| number("PRISM_BENCH_LATENCY_RATE", 0.0))
                .transpose()?,
            clients: number("PRISM_BENCH_CLIENTS", 16)?,
            write: flag("PRISM_BENCH_WRITE", true)?,
            plot: flag("PRISM_BENCH_PLOT", true)?,
        };
        if settings.events == 0
            || settings.partitions < 1
            || settings.clients == 0
            || settings.latency_sample == 0
        {
            bail!(
                "PRISM_BENCH_EVENTS, PRISM_BENCH_PARTITIONS, PRISM_BENCH_CLIENTS and PRISM_BENCH_LATENCY_SAMPLE \
                 must be at least 1"
            );
        }
        if settings.rebuild && !settings.throughput {
            bail!(
                "PRISM_BENCH_PARTS: the rebuild part replays the throughput part's events; add `throughput`"
            );
        }
        if settings.latency && !settings.throughput && settings.latency_rate.is_none() {
            bail!("PRISM_BENCH_PARTS: without `throughput` there is no Prism rate to halve; set PRISM_BENCH_LATENCY_RATE");
        }
        Ok(settings)
    }
}

fn main() -> anyhow::Result<()> {
    if let Ok(role) = std::env::var(children::ROLE) {
        return children::run(&role);
    }
    let settings = Settings::from_env()?;
    for (key, value) in binaries::projector_overrides()? {
        println!("every projector started with {key}={value}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(settings))
}

/// The repository's root.
fn repo() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().context("the repository root")
}

/// `target/bench/projection`, for logs and working files.
fn work_dir() -> anyhow::Result<PathBuf> {
    // target/<profile>/deps/<benchmark> → target
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).context("the benchmark binary is not under target/<profile>/deps")?;
    let dir = target.join("bench/projection");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The port of `host:port` or `scheme://[user@]host:port/...`.
fn port_of(address: &str, default: u16) -> u16 {
    let rest = address.split("://").last().unwrap_or(address);
    let authority = rest.split('/').next().unwrap_or(rest).split(',').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(default)
}

/// Cores, architecture, CPU model and the load when the run started.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    format!("{cores} cores ({model}, {}), load average {load} at the start", std::env::consts::ARCH)
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    let repo = repo()?;
    let work = work_dir()?;
    println!("building the shop's binaries and prismctl (release) ...");
    let binaries = Binaries::build().await?;
    if settings.throughput && settings.debezium {
        connect::prepare(&repo)?;
    }
    let app = shop_model::application();
    let partitions = settings.partitions.to_string();
    let env = TestEnv::with_overrides(&app, &[("PRISM__TOPICS__PARTITIONS", &partitions)])
        .await
        .context("the benchmark runs against the development stack (ops/dev-stack up)")?;
    let services = Services::find(
        port_of(&env.config.kafka.bootstrap_servers, 9092),
        port_of(&env.services.postgres, 5432),
        port_of(&env.config.redis.url, 6379),
    );
    println!("{}", services.describe());
    let mut run = report::Run {
        when: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine: machine(),
        partitions: settings.partitions,
        ..report::Run::default()
    };
    let events = if settings.throughput {
        let events = Workload::generate(7, settings.events);
        throughput(&env, &binaries, &services, &repo, &work, &settings, &events, &mut run).await?;
        events
    } else {
        Vec::new()
    };
    if settings.rebuild {
        let rebuilds = rebuild::run(&env, &binaries, &services, &work).await?;
        (run.rebuilds, run.rebuild_all_in_place, run.rebuild_all_blue_green) =
            (rebuilds.each, rebuilds.all_in_place, rebuilds.all_blue_green);
        let summary = env
            .wait_for_oracle(
                &shop::testing::oracle::fold(&events),
                CacheCheck::Complete,
                Duration::from_secs(120),
            )
            .await
            .context("after the rebuilds the read models must still equal the oracle")?;
        run.checks.push(format!(
            "After all rebuilds: {} PostgreSQL rows and {} Redis entries, equal to the oracle's fold.",
            summary.rows, summary.cache_entries
        ));
    }
    if settings.latency {
        let rate = match (settings.latency_rate, run.contender("prism")) {
            (Some(rate), _) => rate,
            (None, Some(prism)) => prism.rate() / 2.0,
            (None, None) => bail!("no rate for the latency run"),
        };
        let latency_settings = latency::Settings {
            rate,
            seconds: settings.latency_seconds,
            clients: settings.clients,
            sample_every: settings.latency_sample,
            show_batches: flag("PRISM_BENCH_SHOW_BATCHES", false)?,
        };
        let outcome = latency::run(&env, &binaries, &services, &work, &latency_settings).await?;
        std::fs::write(work.join("latency-samples.csv"), latency::samples_csv(&outcome))?;
        run.latency = Some(outcome);
    }
    run.print();
    if settings.write {
        run.write(&repo)?;
        if settings.plot {
            let status = std::process::Command::new(repo.join("ops/bench/plot"))
                .status()
                .context("running ops/bench/plot")?;
            anyhow::ensure!(
                status.success(),
                "ops/bench/plot failed ({status}); PRISM_BENCH_PLOT=0 skips it"
            );
        }
    } else {
        println!("PRISM_BENCH_WRITE=0: BENCHMARKS.md and docs/benchmarks/ left as they were");
    }
    println!("logs and working files: {}", work.display());
    Ok(())
}

/// The throughput part: publishes, then runs every contender.
#[allow(clippy::too_many_arguments)]
async fn throughput(
    env: &TestEnv,
    binaries: &Binaries,
    services: &Services,
    repo: &Path,
    work: &Path,
    settings: &Settings,
    events: &[prism_events::Event],
    run: &mut report::Run,
) -> anyhow::Result<()> {
    let topics = env.event_topics();
    run.events = events.len();
    run.aggregates = events.iter().map(|e| e.meta.aggregate_id).collect::<HashSet<_>>().len();
    println!(
        "publishing {} events ({} aggregates) to {} topics ...",
        events.len(),
        run.aggregates,
        topics.len()
    );
    let producer = prism_testkit::kafka::producer(&env.config)?;
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), events).await?;
    let ends = offsets::end_offsets(&env.config, &topics).await?;
    anyhow::ensure!(
        offsets::total(&ends) as usize == events.len(),
        "the topics hold {} messages, {} were published",
        offsets::total(&ends),
        events.len()
    );
    let connect_topics: Vec<String> =
        env.app.aggregate_types().iter().map(|t| connect::topic(env.topic_prefix(), t.as_str())).collect();
    let connect_ends = if settings.debezium {
        println!(
            "publishing them again in the Debezium sink's format to {} topics ...",
            connect_topics.len()
        );
        connect::create_topics(&env.config, &connect_topics, settings.partitions).await?;
        connect::publish(&producer, env.topic_prefix(), events).await?;
        let ends = offsets::end_offsets(&env.config, &connect_topics).await?;
        anyhow::ensure!(
            offsets::total(&ends) as usize == events.len(),
            "the Connect topics hold {} messages",
            offsets::total(&ends)
        );
        ends
    } else {
        BTreeMap::new()
    };

    // Outside every window: the oracle, the ceiling's rows, every contender's tables.
    let expected = shop::testing::oracle::fold(events);
    let models = env.app.read_models().to_vec();
    let rows_file = work.join("ceiling-rows.tsv");
    println!("precomputing the set-write ceiling's rows ...");
    let final_rows = ceiling::precompute(&models, events, &rows_file)?;
    ceiling::ensure_oracle_counts("the ceiling's precomputation", &final_rows, &expected)?;
    let pg = env.pg().await?;
    ceiling::create_tables(&pg, &models).await?;
    for topic in &topics {
        pg.batch_execute(&format!(
            "CREATE TABLE {} (key text PRIMARY KEY, value jsonb NOT NULL, kafka_offset bigint NOT NULL)",
            children::sink_table(topic)
        ))
        .await?;
    }
    let pg_url =
        format!("{}?options=-csearch_path%3D{}", env.services.database_url(), env.config.postgres.schema);
    let exe = std::env::current_exe()?;
    let child = |role: &str, group: &str| {
        let mut command = binaries::command(&exe, &binaries::prism_vars(env));
        command
            .env(children::ROLE, role)
            .env("PRISM_BENCH_GROUP", group)
            .env("PRISM_BENCH_TOPICS", topics.join(","))
            .env("PRISM_BENCH_PG_URL", &pg_url)
            .env("PRISM_BENCH_CEILING_ROWS", &rows_file);
        command
    };
    let contender = |key: &str,
                     name: &str,
                     does: &str,
                     command,
                     group: &str,
                     ends: &offsets::Ends|
     -> anyhow::Result<Contender> {
        Ok(Contender {
            key: key.into(),
            name: name.into(),
            does: does.into(),
            command,
            watch: Watch::Group(GroupWatch::new(&env.config, group, ends)?),
            ready_line: None,
            error_prefix: None,
            log: work.join(format!("{key}.log")),
            events: offsets::total(ends),
        })
    };
    // Each writer starts with PostgreSQL's dirty pages written out, not with its predecessor's.
    let checkpoint = || async { pg.batch_execute("CHECKPOINT").await.context("CHECKPOINT") };

    // 1. Consume only.
    let group = env.group("bench-consume");
    let c = contender(
        "consume",
        "consume only",
        "reads and commits, nothing else (broker ceiling)",
        child("consume", &group),
        &group,
        &ends,
    )?;
    let (measured, running) = contender::measure(c, services).await?;
    running.stop().await;
    run.contenders.push(measured);

    // The set-write ceiling runs twice, before and after Prism, and the faster of its two
    // windows is the one the ratios use: a window slowed by something outside the contenders
    // (a broker or database just started, another process on the machine) then cannot flatter
    // Prism's ratio to it.
    let pg = &pg;
    let ceiling_window = |when: &'static str| {
        let group = env.group(&format!("bench-ceiling-{when}"));
        let contender = contender(
            "ceiling",
            "set-write ceiling",
            "Prism's final rows precomputed, 1 upsert per read model per batch, no gate/fold/cache",
            child("ceiling", &group),
            &group,
            &ends,
        );
        let (models, expected) = (&models, &expected);
        async move {
            let mut c = contender?;
            c.ready_line = Some("ready");
            ceiling::empty_tables(pg, models).await?;
            checkpoint().await?;
            println!("the set-write ceiling's window {when} Prism:");
            let (measured, running) = contender::measure(c, services).await?;
            running.stop().await;
            let counts = ceiling::row_counts(pg, models).await?;
            ceiling::ensure_oracle_counts(
                &format!("the set-write ceiling's window {when} Prism"),
                &counts,
                expected,
            )?;
            Ok::<_, anyhow::Error>(measured)
        }
    };
    let before = ceiling_window("before").await?;

    // 2. Prism.
    checkpoint().await?;
    let listen = format!("127.0.0.1:{}", binaries::free_port()?);
    let group = prism_projector::group_id(&env.config);
    let c = contender(
        "prism",
        "Prism",
        "shop-projector, default configuration: 5 read models + version gates, hot ones in Redis, commit after landing",
        binaries::projector(binaries, env, &listen),
        &group,
        &ends,
    )?;
    let tracked = statements::reset(pg).await;
    let (measured, running) = contender::measure(c, services).await?;
    if tracked {
        run.statements = statements::read(pg).await?;
    }
    let metrics = reqwest::get(format!("http://{listen}/metrics")).await?.text().await?;
    std::fs::write(work.join("prism-metrics.txt"), &metrics)?;
    run.batch_phases = report::BatchPhases::parse(&metrics);
    if flag("PRISM_BENCH_SHOW_BATCHES", false)? {
        for line in
            metrics.lines().filter(|l| l.contains("batch") && !l.contains("_bucket") && !l.starts_with('#'))
        {
            println!("  {line}");
        }
    }
    running.stop().await;
    let summary = env
        .wait_for_oracle(&expected, CacheCheck::Complete, Duration::from_secs(120))
        .await
        .context("the benchmarked projection must also be right")?;
    run.checks.push(format!(
        "Prism: {} PostgreSQL rows and {} Redis entries, equal to the oracle's fold of the events.",
        summary.rows, summary.cache_entries
    ));
    run.contenders.push(measured);

    // 3. The set-write ceiling, after Prism (its first window ran before Prism).
    let after = ceiling_window("after").await?;
    run.checks.push(format!(
        "Set-write ceiling: {} rows over the five tables in each of its two windows, as many per read model as the oracle's; {:.0} events/s before Prism and {:.0} after, and the ratios use the faster.",
        expected.rows.values().map(|rows| rows.len()).sum::<usize>(),
        before.rate(),
        after.rate()
    ));
    let faster = if after.rate() >= before.rate() { after } else { before };
    run.contenders.push(faster);

    // 4. The per-record upsert sink.
    checkpoint().await?;
    let group = env.group("bench-sink");
    let c = contender(
        "sink",
        "per-record upsert sink",
        "JDBC-sink style in Rust: last document per key, 1 statement per record, 1 txn per 500",
        child("sink", &group),
        &group,
        &ends,
    )?;
    let (measured, running) = contender::measure(c, services).await?;
    running.stop().await;
    let mut rows = 0i64;
    for topic in &topics {
        rows += pg
            .query_one(&format!("SELECT count(*) FROM {}", children::sink_table(topic)), &[])
            .await?
            .get::<_, i64>(0);
    }
    anyhow::ensure!(
        rows as usize == run.aggregates,
        "the upsert sink holds {rows} rows for {} aggregates",
        run.aggregates
    );
    run.checks.push(format!("Per-record upsert sink: {rows} rows, one per aggregate."));
    run.contenders.push(measured);

    // 5, 6. The Debezium JDBC sink.
    if settings.debezium {
        let (jdbc, user) = connect::jdbc_url(&env.services.database_url(), &env.config.postgres.schema)?;
        let mut groups = Vec::new();
        for (profile, label, does) in [
            (
                "defaults",
                "Debezium JDBC sink, defaults",
                "Connect 4.4 standalone, upsert by key, batch 500, 1 task",
            ),
            ("tuned", "Debezium JDBC sink, tuned", "batch 5000, UNNEST insert, reduction buffer, 1 task"),
        ] {
            checkpoint().await?;
            let name = format!("{}-dbz-{profile}", env.id);
            let group = format!("connect-{name}");
            groups.push(group.clone());
            let state = work.join(format!("connect-{profile}"));
            let _ = std::fs::remove_dir_all(&state);
            let command = connect::command(
                repo,
                &env.config.kafka.bootstrap_servers,
                &connect_topics,
                &jdbc,
                &user,
                profile,
                &name,
                &state,
            );
            let key = format!("debezium-{profile}");
            let mut c = contender(&key, label, does, command, &group, &connect_ends)?;
            c.error_prefix = Some("connect: ERROR");
            let result = contender::measure(c, services).await;
            let (measured, running) = match result {
                Ok(ok) => ok,
                Err(err) => {
                    let _ = connect::delete_groups(&env.config, &groups).await;
                    return Err(err);
                }
            };
            running.stop().await;
            let mut rows = 0i64;
            for topic in &connect_topics {
                rows += pg
                    .query_one(&format!("SELECT count(*) FROM {}", connect::table(profile, topic)), &[])
                    .await
                    .with_context(|| format!("the Debezium sink's table for {topic}"))?
                    .get::<_, i64>(0);
            }
            anyhow::ensure!(
                rows as usize == run.aggregates,
                "{label} holds {rows} rows for {} aggregates",
                run.aggregates
            );
            run.checks.push(format!("{label}: {rows} rows, one per aggregate."));
            run.contenders.push(measured);
        }
        connect::delete_groups(&env.config, &groups).await?;
    }
    Ok(())
}
