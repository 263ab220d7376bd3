//! Compare-and-set writes on a cluster, grouped so that no script call crosses a slot.
//!
//! Unconfirmed writes (query refills, or `redis.cluster_replica_acks = 0`): one script call
//! per slot group (of at most `ENTRIES_PER_CALL` entries), all in flight at once over the
//! client's multiplexed connections, each routed (and redirected) by its slot.
//!
//! Confirmed writes (projectors): the slot groups of one master go in one pipeline, sent to
//! that master, ending in `WAIT <replicas> <timeout>` and `ROLE`. `WAIT` blocks until that
//! many replicas acknowledged everything this connection wrote, so the entries (and, through
//! the script's touch, whatever entry it found newer — see `put_if_newer.lua`) survive the
//! master's failover. The write counts as done when the acknowledgements reach
//! `redis.cluster_replica_acks`, or every replica that could take over from the master if it
//! has fewer: those the cluster lists as not failed (the layout snapshot, read again when the
//! count falls short) and those connected to it now (`ROLE`, answered in the same pipeline by
//! the same node). So a replica that lost its link still holds writes back until the cluster
//! marks it failed (`cluster-node-timeout`), while a master whose replica died, or that was
//! just promoted and has none yet, keeps accepting writes rather than stall the projectors;
//! once it has a replica again, writes wait for it again.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Script, ServerErrorKind, Value};

use super::slot::{group_by_slot, SlotGroup};
use super::Cluster;
use crate::error::CacheError;
use crate::{Entry, ENTRIES_PER_CALL};

/// Script calls in flight at once for one unconfirmed write.
const CALLS_IN_FLIGHT: usize = 64;
/// Pipelines sent again after a master did not know the script or the layout was stale.
const ATTEMPTS: usize = 3;

/// One script call or one master's pipeline, in flight.
type Call<'c> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<usize, CacheError>> + Send + 'c>>;

/// The slot groups bound for one master.
struct MasterBatch<'g, 'e, 'a> {
    /// A slot it serves, to route the pipeline by.
    route_slot: u16,
    /// Its replicas the layout counts as healthy.
    replicas: u32,
    /// The groups.
    groups: Vec<&'g SlotGroup<'e, 'a>>,
}

/// What one master's pipeline answered.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Entries written, replicas that acknowledged, replicas online (`None`: `ROLE` was not
    /// answered, e.g. refused by a managed service).
    Done { written: usize, acked: u32, online: Option<u32> },
    /// The master did not know the script (for some calls; the others wrote `written`).
    NoScript { written: usize },
}

impl Cluster {
    /// Writes `entries` where newer; with `confirm`, waits for replicas (see the module).
    pub(crate) async fn put_if_newer(
        &self,
        script: &Script,
        entries: &[Entry<'_>],
        confirm: bool,
    ) -> Result<usize, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let groups = group_by_slot(entries);
        if confirm && self.replica_acks > 0 {
            self.put_confirmed(script, &groups).await
        } else {
            self.put_unconfirmed(script, &groups).await
        }
    }

    async fn put_unconfirmed(
        &self,
        script: &Script,
        groups: &[SlotGroup<'_, '_>],
    ) -> Result<usize, CacheError> {
        // Boxed, and built in a loop rather than by closures, so the whole future stays `Send`
        // for callers whatever the entries borrow.
        let mut calls: Vec<Call<'_>> = Vec::new();
        for group in groups {
            for chunk in group.entries.chunks(ENTRIES_PER_CALL) {
                let invocation = crate::invocation(script, chunk.iter().copied(), false);
                let mut connection = self.connection.clone();
                calls.push(Box::pin(async move { Ok(invocation.invoke_async(&mut connection).await?) }));
            }
        }
        let counts: Vec<usize> =
            futures::stream::iter(calls).buffer_unordered(CALLS_IN_FLIGHT).try_collect().await?;
        Ok(counts.into_iter().sum())
    }

    async fn put_confirmed(
        &self,
        script: &Script,
        groups: &[SlotGroup<'_, '_>],
    ) -> Result<usize, CacheError> {
        let layout = self.layout.get(&self.connection).await?;
        let mut batches: BTreeMap<&str, MasterBatch<'_, '_, '_>> = BTreeMap::new();
        for group in groups {
            let Some(range) = layout.range_of(group.slot) else {
                self.layout.mark_stale();
                return Err(CacheError::Redis(redis::RedisError::from((
                    redis::ErrorKind::ClusterConnectionNotFound,
                    "no master serves the slot",
                    format!("slot {}", group.slot),
                ))));
            };
            batches
                .entry(range.master.id.as_str())
                .or_insert_with(|| MasterBatch {
                    route_slot: group.slot,
                    replicas: range.replicas,
                    groups: Vec::new(),
                })
                .groups
                .push(group);
        }
        let mut writes: Vec<Call<'_>> = Vec::with_capacity(batches.len());
        for batch in batches.into_values() {
            writes.push(Box::pin(self.write_to_master(script, batch)));
        }
        let written = futures::future::try_join_all(writes).await?;
        Ok(written.into_iter().sum())
    }

    /// One master's pipeline, sent again (at most [`ATTEMPTS`] times) when the master did not
    /// know the script or has more replicas to wait for than the pipeline waited for.
    async fn write_to_master(
        &self,
        script: &Script,
        batch: MasterBatch<'_, '_, '_>,
    ) -> Result<usize, CacheError> {
        let mut listed = batch.replicas;
        let mut wait_for = self.replica_acks.min(listed);
        let mut refreshed = false;
        // Entries an attempt wrote are not newer for the next one: the sum counts each once.
        let mut total = 0;
        for _ in 0..ATTEMPTS {
            match self.send_pipeline(script, &batch, wait_for).await? {
                Answer::NoScript { written } => {
                    total += written;
                    let _: String = script.load_async(&mut self.connection.clone()).await?;
                }
                Answer::Done { written, acked, online } => {
                    total += written;
                    let mut wanted = replicas_to_wait_for(self.replica_acks, listed, online);
                    if acked >= wanted {
                        return Ok(total);
                    }
                    if !refreshed {
                        // Short: the layout may be out of date (a replica joined, was marked
                        // failed, or the slot changed hands). Judge again on a fresh one.
                        refreshed = true;
                        let fresh = self.layout.fresh(&self.connection).await?;
                        listed = fresh.range_of(batch.route_slot).map_or(0, |range| range.replicas);
                        wanted = replicas_to_wait_for(self.replica_acks, listed, online);
                        if acked >= wanted {
                            return Ok(total);
                        }
                        if wait_for < wanted {
                            // The pipeline waited for too few: send it again, waiting for all.
                            wait_for = wanted;
                            continue;
                        }
                    }
                    return Err(CacheError::NotReplicated { acked, wanted, timeout: self.ack_timeout });
                }
            }
        }
        Err(CacheError::Redis(redis::RedisError::from((
            redis::ErrorKind::Server(ServerErrorKind::NoScript),
            "the master kept answering NOSCRIPT, or more replicas kept appearing, after every attempt",
        ))))
    }

    async fn send_pipeline(
        &self,
        script: &Script,
        batch: &MasterBatch<'_, '_, '_>,
        wait_for: u32,
    ) -> Result<Answer, CacheError> {
        let mut pipeline = redis::pipe();
        let mut calls = 0;
        for group in &batch.groups {
            for chunk in group.entries.chunks(ENTRIES_PER_CALL) {
                pipeline.add_command(evalsha(script, chunk));
                calls += 1;
            }
        }
        if wait_for > 0 {
            pipeline
                .cmd("WAIT")
                .arg(wait_for)
                .arg(u64::try_from(self.ack_timeout.as_millis()).unwrap_or(u64::MAX));
        }
        pipeline.cmd("ROLE");
        let count = pipeline.len();
        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(batch.route_slot, SlotAddr::Master));
        let values = self.connection.clone().route_pipeline(pipeline, 0, count, route).await?;
        read_answer(&values, calls, wait_for > 0)
    }
}

/// How many replica acknowledgements make a write done: `acks`, or fewer when the master has
/// fewer replicas that could take over from it — those the cluster lists as not failed
/// (`listed`) and those connected to it now (`online`, from its `ROLE`). A replica that lost
/// its link but is not yet marked failed still counts: it could be promoted without the write.
fn replicas_to_wait_for(acks: u32, listed: u32, online: Option<u32>) -> u32 {
    acks.min(listed.max(online.unwrap_or(0)))
}

/// `EVALSHA` of `put_if_newer.lua` over `entries`, telling the script the caller waits.
fn evalsha(script: &Script, entries: &[&Entry<'_>]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(entries.len());
    for entry in entries {
        cmd.arg(entry.key);
    }
    cmd.arg("1");
    for entry in entries {
        cmd.arg(entry.revision).arg(entry.version).arg(entry.document);
    }
    cmd
}

/// Reads a pipeline's answers: `calls` script results, then `WAIT`'s (when `waited`), then
/// `ROLE`'s.
fn read_answer(values: &[Value], calls: usize, waited: bool) -> Result<Answer, CacheError> {
    let expected = calls + usize::from(waited) + 1;
    if values.len() != expected {
        return Err(unexpected(format!("{} answers to a pipeline of {expected} commands", values.len())));
    }
    let mut written = 0;
    let mut missing_script = false;
    for value in &values[..calls] {
        match value {
            Value::Int(n) => written += usize::try_from(*n).unwrap_or(0),
            Value::ServerError(err) if err.kind() == Some(ServerErrorKind::NoScript) => missing_script = true,
            Value::ServerError(err) => return Err(CacheError::Redis(err.clone().into())),
            other => return Err(unexpected(format!("the script answered {other:?}"))),
        }
    }
    if missing_script {
        return Ok(Answer::NoScript { written });
    }
    let acked = match (waited, values.get(calls)) {
        (false, _) => 0,
        (true, Some(Value::Int(n))) => u32::try_from(*n).unwrap_or(0),
        (true, Some(Value::ServerError(err))) => return Err(CacheError::Redis(err.clone().into())),
        (true, other) => return Err(unexpected(format!("WAIT answered {other:?}"))),
    };
    let online = values.last().and_then(online_replicas);
    Ok(Answer::Done { written, acked, online })
}

/// A master's `ROLE`: `["master", offset, [[host, port, offset], …]]`, listing the replicas
/// whose replication link is up.
fn online_replicas(role: &Value) -> Option<u32> {
    let Value::Array(fields) = role else { return None };
    let is_master = matches!(fields.first(), Some(Value::BulkString(b)) if b == b"master")
        || matches!(fields.first(), Some(Value::SimpleString(s)) if s == "master");
    match (is_master, fields.get(2)) {
        (true, Some(Value::Array(replicas))) => u32::try_from(replicas.len()).ok(),
        _ => None,
    }
}

fn unexpected(detail: String) -> CacheError {
    CacheError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected answer",
        detail,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(replicas: usize) -> Value {
        let replica = Value::Array(vec![
            Value::BulkString(b"127.0.0.1".to_vec()),
            Value::BulkString(b"7003".to_vec()),
            Value::BulkString(b"100".to_vec()),
        ]);
        Value::Array(vec![
            Value::BulkString(b"master".to_vec()),
            Value::Int(100),
            Value::Array(vec![replica; replicas]),
        ])
    }

    #[test]
    fn answers_are_read_in_order() {
        let values = [Value::Int(3), Value::Int(2), Value::Int(1), role(1)];
        assert_eq!(
            read_answer(&values, 2, true).expect("read"),
            Answer::Done { written: 5, acked: 1, online: Some(1) }
        );
        let values = [Value::Int(3), role(2)];
        assert_eq!(
            read_answer(&values, 1, false).expect("read"),
            Answer::Done { written: 3, acked: 0, online: Some(2) }
        );
    }

    #[test]
    fn a_missing_script_asks_for_a_load_and_other_errors_fail() {
        let noscript =
            redis::parse_redis_value(b"-NOSCRIPT No matching script.\r\n").expect("an error reply");
        assert!(matches!(&noscript, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript)));
        let values = [Value::Int(1), noscript, Value::Int(0), role(1)];
        assert_eq!(read_answer(&values, 2, true).expect("read"), Answer::NoScript { written: 1 });
        assert!(read_answer(&[Value::Int(1)], 1, true).is_err(), "too few answers");
    }

    #[test]
    fn a_write_waits_for_every_replica_that_could_take_over_up_to_the_setting() {
        assert_eq!(replicas_to_wait_for(1, 1, Some(1)), 1);
        assert_eq!(replicas_to_wait_for(1, 2, Some(2)), 1, "no more than asked");
        assert_eq!(replicas_to_wait_for(2, 1, Some(1)), 1, "no more than there are");
        assert_eq!(replicas_to_wait_for(1, 0, Some(0)), 0, "a master without replicas (just promoted)");
        assert_eq!(replicas_to_wait_for(1, 1, Some(0)), 1, "a disconnected replica not yet marked failed");
        assert_eq!(replicas_to_wait_for(1, 0, Some(1)), 1, "a replica that joined after the layout was read");
        assert_eq!(replicas_to_wait_for(1, 1, None), 1, "ROLE refused: the layout decides");
        assert_eq!(replicas_to_wait_for(0, 2, Some(2)), 0, "waiting switched off");
    }

    #[test]
    fn role_counts_only_a_master_s_listed_replicas() {
        assert_eq!(online_replicas(&role(0)), Some(0));
        assert_eq!(online_replicas(&role(2)), Some(2));
        let replica = Value::Array(vec![
            Value::BulkString(b"slave".to_vec()),
            Value::BulkString(b"127.0.0.1".to_vec()),
        ]);
        assert_eq!(online_replicas(&replica), None);
    }
}
