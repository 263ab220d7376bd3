//! The per-partition worker: fill a batch, wait for a turn (at most `max_concurrent_batches`
//! of a member's workers hold one) and for room for its messages (the batches in flight hold
//! at most `max_messages_in_flight`), hand the batch to the handler until it lands (retrying
//! transient failures with capped exponential backoff), report the landed offset, repeat.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::sleep;

use super::context::Landed;
use super::settings::ConsumerSettings;
use super::{BatchHandler, PartitionId};
use crate::message::ConsumedMessage;

/// What a worker receives from the poll thread.
pub(super) struct WorkerChannels {
    pub messages: mpsc::UnboundedReceiver<ConsumedMessage>,
    pub buffered: Arc<AtomicUsize>,
    pub oldest_pending_ms: Arc<AtomicI64>,
    pub stop: watch::Receiver<bool>,
    pub landed: Sender<Landed>,
    /// Turns to handle a batch, shared by the member's workers.
    pub turns: Arc<Semaphore>,
    /// One permit per message a batch in flight may hold, shared by the member's workers.
    pub messages_in_flight: Arc<Semaphore>,
}

/// The permits of [`WorkerChannels::messages_in_flight`]: `max_messages_in_flight`, and at
/// least one full batch, which could otherwise never run.
pub(super) fn message_budget(settings: &ConsumerSettings) -> usize {
    settings.max_messages_in_flight.max(settings.batch_max_messages).max(1)
}

/// Resolves once stop was requested.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn timestamp_ms(message: &ConsumedMessage) -> i64 {
    message.timestamp_ms().unwrap_or(0)
}

pub(super) async fn run<H: BatchHandler>(
    partition: PartitionId,
    handler: Arc<H>,
    settings: ConsumerSettings,
    mut channels: WorkerChannels,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return,
            message = channels.messages.recv() => match message {
                Some(message) => message,
                None => return,
            },
        };
        channels.oldest_pending_ms.store(timestamp_ms(&first), Ordering::Relaxed);
        // The batch fills before its worker takes a turn, so no turn is held through the
        // wait for messages; what it took meanwhile still counts as buffered, so flow
        // control bounds a waiting worker's memory like its buffer.
        let deadline = tokio::time::Instant::now() + settings.batch_max_wait;
        let mut batch = vec![first];
        if !fill_up_to(&mut batch, settings.batch_max_messages, deadline, &mut channels).await {
            return;
        }
        let waiting_since = Instant::now();
        let turn = tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return,
            turn = channels.turns.clone().acquire_owned() => match turn {
                Ok(turn) => turn,
                Err(_) => return,
            },
        };
        // A partition that reached its buffer bound has a backlog: its batch leaves the
        // count, the partition resumes, and the batch keeps filling up to its size bound from
        // the fetch that brings (a batch may outgrow the buffer). Otherwise it takes only what
        // arrived while it waited for the turn. The resumed partition's next fetch seldom
        // comes within `batch_max_wait` (librdkafka drops a paused partition's prefetched
        // messages), so under a backlog most batches are the buffer's size: docs/sizing.md.
        let backlog = channels.buffered.load(Ordering::Relaxed) >= settings.max_buffered_per_partition;
        // Room for every message the batch may hold while it runs, so that full batches (a
        // backlog) bound the member's memory while small ones (moderate traffic, where a
        // batch's round trips, not its size, take the time) use every turn.
        let may_hold = if backlog {
            settings.batch_max_messages
        } else {
            channels.buffered.load(Ordering::Relaxed).clamp(batch.len(), settings.batch_max_messages)
        };
        // `may_hold` is at most one full batch, which the budget always holds.
        let mut room = tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return,
            room = channels.messages_in_flight.clone().acquire_many_owned(u32::try_from(may_hold).unwrap_or(u32::MAX)) =>
            match room {
                Ok(room) => room,
                Err(_) => return,
            },
        };
        let turned_at = Instant::now();
        channels.buffered.fetch_sub(batch.len(), Ordering::Relaxed);
        let top_up_until =
            tokio::time::Instant::now() + if backlog { settings.batch_max_wait } else { Duration::ZERO };
        let taken = batch.len();
        if !fill_up_to(&mut batch, may_hold, top_up_until, &mut channels).await {
            return;
        }
        channels.buffered.fetch_sub(batch.len() - taken, Ordering::Relaxed);
        // What the batch did not grow to is room for the others at once.
        drop(room.split(may_hold - batch.len()));

        let started = Instant::now();
        let (turn_wait, topped_up) =
            (turned_at.duration_since(waiting_since), started.duration_since(turned_at));
        if !land(&partition, &*handler, &settings, &batch, &mut channels.stop).await {
            // Stopped: nothing of this batch is stored; the next owner reads it again.
            return;
        }
        drop((turn, room));
        let next_offset = batch.last().map_or(0, |m| m.offset() + 1);
        let _ = channels.landed.send(Landed { partition: partition.clone(), next_offset });
        if channels.buffered.load(Ordering::Relaxed) == 0 {
            channels.oldest_pending_ms.store(0, Ordering::Relaxed);
        }
        // Where a batch's time went, for tuning turns and buffers (`…consumer::worker=debug`).
        tracing::debug!(%partition, messages = batch.len(), before_turn = taken, turn_wait_ms = turn_wait.as_secs_f64() * 1e3, top_up_ms = topped_up.as_secs_f64() * 1e3, handler_ms = started.elapsed().as_secs_f64() * 1e3, "batch landed");
        handler.on_batch(&partition, batch.len(), started.elapsed());
    }
}

/// Adds to `batch` what arrives until it holds `size` messages or `deadline` passed (what has
/// already arrived is taken even after the deadline). Leaves the buffer count to the caller.
/// `false` when stop was requested meanwhile (the batch was not started, so it is simply
/// dropped: the next owner reads it again).
async fn fill_up_to(
    batch: &mut Vec<ConsumedMessage>,
    size: usize,
    deadline: tokio::time::Instant,
    channels: &mut WorkerChannels,
) -> bool {
    while batch.len() < size {
        match channels.messages.try_recv() {
            Ok(message) => {
                batch.push(message);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return false,
            message = channels.messages.recv() => match message {
                Some(message) => batch.push(message),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    true
}

/// Hands the batch to the handler until it lands; `false` if stopped first. A stop request
/// lets the attempt in flight run on for the shutdown deadline, then drops it.
async fn land<H: BatchHandler>(
    partition: &PartitionId,
    handler: &H,
    settings: &ConsumerSettings,
    batch: &[ConsumedMessage],
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = settings.retry_initial_backoff;
    loop {
        let mut stop_for_deadline = stop.clone();
        let deadline = settings.shutdown_deadline;
        let outcome = tokio::select! {
            result = handler.handle(partition, batch) => Some(result),
            _ = async move {
                stop_requested(&mut stop_for_deadline).await;
                sleep(deadline).await;
            } => None,
        };
        match outcome {
            None => {
                tracing::warn!(%partition, "batch aborted: still running at the shutdown deadline");
                return false;
            }
            Some(Ok(())) => return true,
            Some(Err(error)) if error.is_switch() => {
                handler.on_transient(partition, &error, Duration::ZERO);
                tracing::info!(%partition, detail = %error.detail, "applying the batch again");
            }
            Some(Err(error)) => {
                handler.on_transient(partition, &error, backoff);
                tracing::warn!(%partition, %error, backoff_ms = backoff.as_millis() as u64, "batch failed; retrying");
                if *stop.borrow() {
                    return false;
                }
                tokio::select! {
                    _ = stop_requested(stop) => return false,
                    _ = sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.retry_max_backoff);
            }
        }
    }
}
