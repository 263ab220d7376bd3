//! Every metric Prism exports, named `prism_<component>_<name>_<unit>[_total]`. Labels are
//! bounded sets (projection, group, topic, partition, command, route, outcome, reason): never an
//! aggregate ID or anything else taken from event data.
//!
//! The Grafana dashboard and the alert rules in `ops/` refer to these names; a test checks
//! that every name they use is exported by a running process.

// ---- every process --------------------------------------------------------------------

/// Gauge: bytes held by the process's live allocations (jemalloc's `stats.allocated`), read
/// when `/metrics` is scraped.
pub const MEMORY_ALLOCATED: &str = "prism_memory_allocated_bytes";
/// Gauge: bytes in the allocator's active pages, the live allocations and the free space
/// between them (jemalloc's `stats.active`): the difference to `prism_memory_allocated_bytes`
/// is fragmentation.
pub const MEMORY_ACTIVE: &str = "prism_memory_active_bytes";
/// Gauge: bytes of physical memory the allocator keeps (jemalloc's `stats.resident`): active
/// pages, freed pages not yet returned to the system, and its metadata (librdkafka's and other
/// C code's included: jemalloc is the process's malloc). The process's RSS is this, plus its
/// code and thread stacks.
pub const MEMORY_RESIDENT: &str = "prism_memory_resident_bytes";

// ---- prism-commands -------------------------------------------------------------------

/// Counter: commands handled. Labels: `command`, `outcome` (accepted, rejected, invalid,
/// not_found, conflict, replayed, error).
pub const COMMANDS_REQUESTS: &str = "prism_commands_requests_total";
/// Histogram: command handling time. Labels: `command`.
pub const COMMANDS_REQUEST_DURATION: &str = "prism_commands_request_duration_seconds";
/// Gauge: events in the outbox not yet acknowledged by the broker.
pub const COMMANDS_OUTBOX_BACKLOG: &str = "prism_commands_outbox_backlog_events";
/// Gauge: age of the oldest unpublished outbox entry.
pub const COMMANDS_OUTBOX_OLDEST_AGE: &str = "prism_commands_outbox_oldest_age_seconds";
/// Counter: events published by the relay.
pub const COMMANDS_OUTBOX_PUBLISHED: &str = "prism_commands_outbox_published_total";
/// Counter: relay publish attempts that failed and will be retried. Labels: `reason`.
pub const COMMANDS_OUTBOX_PUBLISH_ERRORS: &str = "prism_commands_outbox_publish_errors_total";
/// Counter: aggregates loaded for a command. Labels: `start` (kept: the events since onto a
/// state kept from an earlier command; whole: the whole stream, no state kept; diverged: the
/// whole stream, the kept state's event no longer in it).
pub const COMMANDS_AGGREGATE_LOADS: &str = "prism_commands_aggregate_loads_total";
/// Counter: events read from the event store and folded to load aggregates for commands.
pub const COMMANDS_EVENTS_FOLDED: &str = "prism_commands_events_folded_total";

// ---- prism-projector ------------------------------------------------------------------

/// Counter: events applied to a read model. Labels: `projection`.
pub const PROJECTOR_EVENTS_APPLIED: &str = "prism_projector_events_applied_total";
/// Counter: events skipped. Labels: `projection`, `reason` (duplicate: applied before;
/// conflict: another event with the same aggregate version was applied).
pub const PROJECTOR_EVENTS_SKIPPED: &str = "prism_projector_events_skipped_total";
/// Counter: events dead-lettered. Labels: `projection`, `kind` (the error kind; `parked`
/// for events waiting behind another).
pub const PROJECTOR_EVENTS_DEAD_LETTERED: &str = "prism_projector_events_dead_lettered_total";
/// Counter: version gaps detected. Labels: `projection`, `policy`.
pub const PROJECTOR_VERSION_GAPS: &str = "prism_projector_version_gaps_total";
/// Counter: version gaps healed by themselves: the missing event arrived and the events parked
/// behind the gap were applied in order. Labels: `projection`.
pub const PROJECTOR_GAPS_HEALED: &str = "prism_projector_version_gaps_healed_total";
/// Histogram: time from a batch's first message to its offsets being stored. Labels:
/// `group`.
pub const PROJECTOR_BATCH_DURATION: &str = "prism_projector_batch_duration_seconds";
/// Histogram: time a batch's handler spends in each of its steps, once it has its turn.
/// Labels: `phase` (`replays`: a pending bulk replay of the partition loaded first, near
/// zero otherwise; `decode`; `postgres`: the transactions, with the check that a
/// followed generation is still active; `cache`; `dead_letters`: copies to the dead-letter topic and healing).
pub const PROJECTOR_BATCH_PHASE: &str = "prism_projector_batch_phase_seconds";
/// Histogram: messages per batch. Labels: `group`.
pub const PROJECTOR_BATCH_SIZE: &str = "prism_projector_batch_size_events";
/// Counter: rebalance callbacks. Labels: `group`, `kind` (assign, revoke).
pub const PROJECTOR_REBALANCES: &str = "prism_projector_rebalances_total";
/// Counter: batches applied again because a blue/green switch made another generation active
/// while they ran (expected, not an error). Labels: `group`.
pub const PROJECTOR_GENERATION_SWITCHES: &str = "prism_projector_generation_switches_total";
/// Counter: offset commits answered by the broker. Labels: `group`, `outcome` (ok, failed;
/// failures are logged with the broker's reason, e.g. a stale member epoch during a KIP-848
/// reconciliation, and their offsets go with the next commit).
pub const PROJECTOR_OFFSET_COMMITS: &str = "prism_projector_offset_commits_total";
/// Gauge: partitions currently assigned. Labels: `group`.
pub const PROJECTOR_ASSIGNED_PARTITIONS: &str = "prism_projector_assigned_partitions";
/// Gauge: messages between the committed position and the high watermark. Labels:
/// `group`, `topic`, `partition`.
pub const PROJECTOR_LAG_MESSAGES: &str = "prism_projector_consumer_lag_messages";
/// Gauge: age of the oldest unconsumed event (0 when caught up). Labels: `group`,
/// `topic`, `partition`.
pub const PROJECTOR_LAG_SECONDS: &str = "prism_projector_consumer_lag_seconds";
/// Counter: transient failures that paused a partition for a retry. Labels: `group`,
/// `dependency` (postgres, redis, kafka).
pub const PROJECTOR_TRANSIENT_ERRORS: &str = "prism_projector_transient_errors_total";
/// Gauge: Unix time of the last batch that landed. Labels: `group`.
pub const PROJECTOR_LAST_PROGRESS: &str = "prism_projector_last_progress_timestamp_seconds";
/// Gauge: assigned partitions with lag that landed nothing for `projector.stall_after_seconds`
/// (a batch failing over and over, or a consumer that stopped fetching). Labels: `group`.
pub const PROJECTOR_STALLED_PARTITIONS: &str = "prism_projector_stalled_partitions";
/// Gauge: seconds since a partition's current batch first failed (0 while its batches land).
/// Labels: `group`, `topic`, `partition`.
pub const PROJECTOR_RETRYING_SECONDS: &str = "prism_projector_batch_retrying_seconds";

// ---- prism-query ----------------------------------------------------------------------

/// Counter: HTTP requests. Labels: `route`, `status`.
pub const QUERY_REQUESTS: &str = "prism_query_requests_total";
/// Histogram: request latency. Labels: `route`.
pub const QUERY_REQUEST_DURATION: &str = "prism_query_request_duration_seconds";
/// Counter: cache lookups. Labels: `read_model`, `result` (hit, miss, error, bypassed).
pub const QUERY_CACHE_LOOKUPS: &str = "prism_query_cache_lookups_total";
/// Gauge: 1 while Redis answers, 0 while the query side's cache is degraded (reads served
/// from PostgreSQL).
pub const QUERY_CACHE_UP: &str = "prism_query_cache_up";
/// Gauge: read-your-writes requests parked until their version lands. Labels: `read_model`.
pub const QUERY_WAITING_REQUESTS: &str = "prism_query_waiting_requests";
/// Counter: read-your-writes waits that timed out. Labels: `read_model`.
pub const QUERY_STALE_RESPONSES: &str = "prism_query_stale_responses_total";
/// Counter: reads that went to PostgreSQL (cache misses, read-your-writes re-checks, lists).
/// Labels: `read_model`.
pub const QUERY_POSTGRES_READS: &str = "prism_query_postgres_reads_total";
/// Counter: PostgreSQL reads by the server that answered them. Labels: `read_model`, `source`
/// (primary, replica).
pub const QUERY_SOURCE_READS: &str = "prism_query_source_reads_total";
/// Counter: reads a replica could have answered that the primary answered instead. Labels:
/// `read_model`, `reason` (behind: the replica's row was older than the `min_version` asked
/// for; lagging: every replica that answers is further behind than `query.replica_max_lag_ms`;
/// unavailable: no replica answers; failed: the replica's read failed or timed out).
pub const QUERY_REPLICA_FALLBACKS: &str = "prism_query_replica_fallbacks_total";
/// Gauge: 1 while a replica is used for reads, 0 while it is skipped as down. Labels: `replica`
/// (`host:port/database` from `query.replica_urls`).
pub const QUERY_REPLICA_UP: &str = "prism_query_replica_up";
/// Gauge: time since a replica was last seen to have replayed all the primary had written (an
/// upper bound of how stale its answers are; +Inf until first seen caught up). Labels:
/// `replica`.
pub const QUERY_REPLICA_LAG: &str = "prism_query_replica_lag_seconds";
