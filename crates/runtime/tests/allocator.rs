//! `allocator::return_free_memory` on glibc: what a worker thread freed at the top of its
//! arena goes back to the system, which `malloc_trim` alone does not do. A test binary of
//! its own, so that no other test allocates while the resident set is read.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use edgerun_runtime::allocator::return_free_memory;

/// Anonymous resident memory of this process, in MiB.
fn anonymous_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

#[test]
fn a_worker_thread_gives_back_the_top_of_its_arena() {
    std::thread::spawn(|| {
        // The first call pins glibc's thresholds as serving has them (trim at 512 MiB).
        return_free_memory();
        let before = anonymous_mib();
        // 48 blocks of 1 MiB, written, from this thread's arena, then freed: they merge
        // into the free top of the arena, 48 MiB below the trim threshold.
        let blocks: Vec<Vec<u8>> = (0..48).map(|i| vec![i as u8 + 1; 1 << 20]).collect();
        let held = anonymous_mib();
        assert!(held - before > 46.0, "{before:.1} -> {held:.1} MiB");
        drop(blocks);
        // SAFETY: malloc_trim only walks glibc's own heaps.
        unsafe { libc::malloc_trim(0) };
        let trimmed = anonymous_mib();
        assert!(
            trimmed - before > 40.0,
            "malloc_trim alone kept only {:.1} MiB of the top",
            trimmed - before
        );
        return_free_memory();
        let returned = anonymous_mib();
        assert!(
            returned - before < 4.0,
            "{before:.1} MiB before, {returned:.1} after return_free_memory"
        );
    })
    .join()
    .unwrap();
}
