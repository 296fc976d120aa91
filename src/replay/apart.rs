//! Keeping threads that hand work to each other on different cores.
//!
//! The summary's lines are made by a writer and helpers that pass blocks
//! back and forth, each waking the other many times a millisecond. Linux
//! wakes a thread on the core of the thread that woke it when it judges
//! them to share data, and there the two took turns while the other core
//! stood idle: in most runs of the bench's summary the writer waited for
//! the helper's blocks as long as it spent making its own, and the helper
//! as long for the writer to take them (scheduler switches showed both on
//! one core). Pinned apart for those few milliseconds, each waits under
//! 1.5 ms, and the writing takes 10 ms instead of 13 (medians of 12).

use rustix::thread::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};

/// The calling thread pinned to the core it is on, until dropped; the
/// other cores it may use are for [`Apart::helper`]s.
pub struct Apart {
    before: CpuSet,
    others: CpuSet,
}

impl Apart {
    /// Pins the calling thread to its core; `None`, with nothing changed,
    /// if it may use no other core (or the system says nothing).
    pub fn pin_here() -> Option<Apart> {
        let before = sched_getaffinity(None).ok()?;
        let here = sched_getcpu();
        if !before.is_set(here) || before.count() < 2 {
            return None;
        }
        let mut others = before;
        others.unset(here);
        let mut mine = CpuSet::new();
        mine.set(here);
        sched_setaffinity(None, &mine).ok()?;
        Some(Apart { before, others })
    }

    /// Keeps the calling thread (a helper) off the pinned thread's core.
    pub fn helper(&self) {
        // Advice only: a helper left where it is still does its work.
        let _ = sched_setaffinity(None, &self.others);
    }
}

impl Drop for Apart {
    fn drop(&mut self) {
        let _ = sched_setaffinity(None, &self.before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned, a thread runs on one core and its helpers on the others;
    /// dropped, it may run where it could before.
    #[test]
    fn pins_and_lets_go() {
        let before = sched_getaffinity(None).unwrap();
        let Some(apart) = Apart::pin_here() else {
            assert!(before.count() < 2, "two cores or more, and not pinned");
            return;
        };
        let now = sched_getaffinity(None).unwrap();
        assert_eq!(now.count(), 1);
        std::thread::scope(|s| {
            s.spawn(|| {
                apart.helper();
                let h = sched_getaffinity(None).unwrap();
                assert_eq!(h.count(), before.count() - 1);
                for cpu in 0..1024 {
                    assert!(!(h.is_set(cpu) && now.is_set(cpu)), "core {cpu} shared");
                }
            });
        });
        drop(apart);
        let after = sched_getaffinity(None).unwrap();
        assert_eq!(after.count(), before.count());
    }
}
