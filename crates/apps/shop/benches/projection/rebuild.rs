//! Rebuild rate: `prismctl rebuild` of every read model, in place and blue/green, on the events
//! of the throughput run, against Prism's live rate on the same workload. Both modes replay in
//! bulk (`prism_read_store::projection::replay`): the projector reads the source partitions
//! directly and lands chunks of `projector.replay_chunk_events`.
//!
//! - **In place** needs the projector workers stopped (prismctl refuses otherwise). For each
//!   read model: `prismctl rebuild <model> --mode in-place --yes --no-wait` clears the model and
//!   registers replay ranges up to the projector group's committed offsets (which do not move,
//!   so the other read models fed by the same topics see nothing again); then the projector
//!   (the same binary and configuration as in the throughput run) is started and timed like a
//!   contender until every range has landed and settled (cache written). Then all of them at
//!   once, as an operator rebuilds everything: `prismctl rebuild --all --mode in-place`, one
//!   start of the projector, timed until every read model's ranges have settled.
//! - **Blue/green** runs beside the serving generation, with the projector running. For each
//!   read model: `prismctl rebuild <model> --mode blue-green --yes --retire-grace 1` registers
//!   the next generation with replay ranges to the topics' ends and commits its build group
//!   (`<prefix>prism.rebuild.<model>.g<N>`) there; the running worker loads the ranges and its
//!   builder follows the group. Timed from prismctl's start until the ranges have settled and
//!   the build group stands at the ends. Verification and the switch come after that and are
//!   reported separately (prismctl's whole run). Then all of them at once: `prismctl rebuild
//!   --all --mode blue-green`, timed until every new generation has settled and every build
//!   group stands at the ends.
//!
//! Events replayed = messages in the read model's source topics, so an event counts once per
//! read model it feeds; the live rate they are compared with counts the same way (the events
//! the throughput run fed its read models, see `report`). Rates are over the whole window
//! (start → done), start-up included, on both sides: a replay of one read model lasts about a
//! second, too short for a steady window to mean anything.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use prism_testkit::TestEnv;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::binaries::{self, Binaries};
use crate::contender::{self, Contender, Measured};
use crate::offsets::{self, GroupWatch, ReplayWatch, Watch};
use crate::procs::Services;

/// One rebuild's figures.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    /// The read model.
    pub read_model: &'static str,
    /// `in-place` or `blue-green`.
    pub mode: &'static str,
    /// The replay, timed.
    pub measured: Measured,
    /// prismctl's whole run, seconds (blue/green: with verification, switch and retirement).
    pub prismctl_seconds: f64,
    /// PostgreSQL's time by statement over the replay (tracked for every read model at once).
    pub statements: Vec<crate::statements::KindTime>,
}

/// Every rebuild the benchmark times.
#[derive(Debug, Clone, Default)]
pub struct Rebuilds {
    /// Each read model on its own, in place, then each blue/green.
    pub each: Vec<Rebuilt>,
    /// Every read model in place by one `prismctl rebuild --all` and one start of the projector.
    pub all_in_place: Option<Rebuilt>,
    /// Every read model blue/green by one `prismctl rebuild --all`, beside the running projector.
    pub all_blue_green: Option<Rebuilt>,
}

/// Rebuilds every read model in place, one at a time and then all at once, then blue/green
/// the same way; the projector is stopped when this returns.
pub async fn run(
    env: &TestEnv,
    binaries: &Binaries,
    services: &Services,
    work: &Path,
) -> anyhow::Result<Rebuilds> {
    let mut out = Vec::new();
    for model in env.app.read_models() {
        out.push(in_place(env, binaries, services, work, Some(model.name())).await?);
    }
    let all_in_place = Some(in_place(env, binaries, services, work, None).await?);
    let listen = format!("127.0.0.1:{}", binaries::free_port()?);
    let projector = Contender {
        key: "prism-live".into(),
        name: "Prism projector (serving during blue/green rebuilds)".into(),
        does: String::new(),
        command: binaries::projector(binaries, env, &listen),
        watch: Watch::Group(GroupWatch::new(
            &env.config,
            &prism_projector::group_id(&env.config),
            &offsets::end_offsets(&env.config, &env.event_topics()).await?,
        )?),
        ready_line: None,
        error_prefix: None,
        log: work.join("prism-blue-green.log"),
        events: 0,
    };
    // Already at the end of every topic: measure() returns as soon as the worker is up and
    // the group's offsets are read.
    let (_, running) = contender::measure(projector, services).await?;
    let pid = running.pid().context("the projector is not running")?;
    binaries::wait_ready(&format!("http://{listen}"), Duration::from_secs(60), || Ok(())).await?;
    let mut all_blue_green = None;
    let each = env.app.read_models().iter().map(|m| Some(m.name()));
    for which in each.chain([None]) {
        match blue_green(env, binaries, services, work, which, pid).await {
            Ok(rebuilt) if which.is_none() => all_blue_green = Some(rebuilt),
            Ok(rebuilt) => out.push(rebuilt),
            Err(err) => {
                let err = err.context(running.log_tail());
                running.stop().await;
                return Err(err);
            }
        }
    }
    running.stop().await;
    Ok(Rebuilds { each: out, all_in_place, all_blue_green })
}

/// The source topics of a read model and their end offsets.
async fn sources(env: &TestEnv, read_model: &str) -> anyhow::Result<(Vec<String>, offsets::Ends)> {
    let model = env.app.read_model(read_model).context("no such read model")?;
    let topics: Vec<String> = model.sources().iter().map(|t| t.topic(env.topic_prefix())).collect();
    let ends = offsets::end_offsets(&env.config, &topics).await?;
    Ok((topics, ends))
}

/// Runs prismctl to the end; its output goes to `log`. While the broker still counts the
/// stopped projector as a member of its group (it left, but the group has not settled), an
/// in-place rebuild is refused: that is retried for up to 30 s.
async fn prismctl(env: &TestEnv, binaries: &Binaries, args: &[&str], log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = std::fs::File::create(log)?;
        let status = binaries::command(&binaries.prismctl, &binaries::prism_vars(env))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .status()
            .await?;
        if status.success() {
            return Ok(());
        }
        let output = std::fs::read_to_string(log).unwrap_or_default();
        if !output.contains("active member") || Instant::now() > deadline {
            bail!("prismctl {} failed ({status})\n{}", args.join(" "), contender::log_tail(log));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An in-place rebuild of `read_model`, or of every read model (`None`: `prismctl rebuild
/// --all`, one start of the projector for all of them), timed until every range has settled.
async fn in_place(
    env: &TestEnv,
    binaries: &Binaries,
    services: &Services,
    work: &Path,
    read_model: Option<&'static str>,
) -> anyhow::Result<Rebuilt> {
    let (which, label) = match read_model {
        Some(name) => (name, name),
        None => ("--all", "all"),
    };
    let started = Instant::now();
    prismctl(
        env,
        binaries,
        &["rebuild", which, "--mode", "in-place", "--yes", "--no-wait"],
        &work.join(format!("prismctl-in-place-{label}.log")),
    )
    .await?;
    let instances: Vec<String> = env
        .active_instances()
        .await?
        .iter()
        .filter(|i| read_model.is_none_or(|name| i.projection == name))
        .map(|i| i.id())
        .collect();
    anyhow::ensure!(!instances.is_empty(), "{which} has no active generation");
    let watch = ReplayWatch::new(env.pg().await?, instances);
    let events = watch.total().await?;
    let listen = format!("127.0.0.1:{}", binaries::free_port()?);
    let replay = Contender {
        key: format!("rebuild-in-place-{label}"),
        name: format!("in-place rebuild of {}", read_model.unwrap_or("every read model at once")),
        does: String::new(),
        command: binaries::projector(binaries, env, &listen),
        watch: Watch::Replay(watch),
        ready_line: None,
        error_prefix: None,
        log: work.join(format!("prism-in-place-{label}.log")),
        events,
    };
    // Where PostgreSQL's time goes when every read model is rebuilt at once.
    let pg = env.pg().await?;
    let tracked = read_model.is_none() && crate::statements::reset(&pg).await;
    let (measured, running) = contender::measure(replay, services).await?;
    let prismctl_seconds = started.elapsed().as_secs_f64();
    let statements = if tracked { crate::statements::read(&pg).await? } else { Vec::new() };
    running.stop().await;
    Ok(Rebuilt {
        read_model: read_model.unwrap_or("all read models"),
        mode: "in-place",
        measured,
        prismctl_seconds,
        statements,
    })
}

/// A blue/green rebuild of `read_model`, or of every read model at once (`None`: `prismctl
/// rebuild --all`), beside the running projector `projector`: timed from prismctl's start
/// until every new generation's ranges have settled and its build group stands at the ends.
async fn blue_green(
    env: &TestEnv,
    binaries: &Binaries,
    services: &Services,
    work: &Path,
    read_model: Option<&'static str>,
    projector: u32,
) -> anyhow::Result<Rebuilt> {
    let (which, label) = match read_model {
        Some(name) => (name, name),
        None => ("--all", "all"),
    };
    let models: Vec<&'static str> = match read_model {
        Some(name) => vec![name],
        None => env.app.read_models().iter().map(|m| m.name()).collect(),
    };
    println!("blue/green rebuild of {} ...", read_model.unwrap_or("every read model at once"));
    let mut ends_of = Vec::with_capacity(models.len());
    for model in &models {
        ends_of.push(sources(env, model).await?.1);
    }
    let events: i64 = ends_of.iter().map(offsets::total).sum();
    let log = work.join(format!("prismctl-blue-green-{label}.log"));
    let mut child = binaries::command(&binaries.prismctl, &binaries::prism_vars(env))
        .args(["rebuild", which, "--mode", "blue-green", "--yes", "--retire-grace", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let started = Instant::now();
    let start = services.sample(Some(projector));
    let stdout = child.stdout.take().context("prismctl's stdout")?;
    let stderr = child.stderr.take().context("prismctl's stderr")?;
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(stderr)] {
        let tx = lines_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    drop(lines_tx);
    let mut transcript = String::new();
    // "registered <model>_g<N> (building), …" names each generation, hence its build group.
    let mut generations: Vec<Option<u32>> = vec![None; models.len()];
    while generations.iter().any(Option::is_none) {
        let line = tokio::time::timeout(Duration::from_secs(120), lines_rx.recv())
            .await
            .context("prismctl printed nothing for 120 s")?;
        let Some(line) = line else {
            let status = child.wait().await?;
            bail!("prismctl rebuild {which} --mode blue-green ended ({status}) before registering every generation:\n{transcript}");
        };
        transcript.push_str(&line);
        transcript.push('\n');
        for (model, generation) in models.iter().zip(generations.iter_mut()) {
            if let Some(rest) = line.strip_prefix(&format!("registered {model}_g")) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                *generation = Some(
                    digits.parse::<u32>().with_context(|| format!("reading the generation from `{line}`"))?,
                );
            }
        }
    }
    let mut instances = Vec::with_capacity(models.len());
    let mut groups = Vec::with_capacity(models.len());
    for ((model, generation), ends) in models.iter().zip(&generations).zip(&ends_of) {
        let generation = generation.context("every generation was registered")?;
        let mut builder = env.config.clone();
        builder.projector.group = format!("prism.rebuild.{model}.g{generation}");
        let group = prism_kafka::admin::projector_group_id(&builder);
        groups.push(GroupWatch::new(&env.config, &group, ends)?);
        instances.push(format!("{model}_g{generation}"));
    }
    let watch = Watch::ReplayThenGroups(ReplayWatch::new(env.pg().await?, instances), groups);
    let deadline = started + contender::timeout();
    let window = contender::follow(&watch, events, services, projector, start, deadline, || {
        while let Ok(line) = lines_rx.try_recv() {
            transcript.push_str(&line);
            transcript.push('\n');
        }
        match child.try_wait() {
            Ok(Some(status)) if !status.success() => bail!("prismctl failed ({status}):\n{transcript}"),
            _ => Ok(()),
        }
    })
    .await?;
    let status = tokio::time::timeout(contender::timeout(), child.wait())
        .await
        .context("prismctl did not finish")??;
    while let Some(line) = lines_rx.recv().await {
        transcript.push_str(&line);
        transcript.push('\n');
    }
    std::fs::write(&log, &transcript)?;
    if !status.success() {
        bail!("prismctl rebuild {which} --mode blue-green failed ({status}):\n{transcript}");
    }
    let prismctl_seconds = started.elapsed().as_secs_f64();
    let measured = window.into_measured(
        format!("rebuild-blue-green-{label}"),
        format!("blue/green rebuild of {}", read_model.unwrap_or("every read model at once")),
        String::new(),
        events,
    );
    measured.print();
    Ok(Rebuilt {
        read_model: read_model.unwrap_or("all read models"),
        mode: "blue-green",
        measured,
        prismctl_seconds,
        statements: Vec::new(),
    })
}
