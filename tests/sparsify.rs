//! `bmap sparsify` on disks made by sfdisk + mke2fs -d with files then
//! deleted by debugfs (so free blocks hold stale data) and random bytes in
//! unpartitioned space: used bytes stay identical, free bytes read as
//! zeroes and are holes, e2fsck stays clean; and every refusal changes
//! nothing.

mod common;

use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BMAP: &str = env!("CARGO_BIN_EXE_bmap");
const PART_START: u64 = 1 << 20;

/// Runs a command that must succeed; its standard output.
fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&common::run(cmd).stdout).into_owned()
}

fn fs_name(img: &Path) -> String {
    format!("{}?offset={PART_START}", img.display())
}

/// A 64 MiB MBR disk, one 40 MiB partition at 1 MiB holding ext4 with 4 KiB
/// blocks made from 20 random files, 10 of them then deleted; 2 MB of
/// random bytes in the unpartitioned space after it.
fn disk(dir: &Path) -> PathBuf {
    let tree = dir.join("tree/d");
    std::fs::create_dir_all(&tree).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8 | 1
            })
            .collect()
    };
    for i in 1..=20 {
        std::fs::write(tree.join(format!("f{i}")), random(300_000)).unwrap();
    }
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .arg("-q")
        .arg(&img)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"start=2048, size=81920, type=83\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-b", "4096", "-E"])
        .arg(format!("offset={PART_START}"))
        .arg("-d")
        .arg(dir.join("tree"))
        .arg(&img)
        .arg("10240"));
    for i in 1..=10 {
        run(Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("rm /d/f{i}"))
            .arg(fs_name(&img)));
    }
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &random(2_000_000), 50 << 20).unwrap();
    img
}

fn index(img: &Path) -> PathBuf {
    let map = PathBuf::from(format!("{}.bmap", img.display()));
    run(Command::new(BMAP)
        .arg("index")
        .arg(img)
        .arg("-o")
        .arg(&map)
        .arg("--force"));
    map
}

/// Free space and unpartitioned space, from the map's views.
fn free_ranges(map: &Path) -> Vec<Range<u64>> {
    run(Command::new("sqlite3").arg("-readonly").arg(map).arg(
        "SELECT start, end FROM free_space UNION ALL \
         SELECT start, end FROM layout WHERE kind = 'unpartitioned' ORDER BY 1",
    ))
    .lines()
    .map(|l| {
        let (a, b) = l.split_once('|').unwrap();
        a.parse().unwrap()..b.parse().unwrap()
    })
    .collect()
}

fn sparsify(img: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BMAP)
        .arg("sparsify")
        .arg(img)
        .args(args)
        .output()
        .unwrap()
}

/// Data runs of the file (SEEK_DATA / SEEK_HOLE, by python).
fn data_runs(img: &Path) -> Vec<Range<u64>> {
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
pos = 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    print(d, h)
    pos = h
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(img))
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            a.parse().unwrap()..b.parse().unwrap()
        })
        .collect()
}

#[test]
fn sparsify_zeroes_and_frees_exactly_the_free_space_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path());
    let map = index(&img);
    let ranges = free_ranges(&map);
    let before = std::fs::read(&img).unwrap();
    let blocks_before = std::fs::metadata(&img).unwrap().blocks();
    // Stale data is really there, or the test proves nothing.
    assert!(ranges
        .iter()
        .any(|r| before[r.start as usize..r.end as usize]
            .iter()
            .any(|&b| b != 0)));

    // --dry-run changes nothing.
    let out = sparsify(&img, &["--dry-run", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), before);
    assert_eq!(std::fs::metadata(&img).unwrap().blocks(), blocks_before);
    let free: u64 = run(Command::new("sqlite3")
        .arg(&map)
        .arg("SELECT sum(length) FROM free_space"))
    .trim()
    .parse()
    .unwrap();
    assert_eq!(plan["free_bytes"], free);

    let out = sparsify(&img, &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let after = std::fs::read(&img).unwrap();
    assert_eq!(after.len(), before.len());
    let in_ranges = |i: usize| ranges.iter().any(|r| r.contains(&(i as u64)));
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        if in_ranges(i) {
            assert_eq!(*b, 0, "free byte {i:#x} is not zero");
        } else {
            assert_eq!(a, b, "used byte {i:#x} changed");
        }
    }
    // Every whole 4 KiB host block inside a free range is a hole now.
    for d in data_runs(&img) {
        for r in &ranges {
            let (s, e) = (r.start.div_ceil(4096) * 4096, r.end / 4096 * 4096);
            assert!(
                d.end <= s || d.start >= e,
                "data {d:?} left inside free range {r:?}"
            );
        }
    }
    let blocks_after = std::fs::metadata(&img).unwrap().blocks();
    assert!(blocks_after < blocks_before);
    assert_eq!(
        done["released_bytes"],
        (blocks_before - blocks_after) * 512,
        "{done}"
    );
    // What the dry run promised is what was released, give or take the
    // host's own metadata for the file.
    let promised = plan["allocated_in_ranges"].as_u64().unwrap();
    let released = (blocks_before - blocks_after) * 512;
    assert!(
        released + 4096 >= promised && released <= promised + 64 * 1024,
        "{promised} vs {released}"
    );
    run(Command::new("e2fsck").arg("-fn").arg(fs_name(&img)));
}

fn sha(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_filesystem_needing_recovery_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path());
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg("feature needs_recovery")
        .arg(fs_name(&img)));
    index(&img);
    let hash = sha(&img);
    let out = sparsify(&img, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs journal recovery"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(sha(&img), hash);
}

#[test]
fn a_map_of_another_state_of_the_image_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path());
    index(&img);
    // The superblock changes after indexing: the map is stale.
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg("ssv volume_name changed")
        .arg(fs_name(&img)));
    let hash = sha(&img);
    let out = sparsify(&img, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the map does not describe this image"),
        "{err}"
    );
    assert_eq!(sha(&img), hash);
}

#[test]
fn an_image_qemu_has_open_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path());
    index(&img);
    let hash = sha(&img);
    // qemu-io keeps the image open (and locked) until its stdin closes.
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-io");
    let mut stdin = qemu.stdin.take().unwrap();
    // A command round-trip: once it is answered, the image is open.
    writeln!(stdin, "read 0 512").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = sparsify(&img, &[]);
    drop(stdin);
    let _ = qemu.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a lock"), "{err}");
    assert_eq!(sha(&img), hash);
    // Once qemu is gone the same command works.
    let out = sparsify(&img, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
