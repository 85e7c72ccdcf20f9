//! The shared block cache: its classes, its budget, reuse across threads, and that no
//! allocation path loses or mixes up bytes.

use super::*;

const KIB: usize = 1024;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Writes `tag`-derived bytes over `len` bytes at `p`.
fn fill(p: *mut u8, len: usize, tag: u8) {
    for i in 0..len {
        // SAFETY: the tests only fill blocks they own, within their size.
        unsafe { *p.add(i) = tag ^ (i as u8) ^ ((i >> 8) as u8) };
    }
}

/// Whether the first `len` bytes at `p` are what [`fill`] wrote with `tag`.
fn holds(p: *mut u8, len: usize, tag: u8) -> bool {
    // SAFETY: as in `fill`.
    (0..len).all(|i| unsafe { *p.add(i) } == tag ^ (i as u8) ^ ((i >> 8) as u8))
}

#[test]
fn classes_run_from_64_kib_to_1_mib_in_64_kib_steps() {
    assert_eq!(class_of(layout(64 * KIB - 1)), None);
    assert_eq!(class_of(layout(64 * KIB)), Some(0));
    assert_eq!(class_of(layout(64 * KIB + 1)), Some(1));
    assert_eq!(class_of(layout(256 * KIB)), Some(3));
    assert_eq!(class_of(layout(1024 * KIB)), Some(15));
    assert_eq!(class_of(layout(1024 * KIB + 1)), None);
    assert_eq!(
        class_of(Layout::from_size_align(256 * KIB, 2 * PAGE).unwrap()),
        None,
        "alignment beyond a page goes to the C library"
    );
    for class in 0..CLASSES {
        assert_eq!(class_of(layout(class_bytes(class))), Some(class));
    }
}

#[test]
fn a_block_freed_on_one_thread_is_reused_by_another() {
    let pool = BigBlocks::new();
    let l = layout(256 * KIB);
    let freed = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a non-zero layout; the block is freed with the same one.
            unsafe {
                let p = pool.alloc(l);
                assert!(!p.is_null());
                fill(p, l.size(), 1);
                pool.dealloc(p, l);
                p as usize
            }
        })
        .join()
        .unwrap()
    });
    assert_eq!(pool.cached_bytes(), 256 * KIB);
    let again = std::thread::scope(|s| {
        // SAFETY: as above.
        s.spawn(|| unsafe { pool.alloc(l) as usize })
            .join()
            .unwrap()
    });
    assert_eq!(again, freed, "the other thread got the freed block");
    assert_eq!(pool.cached_bytes(), 0);
    // SAFETY: allocated above with `l`.
    unsafe { pool.dealloc(again as *mut u8, l) };
}

#[test]
fn the_cache_keeps_at_most_its_budget_whatever_is_freed() {
    let pool = BigBlocks::new();
    let sizes = [64 * KIB, 256 * KIB + 1, 1024 * KIB];
    // SAFETY: non-zero layouts, each block freed once with its own.
    let blocks: Vec<(*mut u8, Layout)> = (0..60)
        .map(|i| {
            let l = layout(sizes[i % sizes.len()]);
            let p = unsafe { pool.alloc(l) };
            assert!(!p.is_null());
            fill(p, 4 * KIB, i as u8);
            (p, l)
        })
        .collect();
    let mut most = 0;
    for (p, l) in blocks {
        // SAFETY: as above.
        unsafe { pool.dealloc(p, l) };
        most = most.max(pool.cached_bytes());
    }
    assert!(most <= CACHE_BYTES, "{most} bytes cached");
    assert!(
        pool.cached_bytes() > CACHE_BYTES - LARGEST,
        "the cache filled up to its budget"
    );
}

#[test]
fn zeroed_blocks_are_zero_also_when_reused() {
    let pool = BigBlocks::new();
    let l = layout(300 * KIB);
    // SAFETY: one non-zero layout, each block freed once.
    unsafe {
        let p = pool.alloc(l);
        fill(p, l.size(), 0xa5);
        pool.dealloc(p, l);
        let z = pool.alloc_zeroed(l);
        assert_eq!(z, p, "reused");
        assert!((0..l.size()).all(|i| *z.add(i) == 0));
        pool.dealloc(z, l);
    }
}

#[test]
fn realloc_keeps_the_bytes_within_a_class_across_classes_and_to_the_c_library() {
    let pool = BigBlocks::new();
    // SAFETY: every step passes the layout the block has, and non-zero sizes.
    unsafe {
        let mut l = layout(100 * KIB);
        let p = pool.alloc(l);
        fill(p, l.size(), 7);
        let same = pool.realloc(p, l, 120 * KIB);
        assert_eq!(same, p, "100 and 120 KiB share a class: the block stays");
        l = layout(120 * KIB);
        let moved = pool.realloc(same, l, 700 * KIB);
        assert!(
            holds(moved, 100 * KIB, 7),
            "bytes kept when the class grows"
        );
        l = layout(700 * KIB);
        let small = pool.realloc(moved, l, 3000);
        assert!(
            holds(small, 3000, 7),
            "bytes kept on the way to the C library"
        );
        l = layout(3000);
        let back = pool.realloc(small, l, 200 * KIB);
        assert!(holds(back, 3000, 7), "bytes kept on the way back");
        pool.dealloc(back, layout(200 * KIB));
    }
}

#[test]
fn a_random_mix_of_allocations_never_mixes_up_bytes() {
    let pool = BigBlocks::new();
    let mut seed = 0x0b16_b10c_u64;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % n
    };
    // (block, size, tag); sizes span the C library's, every class, and beyond.
    let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
    for step in 0..4000 {
        let tag = step as u8;
        // SAFETY: blocks are used within their sizes and freed or resized with their layouts.
        unsafe {
            match next(3) {
                0 if live.len() < 24 => {
                    let size = 1 + next(1300 * KIB);
                    let p = if next(2) == 0 {
                        pool.alloc(layout(size))
                    } else {
                        pool.alloc_zeroed(layout(size))
                    };
                    assert!(!p.is_null());
                    fill(p, size.min(8 * KIB), tag);
                    live.push((p, size, tag));
                }
                1 if !live.is_empty() => {
                    let (p, size, t) = live.swap_remove(next(live.len()));
                    assert!(holds(p, size.min(8 * KIB), t), "step {step}");
                    let new_size = 1 + next(1300 * KIB);
                    let q = pool.realloc(p, layout(size), new_size);
                    assert!(holds(q, size.min(new_size).min(8 * KIB), t), "step {step}");
                    fill(q, new_size.min(8 * KIB), tag);
                    live.push((q, new_size, tag));
                }
                _ if !live.is_empty() => {
                    let (p, size, t) = live.swap_remove(next(live.len()));
                    assert!(holds(p, size.min(8 * KIB), t), "step {step}");
                    pool.dealloc(p, layout(size));
                }
                _ => {}
            }
        }
        assert!(pool.cached_bytes() <= CACHE_BYTES);
    }
    for (p, size, _) in live {
        // SAFETY: as above.
        unsafe { pool.dealloc(p, layout(size)) };
    }
}
