//! The process's memory allocator, jemalloc: one arena, and freed memory returned after two
//! seconds. Both are read by jemalloc when it starts, before `main`, from [`OPTIONS`].
//!
//! - **One allocator for Rust and C.** jemalloc is built unprefixed, as the process's `malloc`
//!   and `free`, so librdkafka's fetch buffers and queues and OpenSSL's allocations go to it too
//!   rather than to glibc's malloc. glibc gives the threads that allocate up to eight arenas per
//!   core and keeps what is freed in them: a projector serving through six blue/green rebuilds,
//!   each with a consumer of its own, went from 20 to 55 MiB above jemalloc's resident pages
//!   with glibc serving librdkafka, and stays 12–15 MiB above (code and stacks) with jemalloc
//!   serving it (BENCHMARKS.md, "Memory outside the allocator").
//! - **One arena** (`narenas:1`; jemalloc's default is four per core). A projector's poll
//!   thread allocates every message its workers later free on the runtime's threads, and each
//!   arena keeps the pages freed into it for its own threads: with eight arenas on two cores the
//!   same bytes were held several times over. Under a sustained backlog of 800 000 events, with
//!   buffers of 4 000 messages a partition, one arena measured a peak RSS of 128–131 MiB against
//!   149–155 with eight, one per core, or two (BENCHMARKS.md, "One jemalloc arena"), at the same
//!   events per second: per-thread caches serve the small allocations without the arena's lock.
//! - **Freed pages returned after 2 s** (`dirty_decay_ms:2000`; jemalloc's default is 10 s). A
//!   projector under a backlog frees a full batch's decoded events, rows and documents every
//!   few hundred milliseconds, so with the default the pages of several batches' peaks stayed
//!   resident (140–152 MiB against 135–144 in runs of 800 000 events at the time, for a few
//!   percent of CPU at most). With 0 it fell further, but the projector's CPU per event rose
//!   by a third: pages returned at once are faulted in again by the next batch.
//!
//! [`record_usage`] sets the `prism_memory_*` gauges from jemalloc's counts whenever `/metrics`
//! is scraped: the bytes the process's live allocations hold against the pages jemalloc keeps
//! resident, which tells memory the process holds from memory the allocator has not yet
//! given back.
//!
//! jemalloc reads its options from the `malloc_conf` symbol this module exports, then from
//! `MALLOC_CONF` in the environment, which therefore wins: an operator can set
//! `narenas` or the decay for a host (for example more arenas for a worker given many cores).
//! Exporting the symbol and reading jemalloc's settings back have no safe interface, which is
//! why this module is, with the Kafka admin call, one of the two places that use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::c_char;

/// jemalloc's options, spelled once for both constants below.
macro_rules! options {
    () => {
        "narenas:1,dirty_decay_ms:2000"
    };
}

/// jemalloc's options, as jemalloc spells them.
pub const OPTIONS: &str = options!();

/// [`OPTIONS`], NUL-terminated for jemalloc.
const OPTIONS_C: &[u8] = concat!(options!(), "\0").as_bytes();

/// The options jemalloc reads at its start. jemalloc is built without a prefix (it is the
/// process's `malloc`), so the symbol is `malloc_conf`, as jemalloc's manual names it.
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: Option<&'static c_char> =
    // SAFETY: a pointer to the first byte of a static, NUL-terminated string; jemalloc only
    // reads it.
    Some(unsafe { &*OPTIONS_C.as_ptr().cast::<c_char>() });

/// What jemalloc runs with: its arenas and how soon it returns freed pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Arenas (`opt.narenas`).
    pub arenas: u32,
    /// Milliseconds freed pages stay resident (`opt.dirty_decay_ms`).
    pub dirty_decay_ms: isize,
}

/// Reads back what jemalloc started with ([`OPTIONS`], or what `MALLOC_CONF` changed):
/// logged when a service starts. Reading [`malloc_conf`] here keeps the symbol in every binary
/// that calls it.
pub fn settings() -> Result<Settings, tikv_jemalloc_ctl::Error> {
    std::hint::black_box(&malloc_conf);
    // SAFETY: jemalloc's names, NUL-terminated, read as the types its manual gives them
    // (`unsigned` and `ssize_t`).
    unsafe {
        Ok(Settings {
            arenas: tikv_jemalloc_ctl::raw::read(b"opt.narenas\0")?,
            dirty_decay_ms: tikv_jemalloc_ctl::raw::read(b"opt.dirty_decay_ms\0")?,
        })
    }
}

/// jemalloc's counts of the process's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Held by live allocations (`stats.allocated`).
    pub allocated: usize,
    /// In the pages of jemalloc's active extents: the live allocations and the free space
    /// between them (`stats.active`).
    pub active: usize,
    /// Of physical memory jemalloc has mapped and not returned: active pages, freed pages not
    /// yet returned, and its own metadata (`stats.resident`).
    pub resident: usize,
}

/// Reads jemalloc's counts as of now (they are refreshed by advancing its epoch).
pub fn usage() -> Result<Usage, tikv_jemalloc_ctl::Error> {
    tikv_jemalloc_ctl::epoch::advance()?;
    Ok(Usage {
        allocated: tikv_jemalloc_ctl::stats::allocated::read()?,
        active: tikv_jemalloc_ctl::stats::active::read()?,
        resident: tikv_jemalloc_ctl::stats::resident::read()?,
    })
}

/// Sets the `prism_memory_*` gauges from [`usage`]; called before `/metrics` is rendered.
pub fn record_usage() {
    use crate::metric_names::{MEMORY_ACTIVE, MEMORY_ALLOCATED, MEMORY_RESIDENT};
    match usage() {
        Ok(usage) => {
            metrics::gauge!(MEMORY_ALLOCATED).set(usage.allocated as f64);
            metrics::gauge!(MEMORY_ACTIVE).set(usage.active as f64);
            metrics::gauge!(MEMORY_RESIDENT).set(usage.resident as f64);
        }
        Err(err) => tracing::debug!(error = %err, "jemalloc's counts could not be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the counting tests allocate: it stands out of what other tests of this binary
    /// allocate alongside, by more than [`NOISE`].
    const HELD: usize = 64 << 20;
    const NOISE: usize = 8 << 20;

    #[test]
    fn jemalloc_starts_with_one_arena_and_a_two_second_decay() {
        let started_with = settings().expect("jemalloc's options are readable");
        if std::env::var_os("MALLOC_CONF").is_some() {
            // An operator's options win; what they say is not this test's to know.
            return;
        }
        assert_eq!(started_with, Settings { arenas: 1, dirty_decay_ms: 2_000 });
        let arenas_in_use = tikv_jemalloc_ctl::arenas::narenas::read().expect("readable");
        assert!(arenas_in_use <= 2, "{arenas_in_use} arenas (one, and jemalloc's own for huge allocations)");
    }

    #[test]
    fn c_code_allocates_from_jemalloc() {
        extern "C" {
            fn malloc(size: usize) -> *mut std::ffi::c_void;
            fn free(pointer: *mut std::ffi::c_void);
        }
        let before = usage().expect("jemalloc's counts are readable");
        // SAFETY: C's malloc and free, as librdkafka calls them; the block is only freed.
        let block = unsafe { malloc(HELD) };
        assert!(!block.is_null());
        let holding = usage().expect("readable");
        // SAFETY: the block malloc returned above, freed once.
        unsafe { free(block) };
        assert!(
            holding.allocated >= before.allocated + HELD - NOISE,
            "C's malloc of {HELD} bytes did not show in jemalloc's counts ({} then {}): glibc's malloc served it",
            before.allocated,
            holding.allocated
        );
    }

    #[test]
    fn usage_counts_what_is_allocated_and_freed() {
        let before = usage().expect("jemalloc's counts are readable");
        let held = std::hint::black_box(vec![1_u8; HELD]);
        let holding = usage().expect("readable");
        assert!(
            holding.allocated >= before.allocated + HELD - NOISE,
            "allocated {} then {} while holding {HELD} bytes",
            before.allocated,
            holding.allocated
        );
        assert!(holding.allocated <= holding.active && holding.active <= holding.resident, "{holding:?}");
        drop(held);
        let after = usage().expect("readable");
        assert!(
            after.allocated + HELD - NOISE <= holding.allocated,
            "allocated {} after freeing, {} while holding",
            after.allocated,
            holding.allocated
        );
    }
}
