//! A hint to the CPU to start fetching memory that will be read soon.
//!
//! Attributing a request reads a bucket, a layout segment, a slot and an
//! object's numbers, each at a random place in tables of megabytes, each
//! found from the one before. Loading them early (see `replay::warm`)
//! overlaps the misses of a few requests, but a load that has not arrived
//! holds up everything after it; a prefetch does not, so the misses of
//! requests further ahead can be in flight while this one is counted.

/// Starts fetching the cache line holding `*p` into every cache level;
/// does nothing where there is no such instruction.
#[inline(always)]
pub(crate) fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: a prefetch reads nothing into the program and cannot fault
    // (it is a hint, dropped for an address that is not mapped); `p` is a
    // valid reference anyway. SSE, which has the instruction, is part of
    // every x86-64 CPU.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
