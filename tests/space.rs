//! `bmap space` against an independent computation: filesystems made by
//! mke2fs -d, files deleted with `debugfs -w rm` so free blocks hold stale
//! data, placed into a sparse MBR disk made by sfdisk. The test works out
//! free, non-zero-free and hole-free bytes itself from dumpe2fs's
//! per-group "Free blocks:" lists, the image bytes and SEEK_DATA/SEEK_HOLE
//! (python3's os.lseek), and compares with the real binary's JSON.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Data regions of a host file, [start, end), from SEEK_DATA/SEEK_HOLE.
fn data_regions(path: &Path) -> Vec<(u64, u64)> {
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
off = 0
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    print(d, h)
    off = h
"#;
    let out = run_tool("python3", &["-c", script, path.to_str().unwrap()]);
    out.lines()
        .map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<u64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect()
}

/// Bytes of [s, e) that are data (not holes).
fn data_bytes(regions: &[(u64, u64)], s: u64, e: u64) -> u64 {
    regions
        .iter()
        .map(|&(a, b)| b.min(e).saturating_sub(a.max(s)))
        .sum()
}

/// Free block numbers from dumpe2fs's per-group "Free blocks:" lines.
fn free_blocks(fs_img: &Path) -> BTreeSet<u64> {
    let text = run_tool("dumpe2fs", &[fs_img.to_str().unwrap()]);
    let mut set = BTreeSet::new();
    for line in text.lines() {
        let Some(list) = line.strip_prefix("  Free blocks: ") else {
            continue;
        };
        for piece in list.split(", ").filter(|p| !p.is_empty()) {
            let (a, b) = match piece.split_once('-') {
                Some((a, b)) => (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()),
                None => {
                    let n = piece.parse::<u64>().unwrap();
                    (n, n)
                }
            };
            set.extend(a..=b);
        }
    }
    set
}

/// What the test expects for one filesystem at `offset` in `disk`.
#[derive(Debug, PartialEq)]
struct Expected {
    free: u64,
    nonzero: u64,
    holes: u64,
    sparsify: u64,
}

fn expected(disk: &Path, fs_img: &Path, offset: u64) -> Expected {
    let d = dumpe2fs(fs_img);
    let bs = d.block_size;
    let free = free_blocks(fs_img);
    assert_eq!(
        free.len() as u64,
        d.free_blocks,
        "dumpe2fs free lists vs count"
    );
    let regions = data_regions(disk);
    let f = File::open(disk).unwrap();
    let host = fs::metadata(disk).unwrap().blksize();
    let mut e = Expected {
        free: free.len() as u64 * bs,
        nonzero: 0,
        holes: 0,
        sparsify: 0,
    };
    let mut buf = vec![0u8; bs as usize];
    for &b in &free {
        let s = offset + b * bs;
        f.read_exact_at(&mut buf, s).unwrap();
        if buf.iter().any(|&x| x != 0) {
            e.nonzero += bs;
        }
        e.holes += bs - data_bytes(&regions, s, s + bs);
    }
    // Host blocks wholly made of free filesystem blocks, allocated bytes.
    let fs_end = offset + d.blocks_count * bs;
    let mut h = offset.div_ceil(host) * host;
    while h + host <= fs_end {
        let first = (h - offset) / bs;
        let last = (h + host - 1 - offset) / bs;
        if (first..=last).all(|b| free.contains(&b)) {
            e.sparsify += data_bytes(&regions, h, h + host);
        }
        h += host;
    }
    e
}

fn stale_tree(t: &Tree, salt: usize) {
    for i in 0..40 {
        t.file(&format!("/keep/k{i}"), 2000 * i + salt);
        t.file(&format!("/gone/g{i}"), 3000 * i + 1 + salt);
    }
    t.file("/gone/big", MIB as usize + salt);
    t.file("/keep/big", MIB as usize / 2 + salt);
}

/// An ext4 image of `bytes` populated by `stale_tree`, with /gone's files
/// deleted by debugfs (their blocks stay as they were: stale data).
fn make_stale_fs(dir: &Path, name: &str, bs: u32, bytes: u64, salt: usize) -> PathBuf {
    let tree = Tree::new(dir.join(format!("{name}-tree")));
    stale_tree(&tree, salt);
    let img = dir.join(format!("{name}.img"));
    sparse_file(&img, bytes);
    mkfs(
        &img,
        "ext4",
        bs,
        "",
        &[],
        Some(&tree.root),
        &(bytes / u64::from(bs)).to_string(),
    );
    let mut cmds: Vec<String> = (0..40).map(|i| format!("rm /gone/g{i}")).collect();
    cmds.push("rm /gone/big".into());
    debugfs_write(&img, &cmds);
    // A fragmented file.
    let frag = dir.join(format!("{name}-frag"));
    fs::write(&frag, pattern(400_000, 99)).unwrap();
    debugfs_write(
        &img,
        &[
            format!("write {} /keep/fragmented", frag.display()),
            // Punched ranges leave physical gaps: three fragments.
            "punch /keep/fragmented 10 19".into(),
            "punch /keep/fragmented 40 45".into(),
        ],
    );
    fsck_clean(&img);
    img
}

fn bmap_space(map: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bmap"))
        .arg("space")
        .arg(map)
        .args(extra)
        .output()
        .expect("running bmap space")
}

fn space_json(map: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = bmap_space(map, &args);
    assert!(
        out.status.success(),
        "bmap space failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    v.as_array().expect("a JSON list").clone()
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("field {k} missing or not a number in {v}"))
}

fn check_fs(v: &Value, want: &Expected) {
    let got = Expected {
        free: u(v, "free_bytes"),
        nonzero: u(v, "free_nonzero_bytes"),
        holes: u(v, "free_hole_bytes"),
        sparsify: u(v, "sparsify_bytes"),
    };
    assert_eq!(&got, want, "bmap space vs the independent computation");
    assert!(want.nonzero > 0, "the test must have stale free blocks");
    assert!(want.holes > 0, "the test must have free holes");
    // The histogram covers every free byte.
    let hist = v["free_extent_histogram"].as_array().unwrap();
    let sum: u64 = hist.iter().map(|b| u(b, "bytes")).sum();
    assert_eq!(sum, want.free, "histogram bytes sum to the free bytes");
    let extents: u64 = hist.iter().map(|b| u(b, "extents")).sum();
    assert_eq!(extents, u(v, "free_extents"));
    for b in hist {
        assert_eq!(u(b, "max_bytes"), 2 * u(b, "min_bytes"));
    }
    assert_eq!(
        u(v, "used_bytes") + u(v, "free_bytes"),
        u(v, "size_bytes"),
        "used + free = size"
    );
    let m = &v["min_size"];
    assert!(u(m, "estimate_bytes") >= u(v, "used_bytes") / 2);
    assert!(u(m, "recommended_bytes") >= u(m, "estimate_bytes"));
}

/// Counts discontinuities in debugfs's block list of each regular file.
fn debugfs_fragments(img: &Path, paths: &[String]) -> Vec<u64> {
    let cmds: Vec<String> = paths.iter().map(|p| format!("blocks {p}")).collect();
    debugfs_batch(img, &cmds)
        .iter()
        .map(|out| {
            let blocks: Vec<u64> = out
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            1 + blocks.windows(2).filter(|w| w[1] != w[0] + 1).count() as u64
        })
        .collect()
}

#[test]
fn mbr_disk_with_stale_and_sparse_free_space() {
    let dir = tempdir();
    let disk = dir.path().join("disk.img");
    let size = 64 * MIB;
    sparse_file(&disk, size);
    // p1: ext4 4K at 1 MiB (24 MiB); p2: ext4 1K at 26 MiB (16 MiB); the
    // rest of the disk is unpartitioned.
    let script = "label: dos\nunit: sectors\n\n\
        start=2048, size=49152, type=83\n\
        start=53248, size=32768, type=83\n";
    run_tool_stdin("sfdisk", &[disk.to_str().unwrap()], script);
    let table = sfdisk_json(&disk);
    let part = |n: u32| -> (u64, u64) {
        let p = table.iter().find(|p| p.0 == n).unwrap();
        (p.1 * 512, (p.1 + p.2) * 512)
    };
    let (s1, e1) = part(1);
    let (s2, e2) = part(2);
    let fs1 = make_stale_fs(dir.path(), "p1", 4096, e1 - s1, 1);
    let fs2 = make_stale_fs(dir.path(), "p2", 1024, e2 - s2, 2);
    place(&disk, &fs1, s1);
    place(&disk, &fs2, s2);
    // Allocated zeros in a free run of p1 (not holes, not non-zero).
    let bs1 = 4096;
    let free1 = free_blocks(&fs1);
    let run: Vec<u64> = free1.iter().copied().rev().take(64).collect();
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for &b in &run {
        f.write_all_at(&[0u8; 4096], s1 + b * bs1).unwrap();
    }
    // Junk in the unpartitioned gap after the MBR and past the last
    // partition; allocated zeros at the disk's end.
    f.write_all_at(&pattern(3000, 5), 4096).unwrap();
    f.write_all_at(&pattern(777, 6), e2 + 10_000).unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], size - (1 << 20))
        .unwrap();
    f.sync_all().unwrap();
    drop(f);

    let map = dir.path().join("disk.bmap");
    bmap_index_clean(&disk, &map, &[]);
    let list = space_json(&map, &[]);
    assert_eq!(list.len(), 2, "one object per filesystem: {list:?}");
    // Required names, in order.
    let keys: Vec<&String> = list[0].as_object().unwrap().keys().collect();
    assert_eq!(
        &keys[..6],
        &[
            "partition",
            "device",
            "type",
            "free_bytes",
            "free_nonzero_bytes",
            "free_hole_bytes"
        ]
    );
    assert_eq!(list[0]["partition"], 1);
    assert_eq!(list[1]["partition"], 2);
    assert_eq!(u(&list[0], "free_bytes"), dumpe2fs(&fs1).free_blocks * 4096);
    assert_eq!(u(&list[1], "free_bytes"), dumpe2fs(&fs2).free_blocks * 1024);
    check_fs(&list[0], &expected(&disk, &fs1, s1));
    check_fs(&list[1], &expected(&disk, &fs2, s2));
    // The 4K filesystem on 4K host blocks: everything allocated and free
    // can be returned.
    let v = &list[0];
    if fs::metadata(&disk).unwrap().blksize() == 4096 {
        assert_eq!(
            u(v, "sparsify_bytes"),
            u(v, "free_bytes") - u(v, "free_hole_bytes")
        );
    }

    // Unpartitioned: [512, s1), [e1, s2) and [e2, size), per sector.
    let out = bmap_space(&map, &["--json", "--unpartitioned"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let un: Value = serde_json::from_slice(&out.stdout).unwrap();
    let un = &un;
    assert_eq!(un["type"], "unpartitioned");
    assert!(un["partition"].is_null());
    let regions = data_regions(&disk);
    let bytes = fs::read(&disk).unwrap();
    let ranges = [(512u64, s1), (e1, s2), (e2, size)];
    let total: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
    let nonzero: u64 = ranges
        .iter()
        .flat_map(|&(a, b)| (a..b).step_by(512))
        .filter(|&s| bytes[s as usize..s as usize + 512].iter().any(|&x| x != 0))
        .count() as u64
        * 512;
    let holes: u64 = ranges
        .iter()
        .map(|&(a, b)| (b - a) - data_bytes(&regions, a, b))
        .sum();
    assert_eq!(u(un, "free_bytes"), total);
    assert_eq!(u(un, "free_nonzero_bytes"), nonzero);
    assert_eq!(u(un, "free_hole_bytes"), holes);
    // The junk spans sectors 8..=13 and 19..=21 of their regions.
    assert_eq!(nonzero, 9 * 512);

    // Fragmentation against debugfs's block lists.
    let paths: Vec<String> = (0..40)
        .map(|i| format!("/keep/k{i}"))
        .chain(["/keep/big".to_string(), "/keep/fragmented".to_string()])
        .collect();
    for (i, (v, fs_img)) in [(&list[0], &fs1), (&list[1], &fs2)].into_iter().enumerate() {
        let frags = debugfs_fragments(fs_img, &paths);
        let want_noncontig = frags.iter().filter(|&&n| n > 1).count() as u64;
        // Directories here are one block each: contiguous.
        assert_eq!(
            u(v, "noncontiguous_files"),
            want_noncontig,
            "filesystem {}: {frags:?}",
            i + 1
        );
        assert!(want_noncontig >= 1, "the written file must be fragmented");
        let worst = v["worst_files"].as_array().unwrap();
        let top = &worst[0];
        let most = *frags.iter().max().unwrap();
        assert_eq!(u(top, "fragments"), most);
        let idx = frags.iter().position(|&n| n == most).unwrap();
        if frags.iter().filter(|&&n| n == most).count() == 1 {
            assert_eq!(top["path"], paths[idx].as_str());
        }
        let files_with_blocks = u(v, "files_with_blocks");
        assert!(files_with_blocks >= paths.len() as u64);
    }

    // Text output names the figures.
    let out = bmap_space(&map, &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "partition 1",
        "partition 2",
        "non-zero",
        "holes",
        "sparsify",
        "unpartitioned",
        "non-contiguous",
        "smallest filesystem",
    ] {
        assert!(text.contains(want), "text output lacks {want:?}:\n{text}");
    }
}

#[test]
fn bare_filesystem_has_partition_null() {
    let dir = tempdir();
    let fs_img = make_stale_fs(dir.path(), "bare", 4096, 16 * MIB, 3);
    let map = dir.path().join("bare.bmap");
    bmap_index_clean(&fs_img, &map, &[]);
    let list = space_json(&map, &[]);
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0]["partition"].is_null());
    assert_eq!(
        u(&list[0], "free_bytes"),
        dumpe2fs(&fs_img).free_blocks * 4096
    );
    check_fs(&list[0], &expected(&fs_img, &fs_img, 0));
}

#[test]
fn image_override_and_mismatch_errors() {
    let dir = tempdir();
    let fs_img = make_stale_fs(dir.path(), "img", 4096, 12 * MIB, 4);
    let map = dir.path().join("img.bmap");
    bmap_index_clean(&fs_img, &map, &[]);
    // Moved image: a clear error; --image finds it.
    let moved = dir.path().join("moved.img");
    fs::rename(&fs_img, &moved).unwrap();
    let out = bmap_space(&map, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be opened") && err.contains("--image"),
        "{err}"
    );
    let list = space_json(&map, &["--image", moved.to_str().unwrap()]);
    assert_eq!(list.len(), 1);
    // A copy written to since indexing (its superblock changed): refused.
    let written = dir.path().join("written.img");
    fs::copy(&moved, &written).unwrap();
    debugfs_write(&written, &["rm /keep/k7".to_string()]);
    let out = bmap_space(&map, &["--image", written.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match the map"), "{err}");
    // A different size: refused, naming both sizes.
    let f = fs::OpenOptions::new().append(true).open(&moved).unwrap();
    f.set_len(12 * MIB + 4096).unwrap();
    drop(f);
    let out = bmap_space(&map, &["--image", moved.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&(12 * MIB + 4096).to_string()) && err.contains(&(12 * MIB).to_string()),
        "{err}"
    );
}

#[test]
fn hostile_free_extent_beyond_image_is_an_error() {
    let dir = tempdir();
    let fs_img = make_stale_fs(dir.path(), "h", 4096, 12 * MIB, 5);
    let map = dir.path().join("h.bmap");
    bmap_index_clean(&fs_img, &map, &[]);
    let conn = rusqlite::Connection::open(&map).unwrap();
    conn.execute(
        "UPDATE extents SET end = end + 1099511627776
         WHERE object IN (SELECT id FROM objects WHERE kind = 'free')
           AND start = (SELECT max(start) FROM extents
                        WHERE object IN (SELECT id FROM objects WHERE kind = 'free'))",
        [],
    )
    .unwrap();
    drop(conn);
    let out = bmap_space(&map, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("free extent") && err.contains("beyond"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A block size that is no block size.
    let conn = rusqlite::Connection::open(&map).unwrap();
    conn.execute("UPDATE filesystems SET block_size = 3", [])
        .unwrap();
    drop(conn);
    let out = bmap_space(&map, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("block size 3"), "{err}");
}
