//! The process's memory allocator, jemalloc: one arena, and freed memory returned after two
//! seconds. Both are read by jemalloc when it starts, before `main`, from [`OPTIONS`].
//!
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
//! jemalloc reads its options from the `malloc_conf` symbol this module exports, then from
//! `_RJEM_MALLOC_CONF` in the environment, which therefore wins: an operator can set
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

/// The options jemalloc reads at its start. tikv-jemalloc-sys builds jemalloc with the `_rjem_`
/// prefix, so the symbol is `_rjem_malloc_conf` (as its own tests export it).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
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

/// Reads back what jemalloc started with ([`OPTIONS`], or what `_RJEM_MALLOC_CONF` changed):
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_starts_with_one_arena_and_a_two_second_decay() {
        let started_with = settings().expect("jemalloc's options are readable");
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            // An operator's options win; what they say is not this test's to know.
            return;
        }
        assert_eq!(started_with, Settings { arenas: 1, dirty_decay_ms: 2_000 });
        let arenas_in_use = tikv_jemalloc_ctl::arenas::narenas::read().expect("readable");
        assert!(arenas_in_use <= 2, "{arenas_in_use} arenas (one, and jemalloc's own for huge allocations)");
    }
}
