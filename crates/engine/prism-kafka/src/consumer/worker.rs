//! The per-partition worker: fill a batch, wait for a turn (at most `max_concurrent_batches`
//! of a member's workers hold one) and for room for its messages (the batches in flight hold
//! at most `max_messages_in_flight` messages and `max_bytes_in_flight` bytes), hand the batch
//! to the handler until it lands (retrying transient failures with capped exponential
//! backoff), report the landed offset, repeat.
//!
//! Every bound is kept in messages and in bytes alike: message counts size batches and buffers
//! for small events, and the byte bounds keep a worker's memory bounded when events are large,
//! whatever their count.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::sleep;

use super::context::Landed;
use super::settings::ConsumerSettings;
use super::{BatchHandler, PartitionId};
use crate::message::ConsumedMessage;

/// What a worker receives from the poll thread.
pub(super) struct WorkerChannels {
    pub messages: mpsc::UnboundedReceiver<ConsumedMessage>,
    pub buffered: Arc<Buffered>,
    pub oldest_pending_ms: Arc<AtomicI64>,
    pub stop: watch::Receiver<bool>,
    pub landed: Sender<Landed>,
    /// Turns to handle a batch, shared by the member's workers.
    pub turns: Arc<Semaphore>,
    /// One permit per message a batch in flight may hold, shared by the member's workers.
    pub messages_in_flight: Arc<Semaphore>,
    /// One permit per byte a batch in flight may hold, shared by the member's workers.
    pub bytes_in_flight: Arc<Semaphore>,
    /// A message received that did not fit in the batch being filled (its bytes would have
    /// taken it past its bound): the next batch's first. It still counts as buffered.
    pub held_over: Option<ConsumedMessage>,
}

/// The messages (and their bytes) a partition's worker was sent and has not yet taken into a
/// batch that got its turn: what flow control bounds.
#[derive(Debug, Default)]
pub(super) struct Buffered {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

impl Buffered {
    /// Counts a message sent to the worker.
    pub fn add(&self, message: &ConsumedMessage) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(message.size(), Ordering::Relaxed);
    }

    /// Stops counting what a batch took.
    fn remove(&self, messages: usize, bytes: usize) {
        self.messages.fetch_sub(messages, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether either bound is reached: the partition is paused (a backlog).
    pub fn is_full(&self, settings: &ConsumerSettings) -> bool {
        self.messages() >= settings.max_buffered_per_partition.max(1)
            || self.bytes() >= settings.max_buffered_bytes_per_partition.max(1)
    }

    /// Whether a paused partition may resume: at most half of each bound is left, so the worker
    /// has a batch or so to work on while the next fetch comes back.
    pub fn may_resume(&self, settings: &ConsumerSettings) -> bool {
        self.messages() <= settings.max_buffered_per_partition.max(1) / 2
            && self.bytes() <= settings.max_buffered_bytes_per_partition.max(1) / 2
    }
}

/// The permits of [`WorkerChannels::messages_in_flight`]: `max_messages_in_flight`, and at
/// least one full batch, which could otherwise never run.
pub(super) fn message_budget(settings: &ConsumerSettings) -> usize {
    settings.max_messages_in_flight.max(settings.batch_max_messages).max(1)
}

/// The permits of [`WorkerChannels::bytes_in_flight`]: `max_bytes_in_flight`, and at least one
/// full batch.
pub(super) fn byte_budget(settings: &ConsumerSettings) -> usize {
    settings.max_bytes_in_flight.max(settings.batch_max_bytes).clamp(1, Semaphore::MAX_PERMITS)
}

/// How large a batch may grow, in messages and in bytes.
#[derive(Debug, Clone, Copy)]
struct Size {
    messages: usize,
    bytes: usize,
}

impl Size {
    fn full_batch(settings: &ConsumerSettings) -> Self {
        Self { messages: settings.batch_max_messages.max(1), bytes: settings.batch_max_bytes.max(1) }
    }
}

/// A batch being filled: its messages and their bytes.
#[derive(Default)]
struct Batch {
    messages: Vec<ConsumedMessage>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, message: ConsumedMessage) {
        self.bytes += message.size();
        self.messages.push(message);
    }

    fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether `message` fits within `size`. A batch's first message always does, or a
    /// message larger than the bound could never be handled.
    fn fits(&self, message: &ConsumedMessage, size: Size) -> bool {
        self.messages.is_empty() || (self.len() < size.messages && self.bytes + message.size() <= size.bytes)
    }
}

/// A batch's room in the member's budgets, given back when it landed.
struct Room {
    messages: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

/// Resolves once stop was requested.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn timestamp_ms(message: &ConsumedMessage) -> i64 {
    message.timestamp_ms().unwrap_or(0)
}

/// Permits for `n` (a batch is far below `u32::MAX` messages or bytes; a larger `n` asks for
/// what a permit request can carry, which the budget's clamp keeps satisfiable).
fn permits(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) async fn run<H: BatchHandler>(
    partition: PartitionId,
    handler: Arc<H>,
    settings: ConsumerSettings,
    mut channels: WorkerChannels,
) {
    let byte_budget = byte_budget(&settings);
    loop {
        let first = match channels.held_over.take() {
            Some(message) => message,
            None => tokio::select! {
                biased;
                _ = stop_requested(&mut channels.stop) => return,
                message = channels.messages.recv() => match message {
                    Some(message) => message,
                    None => return,
                },
            },
        };
        channels.oldest_pending_ms.store(timestamp_ms(&first), Ordering::Relaxed);
        // The batch fills before its worker takes a turn, so no turn is held through the
        // wait for messages; what it took meanwhile still counts as buffered, so flow
        // control bounds a waiting worker's memory like its buffer.
        let deadline = tokio::time::Instant::now() + settings.batch_max_wait;
        let mut batch = Batch::default();
        batch.push(first);
        if !fill_up_to(&mut batch, Size::full_batch(&settings), deadline, &mut channels).await {
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
        let backlog = channels.buffered.is_full(&settings);
        // Room for every message (and byte) the batch may hold while it runs, so that full
        // batches (a backlog) bound the member's memory while small ones (moderate traffic,
        // where a batch's round trips, not its size, take the time) use every turn.
        let may_hold = if backlog {
            Size::full_batch(&settings)
        } else {
            let full = Size::full_batch(&settings);
            Size {
                messages: channels.buffered.messages().clamp(batch.len(), full.messages),
                bytes: channels.buffered.bytes().min(full.bytes).max(batch.bytes),
            }
        };
        // `may_hold` is at most one full batch, which the budgets always hold, or a first
        // message larger than that; one larger than the byte budget takes all of it.
        let room_bytes = may_hold.bytes.max(batch.bytes).min(byte_budget);
        let room = tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return,
            room = async {
                let messages = channels.messages_in_flight.clone().acquire_many_owned(permits(may_hold.messages)).await?;
                let bytes = channels.bytes_in_flight.clone().acquire_many_owned(permits(room_bytes)).await?;
                Ok::<_, tokio::sync::AcquireError>(Room { messages, bytes })
            } => match room {
                Ok(room) => room,
                Err(_) => return,
            },
        };
        let turned_at = Instant::now();
        channels.buffered.remove(batch.len(), batch.bytes);
        let top_up_until =
            tokio::time::Instant::now() + if backlog { settings.batch_max_wait } else { Duration::ZERO };
        let (taken, taken_bytes) = (batch.len(), batch.bytes);
        if !fill_up_to(&mut batch, may_hold, top_up_until, &mut channels).await {
            return;
        }
        channels.buffered.remove(batch.len() - taken, batch.bytes - taken_bytes);
        // What the batch did not grow to is room for the others at once.
        let Room { messages: mut room_messages, bytes: mut room_bytes_held } = room;
        drop(room_messages.split(may_hold.messages.saturating_sub(batch.len())));
        drop(room_bytes_held.split((permits(room_bytes) as usize).saturating_sub(batch.bytes)));

        let started = Instant::now();
        let (turn_wait, topped_up) =
            (turned_at.duration_since(waiting_since), started.duration_since(turned_at));
        if !land(&partition, &*handler, &settings, &batch.messages, &mut channels.stop).await {
            // Stopped: nothing of this batch is stored; the next owner reads it again.
            return;
        }
        drop((turn, room_messages, room_bytes_held));
        let next_offset = batch.messages.last().map_or(0, |m| m.offset() + 1);
        let _ = channels.landed.send(Landed { partition: partition.clone(), next_offset });
        if channels.buffered.messages() == 0 {
            channels.oldest_pending_ms.store(0, Ordering::Relaxed);
        }
        // Where a batch's time went, for tuning turns and buffers (`…consumer::worker=debug`).
        tracing::debug!(%partition, messages = batch.len(), bytes = batch.bytes, before_turn = taken, turn_wait_ms = turn_wait.as_secs_f64() * 1e3, top_up_ms = topped_up.as_secs_f64() * 1e3, handler_ms = started.elapsed().as_secs_f64() * 1e3, "batch landed");
        handler.on_batch(&partition, batch.len(), started.elapsed());
    }
}

/// Adds to `batch` what arrives until it holds `size` (messages or bytes, whichever it reaches
/// first) or `deadline` passed (what has already arrived is taken even after the deadline). A
/// message whose bytes would take the batch past its bound is held over for the next batch.
/// Leaves the buffer count to the caller. `false` when stop was requested meanwhile (the batch
/// was not started, so it is simply dropped: the next owner reads it again).
async fn fill_up_to(
    batch: &mut Batch,
    size: Size,
    deadline: tokio::time::Instant,
    channels: &mut WorkerChannels,
) -> bool {
    while batch.len() < size.messages && batch.bytes < size.bytes && channels.held_over.is_none() {
        let message = match channels.messages.try_recv() {
            Ok(message) => message,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = stop_requested(&mut channels.stop) => return false,
                    message = channels.messages.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        };
        if batch.fits(&message, size) {
            batch.push(message);
        } else {
            channels.held_over = Some(message);
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
