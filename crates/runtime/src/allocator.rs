//! Giving freed heap memory back to the system. glibc keeps what a thread frees in that
//! thread's arena for reuse, so a process that once held large buffers (model bytes while
//! loading, image tensors while serving) stays that large; `malloc_trim` returns the free
//! pages. This module only asks the allocator; it never frees or tracks anything itself,
//! and it is a no-op where the C library is not glibc.

/// Returns free heap pages of every arena to the system. It walks the heaps (a few
/// milliseconds for a few hundred MiB), so call it where no request waits on it.
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
