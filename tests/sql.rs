//! `bmap sql` and the example queries of `sample-maps/queries/`, on a map
//! of the shipped sample disk made at test time with the shipped trace
//! stored. Every example's answer is computed again without bmap: from
//! sgdisk, dumpe2fs and debugfs on the partitions cut out of the disk, and
//! from the trace read in plain Rust. Missing tools fail the tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn bmap() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("bmap").expect("bmap binary")
}

/// Runs an external tool, which must be installed and succeed.
fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (the tool must be installed)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn query_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sample-maps/queries")
        .join(name)
}

fn trace_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-maps/boot.nbdkit.log")
}

/// One leaf extent, in filesystem blocks.
#[derive(Debug, Clone)]
struct Ext {
    phys: u64,
    len: u64,
}

/// One name in a filesystem, as debugfs sees it.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    ino: u64,
    kind: &'static str,
    size: u64,
    extents: Vec<Ext>,
}

/// One partition with its ext4 filesystem, seen by debugfs and dumpe2fs.
struct Fs {
    number: u64,
    start: u64,
    end: u64,
    image: PathBuf,
    bs: u64,
    entries: Vec<Entry>,
    dumpe2fs: String,
}

impl Fs {
    fn device(&self) -> String {
        format!("/dev/sda{}", self.number)
    }
    fn debugfs(&self, cmds: &[String]) -> String {
        let file = self.image.with_extension("cmds");
        std::fs::write(&file, cmds.join("\n") + "\n").unwrap();
        tool(
            Command::new("debugfs")
                .arg("-f")
                .arg(&file)
                .arg(&self.image),
        )
    }
    /// Absolute byte range of a run of blocks.
    fn bytes(&self, block: u64, blocks: u64) -> (u64, u64) {
        let s = self.start + block * self.bs;
        (s, s + blocks * self.bs)
    }
    /// `(first, last)` block ranges of the dumpe2fs lines starting `label`.
    fn ranges(&self, label: &str) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for line in self.dumpe2fs.lines() {
            let line = line.trim();
            for part in line.split(", ") {
                if let Some(rest) = part.strip_prefix(label) {
                    let num = rest.split_whitespace().next().unwrap_or("");
                    let mut it = num.split('-');
                    let a: u64 = it.next().unwrap().parse().unwrap();
                    let b: u64 = it.next().map_or(a, |b| b.parse().unwrap());
                    out.push((a, b));
                }
            }
        }
        out
    }
    fn free_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for line in self.dumpe2fs.lines() {
            // The group sections' lines, not the superblock's count.
            let Some(rest) = line.strip_prefix("  Free blocks: ") else {
                continue;
            };
            for r in rest.split(", ").filter(|r| !r.is_empty()) {
                let mut it = r.split('-');
                let a: u64 = it.next().unwrap().parse().unwrap();
                let b: u64 = it.next().map_or(a, |b| b.parse().unwrap());
                match runs.last_mut() {
                    Some(last) if last.1 + 1 == a => last.1 = b,
                    _ => runs.push((a, b)),
                }
            }
        }
        runs.iter()
            .map(|&(a, b)| self.bytes(a, b - a + 1))
            .collect()
    }
}

struct Sample {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    map: PathBuf,
    image_size: u64,
    fss: Vec<Fs>,
    /// MBR, GPT header and entries, unpartitioned space, from sgdisk.
    table: Vec<(&'static str, u64, u64)>,
}

fn mode_kind(mode: &str) -> &'static str {
    // debugfs `ls -p` prints the mode in octal: 040755, 100644, 120777.
    match mode.len().checked_sub(4).map(|i| &mode[..i]) {
        Some("4" | "04") => "directory",
        Some("10") => "file",
        Some("12") => "symlink",
        _ => "other",
    }
}

/// Walks a filesystem with debugfs: every name, its inode, kind, size and
/// leaf extents.
fn walk(fs: &mut Fs) {
    let mut entries = vec![Entry {
        path: "/".into(),
        ino: 2,
        kind: "directory",
        size: 0,
        extents: Vec::new(),
    }];
    let mut level = vec!["/".to_string()];
    while !level.is_empty() {
        let cmds: Vec<String> = level.iter().map(|d| format!("ls -p {d}")).collect();
        let out = fs.debugfs(&cmds);
        let mut next = Vec::new();
        let mut cur = String::new();
        for line in out.lines() {
            if let Some(d) = line.strip_prefix("debugfs: ls -p ") {
                cur = d.to_string();
                continue;
            }
            let f: Vec<&str> = line.split('/').collect();
            // Empty slots (inode 0, as in lost+found) are no names.
            if f.len() < 7 || f[5] == "." || f[5] == ".." || f[1] == "0" {
                continue;
            }
            let path = if cur == "/" {
                format!("/{}", f[5])
            } else {
                format!("{cur}/{}", f[5])
            };
            let kind = mode_kind(f[2]);
            if kind == "directory" {
                next.push(path.clone());
            }
            entries.push(Entry {
                path,
                ino: f[1].parse().unwrap(),
                kind,
                size: 0,
                extents: Vec::new(),
            });
        }
        level = next;
    }
    // Sizes and leaf extents, one debugfs run for all names.
    let cmds: Vec<String> = entries
        .iter()
        .flat_map(|e| [format!("stat {}", e.path), format!("ex {}", e.path)])
        .collect();
    let out = fs.debugfs(&cmds);
    let mut by_cmd: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut cur = String::new();
    for line in out.lines() {
        if let Some(c) = line.strip_prefix("debugfs: ") {
            cur = c.to_string();
            by_cmd.entry(cur.clone()).or_default();
        } else {
            by_cmd.entry(cur.clone()).or_default().push(line);
        }
    }
    for e in &mut entries {
        let stat = &by_cmd[&format!("stat {}", e.path)];
        let user = stat.iter().find(|l| l.starts_with("User:")).unwrap();
        e.size = user
            .rsplit("Size: ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for line in &by_cmd[&format!("ex {}", e.path)] {
            let t = line.replace('/', " / ");
            let t: Vec<&str> = t.split_whitespace().collect();
            if t.len() < 13 || t[1] != "/" || t[0].parse::<u64>().is_err() {
                continue;
            }
            if t[0] != t[2] {
                continue; // an index node, not a leaf
            }
            e.extents.push(Ext {
                phys: t[9].parse().unwrap(),
                len: t[12].parse().unwrap(),
            });
        }
    }
    fs.entries = entries;
}

/// Unpacks the sample, cuts its partitions out where sgdisk says they are,
/// indexes it and stores the shipped trace.
fn sample() -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-maps/sample.img.gz");
    let img = d.join("sample.img");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .expect("gzip must be installed");
    assert!(out.status.success());
    let bytes = out.stdout;
    std::fs::write(&img, &bytes).unwrap();
    let p = tool(Command::new("sgdisk").arg("-p").arg(&img));
    let sector: u64 = p
        .lines()
        .find_map(|l| l.strip_prefix("Sector size (logical): "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let (t_first, t_last) = p
        .lines()
        .find_map(|l| l.strip_prefix("Main partition table begins at sector "))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].parse::<u64>().unwrap(), w[5].parse::<u64>().unwrap())
        })
        .unwrap();
    let mut fss = Vec::new();
    for n in 1..=2u64 {
        let i = tool(
            Command::new("sgdisk")
                .arg("-i")
                .arg(n.to_string())
                .arg(&img),
        );
        let sec = |label: &str| -> u64 {
            i.lines()
                .find_map(|l| l.strip_prefix(label))
                .and_then(|l| l.split_whitespace().next())
                .unwrap()
                .parse()
                .unwrap()
        };
        let start = sec("First sector: ") * sector;
        let end = (sec("Last sector: ") + 1) * sector;
        let image = d.join(format!("p{n}.img"));
        std::fs::write(&image, &bytes[start as usize..end as usize]).unwrap();
        let dumpe2fs = tool(Command::new("dumpe2fs").arg(&image));
        let bs: u64 = dumpe2fs
            .lines()
            .find_map(|l| l.strip_prefix("Block size:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut fs = Fs {
            number: n,
            start,
            end,
            image,
            bs,
            entries: Vec::new(),
            dumpe2fs,
        };
        walk(&mut fs);
        fss.push(fs);
    }
    let image_size = bytes.len() as u64;
    let table = vec![
        ("mbr", 0, sector),
        ("gpt-header", sector, 2 * sector),
        ("gpt-entries", t_first * sector, (t_last + 1) * sector),
        ("unpartitioned", (t_last + 1) * sector, fss[0].start),
    ];
    let map = d.join("sample.bmap");
    bmap()
        .arg("index")
        .arg(&img)
        .arg("-o")
        .arg(&map)
        .assert()
        .success();
    bmap()
        .arg("replay")
        .arg(trace_path())
        .arg("--map")
        .arg(&map)
        .arg("--store")
        .assert()
        .success();
    Sample {
        _dir: dir,
        dir: d,
        map,
        image_size,
        fss,
        table,
    }
}

impl Sample {
    fn fs_at(&self, offset: u64) -> &Fs {
        self.fss
            .iter()
            .find(|f| f.start <= offset && offset < f.end)
            .unwrap()
    }
    fn entry(&self, part: u64, path: &str) -> &Entry {
        self.fss[part as usize - 1]
            .entries
            .iter()
            .find(|e| e.path == path)
            .unwrap()
    }
    /// Absolute byte ranges of an entry's extents.
    fn ranges_of(&self, fs: &Fs, e: &Entry) -> Vec<(u64, u64)> {
        e.extents.iter().map(|x| fs.bytes(x.phys, x.len)).collect()
    }
    /// Stores a CSV trace of `reads` under `name`.
    fn store_csv(&self, name: &str, reads: &[(u64, u64)]) {
        let mut csv = String::from("time,op,offset,length\n");
        for (i, (off, len)) in reads.iter().enumerate() {
            csv.push_str(&format!("{}.0,read,{off},{len}\n", i + 1));
        }
        let path = self.dir.join(name);
        std::fs::write(&path, csv).unwrap();
        bmap()
            .arg("replay")
            .arg(&path)
            .arg("--map")
            .arg(&self.map)
            .arg("--store")
            .assert()
            .success();
    }
    /// A read of free space, of inode tables and of parts of files.
    fn probe_reads(&self) -> Vec<(u64, u64)> {
        let (p1, p2) = (&self.fss[0], &self.fss[1]);
        let it1 = p1.ranges("Inode table at ");
        let it2 = p2.ranges("Inode table at ");
        let free1 = p1.free_runs();
        let free2 = p2.free_runs();
        let vml = self.ranges_of(p1, self.entry(1, "/vmlinuz-6.1.0-sample"));
        let tool = self.ranges_of(p2, self.entry(2, "/usr/bin/tool31"));
        let host = self.ranges_of(p2, self.entry(2, "/etc/hostname"));
        vec![
            // The last block of group 0's inode table and the first of group 1's.
            (p1.bytes(it1[1].0, 0).0 - p1.bs, 2 * p1.bs),
            (p1.bytes(it1[1].0 + 1, 0).0, 4096),
            (p2.bytes(it2[0].0, 0).0, 8192),
            (free1[0].0 + 4 * p1.bs, 2048),
            // One block before free space and one in it.
            (free2[0].0 - p2.bs, 2 * p2.bs),
            (vml[0].0, 65536),
            (vml[0].0, 4096), // a re-read
            (tool[0].0, 4096),
            (host[0].0, host[0].1 - host[0].0),
        ]
    }
}

/// The reads of the shipped nbdkit trace that succeeded, parsed here.
fn boot_reads() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(trace_path()).unwrap();
    let mut pending = BTreeMap::new();
    let mut reads = Vec::new();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    for line in text.lines() {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        if line.contains(" Read id=") {
            let id = field("id=").unwrap();
            pending.insert(
                id,
                (
                    hex(&field("offset=").unwrap()),
                    hex(&field("count=").unwrap()),
                ),
            );
        } else if line.contains(" ...Read id=") {
            let id = field("id=").unwrap();
            let r = pending.remove(&id).unwrap();
            if field("return=").as_deref() == Some("0") {
                reads.push(r);
            }
        }
    }
    assert_eq!(reads.len(), 53);
    reads
}

/// Bytes shared by two `[start, end)` ranges.
fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
}

/// `bmap sql MAP --json` with the SQL on stdin.
fn sql_json(map: &Path, sql: &str) -> Value {
    let out = bmap()
        .arg("sql")
        .arg(map)
        .arg("--json")
        .write_stdin(sql.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json output is JSON")
}

fn run_query(map: &Path, name: &str) -> Vec<Value> {
    let sql = std::fs::read_to_string(query_path(name)).unwrap();
    let v = sql_json(map, &sql);
    let rows = v.as_array().expect("a list").clone();
    assert!(
        rows.iter().all(Value::is_object),
        "{name}: one statement gives a list of row objects"
    );
    rows
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a u64"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn q01_what_is_at_offset_matches_icheck_and_ncheck() {
    let s0 = sample();
    let x = 0x1800123u64;
    let fs = s0.fs_at(x);
    let block = (x - fs.start) / fs.bs;
    let out = fs.debugfs(&[format!("icheck {block}")]);
    let ino: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{block}\t")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let e = fs.entries.iter().find(|e| e.ino == ino).unwrap();
    let ncheck = fs.debugfs(&[format!("ncheck {ino}")]);
    assert!(ncheck.contains(&e.path), "{ncheck}");
    let (start, end) = s0
        .ranges_of(fs, e)
        .into_iter()
        .find(|r| r.0 <= x && x < r.1)
        .unwrap();
    let rows = run_query(&s0.map, "01-what-is-at-offset.sql");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    let name = format!("{} {}", fs.device(), e.path);
    assert_eq!(u(&r["start"]), start);
    assert_eq!(u(&r["end"]), end);
    assert_eq!(s(&r["kind"]), e.kind);
    assert_eq!(s(&r["object"]), name);
    assert_eq!(s(&r["path"]), e.path);
    assert_eq!(u(&r["offset_in_segment"]), x - start);
    assert_eq!(s(&r["object_at"]), name);
}

#[test]
fn q02_largest_files_match_debugfs() {
    let s0 = sample();
    let mut want: Vec<(u64, u64, String, u64, u64)> = Vec::new();
    for fs in &s0.fss {
        for e in fs.entries.iter().filter(|e| e.kind == "file") {
            let alloc: u64 = e.extents.iter().map(|x| x.len * fs.bs).sum();
            want.push((
                e.size,
                fs.number,
                e.path.clone(),
                alloc,
                e.extents.len() as u64,
            ));
        }
    }
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    want.truncate(10);
    let got: Vec<_> = run_query(&s0.map, "02-largest-files.sql")
        .iter()
        .map(|r| {
            (
                u(&r["size"]),
                u(&r["partition"]),
                s(&r["path"]).to_string(),
                u(&r["allocated_bytes"]),
                u(&r["extent_count"]),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn q03_most_fragmented_match_debugfs_extents() {
    let s0 = sample();
    let mut want = Vec::new();
    for fs in &s0.fss {
        for e in fs.entries.iter().filter(|e| !e.extents.is_empty()) {
            let sum: u64 = e.extents.iter().map(|x| x.len * fs.bs).sum();
            let max = e.extents.iter().map(|x| x.len * fs.bs).max().unwrap();
            let c = round(max as f64 / sum as f64, 4);
            want.push((
                e.extents.len() as u64,
                c,
                fs.number,
                e.path.clone(),
                e.kind,
                e.size,
                sum,
            ));
        }
    }
    want.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    want.truncate(5);
    let rows = run_query(&s0.map, "03-most-fragmented.sql");
    assert_eq!(rows.len(), want.len());
    for (r, w) in rows.iter().zip(&want) {
        assert_eq!(u(&r["extents"]), w.0, "{r}");
        assert!(close(f(&r["contiguity"]), w.1), "{r} {w:?}");
        assert_eq!(u(&r["partition"]), w.2, "{r}");
        assert_eq!(s(&r["path"]), w.3, "{r}");
        assert_eq!(s(&r["kind"]), w.4, "{r}");
        assert_eq!(u(&r["size"]), w.5, "{r}");
        assert_eq!(u(&r["allocated_bytes"]), w.6, "{r}");
    }
    // The sample's sparse file (head, 8 MiB hole, tail) is the one with two.
    assert_eq!(s(&rows[0]["path"]), "/var/log/sparse.db");
}

#[test]
fn q04_boot_bytes_by_kind_match_the_trace() {
    let s0 = sample();
    // Every byte range the trace can touch, from sgdisk and debugfs.
    let mut places: Vec<(&str, String, (u64, u64))> = s0
        .table
        .iter()
        .map(|&(k, a, b)| (k, k.to_string(), (a, b)))
        .collect();
    for fs in &s0.fss {
        let mut seen = BTreeSet::new();
        // Hard links: one inode, one set of places.
        for e in fs.entries.iter().filter(|e| seen.insert(e.ino)) {
            for r in s0.ranges_of(fs, e) {
                places.push((e.kind, format!("{} {}", fs.number, e.ino), r));
            }
        }
    }
    let mut bytes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut objects: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in boot_reads() {
        let mut covered = 0;
        for (kind, id, p) in &places {
            let n = overlap((r.0, r.0 + r.1), *p);
            if n > 0 {
                *bytes.entry(kind).or_default() += n;
                objects.entry(kind).or_default().insert(id.clone());
                covered += n;
            }
        }
        assert_eq!(covered, r.1, "read {r:?} falls outside the places known");
    }
    let mut want: Vec<(String, u64, u64)> = bytes
        .iter()
        .map(|(k, b)| (k.to_string(), objects[k].len() as u64, *b))
        .collect();
    want.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    let got: Vec<_> = run_query(&s0.map, "04-boot-bytes-by-kind.sql")
        .iter()
        .map(|r| {
            assert_eq!(s(&r["trace"]), "boot.nbdkit.log");
            (s(&r["kind"]).to_string(), u(&r["objects"]), u(&r["bytes"]))
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn q05_inode_table_groups_match_dumpe2fs() {
    let s0 = sample();
    let probe = s0.probe_reads();
    s0.store_csv("probe.csv", &probe);
    let mut want: BTreeMap<(String, u64, u64), (BTreeSet<usize>, u64)> = BTreeMap::new();
    for (trace, reads) in [("boot.nbdkit.log", boot_reads()), ("probe.csv", probe)] {
        for (seq, r) in reads.iter().enumerate() {
            for fs in &s0.fss {
                for (g, &(a, b)) in fs.ranges("Inode table at ").iter().enumerate() {
                    let n = overlap((r.0, r.0 + r.1), fs.bytes(a, b - a + 1));
                    if n > 0 {
                        let w = want
                            .entry((trace.to_string(), fs.number, g as u64))
                            .or_default();
                        w.0.insert(seq);
                        w.1 += n;
                    }
                }
            }
        }
    }
    let want: Vec<_> = want
        .into_iter()
        .map(|((t, p, g), (seqs, b))| (t, p, g, seqs.len() as u64, b))
        .collect();
    assert!(want.len() >= 3, "the probe reads three groups: {want:?}");
    let got: Vec<_> = run_query(&s0.map, "05-inode-table-groups-read.sql")
        .iter()
        .map(|r| {
            (
                s(&r["trace"]).to_string(),
                u(&r["partition"]),
                u(&r["grp"]),
                u(&r["requests"]),
                u(&r["bytes"]),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn q06_mostly_unread_files_match_debugfs_and_the_traces() {
    let s0 = sample();
    let probe = s0.probe_reads();
    s0.store_csv("probe.csv", &probe);
    let mut want = Vec::new();
    for (trace, reads) in [("boot.nbdkit.log", boot_reads()), ("probe.csv", probe)] {
        for fs in &s0.fss {
            for e in fs.entries.iter().filter(|e| e.kind == "file") {
                let ranges = s0.ranges_of(fs, e);
                let mut read = 0;
                let mut pieces = Vec::new();
                for r in &reads {
                    for x in &ranges {
                        let n = overlap((r.0, r.0 + r.1), *x);
                        if n > 0 {
                            read += n;
                            let a = r.0.max(x.0);
                            pieces.push((a, a + n));
                        }
                    }
                }
                // Distinct bytes: the size of the union of the pieces.
                pieces.sort();
                let (mut distinct, mut reach) = (0, 0);
                for (a, b) in pieces {
                    let a = a.max(reach);
                    if b > a {
                        distinct += b - a;
                        reach = b;
                    }
                }
                if read == 0 {
                    continue;
                }
                let pct = round(
                    100.0 * distinct.min(e.size) as f64 / e.size.max(1) as f64,
                    1,
                );
                if pct < 50.0 {
                    want.push((
                        trace.to_string(),
                        pct,
                        fs.number,
                        e.path.clone(),
                        e.size,
                        read,
                    ));
                }
            }
        }
    }
    want.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    assert_eq!(
        want.len(),
        3,
        "the probe reads three files partly: {want:?}"
    );
    let rows = run_query(&s0.map, "06-boot-files-mostly-unread.sql");
    assert_eq!(rows.len(), want.len(), "{rows:?} vs {want:?}");
    for (r, w) in rows.iter().zip(&want) {
        assert_eq!(s(&r["trace"]), w.0);
        assert!(close(f(&r["percent_read"]), w.1), "{r} {w:?}");
        assert_eq!(u(&r["partition"]), w.2);
        assert_eq!(s(&r["path"]), w.3);
        assert_eq!(u(&r["size"]), w.4);
        assert_eq!(u(&r["bytes_read"]), w.5, "{r} {w:?}");
    }
}

#[test]
fn q07_free_space_touched_matches_dumpe2fs() {
    let s0 = sample();
    let probe = s0.probe_reads();
    s0.store_csv("probe.csv", &probe);
    let mut want = Vec::new();
    for (trace, reads) in [("boot.nbdkit.log", boot_reads()), ("probe.csv", probe)] {
        for (i, r) in reads.iter().enumerate() {
            for fs in &s0.fss {
                let n: u64 = fs
                    .free_runs()
                    .iter()
                    .map(|x| overlap((r.0, r.0 + r.1), *x))
                    .sum();
                if n > 0 {
                    want.push((trace.to_string(), i as u64 + 1, r.0, r.1, fs.number, n));
                }
            }
        }
    }
    assert_eq!(want.len(), 2, "the probe reads free space twice: {want:?}");
    let got: Vec<_> = run_query(&s0.map, "07-free-space-touched.sql")
        .iter()
        .map(|r| {
            assert_eq!(s(&r["op"]), "read");
            (
                s(&r["trace"]).to_string(),
                u(&r["seq"]),
                u(&r["offset"]),
                u(&r["length"]),
                u(&r["partition"]),
                u(&r["free_bytes"]),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn q08_directories_with_most_blocks_match_debugfs() {
    let s0 = sample();
    let mut want = Vec::new();
    for fs in &s0.fss {
        for e in fs.entries.iter().filter(|e| e.kind == "directory") {
            let blocks: u64 = e.extents.iter().map(|x| x.len).sum();
            want.push((blocks * fs.bs, fs.number, e.path.clone(), e.size, blocks));
        }
    }
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    want.truncate(10);
    let got: Vec<_> = run_query(&s0.map, "08-directories-most-blocks.sql")
        .iter()
        .map(|r| {
            (
                u(&r["allocated_bytes"]),
                u(&r["partition"]),
                s(&r["path"]).to_string(),
                u(&r["size"]),
                u(&r["blocks"]),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn q09_metadata_matches_dumpe2fs() {
    let s0 = sample();
    let mut want: BTreeMap<(String, &str), (u64, u64)> = BTreeMap::new();
    for fs in &s0.fss {
        let mut add = |kind: &'static str, n: u64, bytes: u64| {
            let w = want.entry((fs.device(), kind)).or_default();
            w.0 += n;
            w.1 += bytes;
        };
        add("boot-block", 1, 1024);
        add("superblock", 1, fs.bs.max(2048) - 1024);
        let mut reserved = Vec::new();
        for (label, kind) in [
            ("Backup superblock at ", "superblock-backup"),
            ("Group descriptors at ", "group-descriptors"),
            ("Reserved GDT blocks at ", "reserved-gdt"),
            ("Block bitmap at ", "block-bitmap"),
            ("Inode bitmap at ", "inode-bitmap"),
            ("Inode table at ", "inode-table"),
        ] {
            for (a, b) in fs.ranges(label) {
                add(kind, 1, (b - a + 1) * fs.bs);
                if kind == "reserved-gdt" {
                    reserved.push((a, b));
                }
            }
        }
        let out = fs.debugfs(&["stat <8>".into(), "stat <7>".into()]);
        let (journal, resize) = out.split_once("debugfs: stat <7>").unwrap();
        let size = journal
            .lines()
            .find(|l| l.starts_with("User:"))
            .and_then(|l| l.rsplit("Size: ").next())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        add("journal", 1, size);
        // The resize inode's tree blocks that are not reserved GDT blocks.
        let tree: Vec<u64> = resize
            .split(", ")
            .flat_map(|w| w.split_whitespace())
            .filter_map(|w| {
                ["(IND):", "(DIND):", "(TIND):"]
                    .iter()
                    .find_map(|p| w.strip_prefix(p))
            })
            .map(|b| b.trim_end_matches(',').parse().unwrap())
            .filter(|b| !reserved.iter().any(|&(x, y)| x <= *b && *b <= y))
            .collect();
        if !tree.is_empty() {
            add(
                "indirect-block",
                tree.len() as u64,
                tree.len() as u64 * fs.bs,
            );
        }
    }
    let mut rows: Vec<_> = want
        .iter()
        .map(|((d, k), (n, b))| (d.clone(), k.to_string(), *n, *b))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.3.cmp(&a.3)).then(a.1.cmp(&b.1)));
    let sql = std::fs::read_to_string(query_path("09-metadata-share.sql")).unwrap();
    let v = sql_json(&s0.map, &sql);
    let sets = v.as_array().unwrap();
    assert_eq!(sets.len(), 2, "two statements, two lists");
    let per_kind = sets[0].as_array().unwrap();
    let got: Vec<_> = per_kind
        .iter()
        .map(|r| {
            let pct = 100.0 * u(&r["bytes"]) as f64 / s0.image_size as f64;
            assert!(close(f(&r["percent_of_image"]), round(pct, 2)), "{r}");
            (
                s(&r["device"]).to_string(),
                s(&r["kind"]).to_string(),
                u(&r["objects"]),
                u(&r["bytes"]),
            )
        })
        .collect();
    assert_eq!(got, rows);
    let total = &sets[1].as_array().unwrap()[0];
    let bytes: u64 = rows.iter().map(|r| r.3).sum();
    assert_eq!(u(&total["bytes"]), bytes);
    assert_eq!(u(&total["objects"]), rows.iter().map(|r| r.2).sum::<u64>());
    assert!(close(
        f(&total["percent_of_image"]),
        round(100.0 * bytes as f64 / s0.image_size as f64, 2)
    ));
}

#[test]
fn q10_files_per_partition_match_debugfs() {
    let s0 = sample();
    let want: Vec<_> = s0
        .fss
        .iter()
        .map(|fs| {
            let count = |k: &str| fs.entries.iter().filter(|e| e.kind == k).count() as u64;
            let bytes: u64 = fs
                .entries
                .iter()
                .filter(|e| e.kind == "file")
                .map(|e| e.size)
                .sum();
            (
                fs.number,
                fs.device(),
                count("file"),
                count("directory"),
                count("symlink"),
                bytes,
            )
        })
        .collect();
    let got: Vec<_> = run_query(&s0.map, "10-files-per-partition.sql")
        .iter()
        .map(|r| {
            (
                u(&r["partition"]),
                s(&r["device"]).to_string(),
                u(&r["files"]),
                u(&r["directories"]),
                u(&r["symlinks"]),
                u(&r["file_bytes"]),
            )
        })
        .collect();
    assert_eq!(got, want);
}

fn my_hsize(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < 3 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

#[test]
fn q11_biggest_free_runs_match_dumpe2fs() {
    let s0 = sample();
    let mut want: Vec<(u64, u64, String)> = Vec::new();
    for fs in &s0.fss {
        for (a, b) in fs.free_runs() {
            want.push((b - a, a, fs.device()));
        }
    }
    want.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    want.truncate(5);
    let got: Vec<_> = run_query(&s0.map, "11-biggest-free-runs.sql")
        .iter()
        .map(|r| {
            assert_eq!(u(&r["end"]) - u(&r["start"]), u(&r["length"]));
            assert_eq!(s(&r["human"]), my_hsize(u(&r["length"])));
            (u(&r["length"]), u(&r["start"]), s(&r["device"]).to_string())
        })
        .collect();
    assert_eq!(got, want);
}

const VIEWS: &[&str] = &[
    "file_extents",
    "layout",
    "names",
    "files",
    "fragmentation",
    "free_space",
    "metadata",
    "accesses",
    "accessed_objects",
    "boot_files",
];

fn sqlite3(map: &Path, sql: &str) -> Output {
    Command::new("sqlite3")
        .arg(map)
        .arg(sql)
        .output()
        .expect("sqlite3 must be installed")
}

fn sqlite3_stdin(map: &Path, args: &[&str], sql: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("sqlite3")
        .args(args)
        .arg(map)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sqlite3 must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn stock_sqlite3_reads_every_view_and_the_plain_examples() {
    let s0 = sample();
    for v in VIEWS {
        let out = sqlite3(&s0.map, &format!("SELECT count(*) FROM {v}"));
        assert!(
            out.status.success(),
            "{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(n > 0, "{v} is empty");
    }
    let mut names: Vec<_> = std::fs::read_dir(query_path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "{names:?}");
    let mut bmap_only = 0;
    for name in &names {
        let sql = std::fs::read_to_string(query_path(name)).unwrap();
        let first = sql.lines().next().unwrap_or("");
        assert!(
            first.starts_with("-- ") && first.len() > 10,
            "{name}: {first}"
        );
        // On stdin, as a user would: `sqlite3 MAP < FILE`.
        let out = sqlite3_stdin(&s0.map, &["-json"], &sql);
        if first.contains("bmap-only") {
            bmap_only += 1;
            assert!(!out.status.success() || !out.stderr.is_empty(), "{name}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("no such function"),
                "{name}"
            );
            continue;
        }
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{name} in sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Same rows from sqlite3 as from bmap (all statements' rows in turn).
        let mut theirs = Vec::new();
        for v in serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>() {
            theirs.extend(v.unwrap().as_array().unwrap().clone());
        }
        let ours = sql_json(&s0.map, &sql);
        let ours: Vec<Value> = if ours.as_array().unwrap().iter().all(Value::is_array)
            && !ours.as_array().unwrap().is_empty()
        {
            ours.as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s.as_array().unwrap().clone())
                .collect()
        } else {
            ours.as_array().unwrap().clone()
        };
        assert_eq!(theirs.len(), ours.len(), "{name}");
        for (a, b) in theirs.iter().zip(&ours) {
            let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{name}"
            );
            for (k, x) in a {
                let y = &b[k];
                let same = match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => close(p, q),
                    _ => x == y,
                };
                assert!(same, "{name}: {k}: sqlite3 {x}, bmap {y}");
            }
        }
    }
    assert_eq!(bmap_only, 2, "01 and 11 use object_at and hsize");
}

fn sql_out(map: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = bmap();
    c.arg("sql").arg(map).args(args);
    if let Some(s) = stdin {
        c.write_stdin(s.to_string());
    }
    c.output().unwrap()
}

#[test]
fn json_is_a_list_of_row_objects() {
    let s0 = sample();
    let out = sql_out(
        &s0.map,
        &[
            "SELECT path, size FROM files WHERE partition = 2 ORDER BY path",
            "--json",
        ],
        None,
    );
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let want: BTreeSet<String> = s0.fss[1].entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(rows.len(), want.len());
    for r in rows {
        let o = r.as_object().unwrap();
        assert_eq!(o.keys().collect::<Vec<_>>(), ["path", "size"]);
        assert!(want.contains(s(&r["path"])));
    }
}

/// `--csv` has the header and rows of `--json`.
fn csv_matches_json(map: &Path, sql: &str) {
    let out = sql_out(map, &["--csv"], Some(sql));
    assert!(
        out.status.success(),
        "--csv of {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = sql_json(map, sql);
    let list = json.as_array().unwrap();
    let sets: Vec<Vec<Value>> = if !list.is_empty() && list.iter().all(Value::is_array) {
        list.iter().map(|s| s.as_array().unwrap().clone()).collect()
    } else {
        vec![list.clone()]
    };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&out.stdout[..]);
    let records: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let mut at = 0;
    for rows in sets {
        let header = &records[at];
        at += 1;
        if let Some(first) = rows.first() {
            let keys: Vec<&str> = first
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(header.iter().collect::<Vec<_>>(), keys);
        }
        for row in rows {
            let rec = &records[at];
            at += 1;
            let vals: Vec<&Value> = row.as_object().unwrap().values().collect();
            assert_eq!(rec.len(), vals.len());
            for (cell, v) in rec.iter().zip(vals) {
                let ok = match v {
                    Value::Null => cell.is_empty(),
                    Value::String(t) => cell == t,
                    Value::Number(n) => cell
                        .parse::<f64>()
                        .is_ok_and(|c| close(c, n.as_f64().unwrap())),
                    _ => false,
                };
                assert!(ok, "csv {cell:?} vs json {v}");
            }
        }
    }
    assert_eq!(at, records.len(), "no extra CSV records");
}

#[test]
fn csv_round_trips_with_json() {
    let s0 = sample();
    for q in [
        "02-largest-files.sql",
        "03-most-fragmented.sql",
        "10-files-per-partition.sql",
    ] {
        csv_matches_json(&s0.map, &std::fs::read_to_string(query_path(q)).unwrap());
    }
    csv_matches_json(&s0.map, "SELECT path, inode, partition FROM files WHERE path LIKE '%,%' OR path = '/' ORDER BY partition");
}

#[test]
fn csv_of_several_statements_with_different_columns() {
    // The metadata example is two statements: 5 columns, then 3.
    let s0 = sample();
    csv_matches_json(
        &s0.map,
        &std::fs::read_to_string(query_path("09-metadata-share.sql")).unwrap(),
    );
}

#[test]
fn writes_need_write_and_errors_exit_1_with_sqlites_message() {
    let s0 = sample();
    let before = std::fs::read(&s0.map).unwrap();
    let out = sql_out(&s0.map, &["DELETE FROM objects"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readonly database"), "{err}");
    assert_eq!(std::fs::read(&s0.map).unwrap(), before, "the map changed");

    let copy = s0.dir.join("copy.bmap");
    std::fs::copy(&s0.map, &copy).unwrap();
    // bmap's SQLite enforces the map's foreign keys: objects that extents,
    // layout segments… still refer to cannot go, even with --write.
    let copied = std::fs::read(&copy).unwrap();
    let out = sql_out(&copy, &["DELETE FROM objects", "--write"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FOREIGN KEY constraint failed"), "{err}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        copied,
        "a failed write changed the map"
    );
    // Deleting what refers to them first, it succeeds.
    let sql = "DELETE FROM trace_objects; DELETE FROM layout_segments; DELETE FROM extents; \
               DELETE FROM links; DELETE FROM partitions; DELETE FROM filesystems; \
               DELETE FROM objects;";
    let out = sql_out(&copy, &["--write"], Some(sql));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "writes print nothing");
    let n = sqlite3(&copy, "SELECT count(*) FROM objects");
    assert_eq!(String::from_utf8_lossy(&n.stdout).trim(), "0");

    let out = sql_out(&s0.map, &["SELEC path FROM files"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("near \"SELEC\": syntax error"), "{err}");
    assert!(out.stdout.is_empty());

    let out = sql_out(&s0.map, &["SELECT * FROM no_such_view"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such table: no_such_view"));
}

#[test]
fn point_lookup_uses_the_integer_primary_key() {
    let s0 = sample();
    let v = sql_json(
        &s0.map,
        "EXPLAIN QUERY PLAN SELECT * FROM layout WHERE start <= ? ORDER BY start DESC LIMIT 1",
    );
    let details: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(&r["detail"]))
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("SEARCH s USING INTEGER PRIMARY KEY")),
        "{details:?}"
    );
    assert!(
        !details.iter().any(|d| d.starts_with("SCAN")),
        "{details:?}"
    );
    assert!(
        !details.iter().any(|d| d.contains("TEMP B-TREE")),
        "{details:?}"
    );
}

#[test]
fn human_shows_sizes_in_byte_columns_only() {
    let s0 = sample();
    let out = sql_out(
        &s0.map,
        &[
            "SELECT path, inode, size, allocated_bytes FROM files WHERE path = '/vmlinuz-6.1.0-sample'",
            "--human",
        ],
        None,
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let e = s0.entry(1, "/vmlinuz-6.1.0-sample");
    assert!(text.contains(&my_hsize(e.size)), "{text}");
    assert!(text.contains("MiB"), "{text}");
    assert!(
        text.contains(&format!(" {} ", e.ino)),
        "inode stays a number: {text}"
    );
    let out = sql_out(
        &s0.map,
        &[
            "SELECT path, size FROM files WHERE path = '/grub'",
            "--human",
            "--csv",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1.0 KiB"), "{text}");
}

#[test]
fn several_statements_from_stdin() {
    let s0 = sample();
    let sql = "SELECT count(*) AS n FROM files WHERE partition = 1;\n\
               -- a comment between\n\
               SELECT count(*) AS n FROM accesses;\n";
    let v = sql_json(&s0.map, sql);
    let sets = v.as_array().unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(u(&sets[0][0]["n"]), s0.fss[0].entries.len() as u64);
    assert_eq!(u(&sets[1][0]["n"]), boot_reads().len() as u64);
    let out = sql_out(&s0.map, &[], Some(sql));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.trim() == "n").count(),
        2,
        "{text}"
    );
}

#[test]
fn old_maps_are_migrated_in_memory_and_new_ones_refused() {
    let s0 = sample();
    let old = s0.dir.join("old.bmap");
    std::fs::copy(&s0.map, &old).unwrap();
    let out = sqlite3(
        &old,
        "DROP TABLE packed_map; DROP TRIGGER packed_map_objects_insert; \
         DROP TRIGGER packed_map_objects_update; DROP TRIGGER packed_map_objects_delete; \
         DROP TRIGGER packed_map_layout_insert; DROP TRIGGER packed_map_layout_update; \
         DROP TRIGGER packed_map_layout_delete; \
         DROP VIEW trace_pieces; DROP VIEW object_extents; DROP VIEW layout_objects; \
         DROP VIEW object_tree; \
         DROP VIEW boot_files; DROP VIEW metadata; DROP VIEW free_space; \
         DROP VIEW fragmentation; DROP VIEW files; PRAGMA user_version=2",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = std::fs::read(&old).unwrap();
    let v = sql_json(&old, "SELECT count(*) AS n FROM files");
    let want: usize = s0.fss.iter().map(|f| f.entries.len()).sum();
    assert_eq!(u(&v[0]["n"]), want as u64);
    let v = sql_json(&old, "SELECT count(*) AS n FROM boot_files");
    assert_eq!(u(&v[0]["n"]), 10);
    assert_eq!(
        std::fs::read(&old).unwrap(),
        before,
        "reading changed the old map"
    );
    let ver = sqlite3(&old, "PRAGMA user_version");
    assert_eq!(String::from_utf8_lossy(&ver.stdout).trim(), "2");

    let new = s0.dir.join("new.bmap");
    std::fs::copy(&s0.map, &new).unwrap();
    assert!(sqlite3(&new, "PRAGMA user_version=99").status.success());
    let out = sql_out(&new, &["SELECT 1"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("99") && err.contains("newer"), "{err}");
}
