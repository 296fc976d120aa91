//! The packed copy of the layout and objects (`packed_map`, schema 5):
//! replay must say exactly the same with it as from the tables, editing
//! the tables must drop it, and a damaged or missing copy must only cost
//! time.
//!
//! The images are real: the shipped sample disk (GPT, two ext4) and an
//! ext4 made by `mke2fs -d` from a tree with awkward names (spaces,
//! non-ASCII, names that end like their directory), symlinks and a
//! fragmented file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;
use common::{bmap_index_clean, mkfs, run, tempdir, tool};
use rusqlite::Connection;

fn bmap(args: &[&std::ffi::OsStr]) -> Output {
    Command::cargo_bin("bmap")
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// The views compared, each as `bmap replay` arguments.
const VIEWS: &[&[&str]] = &[
    &[],
    &["-v"],
    &["--json"],
    &["--csv"],
    &["--summary"],
    &["--summary", "--json"],
    &["--boot-list"],
];

/// Every view of `trace` against `map`: stdout, stderr, exit status.
fn replay_all(map: &Path, trace: &Path) -> Vec<(Vec<u8>, Vec<u8>, Option<i32>)> {
    VIEWS
        .iter()
        .map(|v| {
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "replay".as_ref(),
                trace.as_os_str(),
                "--map".as_ref(),
                map.as_os_str(),
            ];
            args.extend(v.iter().map(|a| std::ffi::OsStr::new(*a)));
            let o = bmap(&args);
            (o.stdout, o.stderr, o.status.code())
        })
        .collect()
}

fn packed_rows(map: &Path) -> i64 {
    let c = Connection::open(map).unwrap();
    c.query_row("SELECT count(*) FROM packed_map", [], |r| r.get(0))
        .unwrap()
}

fn copy(map: &Path, name: &str) -> PathBuf {
    let to = map.with_file_name(name);
    std::fs::copy(map, &to).unwrap();
    to
}

/// Runs `sql` as a hand edit would (the stock sqlite3 does not enforce
/// foreign keys).
fn exec(map: &Path, sql: &str) {
    let c = Connection::open(map).unwrap();
    c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    c.execute_batch(sql).unwrap();
}

/// A CSV trace that reads the whole image in 48 KiB steps (so requests
/// straddle objects), then re-reads and writes a few ranges, then reads
/// past the end.
fn sweep_trace(dir: &Path, image_size: u64) -> PathBuf {
    let mut text = String::from("time,op,offset,length\n");
    let mut t = 0.0;
    let mut off = 0;
    while off < image_size {
        text.push_str(&format!("{t:.6},read,{off},49152\n"));
        off += 49152;
        t += 0.001;
    }
    for i in 0..50u64 {
        let o = (i * 7919 * 4096) % image_size;
        text.push_str(&format!("{t:.6},read,{o},8192\n{t:.6},write,{o},4096\n"));
        t += 0.001;
    }
    text.push_str(&format!("{t:.6},read,{},4096\n", image_size - 1024));
    let p = dir.join("sweep.csv");
    std::fs::write(&p, text).unwrap();
    p
}

/// An ext4 image from a tree whose names test the packing of names that
/// are not `device + " " + path`, or whose path does not end the name.
fn awkward_image(dir: &Path) -> (PathBuf, u64) {
    let tree = dir.join("tree");
    for d in ["a b", "snö ☃", "x/x", "deep/1/2/3/4/5/6/7/8"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    for (i, f) in [
        "a b/c d.txt",
        "snö ☃/ü.bin",
        "x/x/x",
        "deep/1/2/3/4/5/6/7/8/leaf",
        "plain",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(tree.join(f), common::pattern(3000 + i * 70_000, i as u64)).unwrap();
    }
    std::os::unix::fs::symlink("a b/c d.txt", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(200), tree.join("long link")).unwrap();
    let img = dir.join("awkward.img");
    mkfs(&img, "ext4", 1024, "", &[], Some(&tree), "8M");
    // A fragmented file: free a hole between two files, then write a file
    // larger than the hole.
    let small = dir.join("small.bin");
    std::fs::write(&small, common::pattern(40_000, 99)).unwrap();
    let big = dir.join("big.bin");
    std::fs::write(&big, common::pattern(100_000, 98)).unwrap();
    let debugfs = |cmd: String| {
        run(Command::new(tool("debugfs"))
            .arg("-w")
            .arg("-R")
            .arg(cmd)
            .arg(&img));
    };
    for i in 0..3 {
        debugfs(format!("write {} frag{i}", small.display()));
    }
    debugfs("rm frag1".into());
    debugfs(format!("write {} frag3", big.display()));
    (img, 8 << 20)
}

fn sample_disk(dir: &Path) -> (PathBuf, u64) {
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-maps/sample.img.gz");
    let out = run(Command::new(tool("gzip")).arg("-dc").arg(&gz));
    let img = dir.join("sample.img");
    std::fs::write(&img, &out.stdout).unwrap();
    (img, out.stdout.len() as u64)
}

#[test]
fn replay_from_the_packed_copy_equals_replay_from_the_tables() {
    let dir = tempdir();
    for (img, size) in [sample_disk(dir.path()), awkward_image(dir.path())] {
        let map = img.with_extension("bmap");
        bmap_index_clean(&img, &map, &[]);
        assert_eq!(packed_rows(&map), 1, "bmap index writes the packed copy");
        let tables = copy(&map, "tables.bmap");
        exec(&tables, "DELETE FROM packed_map");
        let trace = sweep_trace(dir.path(), size);
        let packed = replay_all(&map, &trace);
        let plain = replay_all(&tables, &trace);
        for (i, (a, b)) in packed.iter().zip(&plain).enumerate() {
            assert!(
                a == b,
                "{}: view {:?} differs between the packed copy and the tables:\n{}\n---\n{}",
                img.display(),
                VIEWS[i],
                String::from_utf8_lossy(&a.0),
                String::from_utf8_lossy(&b.0)
            );
        }
        // The sweep touched every file: names with spaces and snowmen
        // came through the packing.
        let summary = String::from_utf8_lossy(&packed[4].0).into_owned();
        if img.ends_with("awkward.img") {
            for f in [
                "/a b/c d.txt",
                "/snö ☃/ü.bin",
                "/x/x/x",
                "/long link",
                "/frag3",
            ] {
                assert!(summary.contains(f), "{f} missing from:\n{summary}");
            }
        }
    }
}

#[test]
fn editing_a_copied_table_drops_the_packed_copy() {
    let dir = tempdir();
    let (img, size) = sample_disk(dir.path());
    let map = dir.path().join("sample.bmap");
    bmap_index_clean(&img, &map, &[]);
    let edits = [
        "UPDATE objects SET path = '/etc/renamed' WHERE path = '/etc/fstab'",
        "INSERT INTO objects(kind, name) VALUES ('file', 'new')",
        "DELETE FROM objects WHERE id = (SELECT max(id) FROM objects)",
        "UPDATE layout_segments SET object = 1 WHERE start = 0",
        "DELETE FROM layout_segments WHERE start = 0",
        "INSERT INTO layout_segments(start, end, object) VALUES (-2, -1, 1)",
    ];
    for (i, sql) in edits.iter().enumerate() {
        let m = copy(&map, &format!("edit{i}.bmap"));
        exec(&m, sql);
        assert_eq!(packed_rows(&m), 0, "after {sql}");
    }
    // And the edit shows: the renamed file is read under its new path.
    let m = map.with_file_name("edit0.bmap");
    let trace = sweep_trace(dir.path(), size);
    let list = bmap(&[
        "replay".as_ref(),
        trace.as_os_str(),
        "--map".as_ref(),
        m.as_os_str(),
        "--boot-list".as_ref(),
    ]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.lines().any(|l| l == "/etc/renamed"), "{text}");
    assert!(!text.lines().any(|l| l == "/etc/fstab"), "{text}");
    // Storing a trace leaves the packed copy alone.
    let m = copy(&map, "stored.bmap");
    let o = bmap(&[
        "replay".as_ref(),
        trace.as_os_str(),
        "--map".as_ref(),
        m.as_os_str(),
        "--store".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(packed_rows(&m), 1);
}

#[test]
fn a_damaged_or_missing_packed_copy_only_costs_time() {
    let dir = tempdir();
    let (img, size) = sample_disk(dir.path());
    let map = dir.path().join("sample.bmap");
    bmap_index_clean(&img, &map, &[]);
    let trace = sweep_trace(dir.path(), size);
    let want = replay_all(&map, &trace);
    let damages = [
        // An older bmap's format, and a newer one's.
        "UPDATE packed_map SET format = 1",
        "UPDATE packed_map SET format = 3",
        "UPDATE packed_map SET objects = substr(objects, 1, length(objects) - 1)",
        "UPDATE packed_map SET segments = substr(segments, 1, length(segments) - 1)",
        "UPDATE packed_map SET objects = substr(objects, 1, length(objects) / 2)",
        "UPDATE packed_map SET objects = randomblob(length(objects))",
        "UPDATE packed_map SET segments = randomblob(length(segments))",
        "UPDATE packed_map SET segments = zeroblob(30)",
        "UPDATE packed_map SET strings = substr(strings, 2)",
        "UPDATE packed_map SET strings = X'ff' || strings",
        "UPDATE packed_map SET kinds = ''",
        "UPDATE packed_map SET segments = 7, objects = 'text'",
        "DROP TABLE packed_map",
    ];
    for (i, sql) in damages.iter().enumerate() {
        let m = copy(&map, &format!("damaged{i}.bmap"));
        exec(&m, sql);
        let got = replay_all(&m, &trace);
        for (v, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b, "after {sql}: view {:?} differs", VIEWS[v]);
        }
    }
}

#[test]
fn a_schema_4_map_is_read_as_it_is() {
    let dir = tempdir();
    let (img, size) = sample_disk(dir.path());
    let map = dir.path().join("sample.bmap");
    bmap_index_clean(&img, &map, &[]);
    let trace = sweep_trace(dir.path(), size);
    let want = replay_all(&map, &trace);
    let old = copy(&map, "old.bmap");
    exec(
        &old,
        "DROP TABLE packed_map;
         DROP TRIGGER packed_map_objects_insert; DROP TRIGGER packed_map_objects_update;
         DROP TRIGGER packed_map_objects_delete; DROP TRIGGER packed_map_layout_insert;
         DROP TRIGGER packed_map_layout_update; DROP TRIGGER packed_map_layout_delete;
         PRAGMA user_version = 4; VACUUM",
    );
    let before = std::fs::read(&old).unwrap();
    assert_eq!(replay_all(&old, &trace), want);
    assert_eq!(
        std::fs::read(&old).unwrap(),
        before,
        "reading changed the map"
    );
    // Writing to it (--store) brings it to the current schema.
    let o = bmap(&[
        "replay".as_ref(),
        trace.as_os_str(),
        "--map".as_ref(),
        old.as_os_str(),
        "--store".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = Connection::open(&old).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 5);
    assert_eq!(packed_rows(&old), 0);
}
