//! `prismctl lag`: how far each consumer group is behind, per topic and partition.
//!
//! For every partition of the event topics: the group's committed offset, the high watermark,
//! the lag in messages, the lag in seconds — the age of the oldest unconsumed event, read from
//! the message at the committed offset (its broker timestamp, else the envelope's
//! `occurred_at`; 0 when caught up) — and a catch-up estimate: remaining lag divided by the net
//! rate at which the group gains on the producers between two samples. Without `--watch` there
//! is one sample and no rate, so the estimate is `n/a`.
//!
//! A group that has never committed on any of the topics would show every message as lag,
//! which is what a mistyped `--group` looks like too: such a group is named as never having
//! committed, with the consumer groups the broker knows under this deployment's prefix, and a
//! `--group` the broker does not know at all is an error rather than a table of full lag.
//!
//! Nothing here joins the group or commits: the offsets come from a consumer that never
//! subscribes, so looking at lag never rebalances the workers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use prism_config::PrismConfig;
use prism_kafka::admin::{group_offsets, messages_at, projector_group_id, PartitionOffsets};
use serde::Serialize;

use super::groups::{known_groups, listed};
use super::kafka_error;
use crate::cli::{LagArgs, OutputFormat};

/// One sample of one group.
#[derive(Debug, Clone)]
struct Sample {
    group: String,
    taken: Instant,
    partitions: Vec<PartitionOffsets>,
    /// Age in seconds of the message at the committed offset, per lagging partition.
    ages: BTreeMap<(String, i32), f64>,
}

/// One partition's line.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset; `None` when the group never committed here (it starts at the low
    /// watermark, as the workers use `auto.offset.reset=earliest`).
    pub committed: Option<i64>,
    /// Low watermark.
    pub low: i64,
    /// High watermark.
    pub high: i64,
    /// Messages not yet consumed.
    pub lag_messages: i64,
    /// Age of the oldest unconsumed message in seconds (0 when caught up; `None` when it could
    /// not be read in time).
    pub lag_seconds: Option<f64>,
    /// Seconds until caught up at the measured rate; `None` when unknown.
    pub catch_up_seconds: Option<f64>,
    /// The estimate in words: `caught up`, `n/a`, `stalled`, `falling behind`, or a duration.
    pub catch_up: String,
}

/// One group's report.
#[derive(Debug, Clone, Serialize)]
pub struct GroupLag {
    /// Group id.
    pub group: String,
    /// Per partition.
    pub partitions: Vec<PartitionLag>,
    /// Sum of the partitions' lag.
    pub total_lag_messages: i64,
    /// Oldest unconsumed message over all partitions, in seconds.
    pub max_lag_seconds: Option<f64>,
    /// Consumption rate over the last interval, messages per second (`None` on the first
    /// sample).
    pub consumed_per_second: Option<f64>,
    /// Group-wide catch-up estimate in seconds.
    pub catch_up_seconds: Option<f64>,
    /// Group-wide estimate in words.
    pub catch_up: String,
    /// Whether the group has committed on none of the partitions (its lag is every message;
    /// a mistyped group name looks like this).
    pub never_committed: bool,
}

pub async fn run(config: &PrismConfig, args: &LagArgs) -> anyhow::Result<()> {
    let groups = if args.group.is_empty() { vec![projector_group_id(config)] } else { args.group.clone() };
    let db = super::read_models::connect(config).await?;
    let topics: Vec<String> = super::read_models::event_topics(config, &db).await?;
    let mut previous: Vec<Sample> = Vec::new();
    let mut refreshes = 0_u64;
    loop {
        let mut samples = Vec::with_capacity(groups.len());
        for group in &groups {
            samples.push(sample(config, group, &topics).await?);
        }
        if refreshes == 0 {
            check_committed(config, &samples, &topics, !args.group.is_empty()).await?;
        }
        let reports: Vec<GroupLag> = samples
            .iter()
            .map(|s| report(s, previous.iter().find(|p| p.group == s.group), args.watch.is_some()))
            .collect();
        print(&reports, args.output)?;
        refreshes += 1;
        let Some(interval) = args.watch else { return Ok(()) };
        if args.count.is_some_and(|count| refreshes >= count) {
            return Ok(());
        }
        previous = samples;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(interval)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Says so when a group never committed on any of `topics`: an error for a `--group` the
/// broker does not know (a typo, most likely), a note on stderr otherwise (workers that have not
/// committed yet), with the groups the broker knows under this deployment's prefix.
async fn check_committed(
    config: &PrismConfig,
    samples: &[Sample],
    topics: &[String],
    named: bool,
) -> anyhow::Result<()> {
    let never: Vec<&str> = samples
        .iter()
        .filter(|s| s.partitions.iter().all(|p| p.committed.is_none()))
        .map(|s| s.group.as_str())
        .collect();
    if never.is_empty() {
        return Ok(());
    }
    let known = known_groups(config).await?;
    let prefix = &config.topics.prefix;
    for group in never {
        let known_list =
            format!("consumer groups of this deployment (prefix \"{prefix}\"): {}", listed(&known, 20));
        if named && !known.iter().any(|k| k == group) {
            bail!(
                "group {group} has never committed offsets on this deployment's event topics ({}), and the \
                 broker does not know it: is the name right? Known {known_list}",
                topics.join(", ")
            );
        }
        eprintln!(
            "note: group {group} has never committed offsets on {}: the lag below counts every message. {}; \
             known {known_list}",
            topics.join(", "),
            if named {
                "Its members have not committed yet"
            } else {
                "No projector worker has committed yet, or the workers run with another projector.group or \
                 topics.prefix"
            }
        );
    }
    Ok(())
}

async fn sample(config: &PrismConfig, group: &str, topics: &[String]) -> anyhow::Result<Sample> {
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    let partitions = group_offsets(&config.kafka, group, topics, timeout)
        .await
        .map_err(|e| kafka_error(e, format!("reading the offsets of group {group}")))?;
    let taken = Instant::now();
    let lagging: Vec<(String, i32, i64)> = partitions
        .iter()
        .filter_map(|p| {
            let position = position(p);
            (position < p.high).then(|| (p.topic.clone(), p.partition, position))
        })
        .collect();
    let found = messages_at(&config.kafka, &lagging, Duration::from_secs(5))
        .await
        .map_err(|e| kafka_error(e, "reading the oldest unconsumed messages"))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let ages = found
        .into_iter()
        .filter_map(|(key, message)| {
            let at = message.timestamp_ms.or_else(|| message.payload.as_deref().and_then(occurred_at_ms))?;
            Some((key, ((now_ms - at).max(0) as f64) / 1000.0))
        })
        .collect();
    Ok(Sample { group: group.to_owned(), taken, partitions, ages })
}

/// Where the group reads next on a partition.
fn position(p: &PartitionOffsets) -> i64 {
    p.committed.unwrap_or(p.low).clamp(p.low, p.high)
}

/// `occurred_at` of an event envelope, in ms since the epoch.
fn occurred_at_ms(payload: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        occurred_at: chrono::DateTime<chrono::Utc>,
    }
    serde_json::from_slice::<Envelope>(payload).ok().map(|e| e.occurred_at.timestamp_millis())
}

/// The estimate for `lag` messages left when the group gains `net_rate` messages per second
/// on the producers.
fn estimate(lag: i64, net_rate: Option<f64>, consumed: Option<f64>) -> (Option<f64>, String) {
    if lag == 0 {
        return (Some(0.0), "caught up".into());
    }
    match (net_rate, consumed) {
        (None, _) | (_, None) => (None, "n/a".into()),
        (Some(_), Some(c)) if c <= 0.0 => (None, "stalled".into()),
        (Some(r), Some(_)) if r <= 0.0 => (None, "falling behind".into()),
        (Some(r), Some(_)) => {
            let seconds = lag as f64 / r;
            (Some(seconds), format_duration(seconds))
        }
    }
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn report(current: &Sample, previous: Option<&Sample>, watching: bool) -> GroupLag {
    let elapsed = previous.map(|p| current.taken.duration_since(p.taken).as_secs_f64()).filter(|s| *s > 0.0);
    let mut partitions = Vec::with_capacity(current.partitions.len());
    let (mut total_consumed, mut total_produced) = (0_i64, 0_i64);
    for p in &current.partitions {
        let lag = (p.high - position(p)).max(0);
        let before = previous.and_then(|prev| {
            prev.partitions.iter().find(|q| q.topic == p.topic && q.partition == p.partition)
        });
        let rates = match (before, elapsed) {
            (Some(b), Some(dt)) => {
                let consumed = (position(p) - position(b)).max(0);
                let produced = (p.high - b.high).max(0);
                total_consumed += consumed;
                total_produced += produced;
                Some(((consumed - produced) as f64 / dt, consumed as f64 / dt))
            }
            _ => None,
        };
        let (catch_up_seconds, catch_up) = estimate(lag, rates.map(|r| r.0), rates.map(|r| r.1));
        let lag_seconds =
            if lag == 0 { Some(0.0) } else { current.ages.get(&(p.topic.clone(), p.partition)).copied() };
        partitions.push(PartitionLag {
            topic: p.topic.clone(),
            partition: p.partition,
            committed: p.committed,
            low: p.low,
            high: p.high,
            lag_messages: lag,
            lag_seconds,
            catch_up_seconds,
            catch_up,
        });
    }
    let total_lag_messages = partitions.iter().map(|p| p.lag_messages).sum();
    let max_lag_seconds = partitions.iter().filter_map(|p| p.lag_seconds).reduce(f64::max);
    let consumed_per_second = elapsed.map(|dt| total_consumed as f64 / dt);
    let net = elapsed.map(|dt| (total_consumed - total_produced) as f64 / dt);
    let (catch_up_seconds, mut catch_up) = estimate(total_lag_messages, net, consumed_per_second);
    if catch_up == "n/a" && !watching {
        catch_up = "n/a (one sample; use --watch for a rate)".into();
    }
    GroupLag {
        group: current.group.clone(),
        partitions,
        total_lag_messages,
        max_lag_seconds,
        consumed_per_second,
        catch_up_seconds,
        catch_up,
        never_committed: current.partitions.iter().all(|p| p.committed.is_none()),
    }
}

fn print(reports: &[GroupLag], output: OutputFormat) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => {
            let document = serde_json::json!({
                "sampled_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "groups": reports,
            });
            println!("{}", serde_json::to_string(&document)?);
        }
        OutputFormat::Text => {
            for group in reports {
                println!(
                    "{:<40} {:>9} {:>12} {:>12} {:>10} {:>11}  CATCH-UP",
                    "GROUP / TOPIC", "PARTITION", "COMMITTED", "HIGH", "LAG", "LAG-SECONDS"
                );
                for p in &group.partitions {
                    println!(
                        "{:<40} {:>9} {:>12} {:>12} {:>10} {:>11}  {}",
                        format!("{} / {}", group.group, p.topic),
                        p.partition,
                        p.committed.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                        p.high,
                        p.lag_messages,
                        p.lag_seconds.map_or_else(|| "?".to_owned(), |s| format!("{s:.1}")),
                        p.catch_up
                    );
                }
                println!(
                    "group {}: {} message(s) behind, oldest unconsumed {}, {}; catch-up: {}",
                    group.group,
                    group.total_lag_messages,
                    group.max_lag_seconds.map_or_else(|| "unknown".to_owned(), |s| format!("{s:.1}s")),
                    group
                        .consumed_per_second
                        .map_or_else(|| "rate n/a".to_owned(), |r| format!("{r:.1} msg/s consumed")),
                    group.catch_up
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(committed: Option<i64>, high: i64) -> PartitionOffsets {
        PartitionOffsets { topic: "t".into(), partition: 0, low: 0, high, committed }
    }

    #[test]
    fn estimates_from_two_samples() {
        let start = Instant::now();
        let first = Sample {
            group: "g".into(),
            taken: start,
            partitions: vec![offsets(Some(100), 1_000)],
            ages: BTreeMap::new(),
        };
        let second = Sample {
            group: "g".into(),
            taken: start + Duration::from_secs(10),
            partitions: vec![offsets(Some(600), 1_100)],
            ages: BTreeMap::from([(("t".into(), 0), 42.0)]),
        };
        let single = report(&first, None, false);
        assert_eq!(single.total_lag_messages, 900);
        assert!(single.catch_up.starts_with("n/a"));
        let watched = report(&second, Some(&first), true);
        // 500 consumed and 100 produced in 10 s: gaining 40/s on 500 left.
        assert_eq!(watched.total_lag_messages, 500);
        assert_eq!(watched.catch_up_seconds, Some(12.5));
        assert_eq!(watched.partitions[0].lag_seconds, Some(42.0));
        assert_eq!(watched.consumed_per_second, Some(50.0));
    }

    #[test]
    fn caught_up_stalled_and_falling_behind() {
        assert_eq!(estimate(0, None, None).1, "caught up");
        assert_eq!(estimate(10, Some(-5.0), Some(0.0)).1, "stalled");
        assert_eq!(estimate(10, Some(-5.0), Some(3.0)).1, "falling behind");
        assert_eq!(estimate(7_200, Some(1.0), Some(1.0)).1, "2h00m");
        let never = offsets(None, 5);
        assert_eq!(position(&never), 0, "no commit: the workers start at the low watermark");
        assert_eq!(occurred_at_ms(br#"{"occurred_at":"1970-01-01T00:00:01Z"}"#), Some(1_000));
        assert_eq!(occurred_at_ms(b"not json"), None);
    }
}
