//! The per-partition worker: wait for a turn (at most `max_concurrent_batches` of a member's
//! workers hold one), collect a batch, hand it to the handler until it lands (retrying
//! transient failures with capped exponential backoff), report the landed offset, repeat.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::sleep;

use super::context::Landed;
use super::settings::ConsumerSettings;
use super::{BatchHandler, PartitionId};

/// What a worker receives from the poll thread.
pub(super) struct WorkerChannels {
    pub messages: mpsc::UnboundedReceiver<OwnedMessage>,
    pub buffered: Arc<AtomicUsize>,
    pub oldest_pending_ms: Arc<AtomicI64>,
    pub stop: watch::Receiver<bool>,
    pub landed: Sender<Landed>,
    /// Turns to collect and handle a batch, shared by the member's workers.
    pub turns: Arc<Semaphore>,
}

/// Resolves once stop was requested.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn timestamp_ms(message: &OwnedMessage) -> i64 {
    message.timestamp().to_millis().unwrap_or(0)
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
        // Waiting for a turn leaves the messages in the buffer, where flow control counts
        // them: a worker's memory is its buffer, plus a batch only while it has a turn.
        let turn = tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return,
            turn = channels.turns.clone().acquire_owned() => match turn {
                Ok(turn) => turn,
                Err(_) => return,
            },
        };
        let Some(batch) = collect(first, &settings, &mut channels).await else { return };

        let started = Instant::now();
        if !land(&partition, &*handler, &settings, &batch, &mut channels.stop).await {
            // Stopped: nothing of this batch is stored; the next owner reads it again.
            return;
        }
        drop(turn);
        let next_offset = batch.last().map_or(0, |m| m.offset() + 1);
        let _ = channels.landed.send(Landed { partition: partition.clone(), next_offset });
        if channels.buffered.load(Ordering::Relaxed) == 0 {
            channels.oldest_pending_ms.store(0, Ordering::Relaxed);
        }
        handler.on_batch(&partition, batch.len(), started.elapsed());
    }
}

/// Fills a batch: up to the size bound, or whatever arrives within the wait bound. `None`
/// when stop was requested meanwhile (the batch is not started, so it is simply dropped).
/// Each message taken leaves the buffer count at once, so a partition paused at its buffer
/// bound resumes while the batch fills: a batch can be larger than the buffer.
async fn collect(
    first: OwnedMessage,
    settings: &ConsumerSettings,
    channels: &mut WorkerChannels,
) -> Option<Vec<OwnedMessage>> {
    channels.buffered.fetch_sub(1, Ordering::Relaxed);
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + settings.batch_max_wait;
    while batch.len() < settings.batch_max_messages {
        match channels.messages.try_recv() {
            Ok(message) => {
                channels.buffered.fetch_sub(1, Ordering::Relaxed);
                batch.push(message);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        tokio::select! {
            biased;
            _ = stop_requested(&mut channels.stop) => return None,
            message = channels.messages.recv() => match message {
                Some(message) => {
                    channels.buffered.fetch_sub(1, Ordering::Relaxed);
                    batch.push(message);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Some(batch)
}

/// Hands the batch to the handler until it lands; `false` if stopped first. A stop request
/// lets the attempt in flight run on for the shutdown deadline, then drops it.
async fn land<H: BatchHandler>(
    partition: &PartitionId,
    handler: &H,
    settings: &ConsumerSettings,
    batch: &[OwnedMessage],
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
