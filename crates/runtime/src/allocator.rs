//! Giving freed heap memory back to the system. glibc keeps what a thread frees in that
//! thread's arena for reuse, so a process that once held large buffers (model bytes while
//! loading, image tensors while serving) stays that large unless asked to return it. This
//! module only asks the allocator; it never frees or tracks anything itself, and it is a
//! no-op where the C library is not glibc.
//!
//! `malloc_trim` alone is not enough. It returns the free pages inside every arena, but
//! not the free space at the top of an arena other than the main one: that is given back
//! only when a free into that arena leaves more than the trim threshold on top, and glibc
//! raises the threshold to 64 MiB once large buffers come and go. A worker's arena then
//! kept the top it reached in its busiest request (measured: OCR alone after 100 scenes
//! held 94 MiB of anonymous memory with 58 MiB in use; trimming the tops too left 61).
//! So [`return_free_memory`] also frees a block into the calling thread's arena while the
//! threshold is briefly zero, which trims that arena's top. Call it from the thread whose
//! arena held the buffers: the worker that served them, the thread that loaded a service.
//!
//! [`configure`] also caps the number of arenas at one per core. glibc gives a thread that
//! finds every arena busy a new one, up to eight per core, and each keeps its own free
//! blocks and its own fragmentation: serving spawns loader threads, workers, a measuring
//! thread and the broker's, and with all four services a 2-core VM held 12 heaps of
//! non-main arenas 20 s after start-up, 2 with the cap (which counts the main arena). The
//! cap lowered the peak while the points are measured (400 and 467 MiB against 488 and 535,
//! all four and OCR alone) and left throughput and the resident set after 1000 requests as
//! they were (docs/benchmarks.md, "One malloc arena per core").

/// Pins the allocator's thresholds the way serving wants them (see the glibc module): call
/// it first thing, so that every command, benchmarks included, allocates as `serve` does.
/// [`return_free_memory`] pins them too, if nothing did before. It also caps the arenas
/// at one per core, unless `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` already chose a number.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        glibc::pin_thresholds();
        let user_chose = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc.arena_max"));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(arenas) = arena_limit(cores, user_chose) {
            glibc::cap_arenas(arenas);
        }
    }
}

/// How many malloc arenas to allow on `cores` cores, or `None` to leave glibc's choice
/// (eight per core on 64-bit targets) where the user made one. One per core: as many
/// threads can allocate at once without waiting as can run at once, and never fewer than
/// two, so that a worker need not wait on the thread that loads or measures.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn arena_limit(cores: usize, user_chose: bool) -> Option<usize> {
    (!user_chose).then_some(cores.max(2))
}

/// Returns free heap pages to the system: those inside every arena, and the free top of
/// the calling thread's arena. It walks the heaps (a few milliseconds for a few hundred
/// MiB), so call it where no request waits on it.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    glibc::trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::sync::Once;

    /// glibc's own ceiling for its dynamic mmap threshold on 64-bit targets (32 MiB; 512 KiB
    /// on 32-bit ones). Setting a threshold by hand switches glibc's adjustment off for
    /// good, so it is pinned at the value a busy server reaches anyway: buffers below 32 MiB
    /// come from the arenas and are reused across requests, without a page fault per fresh
    /// buffer.
    const MMAP_THRESHOLD: i32 = if cfg!(target_pointer_width = "64") {
        32 << 20
    } else {
        512 << 10
    };
    /// Free space on an arena's top that a free gives back at once. glibc pairs twice the
    /// mmap threshold (64 MiB) with it, but a model whose activations add up to more than
    /// that frees them all at the end of each run and faults them in again on the next:
    /// the small detector at 960x544 ran 326-339 ms on tract with 64 MiB and 275-289 ms
    /// with this (its pads and concatenations 54 -> 14 ms; AMD EPYC, one thread, `bench
    /// engines`). It costs nothing idle: serving trims every top once idle anyway
    /// ([`super::return_free_memory`]).
    const TRIM_THRESHOLD: i32 = 16 * MMAP_THRESHOLD;

    /// A block large enough that freeing it makes glibc trim the arena's top (at least
    /// its 64 KiB consolidation threshold) and small enough to come from the arena rather
    /// than from mmap (below the 128 KiB floor of the mmap threshold).
    const TOP_TRIM_PROBE: usize = 96 << 10;

    static PIN_THRESHOLDS: Once = Once::new();

    pub(super) fn pin_thresholds() {
        PIN_THRESHOLDS.call_once(|| {
            // SAFETY: mallopt only sets glibc's tunables; these are valid values.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        });
    }

    /// Sets the most arenas glibc creates; threads beyond it share the existing ones. Call
    /// it before the threads that allocate start: arenas already made stay.
    pub(super) fn cap_arenas(arenas: usize) {
        let arenas = i32::try_from(arenas).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets glibc's tunables; any positive count is valid.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }

    pub(super) fn trim() {
        pin_thresholds();
        // SAFETY: malloc_trim only walks glibc's own heaps; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
        // With the threshold at zero, freeing the probe trims the top of this thread's
        // arena down to glibc's top pad (128 KiB). Another thread freeing meanwhile may
        // trim its own arena too, which is harmless.
        // SAFETY: mallopt only sets a tunable; the probe is allocated and freed here, by
        // glibc's own malloc and free, and never touched.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
            // black_box: a malloc whose block is only freed may be optimised away.
            let probe = std::hint::black_box(libc::malloc(TOP_TRIM_PROBE));
            libc::free(probe);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::arena_limit;

    #[test]
    fn one_arena_per_core_and_at_least_two_unless_the_user_chose() {
        assert_eq!(arena_limit(1, false), Some(2));
        assert_eq!(arena_limit(2, false), Some(2));
        assert_eq!(arena_limit(6, false), Some(6));
        assert_eq!(arena_limit(6, true), None);
    }
}
