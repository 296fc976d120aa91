//! Shared helpers for the correctness suites: real tools (mke2fs, debugfs,
//! dumpe2fs, e2fsck, sgdisk, sfdisk, fdisk, dd) build the images at test
//! time and independently report what is in them; the real `bmap` binary
//! indexes them; the map is read back with rusqlite and compared.
//!
//! A missing tool is a test failure with a clear message, never a skip.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use assert_cmd::cargo::CommandCargoExt;
use rusqlite::{params, Connection, OptionalExtension};

/// Finds a tool on PATH or in the sbin directories; panics if it is absent.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required tool `{name}` was not found on PATH or in /usr/sbin, /sbin; \
         install it (e2fsprogs, gdisk, fdisk/util-linux, coreutils) to run this suite"
    );
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command, panicking with its output unless it exits 0.
pub fn run(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run `{what}`: {e}"));
    assert!(
        out.status.success(),
        "`{what}` failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a tool by name with arguments; returns stdout as text.
pub fn run_tool(name: &str, args: &[&str]) -> String {
    let out = run(Command::new(tool(name)).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a tool with `input` on stdin; returns stdout. Panics on failure.
pub fn run_tool_stdin(name: &str, args: &[&str], input: &str) -> String {
    let mut cmd = Command::new(tool(name));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = describe(&cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not run `{what}`: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "`{what}` failed with {}:\nstdin:\n{input}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bmap-it-")
        .tempdir()
        .expect("creating a temporary directory")
}

/// Builds a directory tree to populate a filesystem with (`mke2fs -d`).
pub struct Tree {
    pub root: PathBuf,
}

/// Deterministic, non-repeating bytes (so no tool can dedupe or compress).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Tree {
    pub fn new(root: impl Into<PathBuf>) -> Tree {
        let root = root.into();
        fs::create_dir_all(&root).unwrap();
        Tree { root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel.trim_start_matches('/'));
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }

    pub fn dir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.root.join(rel.trim_start_matches('/'))).unwrap();
        self
    }

    /// A file of `len` pattern bytes.
    pub fn file(&self, rel: &str, len: usize) -> &Self {
        fs::write(self.p(rel), pattern(len, rel.len() as u64 + len as u64)).unwrap();
        self
    }

    /// A sparse file of logical size `size` with data written at the given
    /// (offset, length) pieces; everything else is a hole.
    pub fn sparse(&self, rel: &str, size: u64, pieces: &[(u64, usize)]) -> &Self {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(self.p(rel)).unwrap();
        f.set_len(size).unwrap();
        for (i, &(off, len)) in pieces.iter().enumerate() {
            f.write_all_at(&pattern(len, off + i as u64), off).unwrap();
        }
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.p(rel)).unwrap();
        self
    }

    pub fn hardlink(&self, existing: &str, rel: &str) -> &Self {
        fs::hard_link(
            self.root.join(existing.trim_start_matches('/')),
            self.p(rel),
        )
        .unwrap();
        self
    }
}

/// `mke2fs -F -q -t TYPE -b BS [-O FEATURES] [extra] [-d TREE] IMG SIZE`.
pub fn mkfs(
    img: &Path,
    fs_type: &str,
    block_size: u32,
    features: &str,
    extra: &[&str],
    tree: Option<&Path>,
    size: &str,
) {
    let mut cmd = Command::new(tool("mke2fs"));
    cmd.args(["-F", "-q", "-t", fs_type, "-b", &block_size.to_string()]);
    if !features.is_empty() {
        cmd.args(["-O", features]);
    }
    cmd.args(extra);
    if let Some(t) = tree {
        cmd.arg("-d").arg(t);
    }
    cmd.arg(img).arg(size);
    // Reproducible enough and no surprises from a user's mke2fs.conf.
    cmd.env("E2FSPROGS_FAKE_TIME", "1700000000");
    run(&mut cmd);
}

/// `e2fsck -fn`: the filesystem must be consistent (exit 0).
pub fn fsck_clean(img: &Path) {
    run(Command::new(tool("e2fsck")).arg("-fn").arg(img));
}

/// What `bmap index` did.
pub struct BmapRun {
    pub status: i32,
    pub stderr: String,
    pub map: PathBuf,
}

/// Runs the real `bmap index IMAGE -o MAP [extra]`.
pub fn bmap_index(img: &Path, map: &Path, extra: &[&str]) -> BmapRun {
    let out = Command::cargo_bin("bmap")
        .expect("the bmap binary")
        .arg("index")
        .arg(img)
        .arg("-o")
        .arg(map)
        .arg("--force")
        .args(extra)
        .output()
        .expect("running bmap");
    BmapRun {
        status: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        map: map.to_path_buf(),
    }
}

/// Indexes and insists on a clean run: exit 0, no warnings in the map.
pub fn bmap_index_clean(img: &Path, map: &Path, extra: &[&str]) -> Connection {
    let r = bmap_index(img, map, extra);
    let conn = open_map(map);
    let warnings: Vec<String> = conn
        .prepare("SELECT message FROM warnings ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        r.status == 0 && warnings.is_empty(),
        "bmap index {} exited {} with warnings {warnings:#?}\nstderr:\n{}",
        img.display(),
        r.status,
        r.stderr
    );
    conn
}

pub fn open_map(map: &Path) -> Connection {
    Connection::open_with_flags(map, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("opening map {}: {e}", map.display()))
}

// ---------------------------------------------------------------- debugfs

/// `debugfs -R CMD IMG` (read-only); stdout.
pub fn debugfs(img: &Path, cmd: &str) -> String {
    run_tool("debugfs", &["-R", cmd, img.to_str().unwrap()])
}

/// Runs many read-only commands in one debugfs process; returns each
/// command's output, in order.
pub fn debugfs_batch(img: &Path, cmds: &[String]) -> Vec<String> {
    if cmds.is_empty() {
        return Vec::new();
    }
    let dir = tempdir();
    let f = dir.path().join("cmds");
    fs::write(&f, cmds.join("\n") + "\n").unwrap();
    let out = run_tool(
        "debugfs",
        &["-f", f.to_str().unwrap(), img.to_str().unwrap()],
    );
    let mut res: Vec<String> = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("debugfs: ") {
            let i = res.len();
            assert!(
                i < cmds.len() && rest == cmds[i],
                "unexpected debugfs echo {rest:?} (expected {:?})",
                cmds.get(i)
            );
            res.push(String::new());
        } else if let Some(last) = res.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    assert_eq!(res.len(), cmds.len(), "debugfs output:\n{out}");
    res
}

/// Writable debugfs session from a command file (`debugfs -w -f`).
pub fn debugfs_write(img: &Path, cmds: &[String]) {
    let dir = tempdir();
    let f = dir.path().join("cmds");
    fs::write(&f, cmds.join("\n") + "\n").unwrap();
    let out = run_tool(
        "debugfs",
        &["-w", "-f", f.to_str().unwrap(), img.to_str().unwrap()],
    );
    // debugfs exits 0 even when a command fails; its complaints go to
    // stderr, which `run` discards, so check the effect where it matters.
    let _ = out;
}

/// One entry of `ls -p`.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub path: String,
    pub inode: u64,
    pub mode: u32,
}

impl DirEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
}

/// Every path in the filesystem (root included), by walking `ls -p`.
pub fn debugfs_all_paths(img: &Path) -> Vec<DirEntry> {
    let root_ino = 2;
    let mut out = vec![DirEntry {
        path: "/".into(),
        inode: root_ino,
        mode: 0o040755,
    }];
    let mut queue = vec!["/".to_string()];
    while !queue.is_empty() {
        let cmds: Vec<String> = queue.iter().map(|d| format!("ls -p {d}")).collect();
        let outs = debugfs_batch(img, &cmds);
        let dirs = std::mem::take(&mut queue);
        for (dir, text) in dirs.iter().zip(outs) {
            for line in text.lines().filter(|l| l.starts_with('/')) {
                // /ino/mode/uid/gid/name/size/
                let f: Vec<&str> = line.split('/').collect();
                assert!(f.len() >= 7, "odd ls -p line {line:?}");
                let name = f[5..f.len() - 2].join("/");
                if name == "." || name == ".." || name.is_empty() {
                    continue;
                }
                let inode: u64 = f[1].parse().unwrap();
                if inode == 0 {
                    continue;
                }
                let mode = u32::from_str_radix(f[2], 8).unwrap();
                let path = if dir == "/" {
                    format!("/{name}")
                } else {
                    format!("{dir}/{name}")
                };
                let e = DirEntry { path, inode, mode };
                if e.is_dir() {
                    queue.push(e.path.clone());
                }
                out.push(e);
            }
        }
    }
    out
}

fn parse_numbers(s: &str) -> Vec<u64> {
    s.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

// --------------------------------------------------------------- dumpe2fs

/// A block range [first, last] as dumpe2fs prints it.
pub type Blocks = (u64, u64);

#[derive(Debug, Default, Clone)]
pub struct GroupMeta {
    pub number: u64,
    pub primary_superblock: Option<u64>,
    pub backup_superblock: Option<u64>,
    pub descriptors: Option<Blocks>,
    pub reserved_gdt: Option<Blocks>,
    pub block_bitmap: Option<u64>,
    pub inode_bitmap: Option<u64>,
    pub inode_table: Option<Blocks>,
}

#[derive(Debug, Default)]
pub struct Dumpe2fs {
    pub header: HashMap<String, String>,
    pub block_size: u64,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub groups: Vec<GroupMeta>,
}

impl Dumpe2fs {
    /// With meta_bg, the first group of each meta group past "First meta
    /// block group" holds that meta group's primary descriptor block.
    pub fn is_meta_bg_primary(&self, group: u64) -> bool {
        let meta_bg = self
            .header
            .get("Filesystem features")
            .is_some_and(|f| f.split_whitespace().any(|x| x == "meta_bg"));
        if !meta_bg {
            return false;
        }
        let desc_size: u64 = self
            .header
            .get("Group descriptor size")
            .map_or(32, |v| v.trim().parse().unwrap());
        let first_meta_bg: u64 = self
            .header
            .get("First meta block group")
            .map_or(0, |v| v.trim().parse().unwrap());
        let per = self.block_size / desc_size;
        group.is_multiple_of(per) && group / per >= first_meta_bg
    }
}

fn parse_blocks(v: &str) -> Blocks {
    let v = v.trim();
    let v = v.split_whitespace().next().unwrap_or(v);
    match v.split_once('-') {
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => {
            let n = v
                .parse()
                .unwrap_or_else(|_| panic!("dumpe2fs number {v:?}"));
            (n, n)
        }
    }
}

pub fn dumpe2fs(img: &Path) -> Dumpe2fs {
    let text = run_tool("dumpe2fs", &[img.to_str().unwrap()]);
    let mut d = Dumpe2fs::default();
    let mut in_groups = false;
    for line in text.lines() {
        if line.starts_with("Group ") && line.contains("(Blocks") {
            in_groups = true;
            let n = line["Group ".len()..line.find(':').unwrap()]
                .parse()
                .unwrap();
            d.groups.push(GroupMeta {
                number: n,
                ..GroupMeta::default()
            });
            continue;
        }
        if !in_groups {
            if let Some((k, v)) = line.split_once(':') {
                d.header.insert(k.trim().to_string(), v.trim().to_string());
            }
            continue;
        }
        let Some(g) = d.groups.last_mut() else {
            continue;
        };
        for piece in line.trim().split(", ") {
            let Some((label, value)) = piece.split_once(" at ") else {
                continue;
            };
            match label {
                "Primary superblock" => g.primary_superblock = Some(parse_blocks(value).0),
                "Backup superblock" => g.backup_superblock = Some(parse_blocks(value).0),
                "Group descriptors" | "Group descriptor" => {
                    g.descriptors = Some(parse_blocks(value))
                }
                "Reserved GDT blocks" => g.reserved_gdt = Some(parse_blocks(value)),
                "Block bitmap" => g.block_bitmap = Some(parse_blocks(value).0),
                "Inode bitmap" => g.inode_bitmap = Some(parse_blocks(value).0),
                "Inode table" => g.inode_table = Some(parse_blocks(value)),
                _ => {}
            }
        }
    }
    let num = |k: &str| -> u64 {
        d.header
            .get(k)
            .unwrap_or_else(|| panic!("dumpe2fs has no {k:?}"))
            .parse()
            .unwrap()
    };
    d.block_size = num("Block size");
    d.blocks_count = num("Block count");
    d.free_blocks = num("Free blocks");
    d
}

// ------------------------------------------------------------ disk images

/// Creates a sparse file of `bytes`.
pub fn sparse_file(path: &Path, bytes: u64) {
    run_tool(
        "truncate",
        &["-s", &bytes.to_string(), path.to_str().unwrap()],
    );
}

/// Copies `fs_img` into `disk` at byte `offset` (dd conv=notrunc).
pub fn place(disk: &Path, fs_img: &Path, offset: u64) {
    assert_eq!(offset % 512, 0);
    run_tool(
        "dd",
        &[
            &format!("if={}", fs_img.display()),
            &format!("of={}", disk.display()),
            "bs=512",
            &format!("seek={}", offset / 512),
            "conv=notrunc,sparse",
            "status=none",
        ],
    );
}

/// `sgdisk -i N DISK`: (first sector, last sector).
pub fn sgdisk_info(disk: &Path, n: u32) -> (u64, u64) {
    let out = run_tool("sgdisk", &["-i", &n.to_string(), disk.to_str().unwrap()]);
    let field = |k: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("sgdisk -i {n}: no {k:?} in\n{out}"));
        line[k.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("First sector:"), field("Last sector:"))
}

/// `sfdisk --json DISK`: (device-number, start sector, size in sectors,
/// type) for every partition.
pub fn sfdisk_json(disk: &Path) -> Vec<(u32, u64, u64, String)> {
    let out = run_tool("sfdisk", &["--json", disk.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let table = &v["partitiontable"];
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let digits: String = node
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_digit())
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            (
                digits.parse().unwrap(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ------------------------------------------------------------ map queries

pub fn image_size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// The layout must tile [0, size) exactly: first start 0, each start the
/// previous end, last end the file size, no empty segment.
pub fn assert_layout_tiles(conn: &Connection, size: u64) {
    let mut stmt = conn
        .prepare("SELECT start, end, kind, object FROM layout ORDER BY start")
        .unwrap();
    let rows: Vec<(u64, u64, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!rows.is_empty(), "layout is empty");
    let mut pos = 0;
    for (s, e, k, o) in &rows {
        assert_eq!(
            *s, pos,
            "layout gap or overlap: segment [{s}, {e}) {k} {o} should start at {pos}"
        );
        assert!(s < e, "empty layout segment at {s} ({k} {o})");
        pos = *e;
    }
    assert_eq!(
        pos, size,
        "layout ends at {pos}, the image has {size} bytes"
    );
}

/// Bytes of layout segments of `kind` inside [start, end).
pub fn layout_bytes(conn: &Connection, kind: &str, start: u64, end: u64) -> u64 {
    conn.query_row(
        "SELECT coalesce(sum(min(end, ?3) - max(start, ?2)), 0) FROM layout
         WHERE kind = ?1 AND end > ?2 AND start < ?3",
        params![kind, start as i64, end as i64],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

/// A filesystem as the test knows it independently: the standalone image
/// the tools made, and where it sits in the indexed disk.
pub struct FsUnderTest<'a> {
    /// The filesystem image the tools operate on (debugfs, dumpe2fs).
    pub fs_img: &'a Path,
    /// Byte offset of the filesystem in the indexed image.
    pub offset: u64,
    /// Partition number in the map (`None` on a bare disk).
    pub partition: Option<u32>,
    /// Device name in the map ("/dev/sda", "/dev/sda5").
    pub device: &'a str,
}

/// Summary of what `check_filesystem` compared, for tests to assert on.
#[derive(Debug, Default)]
pub struct FsCheck {
    pub paths: usize,
    pub paths_with_blocks: usize,
    pub tree_blocks: usize,
    pub indirect_blocks: usize,
    pub extent_blocks: usize,
    pub fast_symlinks: usize,
    pub inline: usize,
    pub block_size: u64,
}

/// The file-like object (file, directory, symlink) with name `path` in
/// partition `part`.
pub fn object_for_path(
    conn: &Connection,
    path: &str,
    part: Option<u32>,
) -> Option<(i64, String, i64, i64)> {
    conn.query_row(
        "SELECT o.id, o.kind, o.inode, o.flags FROM names n JOIN objects o ON o.id = n.object
         WHERE n.path = ?1 AND o.partition IS ?2
           AND o.kind IN ('file', 'directory', 'symlink')",
        params![path, part],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .unwrap()
}

/// Every fs block of `ranges` ([start, end) byte ranges in order), relative
/// to the filesystem at `offset`.
fn to_blocks(ranges: &[(u64, u64)], offset: u64, bs: u64, what: &str) -> Vec<u64> {
    let mut v = Vec::new();
    for &(s, e) in ranges {
        assert!(
            s >= offset && (s - offset).is_multiple_of(bs) && (e - s).is_multiple_of(bs),
            "{what}: range [{s}, {e}) is not block-aligned to the filesystem at {offset} ({bs}-byte blocks)"
        );
        let first = (s - offset) / bs;
        v.extend(first..first + (e - s) / bs);
    }
    v
}

/// Compares every path's map entries with debugfs, the metadata objects
/// with dumpe2fs, free space with the superblock and checks unknown = 0.
pub fn check_filesystem(conn: &Connection, f: &FsUnderTest<'_>) -> FsCheck {
    let d = dumpe2fs(f.fs_img);
    let bs = d.block_size;
    let fs_end = f.offset + d.blocks_count * bs;
    let mut check = FsCheck {
        block_size: bs,
        ..FsCheck::default()
    };

    // The filesystems row.
    let (fs_start, fs_bs, blocks, free_sb, free_bytes, unknown): (i64, i64, i64, i64, i64, i64) =
        conn.query_row(
            "SELECT start, block_size, blocks_count, free_blocks_sb, free_bytes, unknown_bytes
             FROM filesystems WHERE device = ?1",
            params![f.device],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .unwrap_or_else(|e| panic!("no filesystems row for {}: {e}", f.device));
    assert_eq!(fs_start as u64, f.offset, "{}: filesystem start", f.device);
    assert_eq!(fs_bs as u64, bs, "{}: block size", f.device);
    assert_eq!(blocks as u64, d.blocks_count, "{}: block count", f.device);
    assert_eq!(
        free_sb as u64, d.free_blocks,
        "{}: superblock free blocks",
        f.device
    );
    assert_eq!(
        free_bytes as u64,
        d.free_blocks * bs,
        "{}: free bytes from the bitmaps vs dumpe2fs Free blocks",
        f.device
    );
    assert_eq!(
        unknown, 0,
        "{}: unknown bytes on a fresh filesystem",
        f.device
    );
    assert_eq!(
        layout_bytes(conn, "free", f.offset, fs_end),
        d.free_blocks * bs,
        "{}: bytes of kind free in the layout vs dumpe2fs Free blocks × block size",
        f.device
    );
    assert_eq!(
        layout_bytes(conn, "unknown", f.offset, fs_end),
        0,
        "{}: unknown bytes in the layout",
        f.device
    );

    check_group_metadata(conn, f, &d);

    // Every path.
    let entries = debugfs_all_paths(f.fs_img);
    let mut cmds = Vec::new();
    for e in &entries {
        cmds.push(format!("blocks {}", e.path));
        cmds.push(format!("stat {}", e.path));
    }
    let outs = debugfs_batch(f.fs_img, &cmds);
    let mut by_inode: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_inode.entry(e.inode).or_default().push(&e.path);
        let dbg_blocks = parse_numbers(&outs[2 * i]);
        let stat = &outs[2 * i + 1];
        let (id, kind, inode, oflags) = object_for_path(conn, &e.path, f.partition)
            .unwrap_or_else(|| panic!("{}: {} is not in the map's names", f.device, e.path));
        assert_eq!(inode as u64, e.inode, "{}: inode of {}", f.device, e.path);
        let want_kind = if e.is_dir() {
            "directory"
        } else if e.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        assert_eq!(kind, want_kind, "{}: kind of {}", f.device, e.path);

        let ranges: Vec<(u64, u64)> = conn
            .prepare(
                "SELECT disk_offset, disk_offset + length FROM file_extents
                 WHERE path = ?1 AND partition IS ?2 ORDER BY logical_offset",
            )
            .unwrap()
            .query_map(params![e.path, f.partition], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for &(s, end) in &ranges {
            assert!(
                s >= f.offset && end <= fs_end,
                "{}: {} extent [{s}, {end}) lies outside the filesystem",
                f.device,
                e.path
            );
        }
        let data = to_blocks(&ranges, f.offset, bs, &e.path);
        // Tree blocks: the extent-block / indirect-block children.
        let tree_rows: Vec<(String, u64, u64)> = conn
            .prepare(
                "SELECT o.kind, e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
                 WHERE o.parent = ?1 AND o.kind IN ('extent-block', 'indirect-block')
                 ORDER BY e.logical",
            )
            .unwrap()
            .query_map(params![id], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let tree_ranges: Vec<(u64, u64)> = tree_rows.iter().map(|r| (r.1, r.2)).collect();
        let tree = to_blocks(&tree_ranges, f.offset, bs, &e.path);
        for r in &tree_rows {
            if r.0 == "indirect-block" {
                check.indirect_blocks += ((r.2 - r.1) / bs) as usize;
            } else {
                check.extent_blocks += ((r.2 - r.1) / bs) as usize;
            }
        }

        let fast_symlink = stat.contains("Fast link dest:");
        let inline = stat.contains("Size of inline data:");
        check.paths += 1;
        if fast_symlink || inline {
            if fast_symlink {
                check.fast_symlinks += 1;
                assert!(
                    oflags & 2 != 0,
                    "{}: {} is a fast symlink, flags {oflags}",
                    f.device,
                    e.path
                );
            } else {
                check.inline += 1;
                assert!(
                    oflags & 1 != 0,
                    "{}: {} has inline data, flags {oflags}",
                    f.device,
                    e.path
                );
            }
            assert!(
                data.is_empty() && tree.is_empty(),
                "{}: {} keeps its data in the inode, but the map has blocks {data:?} / tree {tree:?}",
                f.device,
                e.path
            );
            continue;
        }
        // debugfs lists tree blocks interleaved with data blocks: remove
        // exactly the map's tree blocks, the rest must be the data in
        // logical order.
        let mut rest = dbg_blocks.clone();
        for t in &tree {
            let pos = rest.iter().position(|b| b == t).unwrap_or_else(|| {
                panic!(
                    "{}: {}: map tree block {t} is not in debugfs blocks {dbg_blocks:?}",
                    f.device, e.path
                )
            });
            rest.remove(pos);
        }
        assert_eq!(
            data, rest,
            "{}: {}: data blocks from file_extents (left) vs debugfs `blocks` minus tree blocks {tree:?} (right)",
            f.device, e.path
        );
        // Logical placement (holes) and tree blocks against `stat`.
        let (stat_runs, mut stat_tree) = parse_stat_blocks(stat);
        let map_runs: Vec<(u64, u64, u64)> = conn
            .prepare(
                "SELECT logical_offset, disk_offset, length FROM file_extents
                 WHERE path = ?1 AND partition IS ?2 ORDER BY logical_offset",
            )
            .unwrap()
            .query_map(params![e.path, f.partition], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64 / bs,
                    (r.get::<_, i64>(1)? as u64 - f.offset) / bs,
                    r.get::<_, i64>(2)? as u64 / bs,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            merge_runs(map_runs),
            merge_runs(stat_runs),
            "{}: {}: (logical block, physical block, blocks) runs from file_extents (left) vs debugfs stat (right)",
            f.device,
            e.path
        );
        let mut sorted_tree = tree.clone();
        sorted_tree.sort_unstable();
        stat_tree.sort_unstable();
        assert_eq!(
            sorted_tree, stat_tree,
            "{}: {}: tree blocks in the map (left) vs debugfs stat IND/DIND/TIND/ETB (right)",
            f.device, e.path
        );
        if !data.is_empty() {
            check.paths_with_blocks += 1;
        }
        check.tree_blocks += tree.len();
    }

    check_special_inodes(conn, f, bs);

    // Hard links: every name of an inode points at one object.
    for (ino, paths) in &by_inode {
        let ids: Vec<i64> = paths
            .iter()
            .map(|p| object_for_path(conn, p, f.partition).unwrap().0)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "{}: names {paths:?} of inode {ino} map to different objects {ids:?}",
            f.device
        );
    }
    // And the map has no file-like names debugfs does not know.
    let map_paths: i64 = conn
        .query_row(
            "SELECT count(*) FROM names n JOIN objects o ON o.id = n.object
             WHERE o.partition IS ?1 AND o.device = ?2 AND o.kind IN ('file', 'directory', 'symlink')",
            params![f.partition, f.device],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        map_paths as usize,
        entries.len(),
        "{}: number of names in the map vs paths debugfs lists",
        f.device
    );
    check
}

/// Object id, kind and inode of every unnamed inode object (journal,
/// resize inode, quota, orphan file…) of the filesystem.
fn check_special_inodes(conn: &Connection, f: &FsUnderTest<'_>, bs: u64) {
    let specials: Vec<(i64, String, u64)> = conn
        .prepare(
            "SELECT id, kind, inode FROM objects WHERE device = ?1 AND inode IS NOT NULL
               AND path IS NULL
               AND kind IN ('journal', 'special-inode', 'xattr-block', 'file', 'directory', 'symlink')",
        )
        .unwrap()
        .query_map(params![f.device], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let cmds: Vec<String> = specials
        .iter()
        .flat_map(|s| [format!("blocks <{}>", s.2), format!("stat <{}>", s.2)])
        .collect();
    let outs = debugfs_batch(f.fs_img, &cmds);
    let blocks_of = |id: i64, tree: bool| -> Vec<u64> {
        let sql = if tree {
            "SELECT e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
             WHERE o.parent = ?1 AND o.kind IN ('extent-block', 'indirect-block') ORDER BY e.logical"
        } else {
            "SELECT start, end FROM extents WHERE object = ?1 ORDER BY logical"
        };
        let r: Vec<(u64, u64)> = conn
            .prepare(sql)
            .unwrap()
            .query_map(params![id], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        to_blocks(&r, f.offset, bs, "special inode")
    };
    for (i, (id, kind, ino)) in specials.iter().enumerate() {
        assert_ne!(
            kind, "file",
            "{}: inode {ino} is an unlinked file on a fresh filesystem",
            f.device
        );
        assert!(
            kind != "directory" && kind != "symlink",
            "{}: unlinked {kind} inode {ino}",
            f.device
        );
        let dbg = parse_numbers(&outs[2 * i]);
        let data = blocks_of(*id, false);
        let tree = blocks_of(*id, true);
        let mut rest = dbg.clone();
        for t in &tree {
            let pos = rest.iter().position(|b| b == t).unwrap_or_else(|| {
                panic!(
                    "{}: inode {ino}: tree block {t} not in debugfs blocks {dbg:?}",
                    f.device
                )
            });
            rest.remove(pos);
        }
        if *ino == 7 {
            // The resize inode: its DIND block is its own; the blocks below
            // are the reserved GDT blocks, mapped as reserved-gdt objects.
            assert!(data.is_empty(), "resize inode has data extents {data:?}");
            let gdt: Vec<(u64, u64)> = conn
                .prepare(
                    "SELECT e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
                     WHERE o.device = ?1 AND o.kind = 'reserved-gdt'",
                )
                .unwrap()
                .query_map(params![f.device], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut gdt = to_blocks(&gdt, f.offset, bs, "reserved gdt");
            gdt.sort_unstable();
            rest.sort_unstable();
            assert_eq!(
                rest, gdt,
                "{}: resize inode blocks vs reserved-gdt objects",
                f.device
            );
            continue;
        }
        assert_eq!(
            data, rest,
            "{}: {kind} inode {ino}: map data blocks (left) vs debugfs blocks minus tree (right)",
            f.device
        );
        let (runs, mut stat_tree) = parse_stat_blocks(&outs[2 * i + 1]);
        let mut sorted_tree = tree.clone();
        sorted_tree.sort_unstable();
        stat_tree.sort_unstable();
        assert_eq!(
            sorted_tree, stat_tree,
            "{}: inode {ino} tree blocks",
            f.device
        );
        let total: u64 = runs.iter().map(|r| r.2).sum();
        assert_eq!(
            total as usize,
            data.len(),
            "{}: inode {ino} block count vs stat",
            f.device
        );
    }
}

/// Merges runs that continue each other logically and physically.
pub fn merge_runs(mut runs: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    runs.sort_unstable();
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(l) if l.0 + l.2 == r.0 && l.1 + l.2 == r.1 => l.2 += r.2,
            _ => out.push(r),
        }
    }
    out
}

/// The BLOCKS: / EXTENTS: section of `debugfs stat`: data runs as
/// (logical block, physical block, count) and tree blocks (IND, DIND,
/// TIND, ETBn).
pub fn parse_stat_blocks(stat: &str) -> (Vec<(u64, u64, u64)>, Vec<u64>) {
    let mut runs = Vec::new();
    let mut tree = Vec::new();
    let mut lines = stat.lines();
    for line in lines.by_ref() {
        if line.starts_with("EXTENTS:") || line.starts_with("BLOCKS:") {
            break;
        }
    }
    let mut text = String::new();
    for line in lines {
        if line.starts_with("TOTAL:") || line.trim().is_empty() {
            break;
        }
        text.push_str(line);
        text.push_str(", ");
    }
    let range = |s: &str| -> (u64, u64) {
        match s.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => {
                let n = s.parse().unwrap_or_else(|_| panic!("stat number {s:?}"));
                (n, n)
            }
        }
    };
    for item in text.split(", ").map(str::trim).filter(|s| !s.is_empty()) {
        let item = item.replace("[u]", "");
        let (tag, value) = item
            .strip_prefix('(')
            .and_then(|x| x.split_once("):"))
            .unwrap_or_else(|| panic!("odd stat block item {item:?}"));
        let (p0, p1) = range(value);
        if tag.starts_with(|c: char| c.is_ascii_digit()) {
            let (l0, l1) = range(tag);
            assert_eq!(l1 - l0, p1 - p0, "stat item {item:?}");
            runs.push((l0, p0, l1 - l0 + 1));
        } else {
            tree.extend(p0..=p1);
        }
    }
    (runs, tree)
}

/// Metadata objects: exactly the blocks dumpe2fs reports for every group.
fn check_group_metadata(conn: &Connection, f: &FsUnderTest<'_>, d: &Dumpe2fs) {
    let bs = d.block_size;
    let dev = f.device;
    // name -> (kind, [start, end) blocks)
    let mut objs: HashMap<String, (String, Vec<(u64, u64)>)> = HashMap::new();
    let mut stmt = conn
        .prepare(
            "SELECT o.name, o.kind, e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
             WHERE o.device = ?1 AND o.kind IN ('superblock', 'superblock-backup',
               'group-descriptors', 'reserved-gdt', 'block-bitmap', 'inode-bitmap', 'inode-table')
             ORDER BY o.name, e.logical",
        )
        .unwrap();
    let rows = stmt
        .query_map(params![dev], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })
        .unwrap();
    for row in rows {
        let (name, kind, s, e) = row.unwrap();
        let ent = objs.entry(name).or_insert((kind, Vec::new()));
        ent.1.push((s, e));
    }
    let mut expected: HashMap<String, (&str, (u64, u64))> = HashMap::new();
    let blk = |(a, b): (u64, u64)| (f.offset + a * bs, f.offset + (b + 1) * bs);
    for g in &d.groups {
        let n = g.number;
        if let Some(b) = g.primary_superblock {
            // The primary superblock is bytes 1024..2048 of the filesystem;
            // with larger blocks the object covers the rest of block 0 and
            // the boot block the first 1 KiB.
            assert_eq!(n, 0);
            let want_block = if bs == 1024 { 1 } else { 0 };
            assert_eq!(b, want_block, "dumpe2fs primary superblock block");
            let start = f.offset + 1024;
            let end = f.offset + (b + 1) * bs;
            expected.insert(format!("{dev} superblock"), ("superblock", (start, end)));
        }
        if let Some(b) = g.backup_superblock {
            expected.insert(
                format!("{dev} superblock backup group {n}"),
                ("superblock-backup", blk((b, b))),
            );
        }
        if let Some(r) = g.descriptors {
            let name = if n == 0 {
                format!("{dev} group-descriptors")
            } else if d.is_meta_bg_primary(n) {
                format!("{dev} group-descriptors group {n}")
            } else {
                format!("{dev} group-descriptors backup group {n}")
            };
            expected.insert(name, ("group-descriptors", blk(r)));
        }
        if let Some(r) = g.reserved_gdt {
            expected.insert(
                format!("{dev} reserved-gdt group {n}"),
                ("reserved-gdt", blk(r)),
            );
        }
        let bb = g.block_bitmap.expect("dumpe2fs block bitmap");
        expected.insert(
            format!("{dev} block-bitmap group {n}"),
            ("block-bitmap", blk((bb, bb))),
        );
        let ib = g.inode_bitmap.expect("dumpe2fs inode bitmap");
        expected.insert(
            format!("{dev} inode-bitmap group {n}"),
            ("inode-bitmap", blk((ib, ib))),
        );
        expected.insert(
            format!("{dev} inode-table group {n}"),
            (
                "inode-table",
                blk(g.inode_table.expect("dumpe2fs inode table")),
            ),
        );
    }
    for (name, (kind, range)) in &expected {
        let got = objs.get(name).unwrap_or_else(|| {
            panic!("{dev}: the map has no {kind} object {name:?} (dumpe2fs: bytes {range:?})")
        });
        assert_eq!(got.0, *kind, "{dev}: kind of {name}");
        // Merge touching extents into one range.
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in &got.1 {
            match merged.last_mut() {
                Some(l) if l.1 == s => l.1 = e,
                _ => merged.push((s, e)),
            }
        }
        assert_eq!(
            merged,
            vec![*range],
            "{dev}: {name}: map extents (left) vs dumpe2fs (right), blocks of {bs} bytes from {}",
            f.offset
        );
    }
    let mut extra: Vec<&String> = objs.keys().filter(|k| !expected.contains_key(*k)).collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "{dev}: metadata objects dumpe2fs does not report: {extra:?}"
    );
}
