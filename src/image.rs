//! Reading disk images: positional reads only, never a write.
//!
//! Everything above this module asks for bytes at absolute offsets through
//! [`ReadAt`], so the same parsers run over a file on disk, a test buffer or
//! (later) a qcow2 decoder. No code path reads the whole image: sparse
//! images of many terabytes cost only what their metadata costs.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};

/// A source of image bytes addressed by absolute byte offset.
pub trait ReadAt {
    /// Size of the image in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`, or fails without a partial result.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Reads `len` bytes at `offset`, checking the range against the image
    /// size first so a length taken from disk cannot allocate more memory
    /// than the image could ever hold.
    fn read_vec(&self, what: &'static str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset.checked_add(len).filter(|&end| end <= self.size());
        if end.is_none() {
            return Err(Error::Truncated {
                what,
                offset,
                len,
                image_size: self.size(),
            });
        }
        let len = usize::try_from(len).map_err(|_| Error::Truncated {
            what,
            offset,
            len,
            image_size: self.size(),
        })?;
        let mut buf = vec![0; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

/// A raw image file opened read-only.
#[derive(Debug)]
pub struct ImageFile {
    file: File,
    size: u64,
}

impl ImageFile {
    /// Opens `path` read-only. Block devices are sized by seeking to the end.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        Ok(ImageFile { file, size })
    }

    /// Reads through an already open file (one holding a lock, say).
    pub fn from_file(mut file: File) -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let size = file.seek(SeekFrom::End(0))?;
        Ok(ImageFile { file, size })
    }

    /// The underlying file, for metadata such as mtime.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ReadAt for ImageFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::Truncated {
                what: "read",
                offset,
                len,
                image_size: self.size,
            });
        }
        FileExt::read_exact_at(&self.file, buf, offset)
            .map_err(|source| Error::Io { offset, source })
    }
}

/// An image held in memory, for tests and fuzzing.
#[derive(Debug, Clone)]
pub struct MemImage(pub Vec<u8>);

impl ReadAt for MemImage {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buf.len())?))
            .ok_or(Error::Truncated {
                what: "read",
                offset,
                len,
                image_size: self.size(),
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Container formats that wrap a disk rather than being one. bmap maps raw
/// images; mapping a container's own bytes as if they were the guest's disk
/// would be silently wrong, so these are refused with a hint.
pub fn container_format(img: &dyn ReadAt) -> Option<&'static str> {
    let mut head = [0u8; 8];
    img.read_exact_at(&mut head, 0).ok()?;
    if head.starts_with(b"QFI\xfb") {
        Some("qcow2")
    } else if head.starts_with(b"KDMV") {
        Some("vmdk")
    } else if &head == b"vhdxfile" {
        Some("vhdx")
    } else if &head == b"conectix" {
        Some("vhd (dynamic)")
    } else {
        let mut vdi = [0u8; 4];
        img.read_exact_at(&mut vdi, 0x40).ok()?;
        (u32::from_le_bytes(vdi) == 0xBEDA_107F).then_some("vdi")
    }
}

/// Little-endian field readers over a byte slice. Offsets here are constants
/// from the on-disk format or already checked against the slice, but a short
/// slice yields zero rather than a panic so hostile input cannot crash us.
pub mod le {
    pub fn u8_at(b: &[u8], off: usize) -> u8 {
        b.get(off).copied().unwrap_or(0)
    }
    pub fn u16_at(b: &[u8], off: usize) -> u16 {
        b.get(off..off + 2)
            .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
    }
    pub fn u32_at(b: &[u8], off: usize) -> u32 {
        b.get(off..off + 4)
            .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub fn u64_at(b: &[u8], off: usize) -> u64 {
        b.get(off..off + 8).map_or(0, |s| {
            let mut a = [0; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    }
}
