//! The counting allocator of the fuzz test binaries: a wrapper over the
//! system allocator that keeps, per thread, the bytes currently allocated
//! and their peak, so a test can measure the most memory one decode held at
//! once ([`measure`]).
//!
//! Each fuzz test binary installs it with
//! `#[global_allocator] static A: fuzzkit::CountingAlloc = fuzzkit::CountingAlloc;`.
//! This is the one module of the workspace with unsafe code (the
//! `GlobalAlloc` trait is unsafe); it only forwards to `System` and adds
//! to two thread-local counters.

#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

thread_local! {
    // Const-initialised and without destructors: touching them never
    // allocates, so they are safe to use inside the allocator.
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static INSTALLED: Cell<bool> = const { Cell::new(false) };
}

fn grow(by: isize) {
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + by;
        c.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now)
            }
        });
    });
}

fn mark() {
    let _ = INSTALLED.try_with(|i| i.set(true));
}

/// The counting allocator (see the module comment).
pub struct CountingAlloc;

// SAFETY: every method forwards to `System` with the same arguments; the
// bookkeeping only touches const-initialised thread-locals of `Copy` types.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size() as isize);
        }
        mark();
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size() as isize);
        }
        mark();
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        grow(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            grow(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f` and returns its result with the peak number of bytes this
/// thread held allocated during `f` beyond what it held before (memory
/// freed by another thread is not seen; the decoders are synchronous).
///
/// Panics if the binary did not install [`CountingAlloc`], so a fuzz test
/// can never pass by measuring nothing.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = CURRENT.with(Cell::get);
    let outer_peak = PEAK.with(|p| p.replace(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    PEAK.with(|p| p.set(outer_peak.max(peak)));
    assert!(
        INSTALLED.with(Cell::get),
        "fuzzkit::CountingAlloc is not the global allocator of this test binary"
    );
    (out, (peak - start).max(0) as usize)
}
