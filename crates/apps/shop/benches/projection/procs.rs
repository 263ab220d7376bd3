//! What processes cost: CPU time and peak memory from `/proc` (Linux), and which processes are
//! the broker, PostgreSQL and Redis.
//!
//! The services are found by the TCP port they listen on (`/proc/net/tcp*` gives the socket's
//! inode, `/proc/<pid>/fd` the process holding it), so the benchmark needs no pid files and
//! finds whatever serves the configured addresses, as long as it runs on this machine.
//!
//! PostgreSQL is many processes: the postmaster forks a backend per connection and a few
//! background workers. Its CPU time is the postmaster's own, plus every live child's, plus the
//! postmaster's `cutime + cstime` — the time of children that exited and were reaped, which is
//! where a closed connection's backend ends up. That sum only grows, so differences between two
//! samples are the CPU PostgreSQL spent in between, whoever connected.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses, so the split is after the last `)`): index 0 is field 3 (`state`).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // `state` is a letter; every later field is a number (some signed: those parse as 0).
    Some(rest.split_whitespace().skip(1).map(|f| f.parse::<u64>().unwrap_or(0)).collect())
}

// Indexes into `stat_fields` (field number minus 4, `state` being skipped).
const PPID: usize = 0;
const UTIME: usize = 10;
const STIME: usize = 11;
const CUTIME: usize = 12;
const CSTIME: usize = 13;

/// CPU seconds (user + system) the process has used itself, all its threads included.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    Some((f[UTIME] + f[STIME]) as f64 / ticks_per_second())
}

/// The process's peak resident set size (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds of a process and all its descendants that it forked directly, live or reaped:
/// how PostgreSQL's cost is counted (see the module header).
fn cpu_seconds_with_children(parent: u32) -> Option<f64> {
    let own = stat_fields(parent)?;
    let mut ticks = own[UTIME] + own[STIME] + own[CUTIME] + own[CSTIME];
    for pid in all_pids() {
        if let Some(f) = stat_fields(pid) {
            if f[PPID] == u64::from(parent) {
                ticks += f[UTIME] + f[STIME];
            }
        }
    }
    Some(ticks as f64 / ticks_per_second())
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The process listening on TCP `port` (any local address), if it runs on this machine and
/// this process may look at its file descriptors.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; state 0A is LISTEN; inode is column 9.
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9)) else {
                continue;
            };
            let listening_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && listening_port == Some(port) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    all_pids().into_iter().find(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| inodes.contains(link.to_string_lossy().as_ref()))
        })
    })
}

/// The command line of a process, for messages.
pub fn command_line(pid: u32) -> String {
    std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
        .map(|raw| {
            let text: String = String::from_utf8_lossy(&raw).replace('\0', " ");
            text.chars().take(80).collect()
        })
        .unwrap_or_default()
}

/// The shared services' processes on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Services {
    /// The Kafka broker's JVM.
    pub broker: Option<u32>,
    /// The PostgreSQL postmaster.
    pub postgres: Option<u32>,
    /// The Redis server.
    pub redis: Option<u32>,
}

/// CPU seconds used so far by each service and by one contender, at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: std::time::Instant,
    /// Broker CPU seconds.
    pub broker: Option<f64>,
    /// PostgreSQL CPU seconds (postmaster, live backends, reaped backends).
    pub postgres: Option<f64>,
    /// Redis CPU seconds.
    pub redis: Option<f64>,
    /// The contender's CPU seconds.
    pub contender: Option<f64>,
}

impl Services {
    /// Finds the processes listening on the broker's, PostgreSQL's and Redis's ports.
    pub fn find(kafka_port: u16, postgres_port: u16, redis_port: u16) -> Self {
        Self {
            broker: listener_pid(kafka_port),
            postgres: listener_pid(postgres_port),
            redis: listener_pid(redis_port),
        }
    }

    /// One sample of every service's CPU time, and `contender`'s when given.
    pub fn sample(&self, contender: Option<u32>) -> Sample {
        Sample {
            at: std::time::Instant::now(),
            broker: self.broker.and_then(cpu_seconds),
            postgres: self.postgres.and_then(cpu_seconds_with_children),
            redis: self.redis.and_then(cpu_seconds),
            contender: contender.and_then(cpu_seconds),
        }
    }

    /// Lines saying which process is which, for the run's header.
    pub fn describe(&self) -> String {
        let one = |what: &str, pid: Option<u32>| match pid {
            Some(pid) => format!("{what}: pid {pid} ({})", command_line(pid)),
            None => format!("{what}: not found on this machine (its CPU is not measured)"),
        };
        [one("broker", self.broker), one("postgresql", self.postgres), one("redis", self.redis)].join("\n")
    }
}

/// `later − earlier` of one process's CPU seconds, when both were measured.
pub fn delta(earlier: Option<f64>, later: Option<f64>) -> Option<f64> {
    Some(later? - earlier?)
}
