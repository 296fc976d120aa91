//! The layout map as a grid of equal cells, and the kind each cell shows:
//! the kind owning most of its bytes.
//!
//! Zoomed out, cells come from an [`Overview`] built once on the worker:
//! bytes per kind in at most [`MAX_BUCKETS`] equal buckets, so memory does
//! not grow with the number of objects. Zoomed in past one bucket per
//! cell, the few layout segments on screen are read from the map instead.

use crate::kinds::{self, KindId, KINDS};
use crate::mapdb::{DbResult, MapDb};

/// Buckets in an overview: 2^18 buckets of a few (kind, bytes) pairs each
/// is a few MiB whatever the size of the map.
pub const MAX_BUCKETS: u64 = 1 << 18;

pub struct Overview {
    pub image_size: u64,
    /// Bytes per bucket, a power of two.
    pub bucket: u64,
    /// Bucket `i`'s entries are `entries[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    entries: Vec<(KindId, u64)>,
    /// Kinds that own at least one byte, for the legend.
    pub present: [bool; KINDS.len()],
}

/// The bucket size for an image: a power of two, no smaller than the
/// finest zoom, with at most [`MAX_BUCKETS`] buckets.
pub fn bucket_size(image_size: u64, min_cell: u64) -> u64 {
    let want = image_size.div_ceil(MAX_BUCKETS).max(min_cell).max(1);
    want.checked_next_power_of_two().unwrap_or(1 << 63)
}

impl Overview {
    pub fn build(
        db: &MapDb,
        image_size: u64,
        min_cell: u64,
        progress: &dyn Fn(f64),
    ) -> DbResult<Overview> {
        let mut builder = OverviewBuilder::new(image_size, bucket_size(image_size, min_cell));
        let mut n = 0u64;
        db.for_each_segment(|s, e, k| {
            builder.add(s, e, k);
            n += 1;
            if n.is_multiple_of(16384) {
                progress(s as f64 / image_size.max(1) as f64);
            }
        })?;
        Ok(builder.finish())
    }

    pub fn buckets(&self) -> u64 {
        (self.offsets.len() as u64).saturating_sub(1)
    }

    /// Kinds of `out.len()` cells of `cell` bytes starting at byte `first`.
    /// `cell` must be a multiple of the bucket size and `first` aligned to it.
    pub fn fill(&self, first: u64, cell: u64, out: &mut [KindId]) {
        let per_cell = (cell / self.bucket).max(1);
        let mut bucket = first / self.bucket;
        let mut acc = [0u64; KINDS.len()];
        for slot in out.iter_mut() {
            acc.fill(0);
            for b in bucket..bucket.saturating_add(per_cell).min(self.buckets()) {
                let (lo, hi) = (self.offsets[b as usize], self.offsets[b as usize + 1]);
                for &(k, bytes) in &self.entries[lo as usize..hi as usize] {
                    acc[usize::from(k)] += bytes;
                }
            }
            *slot = kinds::dominant(&acc);
            bucket = bucket.saturating_add(per_cell);
        }
    }
}

struct OverviewBuilder {
    image_size: u64,
    bucket: u64,
    offsets: Vec<u32>,
    entries: Vec<(KindId, u64)>,
    present: [bool; KINDS.len()],
    current: u64,
    acc: Vec<(KindId, u64)>,
}

impl OverviewBuilder {
    fn new(image_size: u64, bucket: u64) -> OverviewBuilder {
        OverviewBuilder {
            image_size,
            bucket,
            offsets: vec![0],
            entries: Vec::new(),
            present: [false; KINDS.len()],
            current: 0,
            acc: Vec::new(),
        }
    }

    /// Closes buckets up to (not including) `bucket`.
    fn advance_to(&mut self, bucket: u64) {
        while self.current < bucket {
            self.entries.append(&mut self.acc);
            self.offsets
                .push(u32::try_from(self.entries.len()).unwrap_or(u32::MAX));
            self.current += 1;
        }
    }

    /// Segments arrive sorted and disjoint; anything else (a hand-edited
    /// map) is clipped rather than trusted.
    fn add(&mut self, start: u64, end: u64, kind: KindId) {
        let end = end.min(self.image_size);
        let mut pos = start.max(self.current.saturating_mul(self.bucket));
        while pos < end {
            let bucket = pos / self.bucket;
            self.advance_to(bucket);
            let chunk_end = end.min(bucket.saturating_add(1).saturating_mul(self.bucket));
            let bytes = chunk_end - pos;
            match self.acc.iter_mut().find(|(k, _)| *k == kind) {
                Some(entry) => entry.1 += bytes,
                None => self.acc.push((kind, bytes)),
            }
            if let Some(p) = self.present.get_mut(usize::from(kind)) {
                *p = true;
            }
            pos = chunk_end;
        }
    }

    fn finish(mut self) -> Overview {
        let buckets = self.image_size.div_ceil(self.bucket);
        self.advance_to(buckets);
        Overview {
            image_size: self.image_size,
            bucket: self.bucket,
            offsets: self.offsets,
            entries: self.entries,
            present: self.present,
        }
    }
}

/// Kinds of `out.len()` cells of `cell` bytes from byte `first`, from the
/// segments overlapping them (sorted, as the map returns them).
pub fn fill_from_segments(
    first: u64,
    cell: u64,
    image_size: u64,
    segments: &[(u64, u64, KindId)],
    out: &mut [KindId],
) {
    out.fill(kinds::NONE);
    let cell = cell.max(1);
    let limit = first
        .saturating_add(cell.saturating_mul(out.len() as u64))
        .min(image_size);
    let mut acc = [0u64; KINDS.len()];
    let mut current: Option<usize> = None;
    for &(s, e, k) in segments {
        let (s, e) = (s.max(first), e.min(limit));
        let mut pos = s;
        while pos < e {
            let index = ((pos - first) / cell) as usize;
            if current != Some(index) {
                if let Some(c) = current {
                    out[c] = kinds::dominant(&acc);
                }
                acc.fill(0);
                current = Some(index);
            }
            let cell_end = first.saturating_add((index as u64 + 1).saturating_mul(cell));
            let chunk_end = e.min(cell_end);
            acc[usize::from(k).min(KINDS.len() - 1)] += chunk_end - pos;
            pos = chunk_end;
        }
    }
    if let Some(c) = current {
        out[c] = kinds::dominant(&acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str) -> KindId {
        kinds::id(name)
    }

    #[test]
    fn buckets_are_powers_of_two_and_bounded() {
        assert_eq!(bucket_size(64 << 20, 1024), 1024);
        assert_eq!(bucket_size(8 << 30, 1024), 32 << 10);
        let huge = 16u64 << 40;
        let b = bucket_size(huge, 512);
        assert!(b.is_power_of_two() && huge.div_ceil(b) <= MAX_BUCKETS);
    }

    #[test]
    fn a_cell_takes_the_kind_owning_most_of_its_bytes() {
        // Cell 0: 3 KiB free, 1 KiB file → free. Cell 1: all file.
        let segments = [
            (0, 3072, k("free")),
            (3072, 8192, k("file")),
            (8192, 9000, k("directory")),
        ];
        let mut out = [0; 3];
        fill_from_segments(0, 4096, 9000, &segments, &mut out);
        assert_eq!(out, [k("free"), k("file"), k("directory")]);
    }

    #[test]
    fn cells_past_the_image_are_empty() {
        let mut out = [0; 3];
        fill_from_segments(0, 4096, 5000, &[(0, 5000, k("file"))], &mut out);
        assert_eq!(out, [k("file"), k("file"), kinds::NONE]);
    }

    #[test]
    fn the_overview_agrees_with_the_segments() {
        // A pattern with kinds changing inside buckets and segments
        // spanning many of them.
        let mut segments = Vec::new();
        let mut pos = 0u64;
        let pattern = [
            (700, "file"),
            (1300, "free"),
            (50_000, "inode-table"),
            (10, "directory"),
            (3000, "file"),
            (200_000, "free"),
            (1, "superblock"),
        ];
        for i in 0..200 {
            let (len, kind) = pattern[i % pattern.len()];
            segments.push((pos, pos + len, k(kind)));
            pos += len;
        }
        let size = pos;
        let builder_bucket = 1024;
        let mut b = OverviewBuilder::new(size, builder_bucket);
        for &(s, e, kind) in &segments {
            b.add(s, e, kind);
        }
        let overview = b.finish();
        for cell in [1024u64, 4096, 65536] {
            let n = size.div_ceil(cell) as usize;
            let mut from_overview = vec![0; n];
            overview.fill(0, cell, &mut from_overview);
            let mut exact = vec![0; n];
            fill_from_segments(0, cell, size, &segments, &mut exact);
            assert_eq!(from_overview, exact, "cell size {cell}");
        }
        assert!(overview.present[usize::from(k("superblock"))]);
        assert!(!overview.present[usize::from(k("journal"))]);
    }
}
