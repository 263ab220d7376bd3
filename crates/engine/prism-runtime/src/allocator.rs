//! The process's memory allocator, jemalloc, and how soon it gives freed memory back.
//!
//! jemalloc keeps the pages a thread freed ("dirty") for reuse and returns them to the system
//! gradually over `dirty_decay_ms`, 10 s by default. A projector under a backlog frees a full
//! batch's decoded events, rows and documents every few hundred milliseconds, so with the
//! default the pages of several batches' peaks stayed resident: in runs of 800 000 events its
//! peak RSS was 140–152 MiB, against 135–144 MiB with 2 s, for a few percent of CPU at most
//! (BENCHMARKS.md, "A worker's memory under sustained load"). With 0 it fell to 120 MiB, but the
//! projector's CPU per event rose by a third: pages returned at once are faulted in again by
//! the next batch.
//!
//! jemalloc has no safe interface for this setting (it is one of its `mallctl` names), so this
//! module is the one place outside the Kafka admin call that uses `unsafe`, to write two of
//! them.
#![allow(unsafe_code)]

/// How long freed pages stay resident for reuse before jemalloc returns them, in milliseconds.
pub const DIRTY_DECAY_MS: isize = 2_000;

/// Sets [`DIRTY_DECAY_MS`] for the arenas that exist and the ones created later (jemalloc
/// creates them as threads first allocate). Called before the service's runtime starts. A
/// value an operator gave in `_RJEM_MALLOC_CONF` wins: it is left as it is.
pub fn return_freed_memory_sooner() -> Result<(), tikv_jemalloc_ctl::Error> {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return Ok(());
    }
    // SAFETY: the names are jemalloc's, NUL-terminated, and take a `ssize_t` (`isize`), as
    // its manual gives them; writing them changes only when free pages are purged.
    unsafe { tikv_jemalloc_ctl::raw::write(b"arenas.dirty_decay_ms\0", DIRTY_DECAY_MS)? };
    for arena in 0..tikv_jemalloc_ctl::arenas::narenas::read()? {
        let name = format!("arena.{arena}.dirty_decay_ms\0");
        // An arena not created yet refuses the write; it will start with the default above.
        // SAFETY: as above.
        let _ = unsafe { tikv_jemalloc_ctl::raw::write(name.as_bytes(), DIRTY_DECAY_MS) };
    }
    Ok(())
}

/// The decay new arenas get (what [`return_freed_memory_sooner`] set, or jemalloc's default).
pub fn dirty_decay_ms() -> Result<isize, tikv_jemalloc_ctl::Error> {
    // SAFETY: a jemalloc name, NUL-terminated, read as the `ssize_t` it is.
    unsafe { tikv_jemalloc_ctl::raw::read(b"arenas.dirty_decay_ms\0") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_pages_are_returned_after_two_seconds_in_every_arena() {
        assert_eq!(dirty_decay_ms().expect("readable"), 10_000, "jemalloc's default before the call");
        return_freed_memory_sooner().expect("jemalloc takes the setting");
        assert_eq!(dirty_decay_ms().expect("readable"), DIRTY_DECAY_MS);
        // Arena 0 existed before the call, and was set too.
        // SAFETY: as in `dirty_decay_ms`.
        let arena_zero: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"arena.0.dirty_decay_ms\0") }.expect("readable");
        assert_eq!(arena_zero, DIRTY_DECAY_MS);
    }
}
