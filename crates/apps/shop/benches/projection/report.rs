//! The results: printed as tables, with every target's ratio and a PASS or MISS that is never
//! adjusted; written into the marked sections of `BENCHMARKS.md`, into
//! `docs/benchmarks/results.json` and `docs/benchmarks/latency-series.csv`, and drawn by
//! `ops/bench/plot` into `docs/benchmarks/throughput.png` and `latency.png`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use crate::contender::Measured;
use crate::latency;
use crate::procs;
use crate::rebuild::Rebuilt;

/// Everything one run measured.
#[derive(Default)]
pub struct Run {
    /// When (UTC).
    pub when: String,
    /// The machine, in a few words.
    pub machine: String,
    /// Events in the throughput run.
    pub events: usize,
    /// Aggregates they belong to.
    pub aggregates: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// The contenders of the throughput run, in the order they ran.
    pub contenders: Vec<Measured>,
    /// What was checked after each contender (rows, oracle).
    pub checks: Vec<String>,
    /// Rebuilds.
    pub rebuilds: Vec<Rebuilt>,
    /// Every read model rebuilt in place by one `prismctl rebuild --all`.
    pub rebuild_all_in_place: Option<Rebuilt>,
    /// Every read model rebuilt blue/green by one `prismctl rebuild --all`.
    pub rebuild_all_blue_green: Option<Rebuilt>,
    /// Latency.
    pub latency: Option<latency::Outcome>,
    /// PostgreSQL's time by statement over Prism's window (empty when not tracked).
    pub statements: Vec<crate::statements::KindTime>,
    /// Prism's batches in the throughput run: how many landed and their handler's seconds by
    /// step (from the projector's `/metrics`).
    pub batch_phases: Option<BatchPhases>,
}

/// A projector's batches, from its `/metrics` after its run.
#[derive(Debug, Clone, Default)]
pub struct BatchPhases {
    /// Batches landed.
    pub batches: f64,
    /// Seconds of the handler's attempts (and the backoff between them), summed over batches.
    pub batch_seconds: f64,
    /// Per step of the handler (`prism_projector_batch_phase_seconds`): name and seconds summed.
    pub phases: Vec<(String, f64)>,
}

impl BatchPhases {
    /// Reads them from a Prometheus text exposition; `None` without batches.
    pub fn parse(metrics: &str) -> Option<Self> {
        let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        let mut out = Self::default();
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            if line.starts_with("prism_projector_batch_duration_seconds_sum") {
                out.batch_seconds += value(line)?;
            } else if line.starts_with("prism_projector_batch_duration_seconds_count") {
                out.batches += value(line)?;
            } else if let Some(rest) = line.strip_prefix("prism_projector_batch_phase_seconds_sum{phase=\"") {
                let phase = rest.split('"').next()?.to_owned();
                out.phases.push((phase, value(line)?));
            }
        }
        (out.batches > 0.0).then_some(out)
    }

    /// The table: each step's seconds, share of the batches' time and milliseconds per batch.
    pub fn table(&self) -> String {
        let mut t = String::from(
            "| step of a batch | seconds (all batches) | share | ms per batch |\n|---|---:|---:|---:|\n",
        );
        let row = |t: &mut String, name: &str, seconds: f64| {
            let _ = writeln!(
                t,
                "| {name} | {seconds:.2} | {:.0} % | {:.1} |",
                100.0 * seconds / self.batch_seconds.max(1e-9),
                1e3 * seconds / self.batches
            );
        };
        let order = ["replays", "decode", "postgres", "cache", "dead_letters"];
        let mut phases = self.phases.clone();
        phases.sort_by_key(|(name, _)| order.iter().position(|o| o == name).unwrap_or(order.len()));
        for (name, seconds) in &phases {
            row(&mut t, name, *seconds);
        }
        let handled: f64 = phases.iter().map(|(_, s)| s).sum();
        row(
            &mut t,
            "(between attempts: backoff after a transient failure)",
            (self.batch_seconds - handled).max(0.0),
        );
        let _ = writeln!(
            t,
            "| **a batch, all its attempts** | {:.2} | 100 % | {:.1} |",
            self.batch_seconds,
            1e3 * self.batch_seconds / self.batches
        );
        t
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

impl Run {
    /// A contender by key.
    pub fn contender(&self, key: &str) -> Option<&Measured> {
        self.contenders.iter().find(|c| c.key == key)
    }

    fn ratio(&self, of: &Measured, to: &str) -> String {
        match self.contender(to) {
            Some(base) => format!("{:.2}×", of.rate() / base.rate()),
            None => "–".into(),
        }
    }

    /// The throughput table.
    pub fn throughput_table(&self) -> String {
        let mut t = String::from(
            "| contender | does | events/s | whole run | × consume only | × set-write ceiling | × Debezium defaults | × Debezium tuned |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.contenders {
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} | {:.0}/s in {:.1} s | {} | {} | {} | {} |",
                c.name,
                c.does,
                c.rate(),
                c.whole_rate(),
                c.whole_seconds(),
                self.ratio(c, "consume"),
                self.ratio(c, "ceiling"),
                self.ratio(c, "debezium-defaults"),
                self.ratio(c, "debezium-tuned"),
            );
        }
        t
    }

    /// CPU per event of every process, and the contender's memory.
    pub fn cost_table(&self) -> String {
        let mut t = String::from(
            "| contender | contender µs/event | broker µs/event | PostgreSQL µs/event | Redis µs/event | all four µs/event | contender CPU s (of which start-up) | contender peak RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.contenders {
            let parts = [
                c.us_per_event(|s| s.contender),
                c.us_per_event(|s| s.broker),
                c.us_per_event(|s| s.postgres),
                c.us_per_event(|s| s.redis),
            ];
            let total: Option<f64> = parts.iter().copied().sum();
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
                c.name,
                opt(parts[0], 1),
                opt(parts[1], 1),
                opt(parts[2], 1),
                opt(parts[3], 1),
                opt(total, 1),
                opt(c.contender_cpu_total(), 1),
                opt(c.contender_cpu_startup(), 1),
                opt(c.peak_rss.map(|b| b as f64 / MIB), 0),
            );
        }
        t
    }

    fn live_rate(&self) -> Option<f64> {
        self.contender("prism").map(Measured::rate)
    }

    /// Prism's live rate over its whole window (start-up included).
    fn live_whole_rate(&self) -> Option<f64> {
        self.contender("prism").map(Measured::whole_rate)
    }

    /// Events the live run fed its read models, an event counted once per read model it feeds
    /// — the unit a rebuild's "events replayed" are in: the rebuild of every read model at once
    /// replays exactly these, and each read model's rebuild its share.
    fn live_events_fed(&self) -> Option<i64> {
        if let Some(all) = &self.rebuild_all_in_place {
            return Some(all.measured.events);
        }
        let in_place: Vec<&Rebuilt> = self.rebuilds.iter().filter(|r| r.mode == "in-place").collect();
        (!in_place.is_empty()).then(|| in_place.iter().map(|r| r.measured.events).sum())
    }

    /// What rebuilds compare to: Prism's live rate over its whole window (start-up included,
    /// as the rebuilds' windows are), in events fed to read models per second. Comparing a
    /// rebuild's replayed events (once per read model) with the live run's events (once each)
    /// would flatter the rebuild by the average number of read models an event feeds.
    fn live_fed_rate(&self) -> Option<f64> {
        let prism = self.contender("prism")?;
        Some(self.live_events_fed()? as f64 / prism.whole_seconds())
    }

    /// The rebuild table, with each mode's total.
    pub fn rebuild_table(&self) -> String {
        let live = self.live_fed_rate();
        let mut t = String::from(
            "| read model | mode | events replayed | events/s (whole window) | × live rate | whole window | prismctl run | projector peak RSS MiB |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        let times_live = |rate: f64| live.map_or("–".into(), |l| format!("{:.2}×", rate / l));
        let row = |t: &mut String, label: &str, r: &Rebuilt| {
            let m = &r.measured;
            let _ = writeln!(
                t,
                "| {label} | {} | {} | {:.0} | {} | {:.1} s | {:.1} s | {} |",
                r.mode,
                m.events,
                m.whole_rate(),
                times_live(m.whole_rate()),
                m.whole_seconds(),
                r.prismctl_seconds,
                opt(m.peak_rss.map(|b| b as f64 / MIB), 0)
            );
        };
        for r in &self.rebuilds {
            row(&mut t, r.read_model, r);
        }
        for (mode, events, seconds) in self.rebuild_totals() {
            let rate = events as f64 / seconds;
            let _ = writeln!(
                t,
                "| **all read models, one at a time** | {mode} | {events} | {rate:.0} | {} | {seconds:.1} s | | |",
                times_live(rate)
            );
        }
        for r in self.rebuild_all_in_place.iter().chain(&self.rebuild_all_blue_green) {
            row(&mut t, "**all read models at once** (`prismctl rebuild --all`)", r);
        }
        t
    }

    /// CPU seconds of each process over the whole window of the live run and of the rebuild of
    /// every read model at once — the same events into the same read models — and what the
    /// window could shrink to were every core busy: the work a rebuild must shed to be faster.
    pub fn rebuild_cpu_table(&self) -> Option<String> {
        let live = self.contender("prism")?;
        let all = &self.rebuild_all_in_place.as_ref()?.measured;
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let mut t = format!(
            "| run (whole window) | window s | Prism's process CPU s | broker CPU s | PostgreSQL CPU s | Redis CPU s | all four CPU s | cores busy | all four ÷ {cores:.0} cores, s |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        for (name, m) in
            [("live: Prism's throughput run", live), ("rebuild of every read model at once, in place", all)]
        {
            let parts = [
                procs::delta(m.start.contender, m.done.contender),
                procs::delta(m.start.broker, m.done.broker),
                procs::delta(m.start.postgres, m.done.postgres),
                procs::delta(m.start.redis, m.done.redis),
            ];
            let total: Option<f64> = parts.iter().copied().sum();
            let _ = writeln!(
                t,
                "| {name} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
                m.whole_seconds(),
                opt(parts[0], 2),
                opt(parts[1], 2),
                opt(parts[2], 2),
                opt(parts[3], 2),
                opt(total, 2),
                opt(total.map(|cpu| cpu / m.whole_seconds()), 2),
                opt(total.map(|cpu| cpu / cores), 2),
            );
        }
        Some(t)
    }

    /// Per mode: events replayed and whole-window seconds, summed over the read models.
    fn rebuild_totals(&self) -> Vec<(&'static str, i64, f64)> {
        ["in-place", "blue-green"]
            .into_iter()
            .filter_map(|mode| {
                let of: Vec<&Rebuilt> = self.rebuilds.iter().filter(|r| r.mode == mode).collect();
                (!of.is_empty()).then(|| {
                    (
                        mode,
                        of.iter().map(|r| r.measured.events).sum(),
                        of.iter().map(|r| r.measured.whole_seconds()).sum(),
                    )
                })
            })
            .collect()
    }

    /// The latency table.
    pub fn latency_table(&self) -> String {
        let Some(l) = &self.latency else { return String::new() };
        let mut t =
            String::from("| path | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n");
        for (name, series) in [
            ("produce → visible in PostgreSQL", &l.produce_pg),
            ("produce → visible in Redis", &l.produce_redis),
            ("command answered → visible through the query API", &l.command_visible),
            ("command sent → answered (for reference)", &l.command_answer),
        ] {
            let p = series.percentiles();
            let _ = writeln!(t, "| {name} | {} | {:.1} | {:.1} | {:.1} |", p.count, p.p50, p.p99, p.max);
        }
        let _ = writeln!(
            t,
            "\nLoad: {:.0} events/s asked, {:.0} produced ({} events over {:.1} s), plus {} clients doing {:.0} commands/s \
             ({} answers 202 and asked again, {} errors, {} events never seen). The checker followed {}. \
             The method's own cost: a PostgreSQL look takes \
             p50 {:.2} ms (p99 {:.2}), a Redis look p50 {:.2} ms (p99 {:.2}); a query API read with nothing to wait for p50 {:.2} ms \
             (p99 {:.2}).",
            l.target_rate,
            l.produced_rate,
            l.produced,
            l.seconds,
            l.clients,
            l.command_rate,
            l.stale_answers,
            l.errors,
            l.not_visible,
            if l.sample_every == 1 { "every event".to_owned() } else { format!("every {}th event", l.sample_every) },
            l.pg_look.p50,
            l.pg_look.p99,
            l.redis_look.p50,
            l.redis_look.p99,
            l.plain_read.p50,
            l.plain_read.p99
        );
        if !l.cores.is_empty() {
            let total: f64 = l.cores.iter().map(|(_, cores)| cores).sum();
            let each: Vec<String> =
                l.cores.iter().map(|(name, cores)| format!("{name} {cores:.2}")).collect();
            let available = std::thread::available_parallelism().map_or(0, usize::from);
            let _ = writeln!(
                t,
                "\nCPU over the run, in cores busy: {}; {total:.2} of the machine's {available}.",
                each.join(", ")
            );
        }
        if !l.statements.is_empty() {
            // Per event produced: the clients' commands and every service's reads are in it too.
            let _ = write!(
                t,
                "\nPostgreSQL's execution time by statement over the run (`pg_stat_statements`, every \
                 client's statements; per event produced):\n\n{}",
                crate::statements::table(&l.statements, l.produced as f64)
            );
        }
        t
    }

    /// Every target of the issue: measured value, goal, PASS / MISS (or not measured).
    pub fn targets(&self) -> Vec<(String, String, String, Option<bool>)> {
        let mut out = Vec::new();
        let prism = self.contender("prism");
        let mut ratio_target = |what: &str, base: Option<f64>, goal: f64| {
            let (value, pass) = match (prism, base) {
                (Some(p), Some(b)) => (ratio_against(p.rate() / b, goal), Some(p.rate() / b >= goal)),
                _ => ("not measured".into(), None),
            };
            out.push((what.to_owned(), value, format!("≥ {goal}×"), pass));
        };
        let floor = match (self.contender("consume"), self.contender("ceiling")) {
            (Some(c), Some(s)) => Some(c.rate().min(s.rate())),
            _ => None,
        };
        ratio_target("Prism / min(consume only, set-write ceiling)", floor, 0.5);
        ratio_target(
            "Prism / Debezium sink, defaults",
            self.contender("debezium-defaults").map(Measured::rate),
            5.0,
        );
        ratio_target(
            "Prism / Debezium sink, tuned",
            self.contender("debezium-tuned").map(Measured::rate),
            2.0,
        );
        let cost = |what: &str, value: Option<f64>, goal: f64, unit: &str| {
            (
                what.to_owned(),
                value.map_or("not measured".into(), |v| format!("{v:.1} {unit}")),
                format!("≤ {goal} {unit}"),
                value.map(|v| v <= goal),
            )
        };
        out.push(cost(
            "Prism's process, CPU per event",
            prism.and_then(|p| p.us_per_event(|s| s.contender)),
            15.0,
            "µs",
        ));
        out.push(cost(
            "PostgreSQL, CPU per event (Prism's window)",
            prism.and_then(|p| p.us_per_event(|s| s.postgres)),
            25.0,
            "µs",
        ));
        let p99 = |pick: fn(&latency::Outcome) -> &latency::Series| {
            self.latency.as_ref().map(|l| pick(l).percentiles().p99)
        };
        out.push(cost(
            "produce → visible in PostgreSQL, p99 at half load",
            p99(|l| &l.produce_pg),
            100.0,
            "ms",
        ));
        out.push(cost(
            "produce → visible in Redis, p99 at half load",
            p99(|l| &l.produce_redis),
            100.0,
            "ms",
        ));
        out.push(cost(
            "command → visible through the query API, p99",
            p99(|l| &l.command_visible),
            100.0,
            "ms",
        ));
        let live = self.live_fed_rate();
        // Every read model rebuilt by one command, when that was measured; the sum of
        // one-at-a-time rebuilds is in the rebuild table beside it.
        for (mode, events, seconds) in self.rebuild_totals() {
            let all_at_once = match mode {
                "in-place" => self.rebuild_all_in_place.as_ref(),
                _ => self.rebuild_all_blue_green.as_ref(),
            };
            let (events, seconds, how) = match all_at_once {
                Some(r) => (r.measured.events, r.measured.whole_seconds(), " (`prismctl rebuild --all`)"),
                None => (events, seconds, " (one at a time)"),
            };
            let rate = events as f64 / seconds;
            let value = live.map(|l| rate / l);
            out.push((
                format!("rebuild of every read model, {mode}{how} / live rate"),
                value.map_or("not measured".into(), |v| ratio_against(v, 3.0)),
                "≥ 3×".into(),
                value.map(|v| v >= 3.0),
            ));
        }
        out.push(cost(
            "a worker's peak RSS under load, default configuration",
            prism.and_then(|p| p.peak_rss).map(|b| b as f64 / MIB),
            150.0,
            "MiB",
        ));
        // A rebuild is load too: its replay holds chunks and readers the live path does not.
        for r in self.rebuild_all_in_place.iter().chain(&self.rebuild_all_blue_green) {
            out.push(cost(
                match r.mode {
                    "in-place" => "a worker's peak RSS rebuilding every read model in place",
                    _ => "a serving worker's peak RSS rebuilding every read model blue/green",
                },
                r.measured.peak_rss.map(|b| b as f64 / MIB),
                150.0,
                "MiB",
            ));
        }
        out
    }

    /// The targets as a table.
    pub fn targets_table(&self) -> String {
        let mut t = String::from("| target | measured | goal | verdict |\n|---|---:|---:|---|\n");
        for (what, value, goal, pass) in self.targets() {
            let verdict = match pass {
                Some(true) => "PASS",
                Some(false) => "**MISS**",
                None => "–",
            };
            let _ = writeln!(t, "| {what} | {value} | {goal} | {verdict} |");
        }
        t
    }

    /// Prints everything.
    pub fn print(&self) {
        println!(
            "\n== {} — {} events, {} aggregates, {} partitions per topic, {}",
            self.when, self.events, self.aggregates, self.partitions, self.machine
        );
        if !self.contenders.is_empty() {
            println!("\n-- throughput (events/s over the steady window: first commit → every partition committed)\n{}", self.throughput_table());
            println!(
                "-- CPU per event of each process (steady window) and the contender's memory\n{}",
                self.cost_table()
            );
            for check in &self.checks {
                println!("{check}");
            }
            if !self.statements.is_empty() {
                println!(
                    "\n-- PostgreSQL's execution time by statement over Prism's window\n{}",
                    self.statements_table()
                );
            }
            if let Some(phases) = &self.batch_phases {
                println!("\n-- Prism's batches by step ({:.0} batches)\n{}", phases.batches, phases.table());
            }
        }
        if !self.rebuilds.is_empty() {
            println!("\n-- rebuilds\n{}", self.rebuild_table());
            if let Some(cpu) = self.rebuild_cpu_table() {
                println!("-- CPU of the live run and of the rebuild of every read model at once\n{cpu}");
            }
            if let Some(all) = self.rebuild_all_in_place.as_ref().filter(|r| !r.statements.is_empty()) {
                println!(
                    "-- PostgreSQL's execution time by statement over the rebuild of every read model at once\n{}",
                    crate::statements::table(&all.statements, self.events as f64)
                );
            }
        }
        if self.latency.is_some() {
            println!("\n-- latency\n{}", self.latency_table());
        }
        println!("\n-- targets\n{}", self.targets_table());
    }

    /// PostgreSQL's time by statement over Prism's window, per event of the run.
    pub fn statements_table(&self) -> String {
        crate::statements::table(&self.statements, self.events as f64)
    }

    fn header(&self) -> String {
        let overrides = crate::binaries::projector_overrides().unwrap_or_default();
        let settings = if overrides.is_empty() {
            "the projector's default configuration".to_owned()
        } else {
            let set: Vec<String> = overrides.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
            format!("the projector's configuration changed by {}", set.join(", "))
        };
        format!(
            "Measured {} on {}, one run, one machine (broker: the dev stack's Apache Kafka 4.4; PostgreSQL and Redis \
             local), {} events of {} aggregates, {} partitions per topic, {settings}.",
            self.when, self.machine, self.events, self.aggregates, self.partitions
        )
    }

    /// Writes the marked sections of BENCHMARKS.md for the parts that ran, and the data files.
    pub fn write(&self, repo: &Path) -> anyhow::Result<()> {
        let path = repo.join("BENCHMARKS.md");
        let mut text =
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if !self.contenders.is_empty() {
            let section = format!(
                "{}\n\n{}\n{}\nCPU per event of every process over each contender's steady window, and the contender's peak memory:\n\n{}\nTargets (ratios on this machine, same run; a miss is reported as measured):\n\n{}\n![throughput](docs/benchmarks/throughput.png)\n",
                self.header(),
                self.throughput_table(),
                self.checks.iter().map(|c| format!("- {c}\n")).collect::<String>(),
                self.cost_table(),
                self.targets_table()
            );
            let section = if self.statements.is_empty() {
                section
            } else {
                format!(
                    "{section}\nPostgreSQL's execution time by statement over Prism's window (`pg_stat_statements`: \
                     wall time inside PostgreSQL, waits included; compare the shares):\n\n{}",
                    self.statements_table()
                )
            };
            let section = match &self.batch_phases {
                None => section,
                Some(phases) => format!(
                    "{section}\nWhere Prism's batches spent their time ({:.0} batches, {:.0} events each on average; from the \
                     projector's `prism_projector_batch_phase_seconds` and `prism_projector_batch_duration_seconds`: \
                     wall time of the batch handler's attempts, several batches at once):\n\n{}",
                    phases.batches,
                    self.events as f64 / phases.batches,
                    phases.table()
                ),
            };
            text = replace_section(&text, "projection-benchmark", &section)?;
        }
        if !self.rebuilds.is_empty() {
            let section = format!(
                "{}\n\nLive rate, what every ratio below divides by: Prism's throughput run fed {} events to its read \
                 models (an event counted once per read model it feeds, as events replayed are) in {:.1} s over its \
                 whole window, start-up included as the rebuilds' are: {} per second ({} events/s counted once \
                 each). The projector's peak RSS is that of the worker started for the in-place replay, and for \
                 blue/green that of the serving worker since it started (every blue/green rebuild before it \
                 included).\n\n{}",
                self.header(),
                opt(self.live_events_fed().map(|e| e as f64), 0),
                self.contender("prism").map_or(f64::NAN, Measured::whole_seconds),
                opt(self.live_fed_rate(), 0),
                opt(self.live_whole_rate(), 0),
                self.rebuild_table()
            );
            let section = match self.rebuild_cpu_table() {
                None => section,
                Some(cpu) => format!(
                    "{section}\nCPU of every process over the whole window of the live run and of the rebuild of every \
                     read model at once (the same events into the same read models; a window cannot be shorter than \
                     its CPU spread over every core):\n\n{cpu}"
                ),
            };
            let section = match self.rebuild_all_in_place.as_ref().filter(|r| !r.statements.is_empty()) {
                None => section,
                Some(all) => format!(
                    "{section}\nPostgreSQL's execution time by statement over the rebuild of every read model at once \
                     (`pg_stat_statements`; per event of the workload):\n\n{}",
                    crate::statements::table(&all.statements, self.events as f64)
                ),
            };
            text = replace_section(&text, "rebuild-benchmark", &section)?;
        }
        if self.latency.is_some() {
            let section = format!(
                "{}\n\n{}\n![latency](docs/benchmarks/latency.png)\n",
                self.header(),
                self.latency_table()
            );
            text = replace_section(&text, "latency-benchmark", &section)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());

        let dir = repo.join("docs/benchmarks");
        std::fs::create_dir_all(&dir)?;
        let json_path = dir.join("results.json");
        let mut results: Value = std::fs::read_to_string(&json_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| json!({}));
        results["machine"] = json!(self.machine);
        if !self.contenders.is_empty() {
            results["throughput"] = json!({
                "when": self.when,
                "events": self.events,
                "contenders": self.contenders.iter().map(measured_json).collect::<Vec<_>>(),
                "prism_batch_phases": self.batch_phases.as_ref().map(|p| json!({
                    "batches": p.batches, "batch_seconds": p.batch_seconds,
                    "phases": p.phases.iter().map(|(name, seconds)| json!({ "phase": name, "seconds": seconds })).collect::<Vec<_>>(),
                })),
                "prism_statements": self.statements.iter().map(|k| json!({
                    "statements": k.kind, "calls": k.calls, "rows": k.rows, "execution_ms": k.ms,
                })).collect::<Vec<_>>(),
            });
        }
        if !self.rebuilds.is_empty() {
            results["rebuild"] = json!({
                "when": self.when,
                "live_rate": self.live_rate(),
                "live_whole_rate": self.live_whole_rate(),
                "live_fed_rate": self.live_fed_rate(),
                "rebuilds": self.rebuilds.iter().chain(&self.rebuild_all_in_place).chain(&self.rebuild_all_blue_green).map(|r| json!({
                    "read_model": r.read_model, "mode": r.mode, "prismctl_seconds": r.prismctl_seconds,
                    "measured": measured_json(&r.measured),
                })).collect::<Vec<_>>(),
            });
        }
        if let Some(l) = &self.latency {
            let p = |s: &latency::Series| {
                let p = s.percentiles();
                json!({"count": p.count, "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max})
            };
            results["latency"] = json!({
                "when": self.when,
                "target_rate": l.target_rate, "produced_rate": l.produced_rate, "command_rate": l.command_rate,
                "clients": l.clients,
                "produce_to_postgres": p(&l.produce_pg), "produce_to_redis": p(&l.produce_redis),
                "command_to_query": p(&l.command_visible), "command_answer": p(&l.command_answer),
                "cores_busy": l.cores.iter().map(|(name, cores)| json!({"process": name, "cores": cores})).collect::<Vec<_>>(),
                "statements": l.statements.iter().map(|k| json!({
                    "statements": k.kind, "calls": k.calls, "rows": k.rows, "execution_ms": k.ms,
                })).collect::<Vec<_>>(),
            });
            std::fs::write(dir.join("latency-series.csv"), latency::series_csv(l))?;
        }
        results["targets"] = Value::Array(
            self.targets()
                .into_iter()
                .map(|(what, value, goal, pass)| json!({"target": what, "measured": value, "goal": goal, "pass": pass}))
                .collect(),
        );
        std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")?;
        Ok(())
    }
}

fn measured_json(m: &Measured) -> Value {
    json!({
        "key": m.key,
        "name": m.name,
        "does": m.does,
        "events": m.events,
        "rate": m.rate(),
        "whole_rate": m.whole_rate(),
        "whole_seconds": m.whole_seconds(),
        "steady_seconds": m.steady_seconds(),
        "us_per_event": {
            "contender": m.us_per_event(|s| s.contender),
            "broker": m.us_per_event(|s| s.broker),
            "postgres": m.us_per_event(|s| s.postgres),
            "redis": m.us_per_event(|s| s.redis),
        },
        "contender_cpu_seconds": m.contender_cpu_total(),
        "contender_startup_cpu_seconds": m.contender_cpu_startup(),
        "peak_rss_bytes": m.peak_rss,
    })
}

/// `text` with the part between `<!-- name:begin -->` and `<!-- name:end -->` replaced.
pub fn replace_section(text: &str, name: &str, section: &str) -> anyhow::Result<String> {
    let (begin, end) = (format!("<!-- {name}:begin -->"), format!("<!-- {name}:end -->"));
    let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) else {
        anyhow::bail!("BENCHMARKS.md lacks the {begin} … {end} markers");
    };
    anyhow::ensure!(b < e, "BENCHMARKS.md: {end} comes before {begin}");
    Ok(format!("{}{begin}\n{section}{}", &text[..b], &text[e..]))
}

/// A ratio as the targets table prints it: two decimals, or as many more as it takes for the
/// printed value to fall on the same side of its goal as the ratio (0.496 misses 0.5, and must
/// not print as 0.50).
fn ratio_against(value: f64, goal: f64) -> String {
    let passes = value >= goal;
    (2..=6)
        .map(|decimals| format!("{value:.decimals$}"))
        .find(|printed| printed.parse::<f64>().is_ok_and(|shown| (shown >= goal) == passes))
        .map_or_else(|| format!("{value}×"), |printed| format!("{printed}×"))
}
