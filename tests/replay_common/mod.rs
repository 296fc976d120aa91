//! Helpers for tests/replay.rs: the shipped sample disk, indexed by the real
//! binary; extents read back from the map; real trace producers (nbdkit's
//! log filter, qemu-io's trace events) driven at test time; `bmap replay`
//! run and its output parsed.
//!
//! A missing tool fails the test with a clear message; it never skips.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use assert_cmd::cargo::CommandCargoExt;
use rusqlite::Connection;

pub use super::common::{run, sgdisk_info, tool};

pub const SECTOR: u64 = 512;
pub const IMAGE_SIZE: u64 = 64 << 20;

/// The sample disk unpacked into a fresh directory and indexed.
pub struct Sample {
    pub dir: tempfile::TempDir,
    pub img: PathBuf,
    pub map: PathBuf,
}

impl Sample {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Byte offset of partition `n` in the disk, as sgdisk reports it.
    pub fn part_start(&self, n: u32) -> u64 {
        sgdisk_info(&self.img, n).0 * SECTOR
    }

    /// Unix socket path for nbdkit inside the test directory.
    pub fn sock(&self) -> PathBuf {
        self.path("nbd.sock")
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock().display())
    }
}

/// Unpacks `sample-maps/sample.img.gz` (a fully allocated file, so nbdkit's
/// extents say "data" everywhere) and indexes it with `bmap index`.
pub fn sample() -> Sample {
    let dir = tempfile::Builder::new()
        .prefix("bmap-replay-")
        .tempdir()
        .unwrap();
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-maps/sample.img.gz");
    let img = dir.path().join("sample.img");
    let out = run(Command::new(tool("gzip")).arg("-dc").arg(&gz));
    assert_eq!(out.stdout.len() as u64, IMAGE_SIZE);
    std::fs::write(&img, out.stdout).unwrap();
    let map = dir.path().join("sample.bmap");
    let out = Command::cargo_bin("bmap")
        .unwrap()
        .arg("index")
        .arg(&img)
        .arg("-o")
        .arg(&map)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bmap index failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Sample { dir, img, map }
}

/// The disk extents of `path` (distinct, in logical order) from the map's
/// `file_extents` view: (disk_offset, length).
pub fn extents(map: &Path, partition: u32, path: &str) -> Vec<(u64, u64)> {
    let conn = Connection::open(map).unwrap();
    let mut st = conn
        .prepare(
            "SELECT DISTINCT logical_offset, disk_offset, length FROM file_extents
             WHERE path = ?1 AND partition = ?2 ORDER BY logical_offset",
        )
        .unwrap();
    let v: Vec<(u64, u64)> = st
        .query_map(rusqlite::params![path, partition], |r| {
            Ok((r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(!v.is_empty(), "{path} has no extents in the map");
    v
}

/// Every file-like object with data: (partition, inode) → (its names, bytes
/// of its extents).
pub fn objects_with_data(map: &Path) -> BTreeMap<(u32, u64), (Vec<String>, u64)> {
    let conn = Connection::open(map).unwrap();
    let mut names: BTreeMap<(u32, u64), Vec<String>> = BTreeMap::new();
    let mut st = conn
        .prepare("SELECT DISTINCT partition, inode, path FROM file_extents")
        .unwrap();
    for r in st
        .query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap()
    {
        let (p, i, n) = r.unwrap();
        names.entry((p, i)).or_default().push(n);
    }
    let mut st = conn
        .prepare(
            "SELECT partition, inode, sum(length) FROM
               (SELECT DISTINCT partition, inode, disk_offset, length FROM file_extents)
             GROUP BY partition, inode",
        )
        .unwrap();
    let mut out = BTreeMap::new();
    for r in st
        .query_map([], |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .unwrap()
    {
        let (p, i, b) = r.unwrap();
        out.insert((p, i), (names.remove(&(p, i)).unwrap_or_default(), b));
    }
    out
}

/// `debugfs -R "blocks PATH" FS`: the filesystem's own block list.
pub fn debugfs_blocks(fs: &Path, path: &str) -> Vec<u64> {
    let out = run(Command::new(tool("debugfs"))
        .arg("-R")
        .arg(format!("blocks {path}"))
        .arg(fs));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect()
}

/// Copies `len` bytes at `offset` of `img` into `out` (a partition, for
/// debugfs).
pub fn extract(img: &Path, offset: u64, len: u64, out: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(out, buf).unwrap();
}

/// Runs `nbdkit -U SOCK --filter=log [filters] file IMG logfile=LOG [params]
/// --run SCRIPT`; nbdkit exits when the script does. Returns its output.
pub fn nbdkit(
    s: &Sample,
    img: &Path,
    log: &Path,
    filters: &[&str],
    params: &[&str],
    script: &str,
) -> Output {
    let _ = std::fs::remove_file(s.sock());
    let mut cmd = Command::new(tool("nbdkit"));
    cmd.arg("-U").arg(s.sock()).arg("--filter=log");
    for f in filters {
        cmd.arg(format!("--filter={f}"));
    }
    cmd.arg("file")
        .arg(img)
        .arg(format!("logfile={}", log.display()));
    cmd.args(params);
    cmd.arg("--run").arg(script);
    cmd.output().expect("running nbdkit")
}

/// A shell command running one qemu-io over the NBD socket with one
/// `read OFF LEN` per range.
pub fn qemu_io_script(s: &Sample, reads: &[(u64, u64)]) -> String {
    let mut c = format!("{} -r -f raw '{}'", tool("qemu-io").display(), s.uri());
    for (o, l) in reads {
        c.push_str(&format!(" -c 'read {o} {l}'"));
    }
    c
}

/// Runs `bmap replay ARGS` in `cwd`.
pub fn replay_in<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Output {
    let mut cmd = Command::cargo_bin("bmap").unwrap();
    cmd.current_dir(cwd).arg("replay");
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().unwrap()
}

/// `bmap replay TRACE --map MAP EXTRA...`.
pub fn replay(map: &Path, trace: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![trace.as_os_str(), OsStr::new("--map"), map.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    replay_in(map.parent().unwrap(), &args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        truncate(&stdout(o)),
        truncate(&stderr(o))
    )
}

fn truncate(s: &str) -> String {
    if s.len() > 6000 {
        let mut end = 6000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &s[..end], s.len())
    } else {
        s.to_string()
    }
}

/// `--summary --json`, asserting the exit status.
pub fn summary(map: &Path, trace: &Path, extra: &[&str], code: i32) -> serde_json::Value {
    let mut args = vec!["--summary", "--json"];
    args.extend_from_slice(extra);
    let o = replay(map, trace, &args);
    assert_eq!(o.status.code(), Some(code), "{}", describe(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {}", describe(&o)))
}

/// The summary's files as "DEVICE PATH" → bytes_read (directories too).
pub fn files_read(v: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for f in v["files"].as_array().expect("files array") {
        let key = format!(
            "{} {}",
            f["device"].as_str().unwrap_or("?"),
            f["path"].as_str().unwrap()
        );
        let prev = m.insert(key.clone(), f["bytes_read"].as_u64().unwrap());
        assert!(prev.is_none(), "{key} listed twice in {v:#}");
    }
    m
}

pub fn total(v: &serde_json::Value, k: &str) -> u64 {
    v["totals"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("totals.{k} missing in {v:#}"))
}

/// One file the tests read, with where it lives.
#[derive(Debug, Clone)]
pub struct Pick {
    pub partition: u32,
    pub path: &'static str,
    /// The ranges read, absolute in the disk.
    pub reads: Vec<(u64, u64)>,
}

impl Pick {
    /// All of the file's extents.
    pub fn whole(map: &Path, partition: u32, path: &'static str) -> Pick {
        Pick {
            partition,
            path,
            reads: extents(map, partition, path),
        }
    }

    pub fn key(&self) -> String {
        format!("/dev/sda{} {}", self.partition, self.path)
    }

    pub fn bytes(&self) -> u64 {
        self.reads.iter().map(|r| r.1).sum()
    }
}

pub fn expected(picks: &[Pick]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for p in picks {
        *m.entry(p.key()).or_insert(0) += p.bytes();
    }
    m
}

/// Line numbers (1-based) of the lines of `text` containing `needle`.
pub fn lines_with(text: &str, needle: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect()
}
