//! A trace file mapped into memory, so that the summary's workers parse
//! it where it lies in the page cache instead of copying it out first:
//! reading and counting the lines of the bench's 156 MB trace took 25 ms
//! mapped and 36 ms read in 1 MiB pieces (a C test, one core), and the
//! page cache's large folios map in some 700 faults.
//!
//! A mapped file that shrinks while it is read would raise `SIGBUS` at
//! the first page past its new end, and kill the process. A handler
//! catches that for the mappings made here: it maps a page of zeroes in
//! place of the missing one, notes that the file was cut, and returns, so
//! the parser reads zeroes (lines it does not take) and the caller, told
//! by [`Mapped::cut`], reports the trace as changed while it was read.
//! Any other `SIGBUS` goes to the handler that was there before (Rust's
//! own, which tells stack overflows from the rest), as if this one were
//! not there.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::PositionalRead;

/// Mappings the handler knows of at once; past that, files are read.
const SLOTS: usize = 8;

/// Per slot: the mapping's first and past-the-end addresses (0 and 0 when
/// free), and whether a page past the file's end was read.
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static CUT: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
/// Slots taken, one bit each.
static TAKEN: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The handler before ours, once ours is installed; `None` if installing
/// failed (then nothing is mapped).
static PREVIOUS: OnceLock<Option<libc::sigaction>> = OnceLock::new();

/// A whole file, mapped read-only.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
    slot: usize,
}

// SAFETY: the mapping is read-only and owned by this value; the bytes are
// only ever read.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps `file` whole; `None` when it cannot be (empty, not a regular
    /// file, no slot or no handler): the caller reads it instead.
    pub fn new(file: &File) -> Option<Mapped> {
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() == 0 {
            return None;
        }
        let len = usize::try_from(meta.len()).ok()?;
        PREVIOUS.get_or_init(install).as_ref()?;
        let slot = take_slot()?;
        // SAFETY: a fresh read-only private mapping of a file we hold
        // open, at an address the kernel picks; nothing else is touched.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file.as_fd(),
                0,
            )
        };
        let Ok(ptr) = ptr else {
            TAKEN.fetch_and(!(1 << slot), Ordering::AcqRel);
            return None;
        };
        CUT[slot].store(false, Ordering::Relaxed);
        STARTS[slot].store(ptr as usize, Ordering::Release);
        ENDS[slot].store(ptr as usize + len, Ordering::Release);
        Some(Mapped { ptr, len, slot })
    }

    /// The file's bytes as they were mapped (see the module's notes for
    /// a file that shrinks meanwhile).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `ptr` for as long as
        // `self` lives; a page cut from the file reads as zeroes.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// Whether a page past the file's end was read: the file shrank while
    /// mapped, and what was read of it is not what it holds.
    pub fn cut(&self) -> bool {
        CUT[self.slot].load(Ordering::Acquire)
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // The end first, as `new` sets it last: a slot being cleared or
        // set never holds a range the mapping does not.
        ENDS[self.slot].store(0, Ordering::Release);
        STARTS[self.slot].store(0, Ordering::Release);
        // SAFETY: the mapping made in `new`, not used past this point.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
        TAKEN.fetch_and(!(1 << self.slot), Ordering::AcqRel);
    }
}

impl PositionalRead for Mapped {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.bytes().read_at(buf, offset)
    }

    fn whole(&self) -> Option<&[u8]> {
        Some(self.bytes())
    }

    fn done_with(&self, from: u64, to: u64) {
        // Whole pages within the range only: a page shared with bytes
        // still to be read stays.
        let page = PAGE.load(Ordering::Relaxed) as u64;
        let start = from.div_ceil(page).saturating_mul(page);
        let end = (to.min(self.len as u64) / page) * page;
        if start >= end {
            return;
        }
        let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
            return;
        };
        // SAFETY: whole pages of our own read-only file mapping; dropping
        // them only makes a later read fault them in again from the page
        // cache, with the same bytes.
        let _ = unsafe {
            rustix::mm::madvise(
                self.ptr.cast::<u8>().add(start).cast(),
                end - start,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
    }
}

fn take_slot() -> Option<usize> {
    let mut taken = TAKEN.load(Ordering::Acquire);
    loop {
        let slot = (!taken).trailing_zeros() as usize;
        if slot >= SLOTS {
            return None;
        }
        match TAKEN.compare_exchange(
            taken,
            taken | (1 << slot),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(slot),
            Err(now) => taken = now,
        }
    }
}

/// Installs the handler; the one it replaces, or `None` if it could not.
fn install() -> Option<libc::sigaction> {
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(page) = usize::try_from(page) {
        if page.is_power_of_two() {
            PAGE.store(page, Ordering::Relaxed);
        }
    }
    // SAFETY: sigaction with a zeroed, then filled-in, struct; the handler
    // only does what a signal handler may (atomics, mmap, sigaction, and
    // the previous handler, which was fit to run here already).
    unsafe {
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut ours.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        (libc::sigaction(libc::SIGBUS, &ours, &mut previous) == 0).then_some(previous)
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in 0..SLOTS {
        let (start, end) = (
            STARTS[slot].load(Ordering::Acquire),
            ENDS[slot].load(Ordering::Acquire),
        );
        if start <= addr && addr < end {
            let page = addr & !(PAGE.load(Ordering::Relaxed) - 1);
            // SAFETY: replaces one page of our own read-only mapping with
            // zeroes; the faulting read then runs again and reads them.
            let zeroes = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    PAGE.load(Ordering::Relaxed),
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if zeroes != libc::MAP_FAILED {
                CUT[slot].store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: what the handler before would do.
    let Some(Some(previous)) = PREVIOUS.get() else {
        return;
    };
    let handler = previous.sa_sigaction;
    // SAFETY: calls or restores the handler that was installed before
    // ours, as it was installed.
    unsafe {
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            // Put back, the fault runs again and does what it did.
            libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
        } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, context);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_file_reads_as_its_bytes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let m = Mapped::new(f.as_file()).unwrap();
        assert_eq!(m.bytes(), &data[..]);
        assert_eq!(m.whole(), Some(&data[..]));
        let mut buf = [0u8; 10];
        assert_eq!(m.read_at(&mut buf, 99_995).unwrap(), 5);
        assert_eq!(&buf[..5], &data[99_995..]);
        assert!(!m.cut());
        // Nothing to map.
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(Mapped::new(empty.as_file()).is_none());
    }

    /// A file cut short while mapped reads as zeroes past its new end,
    /// and says so, instead of killing the process.
    #[test]
    fn a_file_cut_while_mapped_reads_zeroes_and_says_so() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![b'x'; 1 << 20]).unwrap();
        let m = Mapped::new(f.as_file()).unwrap();
        // Read as the file changes under them: not to be taken from what
        // was read before.
        let at = |i: usize| {
            let b = &m.bytes()[i];
            // SAFETY: a byte of the mapping, read in place.
            unsafe { std::ptr::read_volatile(b) }
        };
        assert_eq!(at((1 << 20) - 1), b'x');
        f.as_file().set_len(4096).unwrap();
        assert_eq!(at(100), b'x');
        assert!(!m.cut());
        // Past the new end: a fresh page of zeroes.
        assert_eq!(at((1 << 20) - 1), 0);
        assert_eq!(at(8192), 0);
        assert!(m.cut());
    }
}
