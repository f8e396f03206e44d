//! How the scheduler's memory goes back to the system after a large run has left it.
//!
//! glibc's allocator keeps freed memory for reuse: after a 100,000-task fan-out the leader
//! held 40-100 MiB it no longer used (3.5 MiB in use, 270 MiB of arenas after a few more),
//! differently after every run. Two settings bound that: allocations of 1 MiB and more (the
//! big vectors of a large run) are always their own mappings, returned when freed (glibc
//! would otherwise raise that threshold after each such free, and later ones stay in the
//! arenas), and a heap whose free top exceeds 4 MiB is trimmed at once. After a large run is
//! archived, [`trim`] gives back the free memory inside the arenas too.

/// Sets the allocator's policy. Call it at the start of `main`, before any thread starts;
/// a no-op off glibc.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// Returns the allocator's free memory to the operating system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
