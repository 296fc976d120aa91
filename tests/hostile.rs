//! Hostile input is normal input: real images built at test time with
//! mke2fs, sfdisk, sgdisk and debugfs, then damaged in one field (or one
//! structure), then indexed. Every case must finish quickly without a
//! panic, and the damage must be reported where it is: either an error whose
//! offset is the damaged structure's byte offset, or a warning naming it
//! (which makes the CLI exit non-zero with a partial map).
//!
//! The tools are required: a missing tool fails the test, it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use bmap::image::MemImage;
use bmap::index::{index, IndexOptions};
use proptest::prelude::*;

/// Any single index of these small images must finish well within this.
const TIME_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Tools and image builders
// ---------------------------------------------------------------------------

/// Finds a required tool on PATH or in the sbin directories; panics if absent.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` is not installed (apt-get install e2fsprogs gdisk fdisk)");
}

/// Runs a tool, panicking with its output if it fails. Returns stdout.
fn run(name: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a tool with `stdin` as its standard input.
fn run_stdin(name: &str, args: &[&str], stdin: &str) {
    use std::io::Write;
    let mut child = Command::new(tool(name))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Files for `mke2fs -d`: a few names, a subdirectory, and a sparse file
/// with ten separate data blocks, whose ten extents need a depth-1 tree.
fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("hello.txt"), b"hello\n").unwrap();
    std::fs::write(dir.join("sub/x"), b"x\n").unwrap();
    std::fs::write(dir.join("big"), vec![7u8; 40 * 1024]).unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(dir.join("sparse")).unwrap();
    for i in 0..10u64 {
        f.write_all_at(&[b'A'; 4096], i * 32 * 1024).unwrap();
    }
    std::os::unix::fs::symlink("hello.txt", dir.join("link")).unwrap();
}

/// A real filesystem image: `mke2fs -t TYPE` of `size_kib` with `extra`
/// options, populated by [`populate`].
struct Fs {
    dir: tempfile::TempDir,
    bytes: Vec<u8>,
}

impl Fs {
    fn new(fs_type: &str, size_kib: u64, extra: &[&str]) -> Fs {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        populate(&src);
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(size_kib * 1024)
            .unwrap();
        let mut args = vec!["-F", "-q", "-t", fs_type];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-d", p(&src), p(&img)]);
        run("mke2fs", &args);
        let bytes = std::fs::read(&img).unwrap();
        Fs { dir, bytes }
    }

    fn ext4() -> Fs {
        Fs::new("ext4", 8 * 1024, &["-b", "4096"])
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("fs.img")
    }

    fn debugfs(&self, request: &str) -> String {
        run("debugfs", &["-R", request, p(&self.path())])
    }

    /// Absolute byte offset of a file's inode (via `debugfs imap`).
    fn inode_offset(&self, file: &str) -> u64 {
        let out = self.debugfs(&format!("imap {file}"));
        // "Inode 13 is part of block group 0\n\tlocated at block 34, offset 0x0c00"
        let tail = out
            .split("located at block ")
            .nth(1)
            .unwrap_or_else(|| panic!("imap output: {out}"));
        let (block, offset) = tail
            .split_once(", offset ")
            .unwrap_or_else(|| panic!("imap output: {out}"));
        let block: u64 = block.trim().parse().unwrap();
        let offset = u64::from_str_radix(offset.trim().trim_start_matches("0x"), 16).unwrap();
        block * self.block_size() + offset
    }

    /// Physical block of a file's logical block (via `debugfs bmap`).
    fn file_block(&self, file: &str, logical: u64) -> u64 {
        let out = self.debugfs(&format!("bmap {file} {logical}"));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("bmap output: {out}"))
    }

    fn block_size(&self) -> u64 {
        1024 << u32_at(&self.bytes, 1024 + 0x18)
    }
}

fn u16_at(b: &[u8], off: u64) -> u16 {
    let o = off as usize;
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], off: u64) -> u32 {
    let o = off as usize;
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn put16(b: &mut [u8], off: u64, v: u16) {
    let o = off as usize;
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], off: u64, v: u32) {
    let o = off as usize;
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], off: u64, v: u64) {
    let o = off as usize;
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

/// A disk image file of `size` bytes with the filesystem written at 1 MiB.
/// `table` lays out the partitions; returns (dir, path).
fn disk_with(
    size: u64,
    fs: Option<&[u8]>,
    table: impl FnOnce(&Path),
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    table(&path);
    if let Some(fs) = fs {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(fs, 1 << 20).unwrap();
    }
    (dir, path)
}

/// MBR disk: partition 1 at sector 2048 holding `fs`.
fn mbr_disk(fs: &[u8]) -> Vec<u8> {
    let sectors = fs.len() as u64 / 512;
    let (_d, path) = disk_with(fs.len() as u64 + (2 << 20), Some(fs), |path| {
        run_stdin(
            "sfdisk",
            &["-q", p(path)],
            &format!("label: dos\nstart=2048, size={sectors}, type=83\n"),
        )
    });
    std::fs::read(path).unwrap()
}

/// GPT disk (512-byte sectors) with partition 1 (8 MiB, at 1 MiB) holding
/// `fs` and partition 2 (4 MiB) after it.
fn gpt_disk(fs: &[u8]) -> Vec<u8> {
    let (_d, path) = disk_with(16 << 20, Some(fs), |path| {
        run(
            "sgdisk",
            &[
                "-o",
                "-n",
                "1:2048:+8M",
                "-t",
                "1:8300",
                "-n",
                "2:0:+4M",
                "-t",
                "2:8300",
                p(path),
            ],
        );
    });
    std::fs::read(path).unwrap()
}

/// CRC-32 (IEEE), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the primary GPT's entry-array and header checksums after a
/// patch, so the damage is not simply rejected by the checksum.
fn fix_gpt_crcs(img: &mut [u8]) {
    let h = 512u64;
    let lba = u64::from_le_bytes(
        img[(h + 72) as usize..(h + 80) as usize]
            .try_into()
            .unwrap(),
    );
    let n = u64::from(u32_at(img, h + 80));
    let size = u64::from(u32_at(img, h + 84));
    let start = (lba * 512) as usize;
    let crc = crc32(&img[start..start + (n * size) as usize]);
    put32(img, h + 88, crc);
    let hs = u64::from(u32_at(img, h + 12));
    put32(img, h + 16, 0);
    let crc = crc32(&img[h as usize..(h + hs) as usize]);
    put32(img, h + 16, crc);
}

// ---------------------------------------------------------------------------
// Indexing with a time limit, and the assertion on where damage is reported
// ---------------------------------------------------------------------------

/// What an index run said, in a form that crosses threads.
#[derive(Debug)]
struct Outcome {
    error: Option<(String, Option<u64>)>,
    warnings: Vec<(Option<u64>, String)>,
    elapsed: Duration,
}

/// Indexes `bytes` on a worker thread; panics (fails the test) if the run
/// panics or takes longer than [`TIME_LIMIT`].
fn index_bytes(bytes: Vec<u8>) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let img = MemImage(bytes);
        let r = index(
            &img,
            &IndexOptions::default(),
            &indicatif::ProgressBar::hidden(),
        );
        let outcome = match r {
            Ok(idx) => Outcome {
                error: None,
                warnings: idx
                    .map
                    .warnings
                    .iter()
                    .map(|w| (w.offset, w.message.clone()))
                    .collect(),
                elapsed: started.elapsed(),
            },
            Err(e) => Outcome {
                error: Some((e.to_string(), e.offset())),
                warnings: Vec::new(),
                elapsed: started.elapsed(),
            },
        };
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(TIME_LIMIT) {
        Ok(o) => o,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("index ran longer than {TIME_LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("index panicked"),
    }
}

/// Asserts the damage at one of `offsets` was reported: an error naming it,
/// or a warning naming it.
#[track_caller]
fn assert_reported(o: &Outcome, offsets: &[u64]) {
    let hit = match &o.error {
        Some((_, at)) => at.is_some_and(|at| offsets.contains(&at)),
        None => o
            .warnings
            .iter()
            .any(|(at, _)| at.is_some_and(|at| offsets.contains(&at))),
    };
    assert!(
        hit,
        "damage at {offsets:?} (0x{:x}) not reported there: {o:#?}",
        offsets[0]
    );
}

/// Every error must name an offset; a clean run must have been clean input.
#[track_caller]
fn assert_sane(o: &Outcome) {
    if let Some((msg, at)) = &o.error {
        assert!(at.is_some(), "error without an offset: {msg}");
    }
}

const SB: u64 = 1024;

// ---------------------------------------------------------------------------
// Sanity: the undamaged images index cleanly
// ---------------------------------------------------------------------------

#[test]
fn undamaged_images_have_no_warnings() {
    let fs = Fs::ext4();
    for (name, img) in [
        ("bare", fs.bytes.clone()),
        ("mbr", mbr_disk(&fs.bytes)),
        ("gpt", gpt_disk(&fs.bytes)),
    ] {
        let o = index_bytes(img);
        assert!(o.error.is_none(), "{name}: {o:#?}");
        assert!(o.warnings.is_empty(), "{name}: {o:#?}");
    }
}

// ---------------------------------------------------------------------------
// Superblock
// ---------------------------------------------------------------------------

#[test]
fn truncated_filesystem_image() {
    let fs = Fs::ext4();
    let half = fs.bytes[..fs.bytes.len() / 2].to_vec();
    let o = index_bytes(half);
    assert_sane(&o);
    // The block count (s_blocks_count_lo) no longer fits the image.
    assert_reported(&o, &[SB + 0x4]);

    // The same inside a partition whose container is cut short: the disk
    // image itself is cut in the middle of the filesystem.
    let mut disk = mbr_disk(&fs.bytes);
    disk.truncate((1 << 20) + fs.bytes.len() / 2);
    let o = index_bytes(disk);
    assert_sane(&o);
    assert!(!o.warnings.is_empty() || o.error.is_some(), "{o:#?}");
}

#[test]
fn zeroed_superblock() {
    let fs = Fs::ext4();
    let mut img = fs.bytes.clone();
    img[SB as usize..SB as usize + 1024].fill(0);
    // Without its magic nothing says this was ext4: the whole disk is
    // reported unrecognised, at its start.
    let o = index_bytes(img.clone());
    assert_sane(&o);
    assert_reported(&o, &[0]);
    // The filesystem walker itself names the superblock's magic field.
    let e = walk_direct(img).unwrap_err();
    assert_eq!(e.offset(), Some(SB + 0x38), "{e}");
}

#[test]
fn wrong_magic_superblock() {
    let fs = Fs::ext4();
    let mut img = fs.bytes.clone();
    put16(&mut img, SB + 0x38, 0xEF54);
    let o = index_bytes(img.clone());
    assert_sane(&o);
    assert_reported(&o, &[0]);
    let e = walk_direct(img).unwrap_err();
    assert_eq!(e.offset(), Some(SB + 0x38), "{e}");
}

/// Runs the ext4 walker on a bare filesystem image directly.
fn walk_direct(bytes: Vec<u8>) -> bmap::Result<()> {
    let img = MemImage(bytes);
    let mut map = bmap::map::MapBuilder::new(img.0.len() as u64);
    let disk = map.add_object(bmap::map::Object::new(bmap::map::Kind::Disk, "d"));
    let region = bmap::volume::Region {
        range: 0..img.0.len() as u64,
        parent: disk,
        partition: None,
        device: "/dev/sda".into(),
    };
    bmap::ext4::walk(&img, &region, &mut map, &indicatif::ProgressBar::hidden())
}

/// Patches a u32 superblock field and checks that field is named.
#[track_caller]
fn superblock_field(field: u64, value: u32) {
    let fs = Fs::ext4();
    let mut img = fs.bytes.clone();
    put32(&mut img, SB + field, value);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[SB + field]);
}

#[test]
fn absurd_block_size() {
    superblock_field(0x18, 40);
}

#[test]
fn blocks_per_group_zero() {
    superblock_field(0x20, 0);
}

#[test]
fn blocks_per_group_huge() {
    superblock_field(0x20, 0xFFFF_FFF8);
}

#[test]
fn inodes_per_group_zero() {
    superblock_field(0x28, 0);
}

#[test]
fn inodes_per_group_huge() {
    superblock_field(0x28, 0xFFFF_FFFF);
}

#[test]
fn block_count_2_pow_63() {
    let fs = Fs::ext4();
    assert_ne!(
        u32_at(&fs.bytes, SB + 0x60) & 0x80,
        0,
        "mke2fs made no 64bit filesystem"
    );
    // s_blocks_count = 2^63: lo = 0, hi = 0x8000_0000.
    let patch = |img: &mut Vec<u8>, sb: u64| {
        put32(img, sb + 0x4, 0);
        put32(img, sb + 0x150, 0x8000_0000);
    };
    let mut bare = fs.bytes.clone();
    patch(&mut bare, SB);
    let o = index_bytes(bare);
    assert_sane(&o);
    assert_reported(&o, &[SB + 0x4, SB + 0x150]);

    // Inside a partition the filesystem starts at 1 MiB, so every byte
    // offset computed from a block number has that added.
    let mut disk = mbr_disk(&fs.bytes);
    let sb = (1 << 20) + SB;
    patch(&mut disk, sb);
    let o = index_bytes(disk);
    assert_sane(&o);
    assert_reported(&o, &[sb + 0x4, sb + 0x150]);
}

#[test]
fn block_count_max_in_partition() {
    // Every block number up to 2^64-1 is "inside" such a filesystem, so
    // block-to-byte arithmetic must not overflow anywhere.
    let fs = Fs::ext4();
    let mut disk = mbr_disk(&fs.bytes);
    let sb = (1 << 20) + SB;
    put32(&mut disk, sb + 0x4, u32::MAX);
    put32(&mut disk, sb + 0x150, u32::MAX);
    // Group 0's inode table now points far out.
    let gd = (1 << 20) + 4096;
    put32(&mut disk, gd + 0x8, u32::MAX);
    put32(&mut disk, gd + 0x28, u32::MAX);
    let o = index_bytes(disk);
    assert_sane(&o);
    assert_reported(&o, &[sb + 0x4]);
    assert_reported(&o, &[gd + 0x8]);
}

// ---------------------------------------------------------------------------
// Group descriptors
// ---------------------------------------------------------------------------

/// Group 0's descriptor sits in block 1 (4 KiB blocks).
const GD0: u64 = 4096;

#[track_caller]
fn descriptor_field(field: u64) {
    let fs = Fs::ext4();
    let mut img = fs.bytes.clone();
    put32(&mut img, GD0 + field, 0xFFFF_FF00);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[GD0 + field]);
}

#[test]
fn block_bitmap_past_the_end() {
    descriptor_field(0x0);
}

#[test]
fn inode_bitmap_past_the_end() {
    descriptor_field(0x4);
}

#[test]
fn inode_table_past_the_end() {
    descriptor_field(0x8);
}

#[test]
fn inode_table_straddles_the_end() {
    // Starts inside the filesystem, runs past its last block.
    let fs = Fs::ext4();
    let blocks = u32_at(&fs.bytes, SB + 0x4);
    let mut img = fs.bytes.clone();
    put32(&mut img, GD0 + 0x8, blocks - 2);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[GD0 + 0x8]);
}

// ---------------------------------------------------------------------------
// Extent trees
// ---------------------------------------------------------------------------

/// The ext4 image and the byte offset of /sparse's i_block (depth-1 tree).
fn sparse_root() -> (Fs, u64) {
    let fs = Fs::ext4();
    let i_block = fs.inode_offset("/sparse") + 0x28;
    assert_eq!(u16_at(&fs.bytes, i_block), 0xF30A, "extent magic");
    assert_eq!(
        u16_at(&fs.bytes, i_block + 6),
        1,
        "/sparse has a depth-1 tree"
    );
    (fs, i_block)
}

#[test]
fn extent_header_bad_magic() {
    let (fs, i_block) = sparse_root();
    let mut img = fs.bytes.clone();
    put16(&mut img, i_block, 0x1234);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[i_block]);
}

#[test]
fn extent_depth_above_five() {
    let (fs, i_block) = sparse_root();
    let mut img = fs.bytes.clone();
    put16(&mut img, i_block + 6, 6);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[i_block, i_block + 6]);
}

#[test]
fn extent_entries_above_max() {
    let (fs, i_block) = sparse_root();
    let mut img = fs.bytes.clone();
    let max = u16_at(&img, i_block + 4);
    put16(&mut img, i_block + 2, max + 1);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[i_block, i_block + 2]);
}

#[test]
fn extent_index_points_at_itself() {
    let (fs, i_block) = sparse_root();
    let bs = fs.block_size();
    // The root's one index entry: ei_leaf_lo at +4 of the entry.
    let leaf = u64::from(u32_at(&fs.bytes, i_block + 12 + 4));
    assert_eq!(leaf, fs.debugfs_etb("/sparse"));
    let leaf_at = leaf * bs;
    let mut img = fs.bytes.clone();
    // Make the root depth 2 and the leaf an index node (depth 1) whose
    // first entry points at the leaf block itself.
    put16(&mut img, i_block + 6, 2);
    put16(&mut img, leaf_at + 6, 1);
    put32(&mut img, leaf_at + 12 + 4, leaf as u32);
    put16(&mut img, leaf_at + 12 + 8, 0);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[leaf_at + 12]);

    // The root index pointing at its own inode table block.
    let mut img = fs.bytes.clone();
    let itable_block = i_block / bs;
    put32(&mut img, i_block + 12 + 4, itable_block as u32);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[itable_block * bs]);
}

#[test]
fn extent_leaf_past_the_end() {
    let (fs, i_block) = sparse_root();
    let leaf_at = u64::from(u32_at(&fs.bytes, i_block + 12 + 4)) * fs.block_size();
    let mut img = fs.bytes.clone();
    // First extent's ee_start_hi: a 48-bit block far past the end.
    put16(&mut img, leaf_at + 12 + 6, 0xFFFF);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[leaf_at + 12]);
}

impl Fs {
    /// The extent tree block of a depth-1 file, from `debugfs stat`.
    fn debugfs_etb(&self, file: &str) -> u64 {
        let out = self.debugfs(&format!("stat {file}"));
        let i = out
            .find("(ETB0):")
            .expect("stat shows an extent tree block")
            + 7;
        out[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

// ---------------------------------------------------------------------------
// Directories
// ---------------------------------------------------------------------------

#[track_caller]
fn dir_rec_len(value: u16) {
    let fs = Fs::ext4();
    let block = fs.file_block("/sub", 0) * fs.block_size();
    let mut img = fs.bytes.clone();
    // "." is 12 bytes; ".." follows at +12 with rec_len at +4.
    assert_eq!(
        &img[block as usize + 12 + 8..block as usize + 12 + 10],
        b".."
    );
    put16(&mut img, block + 12 + 4, value);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[block + 12]);
}

#[test]
fn dir_entry_rec_len_zero() {
    dir_rec_len(0);
}

#[test]
fn dir_entry_rec_len_past_block() {
    dir_rec_len(8192);
}

#[test]
fn dir_entry_name_len_past_rec_len() {
    let fs = Fs::ext4();
    let block = fs.file_block("/", 0) * fs.block_size();
    let mut img = fs.bytes.clone();
    img[block as usize + 6] = 200; // name_len of "."
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[block]);
}

// ---------------------------------------------------------------------------
// Partition tables
// ---------------------------------------------------------------------------

const GPT: u64 = 512;

#[test]
fn gpt_with_2_pow_32_minus_1_entries() {
    let fs = Fs::ext4();
    let mut img = gpt_disk(&fs.bytes);
    put32(&mut img, GPT + 80, u32::MAX);
    let o = index_bytes(img.clone());
    assert_sane(&o);
    assert_reported(&o, &[GPT + 80]);
    // And through the CLI: not a clean exit.
    let (code, _) = cli_on_bytes(&img);
    assert_ne!(code, 0);
}

#[test]
fn gpt_entry_size_zero() {
    let fs = Fs::ext4();
    let mut img = gpt_disk(&fs.bytes);
    put32(&mut img, GPT + 84, 0);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[GPT + 84]);
}

#[test]
fn gpt_entries_lba_overflows() {
    let fs = Fs::ext4();
    let mut img = gpt_disk(&fs.bytes);
    put64(&mut img, GPT + 72, u64::MAX / 2);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[GPT + 72]);
}

/// Byte offset of GPT entry `i` (entries at LBA 2, 128 bytes each).
fn gpt_entry(i: u64) -> u64 {
    1024 + i * 128
}

#[test]
fn gpt_partition_past_the_end() {
    let fs = Fs::ext4();
    let base = gpt_disk(&fs.bytes);
    // Ends past the end: clipped, warned.
    let mut img = base.clone();
    put64(&mut img, gpt_entry(1) + 40, 1 << 40);
    fix_gpt_crcs(&mut img);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[gpt_entry(1)]);
    // Starts past the end.
    let mut img = base.clone();
    put64(&mut img, gpt_entry(1) + 32, 1 << 40);
    put64(&mut img, gpt_entry(1) + 40, (1 << 40) + 100);
    fix_gpt_crcs(&mut img);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[gpt_entry(1)]);
    // Last LBA of u64::MAX: the end's byte offset overflows.
    let mut img = base.clone();
    put64(&mut img, gpt_entry(1) + 40, u64::MAX);
    fix_gpt_crcs(&mut img);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[gpt_entry(1)]);
}

#[test]
fn gpt_overlapping_partitions() {
    let fs = Fs::ext4();
    let mut img = gpt_disk(&fs.bytes);
    // Partition 2 starts inside partition 1.
    put64(&mut img, gpt_entry(1) + 32, 4096);
    fix_gpt_crcs(&mut img);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[gpt_entry(1)]);
}

#[test]
fn mbr_partition_past_the_end() {
    let fs = Fs::ext4();
    let mut img = mbr_disk(&fs.bytes);
    put32(&mut img, 446 + 12, u32::MAX);
    let o = index_bytes(img.clone());
    assert_sane(&o);
    assert_reported(&o, &[446]);
    put32(&mut img, 446 + 8, u32::MAX - 1);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[446]);
}

#[test]
fn mbr_overlapping_partitions() {
    let fs = Fs::ext4();
    let mut img = mbr_disk(&fs.bytes);
    // Slot 2 copies slot 1 shifted by one sector.
    let e1: Vec<u8> = img[446..462].to_vec();
    img[462..478].copy_from_slice(&e1);
    let start = u32_at(&img, 446 + 8);
    put32(&mut img, 462 + 8, start + 1);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[462]);
}

/// An MBR disk with an extended partition holding two logical partitions;
/// returns the image and the byte offsets of the two EBRs.
fn ebr_disk() -> (Vec<u8>, u64, u64) {
    let (_d, path) = disk_with(32 << 20, None, |path| {
        let d = p(path);
        run_stdin(
            "sfdisk",
            &["-q", d],
            &format!(
                "label: dos\n{d}1 : start=2048, size=4096, type=83\n{d}2 : start=8192, size=40960, type=5\n{d}5 : size=8192, type=83\n{d}6 : size=8192, type=83\n"
            ),
        )
    });
    let img = std::fs::read(path).unwrap();
    let ext_lba = u64::from(u32_at(&img, 462 + 8));
    assert_eq!(img[462 + 4], 0x05);
    let ebr1 = ext_lba * 512;
    assert_eq!(u16_at(&img, ebr1 + 510), 0xAA55);
    assert_eq!(img[ebr1 as usize + 462 + 4], 0x05, "EBR 1 links to EBR 2");
    let ebr2 = (ext_lba + u64::from(u32_at(&img, ebr1 + 462 + 8))) * 512;
    assert!(ebr2 > ebr1);
    assert_eq!(u16_at(&img, ebr2 + 510), 0xAA55);
    (img, ebr1, ebr2)
}

#[test]
fn ebr_chain_loops() {
    let (mut img, ebr1, ebr2) = ebr_disk();
    // The second EBR's link slot points back at the first EBR.
    let link = ebr2 + 446 + 16;
    img[link as usize + 4] = 0x05;
    put32(&mut img, link + 8, 0);
    put32(&mut img, link + 12, 1);
    let o = index_bytes(img.clone());
    assert_sane(&o);
    assert_reported(&o, &[link]);
    // And a self-loop: the first EBR links to itself.
    let (mut img, _, _) = ebr_disk();
    let link = ebr1 + 446 + 16;
    put32(&mut img, link + 8, 0);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[link]);
}

#[test]
fn ebr_link_past_the_end() {
    let (mut img, ebr1, _) = ebr_disk();
    let link = ebr1 + 446 + 16;
    put32(&mut img, link + 8, u32::MAX);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[link]);
}

// ---------------------------------------------------------------------------
// Garbage, empty and huge images
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic bytes without another dependency.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn random_bytes_several_seeds() {
    for seed in 1..=6 {
        let mut img = random_bytes(seed, 1 << 20);
        let o = index_bytes(img.clone());
        assert_sane(&o);
        // The same garbage behind a valid-looking MBR signature and an ext
        // magic at 1080, so the parsers below get to see it.
        img[510] = 0x55;
        img[511] = 0xAA;
        put16(&mut img, 1024 + 0x38, 0xEF53);
        let o = index_bytes(img.clone());
        assert_sane(&o);
        img[446..510].fill(0);
        let o = index_bytes(img.clone());
        assert_sane(&o);
        img[512..520].copy_from_slice(b"EFI PART");
        let o = index_bytes(img);
        assert_sane(&o);
    }
}

/// Runs `bmap index` on `bytes` (written to a temporary file); returns the
/// exit code and stderr.
fn cli_on_bytes(bytes: &[u8]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, bytes).unwrap();
    cli_index(&img, &dir.path().join("disk.bmap"))
}

fn cli_index(img: &Path, map: &Path) -> (i32, String) {
    let started = Instant::now();
    let out = Command::cargo_bin("bmap")
        .unwrap()
        .args(["index", p(img), "-o", p(map)])
        .output()
        .unwrap();
    assert!(started.elapsed() < TIME_LIMIT, "bmap index took too long");
    (
        out.status.code().expect("bmap was killed by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn empty_file_via_cli() {
    let (code, stderr) = cli_on_bytes(&[]);
    assert_ne!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn truncated_image_via_cli() {
    let fs = Fs::ext4();
    let (code, stderr) = cli_on_bytes(&fs.bytes[..fs.bytes.len() / 2]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("at byte 1028 "), "{stderr}");
}

#[test]
fn sixteen_tib_sparse_gpt_via_cli() {
    let fs = Fs::ext4();
    // tmpfs holds a 16 TiB sparse file; ext4 stops 4 KiB short of it.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let img = dir.path().join("huge.img");
    let tib16 = 16u64 << 40;
    let f = std::fs::File::create(&img).unwrap();
    let size = if f.set_len(tib16).is_ok() {
        tib16
    } else {
        f.set_len(tib16 - (1 << 20)).unwrap();
        tib16 - (1 << 20)
    };
    drop(f);
    run(
        "sgdisk",
        &["-o", "-n", "1:2048:+8M", "-t", "1:8300", p(&img)],
    );
    run(
        "dd",
        &[
            &format!("if={}", p(&fs.path())),
            &format!("of={}", p(&img)),
            "bs=1M",
            "seek=1",
            "conv=notrunc",
            "status=none",
        ],
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
    let map = dir.path().join("huge.bmap");
    // At most 1 GiB of address space: a read or allocation sized by the
    // disk rather than by its metadata would fail.
    let started = Instant::now();
    let out = Command::new("bash")
        .args([
            "-c",
            "ulimit -v 1048576 && exec \"$@\"",
            "bash",
            env!("CARGO_BIN_EXE_bmap"),
            "index",
            p(&img),
            "-o",
            p(&map),
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(stderr.contains("1 partitions, 1 filesystems"), "{stderr}");
    // Damage in the huge image: partition 1's last LBA far past the end.
    let mut table = vec![0u8; 34 * 512];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        f.read_exact_at(&mut table, 0).unwrap();
        put64(&mut table, gpt_entry(0) + 40, u64::MAX - 1);
        fix_gpt_crcs(&mut table);
        f.write_all_at(&table, 0).unwrap();
    }
    let (code, stderr) = cli_index(&img, &dir.path().join("huge2.bmap"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("at byte 1024 "), "{stderr}");
}

// ---------------------------------------------------------------------------
// Property tests: arbitrary bytes and mutations of real images never panic
// ---------------------------------------------------------------------------

/// Small real images to mutate: ext4 with 1 KiB blocks, ext2 (block maps),
/// and ext4 inside a GPT.
fn bases() -> &'static [Vec<u8>] {
    static BASES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASES.get_or_init(|| {
        let ext4 = Fs::new("ext4", 1024, &["-b", "1024", "-N", "64"]);
        let ext2 = Fs::new("ext2", 1024, &["-b", "1024", "-N", "64"]);
        let gpt = gpt_disk(&Fs::new("ext4", 2048, &["-b", "4096", "-N", "64"]).bytes);
        vec![ext4.bytes.clone(), ext2.bytes.clone(), gpt]
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16384)) {
        let o = index_bytes(bytes);
        assert_sane(&o);
    }

    #[test]
    fn arbitrary_bytes_behind_signatures_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..16384),
        which in 0..3usize,
    ) {
        let mut img = bytes;
        img.resize(img.len().max(2048), 0);
        match which {
            0 => { img[510] = 0x55; img[511] = 0xAA; }
            1 => img[512..520].copy_from_slice(b"EFI PART"),
            _ => put16(&mut img, 1024 + 0x38, 0xEF53),
        }
        let o = index_bytes(img);
        assert_sane(&o);
    }

    #[test]
    fn mutated_real_images_never_panic(
        which in 0..3usize,
        muts in proptest::collection::vec(
            (prop_oneof![0u64..8192, 0u64..(1 << 20), 0u64..(2 << 20)], any::<u8>(), 0..3u8),
            1..24,
        ),
    ) {
        let mut img = bases()[which].clone();
        let len = img.len() as u64;
        for (at, v, width) in muts {
            let at = at % len;
            match width {
                // A byte, or a whole little-endian field set to something
                // extreme, the way real corruption often looks.
                0 => img[at as usize] = v,
                1 if at + 4 <= len => put32(&mut img, at, u32::from(v).wrapping_mul(0x0101_0101)),
                _ if at + 8 <= len => put64(&mut img, at, if v & 1 == 0 { u64::MAX } else { 1 << (v % 64) }),
                _ => {}
            }
        }
        let o = index_bytes(img);
        assert_sane(&o);
    }
}

#[test]
fn blocks_per_group_tiny() {
    // Eight blocks per group: a real 8 MiB filesystem becomes 256 groups
    // whose descriptors are whatever follows the real descriptor block.
    let fs = Fs::ext4();
    let mut img = fs.bytes.clone();
    put32(&mut img, SB + 0x20, 8);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[SB, SB + 0x20]);
    assert!(o.elapsed < Duration::from_secs(10), "{:?}", o.elapsed);
}

#[test]
fn inode_tables_claim_more_than_the_filesystem() {
    // 2048 groups of 32768 inodes of 4 KiB: every group's inode table is
    // the whole 64 MiB filesystem again (most descriptors past group 0 are
    // zeros: inode table at block 0). Reading them all would be 128 GiB.
    let fs = Fs::new("ext4", 64 * 1024, &["-b", "4096"]);
    let mut img = fs.bytes.clone();
    put32(&mut img, SB + 0x20, 8);
    put32(&mut img, SB + 0x28, 32768);
    put16(&mut img, SB + 0x58, 4096);
    let o = index_bytes(img);
    assert_sane(&o);
    assert_reported(&o, &[SB + 0x28]);
    assert!(o.elapsed < Duration::from_secs(10), "{:?}", o.elapsed);
}

#[test]
fn directories_cross_linked_over_the_whole_filesystem() {
    // Two thousand directories, each patched to claim the whole 64 MiB
    // filesystem as its data: 125 GiB of directory reads if nothing stops.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..2000 {
        std::fs::create_dir_all(src.join(format!("d{i}"))).unwrap();
    }
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(
        "mke2fs",
        &[
            "-F",
            "-q",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-d",
            p(&src),
            p(&img),
        ],
    );
    let mut bytes = std::fs::read(&img).unwrap();
    let itable = u64::from(u32_at(&bytes, GD0 + 0x8)) * 4096;
    let isz = u64::from(u16_at(&bytes, SB + 0x58));
    let mut patched = 0;
    for ino in 12..2100u64 {
        let at = itable + (ino - 1) * isz;
        if u16_at(&bytes, at) & 0xF000 != 0x4000 {
            continue;
        }
        put32(&mut bytes, at + 0x4, 64 << 20); // i_size
        let i_block = at + 0x28;
        put16(&mut bytes, i_block + 2, 1); // one extent
        put16(&mut bytes, i_block + 6, 0); // a leaf
        put32(&mut bytes, i_block + 12, 0); // logical 0
        put16(&mut bytes, i_block + 16, 16384); // 16384 blocks
        put16(&mut bytes, i_block + 18, 0);
        put32(&mut bytes, i_block + 20, 0); // from block 0
        patched += 1;
    }
    assert!(patched >= 2000, "{patched}");
    let o = index_bytes(bytes);
    assert_sane(&o);
    assert!(o.elapsed < Duration::from_secs(15), "{:?}", o.elapsed);
    // Every claimed block is garbage as a directory block, so the stored
    // warnings may fill up before the cross-link is named.
    assert!(
        o.warnings
            .iter()
            .any(|(_, m)| m.contains("cross-linked") || m.contains("too many warnings")),
        "{:#?}",
        &o.warnings[..o.warnings.len().min(5)]
    );
}
