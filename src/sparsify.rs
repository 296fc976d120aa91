//! `bmap sparsify`: gives the host back the bytes no filesystem uses —
//! filesystem-free blocks and unpartitioned space — by punching holes in
//! the image file, in place and offline (what `virt-sparsify --in-place`
//! does with an appliance).
//!
//! Safety comes first: the image is locked for the whole run (a running
//! qemu holds OFD locks on its images, which conflict with ours), the map
//! must still describe the image (its partition tables and superblocks are
//! hashed again and compared with the map's fingerprint), no filesystem
//! may need journal recovery or have errors recorded, and the free space
//! is taken from a fresh walk of the image made under the lock, not from
//! the map. Any refusal happens before a byte is changed.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use rusqlite::Connection;

use crate::image::ImageFile;
use crate::index;
use crate::map::Kind;

#[derive(Debug, thiserror::Error)]
pub enum SparsifyError {
    #[error("{0}: another process holds a lock on the image (a running qemu?); stop it first")]
    InUse(String),
    #[error("the map does not describe this image ({0}); run bmap index on it again")]
    Mismatch(String),
    #[error(
        "{0} needs journal recovery (needs_recovery is set); mount it once or run e2fsck first"
    )]
    NeedsRecovery(String),
    #[error("{0} has errors recorded (state: {1}); run e2fsck first")]
    FsErrors(String, String),
    #[error(
        "the host filesystem cannot punch holes in the image ({0}); --zero writes zeroes instead"
    )]
    CannotPunch(std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Index(#[from] crate::Error),
    #[error("reading the map: {0}")]
    Map(#[from] rusqlite::Error),
}

type Result<T> = std::result::Result<T, SparsifyError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SparsifyError {
    let what = what.into();
    move |source| SparsifyError::Io { what, source }
}

pub struct Options {
    pub dry_run: bool,
    /// Write zeroes where holes cannot be punched.
    pub zero: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The ranges released: free blocks of every filesystem and
    /// unpartitioned space, merged where they touch.
    pub ranges: Vec<Range<u64>>,
    pub free_bytes: u64,
    pub unpartitioned_bytes: u64,
    /// Bytes of those ranges the host had allocated before (what
    /// punching returns).
    pub allocated_in_ranges: u64,
    /// The image file's allocation (st_blocks × 512) before and after.
    pub allocated_before: u64,
    pub allocated_after: u64,
    pub dry_run: bool,
    pub zeroed_instead: bool,
}

/// Bytes of `range` the file has allocated (data, not holes).
fn allocated_in(file: &File, range: &Range<u64>) -> Result<u64> {
    use rustix::fs::{seek, SeekFrom};
    let mut pos = range.start;
    let mut total = 0u64;
    // Each turn moves past one data run; bounded by the range.
    while pos < range.end {
        let data = match seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            // ENXIO: no data at or after pos.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io("SEEK_DATA")(e.into())),
        };
        if data >= range.end {
            break;
        }
        let hole = seek(file, SeekFrom::Hole(data)).map_err(|e| io("SEEK_HOLE")(e.into()))?;
        let end = hole.min(range.end).max(data + 1);
        total += end - data;
        pos = end;
    }
    Ok(total)
}

/// Runs `bmap sparsify` on `image` described by the map `conn`.
pub fn sparsify(image: &Path, conn: &Connection, opts: &Options) -> Result<Report> {
    let name = image.display().to_string();
    let file = OpenOptions::new()
        .read(true)
        .write(!opts.dry_run)
        .open(image)
        .map_err(io(format!("opening {name}")))?;
    // Held until `file` is closed at the end: no one starts a VM on the
    // image meanwhile. A POSIX record lock over the whole file conflicts
    // with the OFD locks qemu takes.
    let lock = if opts.dry_run {
        rustix::fs::FlockOperation::NonBlockingLockShared
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    match rustix::fs::fcntl_lock(&file, lock) {
        Ok(()) => {}
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::ACCESS) => {
            return Err(SparsifyError::InUse(name))
        }
        Err(e) => return Err(io(format!("locking {name}"))(e.into())),
    }
    // The walk reads through a duplicate of the same descriptor: opening
    // the file again and closing it would drop the lock.
    let img = ImageFile::from_file(file.try_clone().map_err(io("dup"))?)
        .map_err(io(format!("reading {name}")))?;
    let indexed = match index::check_against_map(conn, &img)? {
        index::Verdict::Matches(indexed) => indexed,
        index::Verdict::Differs(why) => return Err(SparsifyError::Mismatch(why)),
    };
    let mut st = conn.prepare("SELECT device, features, state FROM filesystems")?;
    let filesystems = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for (device, features, state) in filesystems {
        if features.split_whitespace().any(|f| f == "needs_recovery")
            || state == "needs journal recovery"
        {
            return Err(SparsifyError::NeedsRecovery(device));
        }
        if state != "clean" {
            return Err(SparsifyError::FsErrors(device, state));
        }
    }

    let mut report = Report {
        dry_run: opts.dry_run,
        ..Report::default()
    };
    for s in &indexed.layout {
        let kind = indexed.map.object(s.object).kind();
        let len = s.end.saturating_sub(s.start);
        match kind {
            Kind::Free => report.free_bytes += len,
            Kind::Unpartitioned => report.unpartitioned_bytes += len,
            _ => continue,
        }
        match report.ranges.last_mut() {
            Some(last) if last.end == s.start => last.end = s.end,
            _ => report.ranges.push(s.start..s.end),
        }
    }
    let meta_now = file.metadata().map_err(io("stat"))?;
    report.allocated_before = meta_now.blocks() * 512;
    for r in &report.ranges {
        report.allocated_in_ranges += allocated_in(&file, r)?;
    }
    if opts.dry_run {
        report.allocated_after = report.allocated_before;
        return Ok(report);
    }
    let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    for r in &report.ranges {
        match rustix::fs::fallocate(&file, flags, r.start, r.end - r.start) {
            Ok(()) => {}
            Err(e @ (rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS)) => {
                if !opts.zero {
                    return Err(SparsifyError::CannotPunch(e.into()));
                }
                report.zeroed_instead = true;
                write_zeroes(&file, r)?;
            }
            Err(e) => {
                return Err(io(format!("punching {:#x}..{:#x}", r.start, r.end))(
                    e.into(),
                ))
            }
        }
    }
    file.sync_all().map_err(io(format!("syncing {name}")))?;
    report.allocated_after = file.metadata().map_err(io("stat"))?.blocks() * 512;
    drop(img);
    Ok(report)
}

fn write_zeroes(file: &File, r: &Range<u64>) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeroes = vec![0u8; CHUNK as usize];
    let mut pos = r.start;
    while pos < r.end {
        let n = (r.end - pos).min(CHUNK);
        file.write_all_at(&zeroes[..n as usize], pos)
            .map_err(io(format!("writing zeroes at {pos:#x}")))?;
        pos += n;
    }
    Ok(())
}
