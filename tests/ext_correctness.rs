//! The index against e2fsprogs: filesystems that mke2fs builds at test time
//! from generated trees, indexed bare by the real `bmap` binary, compared
//! path by path with debugfs and group by group with dumpe2fs.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::{params, Connection};

const MIB: u64 = 1 << 20;

/// A typical mix: nested directories, sizes around block boundaries, empty
/// files, a sparse file with holes, hard links, fast and slow symlinks.
fn standard_tree(t: &Tree) {
    t.dir("/empty-dir")
        .file("/empty", 0)
        .file("/deep/er/empty2", 0)
        .file("/one-byte", 1)
        .file("/small", 100)
        .file("/block", 4096)
        .file("/block-plus", 4097)
        .file("/deep/medium", 50_000)
        .file("/deep/er/large", 1_500_000)
        .sparse(
            "/deep/sparse",
            3 * MIB,
            &[(0, 5000), (MIB, 8192), (2 * MIB + 12345, 100)],
        )
        .sparse("/deep/tail-only", 2 * MIB, &[(2 * MIB - 10, 10)])
        .hardlink("/small", "/deep/small-link")
        .hardlink("/small", "/deep/er/small-link2")
        .hardlink("/empty", "/empty-link")
        .symlink("/fast-link", "deep/er/large")
        .symlink("/slow-link", &"x/".repeat(50))
        .symlink("/deep/dangling", "nowhere");
    for i in 0..30 {
        t.file(&format!("/many/f{i:02}"), 700 * i);
    }
}

struct Built {
    _dir: tempfile::TempDir,
    img: PathBuf,
    map: PathBuf,
}

fn build(
    name: &str,
    fs_type: &str,
    bs: u32,
    features: &str,
    extra: &[&str],
    size: &str,
    fill: impl FnOnce(&Tree),
) -> Built {
    let dir = tempdir();
    let tree = Tree::new(dir.path().join("tree"));
    fill(&tree);
    let img = dir.path().join(format!("{name}.img"));
    mkfs(&img, fs_type, bs, features, extra, Some(&tree.root), size);
    if features.contains("quota") {
        // mke2fs -d leaves the quota files stale; let e2fsck update them.
        let out = std::process::Command::new(tool("e2fsck"))
            .arg("-fy")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck -fy: {out:?}"
        );
    }
    fsck_clean(&img);
    let map = dir.path().join(format!("{name}.bmap"));
    Built {
        _dir: dir,
        img,
        map,
    }
}

/// Indexes a bare filesystem image and runs every generic check.
fn index_and_check(b: &Built) -> (Connection, FsCheck) {
    let conn = bmap_index_clean(&b.img, &b.map, &[]);
    assert_layout_tiles(&conn, image_size(&b.img));
    let check = check_filesystem(
        &conn,
        &FsUnderTest {
            fs_img: &b.img,
            offset: 0,
            partition: None,
            device: "/dev/sda",
        },
    );
    eprintln!("{check:?}");
    (conn, check)
}

fn features(conn: &Connection) -> String {
    conn.query_row("SELECT features FROM filesystems", [], |r| r.get(0))
        .unwrap()
}

fn fs_type(conn: &Connection) -> String {
    conn.query_row("SELECT type FROM filesystems", [], |r| r.get(0))
        .unwrap()
}

fn extent_count(conn: &Connection, path: &str) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM file_extents WHERE path = ?1",
        params![path],
        |r| r.get(0),
    )
    .unwrap()
}

fn object_flags(conn: &Connection, path: &str) -> i64 {
    object_for_path(conn, path, None)
        .unwrap_or_else(|| panic!("{path} not in map"))
        .3
}

fn stat(img: &Path, path: &str) -> String {
    debugfs(img, &format!("stat {path}"))
}

#[test]
fn ext2_1k_blocks_with_triple_indirect_file() {
    let b = build("ext2", "ext2", 1024, "", &[], "24M", |t| {
        standard_tree(t);
        // 1 KiB blocks: 12 direct, 256 single, 65536 double-indirect
        // blocks; data at 68 MiB needs the triple-indirect tree.
        t.sparse(
            "/huge-sparse",
            70 * MIB,
            &[
                (0, 3000),
                (200 * 1024, 2048),
                (5 * MIB, 4096),
                (68 * MIB, 5000),
            ],
        );
    });
    let s = stat(&b.img, "/huge-sparse");
    assert!(
        s.contains("(TIND)"),
        "debugfs stat shows no TIND block:\n{s}"
    );
    let (conn, check) = index_and_check(&b);
    assert_eq!(fs_type(&conn), "ext2");
    assert_eq!(check.block_size, 1024);
    assert_eq!(check.extent_blocks, 0, "ext2 has no extent trees");
    assert!(
        check.indirect_blocks >= 7,
        "expected IND, DIND and TIND trees, got {} indirect blocks",
        check.indirect_blocks
    );
    // The triple-indirect file's tree: one object, kind indirect-block,
    // child of the file, holding the TIND/DIND/IND blocks stat names.
    let (id, ..) = object_for_path(&conn, "/huge-sparse", None).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM objects WHERE parent = ?1 AND kind = 'indirect-block'",
            params![id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let last: i64 = conn
        .query_row(
            "SELECT max(logical_offset + length) FROM file_extents WHERE path = '/huge-sparse'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        last as u64,
        68 * MIB + 5 * 1024,
        "end of the last extent of /huge-sparse"
    );
}

#[test]
fn ext3_2k_blocks() {
    let b = build("ext3", "ext3", 2048, "", &[], "32M", |t| {
        standard_tree(t);
        // Past 12 + 512 blocks: double indirect with 2 KiB blocks.
        t.file("/dind", 1_300_000);
    });
    let (conn, check) = index_and_check(&b);
    assert_eq!(fs_type(&conn), "ext3");
    assert!(features(&conn).contains("has_journal"));
    assert_eq!(check.block_size, 2048);
    assert!(check.indirect_blocks >= 3);
    assert!(stat(&b.img, "/dind").contains("(DIND)"));
    let journal: i64 = conn
        .query_row(
            "SELECT count(*) FROM objects WHERE kind = 'journal'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(journal, 1);
}

#[test]
fn ext4_4k_defaults() {
    let b = build("ext4", "ext4", 4096, "", &[], "64M", standard_tree);
    let (conn, check) = index_and_check(&b);
    assert_eq!(fs_type(&conn), "ext4");
    let f = features(&conn);
    for feat in ["extent", "flex_bg", "64bit", "metadata_csum"] {
        assert!(f.contains(feat), "{feat} missing from {f}");
    }
    assert!(check.paths > 40);
    assert!(check.fast_symlinks >= 2);
}

#[test]
fn ext4_sparse_file_holes() {
    let b = build("sparse", "ext4", 4096, "", &[], "32M", |t| {
        t.sparse(
            "/holes",
            20 * MIB,
            &[
                (0, 1),
                (3 * MIB, 3 * 4096),
                (7 * MIB + 100, 4096),
                (20 * MIB - 1, 1),
            ],
        );
        t.sparse("/all-hole", 5 * MIB, &[]);
    });
    let (conn, _) = index_and_check(&b);
    let rows: Vec<(i64, i64)> = conn
        .prepare("SELECT logical_offset, length FROM file_extents WHERE path = '/holes' ORDER BY logical_offset")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let m = MIB as i64;
    assert_eq!(
        rows,
        vec![
            (0, 4096),
            (3 * m, 3 * 4096),
            (7 * m, 2 * 4096),
            (20 * m - 4096, 4096)
        ],
        "logical extents of /holes"
    );
    assert_eq!(extent_count(&conn, "/all-hole"), 0);
}

#[test]
fn ext4_inline_data() {
    let b = build(
        "inline",
        "ext4",
        4096,
        "inline_data",
        &["-I", "256"],
        "32M",
        |t| {
            t.file("/tiny", 20)
                .file("/in-xattr", 100)
                .file("/not-inline", 10_000)
                .file("/small-dir/a", 10)
                .file("/small-dir/b", 0)
                .symlink("/small-dir/l", "a")
                .dir("/empty-inline-dir");
            for i in 0..3 {
                t.file(&format!("/d2/f{i}"), 30);
            }
        },
    );
    assert!(stat(&b.img, "/tiny").contains("Size of inline data"));
    assert!(stat(&b.img, "/small-dir").contains("Size of inline data"));
    let (conn, check) = index_and_check(&b);
    assert!(features(&conn).contains("inline_data"));
    assert!(check.inline >= 5, "{check:?}");
    for p in ["/tiny", "/in-xattr", "/small-dir", "/small-dir/a"] {
        assert_eq!(extent_count(&conn, p), 0, "{p}");
        assert!(object_flags(&conn, p) & 1 != 0, "{p} not flagged inline");
    }
    assert!(extent_count(&conn, "/not-inline") > 0);
    // Names inside inline directories were found.
    for p in ["/small-dir/a", "/small-dir/b", "/small-dir/l", "/d2/f2"] {
        assert!(object_for_path(&conn, p, None).is_some(), "{p}");
    }
}

#[test]
fn ext4_without_flex_bg() {
    let b = build(
        "noflex",
        "ext4",
        4096,
        "^flex_bg",
        &["-g", "4096"],
        "64M",
        standard_tree,
    );
    let (conn, _) = index_and_check(&b);
    assert!(!features(&conn).contains("flex_bg"));
    let groups: i64 = conn
        .query_row("SELECT groups FROM filesystems", [], |r| r.get(0))
        .unwrap();
    assert_eq!(groups, 4);
}

#[test]
fn ext4_meta_bg_4k() {
    let b = build(
        "metabg",
        "ext4",
        4096,
        "meta_bg,^resize_inode",
        &[],
        "64M",
        standard_tree,
    );
    let (conn, _) = index_and_check(&b);
    let f = features(&conn);
    assert!(f.contains("meta_bg") && !f.contains("resize_inode"), "{f}");
}

#[test]
fn ext4_meta_bg_several_meta_groups() {
    // 1 KiB blocks, 64-byte descriptors: 16 per block, so 48 groups of
    // 1 MiB make three meta groups, each with descriptor blocks in its
    // first, second and last group.
    let b = build(
        "metabg3",
        "ext4",
        1024,
        "meta_bg,^resize_inode",
        &["-g", "1024", "-N", "2048"],
        "48M",
        standard_tree,
    );
    let d = dumpe2fs(&b.img);
    let with_gd = d.groups.iter().filter(|g| g.descriptors.is_some()).count();
    assert_eq!(with_gd, 9, "dumpe2fs descriptor copies");
    index_and_check(&b);
}

#[test]
fn ext4_without_64bit() {
    let b = build("no64", "ext4", 4096, "^64bit", &[], "64M", standard_tree);
    let (conn, _) = index_and_check(&b);
    assert!(!features(&conn).contains("64bit"));
}

#[test]
fn ext4_fragmented_file_has_extent_tree() {
    let dir = tempdir();
    let tree = Tree::new(dir.path().join("tree"));
    for i in 0..1200 {
        tree.file(&format!("/fill/f{i:04}"), 4096);
    }
    let img = dir.path().join("frag.img");
    mkfs(&img, "ext4", 4096, "", &[], Some(&tree.root), "32M");
    let rm: Vec<String> = (0..1200)
        .step_by(2)
        .map(|i| format!("rm /fill/f{i:04}"))
        .collect();
    debugfs_write(&img, &rm);
    let big = dir.path().join("big");
    std::fs::write(&big, pattern(4 * MIB as usize, 7)).unwrap();
    debugfs_write(&img, &[format!("write {} big", big.display())]);
    fsck_clean(&img);
    let ex = debugfs(&img, "ex /big");
    let depth1 = ex.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 1 && f[0].ends_with('/') && f[1].parse::<u32>().is_ok_and(|d| d >= 1)
    });
    assert!(depth1, "debugfs ex /big shows no tree of depth >= 1:\n{ex}");
    let map = dir.path().join("frag.bmap");
    let b = Built {
        _dir: dir,
        img,
        map,
    };
    let (conn, check) = index_and_check(&b);
    assert!(check.extent_blocks >= 2, "{check:?}");
    assert!(
        extent_count(&conn, "/big") > 340,
        "the file should be fragmented"
    );
    // Tree blocks are one extent-block object, child of /big.
    let (id, ..) = object_for_path(&conn, "/big", None).unwrap();
    let (n, kinds): (i64, String) = conn
        .query_row(
            "SELECT count(*), group_concat(DISTINCT kind) FROM objects WHERE parent = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, kinds.as_str()), (1, "extent-block"));
}

#[test]
fn ext4_htree_directory() {
    let b = build("htree", "ext4", 4096, "", &[], "32M", |t| {
        for i in 0..2000 {
            t.file(
                &format!("/big-dir/entry-number-{i:05}"),
                if i % 100 == 0 { 5000 } else { 0 },
            );
        }
        t.file("/other", 10);
    });
    // Rebuild (and index) every directory.
    let out = std::process::Command::new(tool("e2fsck"))
        .arg("-fyD")
        .arg(&b.img)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck -fyD: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    fsck_clean(&b.img);
    let s = stat(&b.img, "/big-dir");
    let flags_line = s.lines().find(|l| l.contains("Flags:")).unwrap();
    let flags = u32::from_str_radix(
        flags_line
            .split("Flags: 0x")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap(),
        16,
    )
    .unwrap();
    assert!(flags & 0x1000 != 0, "/big-dir is not indexed: {flags_line}");
    let dump = debugfs(&b.img, "htree_dump /big-dir");
    assert!(dump.contains("Root node dump"), "htree_dump:\n{dump}");
    let (conn, check) = index_and_check(&b);
    assert!(check.paths >= 2003);
    assert!(object_flags(&conn, "/big-dir") & 4 != 0, "htree flag");
    let names: i64 = conn
        .query_row(
            "SELECT count(*) FROM names WHERE path LIKE '/big-dir/%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(names, 2000);
}

#[test]
fn links_symlinks_and_empty_files() {
    let b = build("links", "ext4", 4096, "", &[], "32M", |t| {
        t.file("/data", 10_000)
            .hardlink("/data", "/a/link1")
            .hardlink("/data", "/a/b/link2")
            .file("/empty", 0)
            .hardlink("/empty", "/a/empty-link")
            .symlink("/fast", "data")
            .symlink("/slow", &"long/".repeat(20));
    });
    assert!(stat(&b.img, "/fast").contains("Fast link dest"));
    assert!(!stat(&b.img, "/slow").contains("Fast link dest"));
    let (conn, _) = index_and_check(&b);
    // Every name of the hard-linked file has the same extents.
    let ext = |p: &str| -> Vec<(i64, i64, i64)> {
        conn.prepare("SELECT logical_offset, disk_offset, length FROM file_extents WHERE path = ?1 ORDER BY logical_offset")
            .unwrap()
            .query_map(params![p], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let data = ext("/data");
    assert!(!data.is_empty());
    assert_eq!(ext("/a/link1"), data);
    assert_eq!(ext("/a/b/link2"), data);
    let (id, ..) = object_for_path(&conn, "/data", None).unwrap();
    let names: i64 = conn
        .query_row(
            "SELECT count(*) FROM names WHERE object = ?1",
            params![id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(names, 3);
    assert!(object_for_path(&conn, "/a/empty-link", None).is_some());
    assert_eq!(extent_count(&conn, "/empty"), 0);
    assert_eq!(extent_count(&conn, "/a/empty-link"), 0);
    assert_eq!(extent_count(&conn, "/fast"), 0);
    assert!(object_flags(&conn, "/fast") & 2 != 0);
    assert_eq!(extent_count(&conn, "/slow"), 1);
    assert_eq!(object_flags(&conn, "/slow") & 2, 0);
}

/// More mke2fs variants through the same generic checks.
macro_rules! variant {
    ($name:ident, $fs:expr, $bs:expr, $features:expr, $extra:expr, $size:expr) => {
        #[test]
        fn $name() {
            let b = build(
                stringify!($name),
                $fs,
                $bs,
                $features,
                $extra,
                $size,
                standard_tree,
            );
            index_and_check(&b);
        }
    };
}

variant!(ext4_1k_blocks_flex_bg, "ext4", 1024, "", &[], "40M");
variant!(
    ext4_2k_blocks_resize_inode,
    "ext4",
    2048,
    "",
    &["-g", "2048"],
    "40M"
);
variant!(ext4_64k_blocks, "ext4", 65536, "", &[], "64M");
variant!(
    ext4_without_extents,
    "ext4",
    4096,
    "^extent,^64bit",
    &[],
    "48M"
);
variant!(
    ext4_quota_project,
    "ext4",
    4096,
    "quota,project",
    &[],
    "32M"
);
variant!(ext4_orphan_file, "ext4", 4096, "orphan_file", &[], "32M");
variant!(
    ext4_sparse_super2,
    "ext4",
    1024,
    "sparse_super2",
    &["-g", "1024"],
    "24M"
);
variant!(
    ext4_no_sparse_super,
    "ext4",
    1024,
    "^sparse_super,^resize_inode",
    &["-g", "2048"],
    "24M"
);
variant!(
    ext4_no_journal_no_dir_index,
    "ext4",
    4096,
    "^has_journal,^dir_index",
    &[],
    "32M"
);
variant!(ext4_small_inodes, "ext4", 4096, "", &["-I", "128"], "32M");
variant!(ext4_mmp, "ext4", 4096, "mmp", &[], "32M");
variant!(
    ext2_4k_no_resize_inode,
    "ext2",
    4096,
    "^resize_inode",
    &[],
    "32M"
);
variant!(
    ext4_no_uninit_bg,
    "ext4",
    4096,
    "^metadata_csum,^uninit_bg",
    &["-g", "8192"],
    "64M"
);

#[test]
fn ext4_inline_directory_filling_i_block() {
    // libext2fs never spills directory entries into the system.data xattr
    // (it converts the directory to a block instead), so the fullest inline
    // directory mke2fs makes uses all 56 entry bytes of i_block.
    let b = build(
        "inline2",
        "ext4",
        4096,
        "inline_data",
        &["-I", "512"],
        "32M",
        |t| {
            for i in 0..3 {
                t.file(&format!("/dir/entry-n{i}"), 5);
            }
        },
    );
    let s = stat(&b.img, "/dir");
    assert!(s.contains("Size of inline data"), "{s}");
    let (conn, _) = index_and_check(&b);
    for i in 0..3 {
        let p = format!("/dir/entry-n{i}");
        assert!(object_for_path(&conn, &p, None).is_some(), "{p}");
    }
}

#[test]
fn ext4_unwritten_extents() {
    let b = build("unwritten", "ext4", 4096, "", &[], "32M", |t| {
        t.file("/written", 8192).file("/prealloc", 0);
    });
    debugfs_write(&b.img, &["fallocate /prealloc 0 255".to_string()]);
    fsck_clean(&b.img);
    let ex = debugfs(&b.img, "ex /prealloc");
    assert!(
        ex.contains("Uninit"),
        "debugfs ex shows no unwritten extent:\n{ex}"
    );
    let (conn, _) = index_and_check(&b);
    let (n, unwritten): (i64, i64) = conn
        .query_row(
            "SELECT count(*), sum(e.flags & 1) FROM extents e JOIN names n ON n.object = e.object
             WHERE n.path = '/prealloc'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        n > 0 && unwritten == n,
        "{n} extents, {unwritten} unwritten"
    );
}

#[test]
fn ext2_1k_directory_with_indirect_blocks() {
    let b = build("ext2dir", "ext2", 1024, "", &[], "16M", |t| {
        for i in 0..1500 {
            t.file(&format!("/d/name-{i:04}"), 0);
        }
    });
    assert!(stat(&b.img, "/d").contains("(IND)"));
    let (conn, check) = index_and_check(&b);
    assert!(check.indirect_blocks >= 1);
    let names: i64 = conn
        .query_row(
            "SELECT count(*) FROM names WHERE path LIKE '/d/%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(names, 1500);
}

#[test]
fn ext4_xattr_blocks() {
    let b = build("xattr", "ext4", 4096, "", &["-I", "128"], "32M", |t| {
        t.file("/a", 10).file("/b", 5000).dir("/dir");
    });
    let value = "v".repeat(300);
    debugfs_write(
        &b.img,
        &[
            format!("ea_set /a user.big {value}"),
            format!("ea_set /dir user.big {value}x"),
        ],
    );
    fsck_clean(&b.img);
    let acl = |p: &str| -> u64 {
        let s = stat(&b.img, p);
        let l = s
            .lines()
            .find(|l| l.starts_with("File ACL:"))
            .unwrap()
            .to_string();
        l["File ACL:".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (a_acl, d_acl) = (acl("/a"), acl("/dir"));
    assert!(a_acl != 0 && d_acl != 0 && a_acl != d_acl);
    let (conn, _) = index_and_check(&b);
    for (p, block) in [("/a", a_acl), ("/dir", d_acl)] {
        let (id, ..) = object_for_path(&conn, p, None).unwrap();
        let (s, e): (i64, i64) = conn
            .query_row(
                "SELECT e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
                 WHERE o.parent = ?1 AND o.kind = 'xattr-block'",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (s as u64, e as u64),
            (block * 4096, block * 4096 + 4096),
            "{p}"
        );
    }
    assert_eq!(extent_count(&conn, "/a"), 1);
}

#[test]
fn ext4_ea_inode_is_not_an_unlinked_file() {
    let b = build("eainode", "ext4", 4096, "ea_inode", &[], "32M", |t| {
        t.file("/a", 10);
    });
    let val = b.img.with_file_name("value");
    std::fs::write(&val, pattern(20_000, 3)).unwrap();
    debugfs_write(
        &b.img,
        &[format!("ea_set -f {} /a user.big", val.display())],
    );
    // debugfs 1.47.0 leaves /a's i_blocks short by the EA inode's
    // charge; e2fsck -fy repairs that, then the image must be clean.
    let out = std::process::Command::new(tool("e2fsck"))
        .arg("-fy")
        .arg(&b.img)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck -fy: {out:?}"
    );
    fsck_clean(&b.img);
    // The EA inode debugfs reports, by its EA_INODE flag (0x200000).
    let ea_ino = (12..40)
        .find(|i| {
            let s = debugfs(&b.img, &format!("stat <{i}>"));
            s.lines()
                .find(|l| l.contains("Flags: 0x"))
                .and_then(|l| l.split("Flags: 0x").nth(1))
                .and_then(|f| u32::from_str_radix(f.split_whitespace().next()?, 16).ok())
                .is_some_and(|f| f & 0x200000 != 0)
        })
        .expect("no EA inode after ea_set on an ea_inode filesystem");
    let (conn, _) = index_and_check(&b);
    let (unlinked, files): (i64, i64) = conn
        .query_row("SELECT unlinked_inodes, files FROM filesystems", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (unlinked, files),
        (0, 1),
        "the EA inode counted as an (unlinked) file"
    );
    let (kind, flags): (String, i64) = conn
        .query_row(
            "SELECT kind, flags FROM objects WHERE inode = ?1",
            params![ea_ino as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((kind.as_str(), flags & 8), ("xattr-block", 0));
}

/// A block marked in use that nothing claims is reported as `unknown`
/// (a finding), exactly where it is; the stale free count is a warning.
#[test]
fn allocated_but_unclaimed_block_is_unknown() {
    let b = build("unknown", "ext4", 4096, "", &[], "32M", standard_tree);
    let found = debugfs(&b.img, "ffb 1 3000");
    let block: u64 = found
        .split_whitespace()
        .last()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("debugfs ffb: {found:?}"));
    debugfs_write(&b.img, &[format!("setb {block}")]);
    let run = bmap_index(&b.img, &b.map, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("free blocks"), "{}", run.stderr);
    let conn = open_map(&b.map);
    assert_layout_tiles(&conn, image_size(&b.img));
    let unknown: i64 = conn
        .query_row("SELECT unknown_bytes FROM filesystems", [], |r| r.get(0))
        .unwrap();
    assert_eq!(unknown, 4096);
    let (start, end, kind): (i64, i64, String) = conn
        .query_row(
            "SELECT start, \"end\", kind FROM layout WHERE kind = 'unknown'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (start, end, kind.as_str()),
        (block as i64 * 4096, (block as i64 + 1) * 4096, "unknown")
    );
}

/// bigalloc is refused with a message naming the superblock's feature
/// field; the map is still written (the disk is mapped) and the exit status
/// says it is partial.
#[test]
fn bigalloc_is_refused_clearly() {
    let b = build(
        "bigalloc",
        "ext4",
        4096,
        "bigalloc",
        &["-C", "16384"],
        "64M",
        |t| {
            t.file("/a", 100_000);
        },
    );
    let run = bmap_index(&b.img, &b.map, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("bigalloc"), "{}", run.stderr);
    assert!(
        run.stderr.contains("at byte 1124"),
        "s_feature_ro_compat is at 1024 + 0x64: {}",
        run.stderr
    );
    let conn = open_map(&b.map);
    assert_layout_tiles(&conn, image_size(&b.img));
}

/// A filesystem whose journal lives on another device: reported, not an
/// error, and nothing in this image is taken for the journal.
#[test]
fn external_journal_is_reported() {
    let b = build(
        "extjournal",
        "ext4",
        4096,
        "^has_journal",
        &[],
        "32M",
        standard_tree,
    );
    debugfs_write(
        &b.img,
        &[
            "feature has_journal".to_string(),
            "ssv journal_dev 0x0801".to_string(),
            "ssv journal_uuid 0a0b0c0d-0000-1111-2222-333344445555".to_string(),
        ],
    );
    let conn = bmap_index_clean(&b.img, &b.map, &[]);
    let ext: String = conn
        .query_row("SELECT external_journal FROM filesystems", [], |r| r.get(0))
        .unwrap();
    assert!(
        ext.contains("0x801") && ext.contains("0a0b0c0d-0000-1111-2222-333344445555"),
        "{ext}"
    );
    let journal: i64 = conn
        .query_row(
            "SELECT count(*) FROM objects WHERE kind = 'journal'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(journal, 0);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bmap"))
        .arg("info")
        .arg(&b.map)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("external journal, device 0x801"));
}

/// A damaged primary superblock: like e2fsck, bmap falls back to group 1's
/// backup, says so at the primary's magic field, and maps everything as it
/// would on the intact image (checked against debugfs/dumpe2fs on a copy
/// made before the damage).
#[test]
fn damaged_primary_superblock_falls_back_to_backup() {
    let b = build("backup-sb", "ext4", 1024, "", &[], "32M", standard_tree);
    let intact = b.img.with_file_name("intact.img");
    std::fs::copy(&b.img, &intact).unwrap();
    let mut bytes = std::fs::read(&b.img).unwrap();
    bytes[1024..2048].fill(0);
    std::fs::write(&b.img, &bytes).unwrap();

    let run = bmap_index(&b.img, &b.map, &[]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("at byte 1080")
            && run.stderr.contains("backup in group 1 at byte 8389632"),
        "{}",
        run.stderr
    );
    let conn = open_map(&b.map);
    let warnings: i64 = conn
        .query_row("SELECT count(*) FROM warnings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(warnings, 1);
    assert_layout_tiles(&conn, image_size(&b.img));
    let check = check_filesystem(
        &conn,
        &FsUnderTest {
            fs_img: &intact,
            offset: 0,
            partition: None,
            device: "/dev/sda",
        },
    );
    assert!(check.paths > 40, "{check:?}");
}
