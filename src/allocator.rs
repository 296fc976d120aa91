//! bmap's global allocator: the system's, with two changes for large
//! blocks, both about the cost of memory rather than its amount.
//!
//! - **Buffers start on a cache line.** On AMD Zen the kernel's copy to
//!   user space (`rep movsb`) runs about five times slower into a
//!   destination that is not 64-byte aligned, and glibc hands out blocks
//!   16 bytes past a page: reading a 150 MB trace cost 95 ms instead of 18.
//!   Blocks of [`ALIGNED`] bytes or more are aligned to 64.
//! - **Tables go on transparent huge pages.** Replay and index build a few
//!   big tables (the layout, the object rows, per-object numbers: tens of
//!   megabytes for a map of 200,000 files) and fill them once. On 4 KiB
//!   pages each page is a fault, and in the virtual machines bmap mostly
//!   runs in a fault costs microseconds: loading a map spent more time
//!   faulting than decoding. Linux backs memory with 2 MiB pages only where
//!   asked to (`transparent_hugepage/enabled` is `madvise` on most
//!   distributions), so blocks of [`LARGE`] bytes or more get a 2 MiB-aligned
//!   mapping of their own (whole huge pages), marked `MADV_HUGEPAGE`. Where huge pages are
//!   off, the advice is ignored and this is a plain `mmap`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::ptr;

use rustix::mm::{self, Advice, MapFlags, MremapFlags, ProtFlags};

/// The huge page size on x86-64 and arm64 (4 KiB base pages).
const HUGE: usize = 2 << 20;

/// Blocks from this size on get huge pages. A 1 MiB block wastes at most
/// half of its 2 MiB page, and still costs less: in a virtual machine the
/// 256 faults of its small pages take longer than zeroing the whole huge
/// page (replay's per-worker tables, chunk buffers and output blocks are
/// this size; `--summary` took 0.94x the CPU with 1 MiB than with 2 MiB
/// here, for 1 MB more peak memory). Smaller blocks would waste most of
/// their page.
pub const LARGE: usize = 1 << 20;

/// Blocks from this size on start on a cache line: I/O buffers are, and
/// for smaller blocks the padding would cost more than copies save.
pub const ALIGNED: usize = 4096;

const CACHE_LINE: usize = 64;

/// The allocator: `#[global_allocator] static A: Allocator = Allocator;`.
pub struct Allocator;

/// The length of the mapping behind an allocation of `size` bytes.
fn mapped(size: usize) -> Option<usize> {
    size.checked_add(HUGE - 1).map(|s| s & !(HUGE - 1))
}

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= HUGE
}

/// The layout asked of the system allocator for a block that is not
/// large: cache-line aligned from [`ALIGNED`] bytes on. A pure function of
/// the caller's layout, so that freeing asks for the same one.
fn system_layout(layout: Layout) -> Layout {
    if layout.size() >= ALIGNED && layout.align() < CACHE_LINE {
        Layout::from_size_align(layout.size(), CACHE_LINE).unwrap_or(layout)
    } else {
        layout
    }
}

/// A fresh mapping of `len` bytes (whole huge pages) starting on a 2 MiB
/// boundary, or null.
unsafe fn map_aligned(len: usize, prot: ProtFlags) -> *mut u8 {
    // Over-map by one huge page, then trim both ends to the boundary.
    let Some(over) = len.checked_add(HUGE) else {
        return ptr::null_mut();
    };
    let Ok(raw) = mm::mmap_anonymous(ptr::null_mut(), over, prot, MapFlags::PRIVATE) else {
        return ptr::null_mut();
    };
    let raw = raw.cast::<u8>();
    let head = (HUGE - (raw as usize & (HUGE - 1))) & (HUGE - 1);
    let start = raw.add(head);
    if head > 0 {
        let _ = mm::munmap(raw.cast::<c_void>(), head);
    }
    let tail = over - head - len;
    if tail > 0 {
        let _ = mm::munmap(start.add(len).cast::<c_void>(), tail);
    }
    start
}

/// A fresh zeroed mapping of `mapped(size)` bytes starting on a 2 MiB
/// boundary, or null.
unsafe fn map_large(size: usize) -> *mut u8 {
    let Some(len) = mapped(size) else {
        return ptr::null_mut();
    };
    let start = map_aligned(len, ProtFlags::READ | ProtFlags::WRITE);
    if !start.is_null() {
        // Advice only: without it the memory is still good, on small pages.
        let _ = mm::madvise(start.cast::<c_void>(), len, Advice::LinuxHugepage);
    }
    start
}

/// Moves the mapping of `old_len` bytes at `p` to a fresh 2 MiB boundary,
/// `new_len` bytes long; null if it cannot, and then `p` is as it was.
///
/// The pages move rather than being copied: a copy writes the whole block
/// into fresh memory, each page of which is a fault (a growing table of
/// per-object numbers spent more on those than on being filled). The
/// target is reserved on a boundary first, so that huge pages stay huge;
/// the moved mapping brings its advice along.
unsafe fn move_large(p: *mut u8, old_len: usize, new_len: usize) -> *mut u8 {
    let q = map_aligned(new_len, ProtFlags::empty());
    if q.is_null() {
        return q;
    }
    let moved = mm::mremap_fixed(
        p.cast::<c_void>(),
        old_len,
        new_len,
        MremapFlags::MAYMOVE,
        q.cast::<c_void>(),
    );
    if moved.is_err() {
        let _ = mm::munmap(q.cast::<c_void>(), new_len);
        return ptr::null_mut();
    }
    q
}

unsafe fn unmap_large(p: *mut u8, size: usize) {
    if let Some(len) = mapped(size) {
        let _ = mm::munmap(p.cast::<c_void>(), len);
    }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            map_large(layout.size())
        } else {
            System.alloc(system_layout(layout))
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            // Fresh anonymous memory reads as zeros.
            map_large(layout.size())
        } else {
            System.alloc_zeroed(system_layout(layout))
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_large(&layout) {
            unmap_large(p, layout.size());
        } else {
            System.dealloc(p, system_layout(layout));
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let (was, will) = (is_large(&layout), is_large(&new_layout));
        let (old_sys, new_sys) = (system_layout(layout), system_layout(new_layout));
        // The system's realloc keeps the alignment it is told of, but only
        // one: across the aligned threshold the block is moved by hand.
        if !was && !will && old_sys.align() == new_sys.align() {
            return System.realloc(p, old_sys, new_size);
        }
        if was && will {
            let (Some(old_len), Some(new_len)) = (mapped(layout.size()), mapped(new_size)) else {
                return ptr::null_mut();
            };
            if old_len == new_len {
                return p;
            }
            // In place, so the start stays on its boundary; a grown
            // mapping keeps the huge-page advice.
            if mm::mremap(p.cast::<c_void>(), old_len, new_len, MremapFlags::empty()).is_ok() {
                return p;
            }
            let q = move_large(p, old_len, new_len);
            if !q.is_null() {
                return q;
            }
        }
        let q = self.alloc(new_layout);
        if !q.is_null() {
            ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
            self.dealloc(p, layout);
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks are aligned as huge pages want, zeroed when asked,
    /// keep their bytes when they grow and shrink across the thresholds,
    /// and buffers start on a cache line.
    #[test]
    fn blocks_keep_their_bytes_across_thresholds() {
        let a = Allocator;
        unsafe {
            let big = Layout::from_size_align(LARGE + 12345, 8).unwrap();
            let p = a.alloc_zeroed(big);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE, 0);
            assert!(std::slice::from_raw_parts(p, big.size())
                .iter()
                .all(|&b| b == 0));
            for i in 0..big.size() {
                *p.add(i) = (i % 251) as u8;
            }
            // Grow past the next huge page, in place or moved.
            let p = a.realloc(p, big, 3 * LARGE);
            assert!(!p.is_null());
            for i in 0..big.size() {
                assert_eq!(*p.add(i), (i % 251) as u8);
            }
            let grown = Layout::from_size_align(3 * LARGE, 8).unwrap();
            // Shrink below the threshold: back to the system allocator.
            let p = a.realloc(p, grown, 1000);
            for i in 0..1000 {
                assert_eq!(*p.add(i), (i % 251) as u8);
            }
            let small = Layout::from_size_align(1000, 8).unwrap();
            // Up to a cache-line aligned buffer, and on to a large block.
            let p = a.realloc(p, small, ALIGNED + 1);
            assert_eq!(p as usize % CACHE_LINE, 0);
            for i in 0..1000 {
                assert_eq!(*p.add(i), (i % 251) as u8);
            }
            let buffer = Layout::from_size_align(ALIGNED + 1, 8).unwrap();
            let p = a.realloc(p, buffer, LARGE);
            for i in 0..1000 {
                assert_eq!(*p.add(i), (i % 251) as u8);
            }
            a.dealloc(p, Layout::from_size_align(LARGE, 8).unwrap());
            for size in [ALIGNED, 65536, 1 << 20] {
                let l = Layout::from_size_align(size, 1).unwrap();
                let q = a.alloc(l);
                assert_eq!(q as usize % CACHE_LINE, 0, "{size}");
                a.dealloc(q, l);
            }
            // Over-aligned requests are the system's.
            let odd = Layout::from_size_align(LARGE, 2 * HUGE).unwrap();
            let q = a.alloc(odd);
            assert_eq!(q as usize % (2 * HUGE), 0);
            a.dealloc(q, odd);
        }
        // A size whose mapping would overflow is refused, not wrapped.
        assert!(mapped(usize::MAX).is_none());
    }

    /// A large block that cannot grow where it is (something is mapped
    /// right after it) can move: its bytes come along, it starts on a 2 MiB
    /// boundary again, its grown part reads as zeros, and what was in the
    /// way is left alone.
    #[test]
    fn blocked_blocks_move_with_their_bytes() {
        let a = Allocator;
        unsafe {
            let big = Layout::from_size_align(2 * LARGE, 8).unwrap();
            let p = a.alloc(big);
            assert!(!p.is_null());
            for i in 0..big.size() {
                *p.add(i) = (i % 253) as u8;
            }
            let after = p.add(mapped(big.size()).unwrap());
            let Ok(wall) = mm::mmap_anonymous(
                after.cast::<c_void>(),
                4096,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::FIXED_NOREPLACE,
            ) else {
                panic!("could not map a page after the block");
            };
            assert_eq!(wall.cast::<u8>(), after);
            *after = 7;
            // Moved, not copied into a new block (which realloc would
            // fall back to).
            let q = move_large(p, mapped(big.size()).unwrap(), mapped(5 * LARGE).unwrap());
            assert!(!q.is_null(), "could not move the block");
            assert_ne!(q, p);
            assert_eq!(q as usize % HUGE, 0);
            for i in 0..big.size() {
                assert_eq!(*q.add(i), (i % 253) as u8, "byte {i}");
            }
            assert!(std::slice::from_raw_parts(q.add(big.size()), 3 * LARGE)
                .iter()
                .all(|&b| b == 0));
            *q.add(5 * LARGE - 1) = 1;
            assert_eq!(*after, 7);
            a.dealloc(q, Layout::from_size_align(5 * LARGE, 8).unwrap());
            let _ = mm::munmap(wall, 4096);
        }
    }
}
