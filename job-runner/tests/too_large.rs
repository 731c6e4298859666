//! A header declaring absurd dimensions fails fast with `TooLarge` and
//! never allocates pixel memory. Alone in its binary because it installs a
//! global allocator that records the largest single allocation.

// The counting allocator below needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pomona_runner::{DecodeError, Preprocess};

mod common;
use common::corpus::png_header;

struct PeakAlloc;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

/// Baseline JPEG SOI + SOF0 declaring `w`x`h` (no scan data).
fn jpeg_header(w: u16, h: u16) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    b.extend_from_slice(&h.to_be_bytes());
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    b.extend_from_slice(&[
        0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 0x3F, 0, 0xFF, 0xD9,
    ]);
    b
}

#[test]
fn absurd_dimensions_fail_fast_without_allocating() {
    let p = Preprocess::default();
    let png = png_header(100_000, 100_000);
    let start = Instant::now();
    LARGEST.store(0, Ordering::Relaxed);
    let err = p.decode(&png).unwrap_err();
    let largest = LARGEST.load(Ordering::Relaxed);
    assert_eq!(
        err,
        DecodeError::TooLarge {
            width: 100_000,
            height: 100_000,
            max_pixels: 100_000_000
        }
    );
    assert_eq!(
        err.to_string(),
        "image too large: 100000x100000 exceeds 100000000 pixels"
    );
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");

    // One side above the whole budget: refused by the decoder limits.
    let err = p.decode(&png_header(200_000_000, 1)).unwrap_err();
    assert!(err.to_string().starts_with("image too large: "), "{err}");

    // JPEG 65535x65535 (4.3 gigapixels): header says no.
    LARGEST.store(0, Ordering::Relaxed);
    let err = p.decode(&jpeg_header(65_535, 65_535)).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooLarge {
                width: 65_535,
                height: 65_535,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(LARGEST.load(Ordering::Relaxed) < 1 << 20);

    // A smaller limit applies to ordinary sizes too.
    let small = Preprocess::default().with_max_pixels(1000);
    let err = small.decode(&png_header(100, 100)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "image too large: 100x100 exceeds 1000 pixels"
    );
}
