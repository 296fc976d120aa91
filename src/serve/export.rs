//! The image behind the export: positional reads of the base image, and
//! where writes go.
//!
//! * Read-only (the default): the base image is opened read-only; the
//!   connection layer refuses writes before they get here.
//! * Overlay (`--writable --overlay FILE`): copy-on-write at
//!   [`OVERLAY_BLOCK`] granularity. The overlay file is created new, sparse,
//!   the size of the image; a block written once lives in the overlay from
//!   then on, and an in-memory bitmap says which blocks do. The bitmap is
//!   not saved, so an overlay is good for one run of the server: that is
//!   why an existing overlay file is refused rather than reused. The base
//!   image is still opened read-only and never written.
//! * Direct (`--writable --i-mean-it`): the base image is opened
//!   read-write and written in place.
//!
//! One lock guards the bitmap: reads hold it shared, writes exclusively
//! for the whole copy-on-write, so a read never sees half a block copied.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Copy-on-write granularity of the overlay.
pub const OVERLAY_BLOCK: u64 = 4096;

/// Largest buffer used to write zeroes: WRITE_ZEROES may cover up to 4 GiB
/// in one request, and is written in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// Where writes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    ReadOnly,
    Overlay(PathBuf),
    Direct,
}

/// The exported image.
pub struct Export {
    base: File,
    size: u64,
    overlay: Option<Overlay>,
    writable: bool,
}

struct Overlay {
    file: File,
    /// One bit per [`OVERLAY_BLOCK`]: set when the block lives in the overlay.
    present: RwLock<Vec<u64>>,
}

fn io_err(what: String, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl Export {
    /// Opens `image` as `mode` says. Errors name the file.
    pub fn open(image: &Path, mode: &Mode) -> std::io::Result<Export> {
        let direct = *mode == Mode::Direct;
        let base = OpenOptions::new()
            .read(true)
            .write(direct)
            .open(image)
            .map_err(|e| io_err(format!("opening {}", image.display()), e))?;
        let meta = base
            .metadata()
            .map_err(|e| io_err(format!("reading {}", image.display()), e))?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // A block device has no length in its metadata: seek to its end.
            use std::io::Seek;
            (&base)
                .seek(std::io::SeekFrom::End(0))
                .map_err(|e| io_err(format!("sizing {}", image.display()), e))?
        };
        let overlay = match mode {
            Mode::Overlay(path) => {
                // create_new: an existing file is never truncated, so the
                // image itself (or anything else) cannot be named by mistake.
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| {
                        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
                            " (an overlay is good for one run; remove it or choose another file)"
                        } else {
                            ""
                        };
                        io_err(format!("creating overlay {}{hint}", path.display()), e)
                    })?;
                file.set_len(size)
                    .map_err(|e| io_err(format!("sizing overlay {}", path.display()), e))?;
                let blocks = size.div_ceil(OVERLAY_BLOCK);
                let words = usize::try_from(blocks.div_ceil(64)).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "image too large")
                })?;
                Some(Overlay {
                    file,
                    present: RwLock::new(vec![0u64; words]),
                })
            }
            _ => None,
        };
        Ok(Export {
            base,
            size,
            overlay,
            writable: *mode != Mode::ReadOnly,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Fills `buf` from `offset`. The caller has checked the range.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let Some(ov) = &self.overlay else {
            return self.base.read_exact_at(buf, offset);
        };
        let present = ov.present.read().unwrap_or_else(|e| e.into_inner());
        // Runs of blocks with the same home are read with one call each.
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let in_overlay = bit(&present, pos / OVERLAY_BLOCK);
            let mut run_end = (pos / OVERLAY_BLOCK + 1) * OVERLAY_BLOCK;
            while run_end < end && bit(&present, run_end / OVERLAY_BLOCK) == in_overlay {
                run_end += OVERLAY_BLOCK;
            }
            let run_end = run_end.min(end);
            let slice = &mut buf[(pos - offset) as usize..(run_end - offset) as usize];
            if in_overlay {
                ov.file.read_exact_at(slice, pos)?;
            } else {
                self.base.read_exact_at(slice, pos)?;
            }
            pos = run_end;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. The caller has checked the range and
    /// that the export is writable.
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let Some(ov) = &self.overlay else {
            if !self.writable {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "read-only export",
                ));
            }
            return self.base.write_all_at(data, offset);
        };
        if data.is_empty() {
            return Ok(());
        }
        let mut present = ov.present.write().unwrap_or_else(|e| e.into_inner());
        let end = offset + data.len() as u64;
        let first = offset / OVERLAY_BLOCK;
        let last = (end - 1) / OVERLAY_BLOCK;
        // A partly written block not in the overlay yet is first copied
        // from the base, so its other bytes keep the base's content.
        for b in [first, last] {
            let (bs, be) = (b * OVERLAY_BLOCK, ((b + 1) * OVERLAY_BLOCK).min(self.size));
            let partial = offset > bs || end < be;
            if partial && !bit(&present, b) {
                let mut block = vec![0u8; (be - bs) as usize];
                self.base.read_exact_at(&mut block, bs)?;
                ov.file.write_all_at(&block, bs)?;
                set_bit(&mut present, b);
            }
        }
        ov.file.write_all_at(data, offset)?;
        for b in first..=last {
            set_bit(&mut present, b);
        }
        Ok(())
    }

    /// Writes `len` zero bytes at `offset`, a bounded buffer at a time.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(ZERO_CHUNK as u64) as usize;
            self.write_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Makes written data durable: the overlay's, or the image's in
    /// direct mode. Nothing to do read-only.
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.overlay {
            Some(ov) => ov.file.sync_data(),
            None if self.writable => self.base.sync_data(),
            None => Ok(()),
        }
    }

    /// Bytes held in the overlay (0 without one).
    pub fn overlay_bytes(&self) -> u64 {
        self.overlay.as_ref().map_or(0, |ov| {
            let p = ov.present.read().unwrap_or_else(|e| e.into_inner());
            p.iter().map(|w| u64::from(w.count_ones())).sum::<u64>() * OVERLAY_BLOCK
        })
    }
}

fn bit(words: &[u64], b: u64) -> bool {
    words
        .get((b / 64) as usize)
        .is_some_and(|w| w & (1 << (b % 64)) != 0)
}

fn set_bit(words: &mut [u64], b: u64) {
    if let Some(w) = words.get_mut((b / 64) as usize) {
        *w |= 1 << (b % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, size: usize) -> (PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let p = dir.join("base.img");
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    #[test]
    fn read_only_reads_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data) = image(dir.path(), 3 * 4096 + 100);
        let e = Export::open(&p, &Mode::ReadOnly).unwrap();
        assert_eq!(e.size(), data.len() as u64);
        assert!(!e.writable());
        let mut buf = vec![0u8; 5000];
        e.read_at(&mut buf, 1000).unwrap();
        assert_eq!(buf, &data[1000..6000]);
        assert!(e.write_at(b"x", 0).is_err());
    }

    #[test]
    fn overlay_copies_on_write_and_leaves_the_base_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data) = image(dir.path(), 5 * 4096 + 100);
        let ov = dir.path().join("ov");
        let e = Export::open(&p, &Mode::Overlay(ov.clone())).unwrap();
        let mut model = data.clone();
        // Unaligned writes across block boundaries, and into the short
        // last block.
        for (off, len, fill) in [
            (100usize, 10usize, 0xabu8),
            (4000, 5000, 0xcd),
            (5 * 4096 + 50, 50, 0xef),
            (8192, 4096, 0x11),
        ] {
            e.write_at(&vec![fill; len], off as u64).unwrap();
            model[off..off + len].fill(fill);
        }
        e.write_zeroes(3 * 4096 + 1, 3).unwrap();
        model[3 * 4096 + 1..3 * 4096 + 4].fill(0);
        let mut buf = vec![0u8; model.len()];
        e.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, model);
        for start in [0, 99, 4095, 4096, 12000] {
            let mut b = vec![0u8; 3000];
            e.read_at(&mut b, start as u64).unwrap();
            assert_eq!(b, &model[start..start + 3000], "at {start}");
        }
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert!(e.overlay_bytes() > 0);
        e.flush().unwrap();
        // A second run must not reuse (or truncate) the overlay.
        assert!(Export::open(&p, &Mode::Overlay(ov)).is_err());
    }

    #[test]
    fn direct_writes_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = image(dir.path(), 8192);
        let e = Export::open(&p, &Mode::Direct).unwrap();
        e.write_at(b"hello", 10).unwrap();
        e.flush().unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[10..15], b"hello");
    }
}
