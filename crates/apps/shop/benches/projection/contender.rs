//! One contender as a child process of its own, timed from its start until its consumer group
//! has committed the end of every partition, with the CPU time of every process that takes
//! part sampled at three instants:
//!
//! - **start**: the process was spawned (or, for a contender that loads something first, said
//!   `ready` on its standard output — the set-write ceiling's precomputed rows are loaded
//!   outside its window);
//! - **first commit**: the group's first committed offset was seen. What the contender spent
//!   before (a JVM's start-up, the group join, the first fetch) is start-up, not throughput;
//! - **done**: every partition's committed offset is at its end.
//!
//! Rates and CPU per event are given over the *steady* window (first commit → done, the events
//! committed in it) and, for the rate, also over the whole window (start → done). The group's
//! offsets are looked at every 50 ms; a contender that commits once a second (Prism's
//! `projector.commit_interval_ms`, Connect's `offset.flush.interval.ms`) is seen done up to a
//! second after it was, which the steady window's length bounds as an error.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::offsets::Watch;
use crate::procs::{self, Sample, Services};

/// A contender ready to be started.
pub struct Contender {
    /// Short name for files and JSON (`consume`, `prism`, …).
    pub key: String,
    /// Name in the tables.
    pub name: String,
    /// What it does, in a few words.
    pub does: String,
    /// The command that starts it.
    pub command: Command,
    /// What its progress is read from (its consumer group, mostly).
    pub watch: Watch,
    /// A line on its standard output that starts the clock, if it has a loading phase.
    pub ready_line: Option<&'static str>,
    /// A prefix of lines on its standard error that mean it failed (Connect's failed task
    /// does not end the JVM).
    pub error_prefix: Option<&'static str>,
    /// Where its output goes.
    pub log: PathBuf,
    /// Events in the topics it reads.
    pub events: i64,
}

/// A contender process that is still running (stop it with [`Running::stop`]).
pub struct Running {
    /// The child.
    child: Child,
    /// Its log.
    pub log: PathBuf,
    /// Its name.
    pub name: String,
}

/// One contender's figures.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Short name.
    pub key: String,
    /// Name in tables.
    pub name: String,
    /// What it does.
    pub does: String,
    /// Events it consumed.
    pub events: i64,
    /// Events committed when the first commit was seen.
    pub first_committed: i64,
    /// Samples at start, first commit and done.
    pub start: Sample,
    /// At the first commit seen.
    pub first: Sample,
    /// When done.
    pub done: Sample,
    /// The contender's peak resident set size, bytes.
    pub peak_rss: Option<u64>,
}

impl Measured {
    /// Seconds from start to done.
    pub fn whole_seconds(&self) -> f64 {
        self.done.at.duration_since(self.start.at).as_secs_f64()
    }

    /// Events per second from start to done.
    pub fn whole_rate(&self) -> f64 {
        self.events as f64 / self.whole_seconds()
    }

    /// Events processed in the steady window (first commit → done).
    pub fn steady_events(&self) -> i64 {
        self.events - self.first_committed
    }

    /// Seconds of the steady window.
    pub fn steady_seconds(&self) -> f64 {
        self.done.at.duration_since(self.first.at).as_secs_f64()
    }

    /// Events per second in the steady window: the contender's throughput.
    pub fn rate(&self) -> f64 {
        self.steady_events() as f64 / self.steady_seconds()
    }

    /// CPU microseconds per event of one process in the steady window.
    pub fn us_per_event(&self, pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let cpu = procs::delta(pick(&self.first), pick(&self.done))?;
        Some(cpu * 1e6 / self.steady_events() as f64)
    }

    /// The contender's CPU seconds from its start to done (its start-up included).
    pub fn contender_cpu_total(&self) -> Option<f64> {
        self.done.contender
    }

    /// The contender's CPU seconds before its first commit (start-up).
    pub fn contender_cpu_startup(&self) -> Option<f64> {
        self.first.contender
    }

    /// One line of what was measured.
    pub fn print(&self) {
        println!(
            "  {}: {} events in {:.2} s ({:.0}/s), steady {:.0}/s over {:.2} s",
            self.name,
            self.events,
            self.whole_seconds(),
            self.whole_rate(),
            self.rate(),
            self.steady_seconds()
        );
    }
}

/// Longest a contender may take, from its start (`PRISM_BENCH_TIMEOUT`, seconds; default 900).
pub fn timeout() -> Duration {
    Duration::from_secs(std::env::var("PRISM_BENCH_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(900))
}

/// Starts `contender` and times it; returns its figures and the still running process.
pub async fn measure(mut contender: Contender, services: &Services) -> anyhow::Result<(Measured, Running)> {
    println!("{} ...", contender.name);
    let log = tokio::fs::File::create(&contender.log)
        .await
        .with_context(|| format!("creating {}", contender.log.display()))?;
    let log = Arc::new(tokio::sync::Mutex::new(log));
    let mut child = contender
        .command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", contender.name))?;
    let spawned = Instant::now();
    let pid = child.id().context("the contender has no pid")?;
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(copy_lines(
            stdout,
            log.clone(),
            contender.ready_line,
            None,
            Some(ready_tx),
            failure.clone(),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(copy_lines(stderr, log.clone(), None, contender.error_prefix, None, failure.clone()));
    }
    let mut running = Running { child, log: contender.log.clone(), name: contender.name.clone() };
    let deadline = spawned + timeout();

    if contender.ready_line.is_some() {
        loop {
            if *ready_rx.borrow() {
                break;
            }
            running.check_alive(&failure)?;
            if Instant::now() > deadline {
                bail!("{} did not get ready within {:?}\n{}", contender.name, timeout(), running.log_tail());
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), ready_rx.changed()).await;
        }
    }
    let start = services.sample(Some(pid));
    let followed = follow(&contender.watch, contender.events, services, pid, start, deadline, || {
        running.check_alive(&failure)
    })
    .await;
    let window = match followed {
        Ok(window) => window,
        Err(err) if err.to_string().contains("--- last lines of") => return Err(err),
        Err(err) => bail!("{}: {err:#}\n{}", contender.name, running.log_tail()),
    };
    let measured = window.into_measured(contender.key, contender.name, contender.does, contender.events);
    if measured.events > 0 {
        measured.print();
    }
    Ok((measured, running))
}

/// Start, first commit and done of one group's work.
pub struct Window {
    /// At the start.
    pub start: Sample,
    /// At the first commit seen, with the events committed then.
    pub first: Option<(Sample, i64)>,
    /// When every partition was committed to its end.
    pub done: Sample,
    /// Peak RSS of the process, when done.
    pub peak_rss: Option<u64>,
}

impl Window {
    /// The figures of a window over `events` events.
    pub fn into_measured(self, key: String, name: String, does: String, events: i64) -> Measured {
        // A contender seen done at its very first commit has no steady window of its own: its
        // whole window stands for it.
        let (first, first_committed) = match self.first {
            Some((sample, committed)) if sample.at < self.done.at && committed < events => {
                (sample, committed)
            }
            _ => (self.start, 0),
        };
        Measured {
            key,
            name,
            does,
            events,
            first_committed,
            start: self.start,
            first,
            done: self.done,
            peak_rss: self.peak_rss,
        }
    }
}

/// Looks at `watch` every 50 ms until its group committed the end of every partition, taking
/// CPU samples (with process `pid`) at the first commit and when done. `check` runs before
/// every look and stops the wait with its error.
pub async fn follow(
    watch: &Watch,
    events: i64,
    services: &Services,
    pid: u32,
    start: Sample,
    deadline: Instant,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Window> {
    let mut first: Option<(Sample, i64)> = None;
    let mut last_print = Instant::now();
    loop {
        check()?;
        let progress = watch.progress().await?;
        if first.is_none() && progress.committed > 0 {
            first = Some((services.sample(Some(pid)), progress.committed));
        }
        if progress.done {
            let done = services.sample(Some(pid));
            return Ok(Window { start, first, done, peak_rss: procs::peak_rss(pid) });
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not reach every partition's end within {:?} ({} of {events} committed)",
                watch.name(),
                timeout(),
                progress.committed,
            );
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("  {}: {} of {events} committed", watch.name(), progress.committed);
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies a child's output lines into its log, watching for the ready line and failure lines.
async fn copy_lines(
    stream: impl tokio::io::AsyncRead + Unpin,
    log: Arc<tokio::sync::Mutex<tokio::fs::File>>,
    ready_line: Option<&'static str>,
    error_prefix: Option<&'static str>,
    ready: Option<tokio::sync::watch::Sender<bool>>,
    failure: Arc<Mutex<Option<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if ready_line.is_some_and(|r| line.trim() == r) {
            if let Some(ready) = &ready {
                let _ = ready.send(true);
            }
        }
        if error_prefix.is_some_and(|p| line.starts_with(p)) {
            let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert(line.clone());
        }
        let mut file = log.lock().await;
        let _ = file.write_all(line.as_bytes()).await;
        let _ = file.write_all(b"\n").await;
    }
}

impl Running {
    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails when the child exited or reported a failure.
    fn check_alive(&mut self, failure: &Mutex<Option<String>>) -> anyhow::Result<()> {
        if let Some(line) = failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            bail!("{} failed: {line}\n{}", self.name, self.log_tail());
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited early ({status})\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, up to 20 s for a clean exit, then SIGKILL.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            eprintln!("{} did not stop within 20 s of SIGTERM; killing it", self.name);
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The last 30 lines of a log file, introduced by its path.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- last lines of {} ---\n{}",
        path.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}
