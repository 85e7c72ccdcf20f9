//! A process-wide cache of large blocks, shared by every thread.
//!
//! glibc gives each thread that allocates its own arena, and each arena keeps up to the trim
//! threshold of freed memory for reuse. With one runtime worker that is one arena; with N workers
//! the relay buffers of a bulk transfer pass through N arenas, and each keeps its own few MiB:
//! eight streams through a process with eight workers peaked at 75 MB, against 23 MB with one.
//! Here blocks from 64 KiB to 1 MiB (the data path's read and frame buffers) come from their own
//! mappings and, once freed, wait in one cache of at most [`CACHE_BYTES`] for the next request of
//! their size class, whichever thread makes it. Memory kept for reuse is then one budget however
//! many threads there are, and a reused block is already faulted in, as with the tuned arena.
//! Everything else goes to the C library's allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Granularity of the size classes, and the smallest request served here.
const CLASS: usize = 64 * 1024;
/// Number of size classes: 64 KiB, 128 KiB, … 1 MiB. Larger requests are rare and go to the C
/// library, which maps them on their own (its mmap threshold is 1 MiB, set in [`super::tune`]).
const CLASSES: usize = 16;
/// The largest request served here.
const LARGEST: usize = CLASS * CLASSES;
/// Freed blocks kept for reuse, in bytes, across all classes and threads: the trim threshold one
/// arena kept before, now for the whole process.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Most blocks one class can hold: [`CACHE_BYTES`] of the smallest class.
const SLOTS: usize = CACHE_BYTES / CLASS;
/// Blocks are whole pages; a request aligned more strictly than a page goes to the C library.
const PAGE: usize = 4096;

/// The global allocator of the `culvert` binary: large blocks from a cache shared by all threads,
/// the rest from the C library.
pub struct BigBlocks {
    cache: Mutex<Cache>,
}

/// Freed blocks by size class, most recently freed last.
struct Cache {
    slots: [[*mut u8; SLOTS]; CLASSES],
    len: [usize; CLASSES],
    bytes: usize,
}

// SAFETY: the pointers are blocks nobody else holds; they only move between threads under the
// mutex.
unsafe impl Send for Cache {}

/// The size class of a layout served here (`None`: the C library's), by bytes rounded up to
/// [`CLASS`].
fn class_of(layout: Layout) -> Option<usize> {
    (layout.size() >= CLASS && layout.size() <= LARGEST && layout.align() <= PAGE)
        .then(|| layout.size().div_ceil(CLASS) - 1)
}

/// Bytes of a block of class `class`.
fn class_bytes(class: usize) -> usize {
    (class + 1) * CLASS
}

impl Cache {
    fn take(&mut self, class: usize) -> Option<*mut u8> {
        let n = self.len[class].checked_sub(1)?;
        self.len[class] = n;
        self.bytes -= class_bytes(class);
        Some(self.slots[class][n])
    }

    /// Keeps `block` for reuse, or returns false when the budget (or the class) is full.
    fn keep(&mut self, class: usize, block: *mut u8) -> bool {
        let n = self.len[class];
        if n == SLOTS || self.bytes + class_bytes(class) > CACHE_BYTES {
            return false;
        }
        self.slots[class][n] = block;
        self.len[class] = n + 1;
        self.bytes += class_bytes(class);
        true
    }
}

/// A fresh block of class `class`, or null when the kernel refuses.
fn map(class: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            class_bytes(class),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Returns a block of class `class` to the kernel.
///
/// # Safety
/// `block` came from [`map`] with the same class, and nothing uses it any more.
unsafe fn unmap(block: *mut u8, class: usize) {
    // SAFETY: the caller's contract; munmap of a whole mapping we made cannot fail.
    unsafe { libc::munmap(block.cast(), class_bytes(class)) };
}

impl BigBlocks {
    /// An empty cache; the binary's is a `static`.
    pub const fn new() -> Self {
        BigBlocks {
            cache: Mutex::new(Cache {
                slots: [[std::ptr::null_mut(); SLOTS]; CLASSES],
                len: [0; CLASSES],
                bytes: 0,
            }),
        }
    }

    /// The cache's lock. Nothing panics while holding it, so a poisoned lock still holds a
    /// valid cache.
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of class `class` from the cache (`true`: reused), or a new mapping (`false`:
    /// already zeroed), or null when the kernel refuses.
    fn obtain(&self, class: usize) -> (*mut u8, bool) {
        let reused = self.cache().take(class);
        match reused {
            Some(block) => (block, true),
            None => (map(class), false),
        }
    }

    /// Gives a block back to the cache, or to the kernel when the cache is full.
    ///
    /// # Safety
    /// `block` was obtained with class `class` and nothing uses it any more.
    unsafe fn release(&self, block: *mut u8, class: usize) {
        let kept = self.cache().keep(class, block);
        if !kept {
            // SAFETY: the caller's contract; the lock is released before the system call.
            unsafe { unmap(block, class) };
        }
    }

    /// Bytes waiting in the cache for reuse.
    #[cfg(test)]
    fn cached_bytes(&self) -> usize {
        self.cache().bytes
    }
}

impl Drop for BigBlocks {
    fn drop(&mut self) {
        let cache = self.cache.get_mut().unwrap_or_else(|e| e.into_inner());
        for class in 0..CLASSES {
            while let Some(block) = cache.take(class) {
                // SAFETY: cached blocks are mappings of their class that nobody holds.
                unsafe { unmap(block, class) };
            }
        }
    }
}

// SAFETY: every block handed out is at least the requested size, page-aligned (at least the
// requested alignment), and owned by one caller until it comes back through `dealloc`/`realloc`
// with the layout it was allocated with; layouts decide the class the same way both times.
//
// None of the methods is inlined: inlined into every allocation site of the program they added
// 180 KB of code.
unsafe impl GlobalAlloc for BigBlocks {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => self.obtain(class).0,
            // SAFETY: forwarded with the caller's contract.
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => {
                let (block, reused) = self.obtain(class);
                if reused {
                    // SAFETY: the block holds at least `layout.size()` bytes.
                    unsafe { std::ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
            // SAFETY: forwarded with the caller's contract.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: `ptr` was allocated with this layout, hence from this class.
            Some(class) => unsafe { self.release(ptr, class) },
            // SAFETY: forwarded with the caller's contract.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits in isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: forwarded with the caller's contract.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            (Some(old), Some(new)) if old == new => ptr,
            _ => {
                // SAFETY: `new_size` is non-zero (the caller's contract), and the old block holds
                // `layout.size()` valid bytes, freed only once copied.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "big_blocks_tests.rs"]
mod tests;
