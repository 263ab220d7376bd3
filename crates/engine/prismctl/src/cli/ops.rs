//! Arguments of the operations commands: `lag`, `offsets reset` and `dlq`. Every value is
//! checked while parsing (topic selections, RFC 3339 times, `type:id` aggregates), so a typo is
//! a usage error (exit 2) that says what was wrong, before anything is contacted.

use chrono::{DateTime, FixedOffset};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use prism_events::AggregateType;
use uuid::Uuid;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Text,
    /// JSON on one line, for scripts.
    Json,
}

/// `prismctl lag`.
#[derive(Debug, Args)]
pub struct LagArgs {
    /// Consumer group to report (repeatable). Default: the projector group,
    /// `<topics.prefix><projector.group>`.
    #[arg(long, value_name = "GROUP")]
    pub group: Vec<String>,
    /// Refresh every SECS seconds (5 when no value is given) until interrupted. Catch-up
    /// estimates come from the progress between refreshes; without --watch they are `n/a`.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "5",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
    /// With --watch: stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Output format; with --watch, one table or JSON document per refresh.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `prismctl offsets …`.
#[derive(Debug, Subcommand)]
pub enum OffsetsCommand {
    /// Move a group's committed offsets. Prints `topic partition current -> target` per
    /// partition; commits only with --execute, and only while the group has no active members.
    Reset(ResetArgs),
}

/// `prismctl offsets reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Where to move the offsets.
    #[command(flatten)]
    pub to: ResetTo,
    /// Event topic to reset, `<topics.prefix><aggregate type>.events` (e.g. `prism.order.events`
    /// with the prefix `prism.`), optionally with partitions: `prism.order.events:0,2`
    /// (repeatable). Only this deployment's event topics are accepted. Default: every event
    /// topic, every partition.
    #[arg(long = "topic", value_name = "TOPIC[:P[,P..]]", value_parser = parse_topic_selection)]
    pub topics: Vec<TopicSelection>,
    /// Consumer group, under this deployment's `topics.prefix`. Default: the projector group,
    /// `<topics.prefix><projector.group>`.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Commit the new offsets. Without it nothing changes (dry run).
    #[arg(long)]
    pub execute: bool,
    /// Commit without asking for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y', requires = "execute")]
    pub yes: bool,
    /// Output format of the plan.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Exactly one target of `offsets reset`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// The first offset still in each partition (replay everything retained).
    #[arg(long)]
    pub to_earliest: bool,
    /// The end of each partition (skip everything not yet consumed).
    #[arg(long)]
    pub to_latest: bool,
    /// The first message at or after this time, RFC 3339 (e.g. 2026-11-23T08:00:00Z); the
    /// end of the partition when nothing is that recent.
    #[arg(long, value_name = "RFC3339", value_parser = parse_datetime)]
    pub to_datetime: Option<DateTime<FixedOffset>>,
    /// Move each committed offset by N (negative: back), kept within the partition.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// This offset on every selected partition, kept within the partition.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(0..))]
    pub to_offset: Option<i64>,
}

/// The target of a reset, as one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// Low watermark.
    Earliest,
    /// High watermark.
    Latest,
    /// First message at or after a time (ms since the epoch).
    Datetime(i64),
    /// Committed offset plus N.
    ShiftBy(i64),
    /// A fixed offset.
    Offset(i64),
}

impl ResetTo {
    /// The one target given (clap guarantees exactly one).
    pub fn target(&self) -> ResetTarget {
        if self.to_earliest {
            ResetTarget::Earliest
        } else if self.to_latest {
            ResetTarget::Latest
        } else if let Some(at) = self.to_datetime {
            ResetTarget::Datetime(at.timestamp_millis())
        } else if let Some(n) = self.shift_by {
            ResetTarget::ShiftBy(n)
        } else {
            ResetTarget::Offset(self.to_offset.unwrap_or(0))
        }
    }
}

/// A topic and optionally some of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSelection {
    /// Full topic name.
    pub topic: String,
    /// Partitions; `None` for all.
    pub partitions: Option<Vec<i32>>,
}

/// Parses `topic` or `topic:0,1,2`.
pub fn parse_topic_selection(text: &str) -> Result<TopicSelection, String> {
    let (topic, partitions) = match text.rsplit_once(':') {
        Some((topic, list)) => {
            let partitions = list
                .split(',')
                .map(|p| {
                    p.trim().parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
                        format!("`{p}` in `{text}` is not a partition number (expected TOPIC:0,1,…)")
                    })
                })
                .collect::<Result<Vec<i32>, String>>()?;
            (topic, Some(partitions))
        }
        None => (text, None),
    };
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(format!(
            "`{topic}` is not a Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249)"
        ));
    }
    Ok(TopicSelection { topic: topic.to_owned(), partitions })
}

/// Parses an RFC 3339 time with its offset.
pub fn parse_datetime(text: &str) -> Result<DateTime<FixedOffset>, String> {
    DateTime::parse_from_rfc3339(text)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time such as 2026-11-23T08:00:00Z: {e}"))
}

/// Parses `type:uuid`, e.g. `order:7d7c…` (the type is checked against the registry later).
pub fn parse_aggregate(text: &str) -> Result<(AggregateType, Uuid), String> {
    let (kind, id) =
        text.split_once(':').ok_or_else(|| format!("`{text}` is not TYPE:ID (e.g. order:7d7c2f0e-…)"))?;
    if !AggregateType::is_valid_name(kind) {
        return Err(format!("`{kind}` is not an aggregate type name (lowercase letters, digits and `_`)"));
    }
    let kind = AggregateType::new(prism_projections::intern(kind));
    let id = Uuid::parse_str(id).map_err(|e| format!("`{id}` is not a UUID: {e}"))?;
    Ok((kind, id))
}

/// `prismctl dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead-lettered events: counts per projection and reason, then the rows.
    List(DlqListArgs),
    /// One dead letter in full: origin, event, error, payload.
    Show {
        /// Dead-letter id (from `dlq list`).
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Re-apply dead-lettered events through the projector's apply path, after their cause was
    /// fixed. An aggregate's chain goes in version order: a missing event redriven first
    /// unparks the events that waited behind it.
    Redrive(DlqRedriveArgs),
    /// Give up on a dead letter that must never apply. It stays on record as `discarded`.
    Discard {
        /// Dead-letter id (from `dlq list`).
        id: i64,
        /// Discard without asking for confirmation (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Which dead-letter status to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum StatusFilter {
    /// Not yet redriven or discarded.
    #[default]
    Open,
    /// Applied by a redrive.
    Redriven,
    /// Given up.
    Discarded,
    /// Any status.
    All,
}

/// `prismctl dlq list`.
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Projection (`order_summary`: every generation) or instance (`order_summary_g2`).
    #[arg(long, value_name = "P")]
    pub projection: Option<String>,
    /// Error kind, e.g. version_gap, parked, unprojectable, invalid_json.
    #[arg(long, value_name = "KIND")]
    pub reason: Option<String>,
    /// Only the dead letters of one aggregate, TYPE:ID.
    #[arg(long, value_name = "TYPE:ID", value_parser = parse_aggregate)]
    pub aggregate: Option<(AggregateType, Uuid)>,
    /// Which status.
    #[arg(long, value_enum, default_value_t = StatusFilter::Open)]
    pub status: StatusFilter,
    /// Rows shown at most (counts cover all).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(0..=100_000))]
    pub limit: i64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `prismctl dlq redrive`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").required(true).args(["id", "aggregate", "all"])))]
pub struct DlqRedriveArgs {
    /// One dead letter (with the rest of its aggregate's chain).
    pub id: Option<i64>,
    /// Every open dead letter of one aggregate, TYPE:ID.
    #[arg(long, value_name = "TYPE:ID", value_parser = parse_aggregate)]
    pub aggregate: Option<(AggregateType, Uuid)>,
    /// Every open dead letter.
    #[arg(long)]
    pub all: bool,
    /// Only in this projection (`order_summary`) or instance (`order_summary_g2`).
    #[arg(long, value_name = "P")]
    pub projection: Option<String>,
    /// Redrive without asking for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Output format of the workers' reports.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}
