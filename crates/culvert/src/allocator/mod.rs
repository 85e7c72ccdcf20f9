//! glibc malloc settings for a process that moves bulk data through 256 KiB buffers.
//!
//! With glibc's defaults, a freed buffer of that size lands at the top of a thread arena
//! whose trim threshold (about twice the dynamic mmap threshold) it exceeds, so the arena
//! hands the pages back with `MADV_DONTNEED`, and the next buffer faults them in again and
//! the kernel zeroes them: on a profiled agent, a quarter of its CPU went to page faults,
//! page clearing and unmapping. Fixed thresholds keep a few MiB of freed buffers for reuse.
//!
//! Those buffers (64 KiB to 1 MiB) no longer reach glibc at all: [`BigBlocks`] keeps them in one
//! cache for the whole process, since an arena per worker thread multiplied what was kept.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod big_blocks;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub use big_blocks::BigBlocks;

/// Allocations at least this large get their own mapping: above every data-path buffer (and
/// above what [`BigBlocks`] serves, so glibc sees only the rare larger ones).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;
/// Free memory an arena keeps before returning it to the kernel. Sized for the bulk buffers it
/// held before [`BigBlocks`]; the allocations under 64 KiB it holds now stay far below it, and
/// lowering it was not measured.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 8 * 1024 * 1024;

/// Sets the thresholds; call at the start of `main`, before the runtime starts any thread. Other C
/// libraries have other allocators, and nothing is done for them.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called before the
        // process starts any thread, and both values are within glibc's accepted ranges.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        };
        if !ok {
            tracing::debug!("malloc thresholds not changed; the allocator's defaults stay");
        }
    }
}
