//! The volume layer against sgdisk, sfdisk and fdisk: filesystems made by
//! mke2fs are copied into partitioned disks built by the real partitioning
//! tools, and the map of the whole disk is compared with what the tools
//! report and with debugfs/dumpe2fs run on the filesystem images before
//! they were copied in.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use rusqlite::{params, Connection};

const MIB: u64 = 1 << 20;

fn small_tree(t: &Tree, salt: usize) {
    t.file("/etc/hostname", 10 + salt)
        .file("/etc/fstab", 300 + salt)
        .file("/var/log/big.log", 900_000 + salt)
        .sparse("/var/sparse", 3 * MIB, &[(0, 100), (2 * MIB, 9000)])
        .file("/empty", 0)
        .hardlink("/etc/fstab", "/fstab-link")
        .symlink("/fast", "etc/fstab")
        .symlink("/slow", &"s/".repeat(40));
    for i in 0..20 {
        t.file(&format!("/usr/share/f{i}"), 3000 * i + salt);
    }
}

/// Makes a filesystem image of exactly `bytes` (a partition's size).
fn make_fs(dir: &Path, name: &str, fs_type: &str, bs: u32, bytes: u64, salt: usize) -> PathBuf {
    let tree = Tree::new(dir.join(format!("{name}-tree")));
    small_tree(&tree, salt);
    let img = dir.join(format!("{name}.img"));
    sparse_file(&img, bytes);
    let blocks = bytes / u64::from(bs);
    mkfs(
        &img,
        fs_type,
        bs,
        "",
        &[],
        Some(&tree.root),
        &format!("{blocks}"),
    );
    fsck_clean(&img);
    assert_eq!(image_size(&img), bytes, "mke2fs changed the image size");
    img
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

fn u32le(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[o..o + 4].try_into().unwrap()))
}

fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// (kind, start, end) of every extent of objects of `kind`.
fn object_extents(conn: &Connection, kind: &str) -> Vec<(String, u64, u64)> {
    conn.prepare(
        "SELECT o.name, e.start, e.end FROM objects o JOIN extents e ON e.object = o.id
         WHERE o.kind = ?1 ORDER BY e.start",
    )
    .unwrap()
    .query_map(params![kind], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn partitions(conn: &Connection) -> Vec<(u32, String, String, u64, u64, String)> {
    conn.prepare("SELECT number, scheme, role, start, end, type_id FROM partitions ORDER BY number")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// What a byte range of the disk must be in the layout.
#[derive(Debug, Clone)]
enum Zone {
    /// A table structure: kind and object name.
    Structure(&'static str, String),
    /// Inside a filesystem: anything the filesystem walker makes.
    Filesystem(String),
    /// A partition with nothing recognised in it.
    Partition(String),
}

/// Every layout segment lies in one zone and has its kind; everything no
/// zone covers is `unpartitioned`.
fn assert_zones(conn: &Connection, size: u64, zones: &[(u64, u64, Zone)]) {
    assert_layout_tiles(conn, size);
    let rows: Vec<(u64, u64, String, String)> = conn
        .prepare("SELECT start, end, kind, object FROM layout ORDER BY start")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    const DISK_LEVEL: [&str; 7] = [
        "disk",
        "unpartitioned",
        "partition",
        "mbr",
        "ebr",
        "gpt-header",
        "gpt-entries",
    ];
    for (s, e, kind, object) in rows {
        let zone = zones.iter().find(|z| z.0 <= s && s < z.1);
        match zone {
            None => {
                // The segment must not reach into a zone either.
                let next = zones.iter().filter(|z| z.0 > s).map(|z| z.0).min();
                assert!(
                    next.is_none_or(|n| e <= n),
                    "segment [{s}, {e}) {kind} runs into a zone at {next:?}"
                );
                assert_eq!(
                    kind, "unpartitioned",
                    "[{s}, {e}) is outside every partition and table structure, but the layout says {kind} {object}"
                );
            }
            Some((zs, ze, z)) => {
                assert!(
                    e <= *ze,
                    "segment [{s}, {e}) {kind} {object} runs past its zone [{zs}, {ze}) {z:?}"
                );
                match z {
                    Zone::Structure(k, name) => {
                        assert_eq!((kind.as_str(), &object), (*k, name), "[{s}, {e})")
                    }
                    Zone::Filesystem(dev) => {
                        assert!(
                            !DISK_LEVEL.contains(&kind.as_str()),
                            "[{s}, {e}) inside the filesystem on {dev} is {kind} {object}"
                        );
                        assert!(
                            object.starts_with(&format!("{dev} ")),
                            "[{s}, {e}) inside {dev} belongs to {object}"
                        );
                    }
                    Zone::Partition(dev) => {
                        assert_eq!(
                            (kind.as_str(), object.as_str()),
                            ("partition", dev.as_str()),
                            "[{s}, {e}) in an unformatted partition"
                        )
                    }
                }
            }
        }
    }
}

/// The paths of a filesystem in a partition: partition column and absolute
/// offsets = partition start + the standalone image's block offsets.
fn check_fs_in_partition(conn: &Connection, fs_img: &Path, offset: u64, number: u32) {
    let device = format!("/dev/sda{number}");
    let c = check_filesystem(
        conn,
        &FsUnderTest {
            fs_img,
            offset,
            partition: Some(number),
            device: &device,
        },
    );
    assert!(c.paths_with_blocks > 20, "{device}: {c:?}");
    // Every file_extents row inside this filesystem carries its partition.
    let fs_bytes: i64 = conn
        .query_row(
            "SELECT blocks_count * block_size FROM filesystems WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )
        .unwrap();
    let (rows, wrong): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(partition IS NOT ?1), 0) FROM file_extents
             WHERE disk_offset >= ?2 AND disk_offset < ?2 + ?3",
            params![number, offset as i64, fs_bytes],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(rows > 0);
    assert_eq!(wrong, 0, "{device}: rows with another partition number");
}

#[test]
fn bare_filesystem_has_no_partitions() {
    let dir = tempdir();
    let img = make_fs(dir.path(), "bare", "ext4", 4096, 24 * MIB, 0);
    let map = dir.path().join("bare.bmap");
    let conn = bmap_index_clean(&img, &map, &[]);
    assert!(partitions(&conn).is_empty());
    let scheme: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'partition_scheme'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(scheme, "none");
    assert_zones(
        &conn,
        24 * MIB,
        &[(0, 24 * MIB, Zone::Filesystem("/dev/sda".into()))],
    );
    check_filesystem(
        &conn,
        &FsUnderTest {
            fs_img: &img,
            offset: 0,
            partition: None,
            device: "/dev/sda",
        },
    );
}

#[test]
fn gpt_disk_from_sgdisk() {
    let dir = tempdir();
    let disk = dir.path().join("gpt.img");
    let size = 64 * MIB;
    sparse_file(&disk, size);
    run_tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+24M",
            "-t",
            "1:8300",
            "-c",
            "1:root",
            "-n",
            "2:0:+16M",
            "-t",
            "2:8300",
            "-n",
            "3:0:+8M",
            "-t",
            "3:8200",
            disk.to_str().unwrap(),
        ],
    );
    let parts: Vec<(u64, u64)> = (1..=3).map(|n| sgdisk_info(&disk, n)).collect();
    let fs1 = make_fs(
        dir.path(),
        "p1",
        "ext4",
        4096,
        (parts[0].1 + 1 - parts[0].0) * 512,
        1,
    );
    let fs2 = make_fs(
        dir.path(),
        "p2",
        "ext2",
        1024,
        (parts[1].1 + 1 - parts[1].0) * 512,
        2,
    );
    place(&disk, &fs1, parts[0].0 * 512);
    place(&disk, &fs2, parts[1].0 * 512);
    assert_eq!(image_size(&disk), size);

    let map = dir.path().join("gpt.bmap");
    let conn = bmap_index_clean(&disk, &map, &[]);

    // Partitions as sgdisk reports them.
    let got = partitions(&conn);
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, p) in got.iter().enumerate() {
        let (first, last) = parts[i];
        assert_eq!(p.0, i as u32 + 1);
        assert_eq!((p.1.as_str(), p.2.as_str()), ("gpt", "primary"));
        assert_eq!(
            (p.3, p.4),
            (first * 512, (last + 1) * 512),
            "partition {}",
            p.0
        );
    }
    assert_eq!(got[0].5, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(got[2].5, "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F");

    // Table structures, where the headers (read here independently) put them.
    let hdr = read_at(&disk, 512, 512);
    assert_eq!(&hdr[..8], b"EFI PART");
    let backup_lba = u64le(&hdr, 32);
    let entries_lba = u64le(&hdr, 72);
    let array = u32le(&hdr, 80) * u32le(&hdr, 84);
    let bhdr = read_at(&disk, backup_lba * 512, 512);
    assert_eq!(&bhdr[..8], b"EFI PART");
    let bentries_lba = u64le(&bhdr, 72);
    assert_eq!(backup_lba * 512, size - 512);
    let array_end = |lba: u64| lba * 512 + array.div_ceil(512) * 512;
    let mbr = object_extents(&conn, "mbr");
    assert_eq!(mbr, vec![("/dev/sda protective MBR".into(), 0, 512)]);
    assert_eq!(
        object_extents(&conn, "gpt-header"),
        vec![
            ("/dev/sda GPT header".into(), 512, 1024),
            ("/dev/sda GPT backup header".into(), size - 512, size),
        ]
    );
    assert_eq!(
        object_extents(&conn, "gpt-entries"),
        vec![
            (
                "/dev/sda GPT entries".into(),
                entries_lba * 512,
                array_end(entries_lba)
            ),
            (
                "/dev/sda GPT backup entries".into(),
                bentries_lba * 512,
                array_end(bentries_lba)
            ),
        ]
    );

    let mut zones = vec![
        (
            0,
            512,
            Zone::Structure("mbr", "/dev/sda protective MBR".into()),
        ),
        (
            512,
            1024,
            Zone::Structure("gpt-header", "/dev/sda GPT header".into()),
        ),
        (
            entries_lba * 512,
            array_end(entries_lba),
            Zone::Structure("gpt-entries", "/dev/sda GPT entries".into()),
        ),
        (
            bentries_lba * 512,
            array_end(bentries_lba),
            Zone::Structure("gpt-entries", "/dev/sda GPT backup entries".into()),
        ),
        (
            size - 512,
            size,
            Zone::Structure("gpt-header", "/dev/sda GPT backup header".into()),
        ),
        (
            parts[0].0 * 512,
            (parts[0].1 + 1) * 512,
            Zone::Filesystem("/dev/sda1".into()),
        ),
        (
            parts[1].0 * 512,
            (parts[1].1 + 1) * 512,
            Zone::Filesystem("/dev/sda2".into()),
        ),
        (
            parts[2].0 * 512,
            (parts[2].1 + 1) * 512,
            Zone::Partition("/dev/sda3".into()),
        ),
    ];
    zones.sort_by_key(|z| z.0);
    assert_zones(&conn, size, &zones);
    // sgdisk leaves a gap before partition 1 and after partition 3.
    assert!(layout_bytes(&conn, "unpartitioned", 0, size) > 0);

    check_fs_in_partition(&conn, &fs1, parts[0].0 * 512, 1);
    check_fs_in_partition(&conn, &fs2, parts[1].0 * 512, 2);
    let fs_count: i64 = conn
        .query_row("SELECT count(*) FROM filesystems", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fs_count, 2);
}

#[test]
fn mbr_disk_with_logical_partitions_from_sfdisk() {
    let dir = tempdir();
    let disk = dir.path().join("mbr.img");
    let size = 64 * MIB;
    sparse_file(&disk, size);
    let script = "label: dos\nunit: sectors\n\n\
        start=2048, size=16384, type=83\n\
        start=18432, size=16384, type=83\n\
        start=34816, size=96256, type=5\n\
        start=36864, size=32768, type=83\n\
        start=71680, size=24576, type=83\n";
    run_tool_stdin("sfdisk", &[disk.to_str().unwrap()], script);
    let table = sfdisk_json(&disk);
    let numbers: Vec<u32> = table.iter().map(|p| p.0).collect();
    assert_eq!(numbers, vec![1, 2, 3, 5, 6], "sfdisk --json: {table:?}");
    let part = |n: u32| -> (u64, u64) {
        let p = table.iter().find(|p| p.0 == n).unwrap();
        (p.1 * 512, (p.1 + p.2) * 512)
    };

    let fs1 = make_fs(dir.path(), "p1", "ext4", 4096, part(1).1 - part(1).0, 1);
    let fs2 = make_fs(dir.path(), "p2", "ext3", 2048, part(2).1 - part(2).0, 2);
    let fs5 = make_fs(dir.path(), "p5", "ext4", 4096, part(5).1 - part(5).0, 5);
    let fs6 = make_fs(dir.path(), "p6", "ext2", 1024, part(6).1 - part(6).0, 6);
    for (n, f) in [(1, &fs1), (2, &fs2), (5, &fs5), (6, &fs6)] {
        place(&disk, f, part(n).0);
    }
    assert_eq!(image_size(&disk), size);

    let map = dir.path().join("mbr.bmap");
    let conn = bmap_index_clean(&disk, &map, &[]);

    let got = partitions(&conn);
    let want_roles = [
        (1, "primary"),
        (2, "primary"),
        (3, "extended"),
        (5, "logical"),
        (6, "logical"),
    ];
    assert_eq!(got.len(), 5, "{got:?}");
    for (p, (n, role)) in got.iter().zip(want_roles) {
        assert_eq!(p.0, n);
        assert_eq!((p.1.as_str(), p.2.as_str()), ("mbr", role), "partition {n}");
        assert_eq!(
            (p.3, p.4),
            part(n),
            "partition {n} start/end vs sfdisk --json"
        );
        let t = &table.iter().find(|x| x.0 == n).unwrap().3;
        assert_eq!(p.5, format!("0x{:0>2}", t), "type of partition {n}");
    }

    // The EBR chain, followed here from the raw sectors.
    let ext_lba = part(3).0 / 512;
    let mut ebrs = Vec::new();
    let mut lba = ext_lba;
    loop {
        let s = read_at(&disk, lba * 512, 512);
        assert_eq!(&s[510..], &[0x55, 0xAA], "EBR at sector {lba}");
        let logical_start = lba + u32le(&s, 446 + 8);
        ebrs.push((lba * 512, logical_start * 512));
        let next = u32le(&s, 446 + 16 + 8);
        if s[446 + 16 + 4] == 0 {
            break;
        }
        lba = ext_lba + next;
    }
    assert_eq!(ebrs.len(), 2);
    assert_eq!(ebrs[0].1, part(5).0);
    assert_eq!(ebrs[1].1, part(6).0);
    let got_ebrs = object_extents(&conn, "ebr");
    assert_eq!(
        got_ebrs,
        vec![
            (
                "/dev/sda EBR of /dev/sda5".to_string(),
                ebrs[0].0,
                ebrs[0].0 + 512
            ),
            (
                "/dev/sda EBR of /dev/sda6".to_string(),
                ebrs[1].0,
                ebrs[1].0 + 512
            ),
        ]
    );
    assert_eq!(
        object_extents(&conn, "mbr"),
        vec![("/dev/sda MBR".into(), 0, 512)]
    );
    // Logical partitions are children of the extended one.
    let parent_of = |dev: &str| -> String {
        conn.query_row(
            "SELECT p.name FROM objects o JOIN objects p ON p.id = o.parent
             WHERE o.kind = 'partition' AND o.name = ?1",
            params![dev],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(parent_of("/dev/sda5"), "/dev/sda3");
    assert_eq!(parent_of("/dev/sda1"), "/dev/sda");

    let mut zones = vec![
        (0, 512, Zone::Structure("mbr", "/dev/sda MBR".into())),
        (part(1).0, part(1).1, Zone::Filesystem("/dev/sda1".into())),
        (part(2).0, part(2).1, Zone::Filesystem("/dev/sda2".into())),
        (part(5).0, part(5).1, Zone::Filesystem("/dev/sda5".into())),
        (part(6).0, part(6).1, Zone::Filesystem("/dev/sda6".into())),
        (
            ebrs[0].0,
            ebrs[0].0 + 512,
            Zone::Structure("ebr", "/dev/sda EBR of /dev/sda5".into()),
        ),
        (
            ebrs[1].0,
            ebrs[1].0 + 512,
            Zone::Structure("ebr", "/dev/sda EBR of /dev/sda6".into()),
        ),
    ];
    // The rest of the extended partition is the extended partition.
    zones.sort_by_key(|z| z.0);
    let (es, ee) = part(3);
    let mut rest = Vec::new();
    let mut pos = es;
    for z in zones.iter().filter(|z| z.0 >= es && z.1 <= ee) {
        if z.0 > pos {
            rest.push((pos, z.0, Zone::Partition("/dev/sda3".into())));
        }
        pos = z.1;
    }
    if pos < ee {
        rest.push((pos, ee, Zone::Partition("/dev/sda3".into())));
    }
    zones.extend(rest);
    zones.sort_by_key(|z| z.0);
    assert_zones(&conn, size, &zones);
    assert_eq!(
        layout_bytes(&conn, "unpartitioned", 0, size),
        (2048 * 512 - 512) + (size - ee),
        "unpartitioned bytes: before partition 1 (minus the MBR) and after the extended partition"
    );

    check_fs_in_partition(&conn, &fs1, part(1).0, 1);
    check_fs_in_partition(&conn, &fs2, part(2).0, 2);
    check_fs_in_partition(&conn, &fs5, part(5).0, 5);
    check_fs_in_partition(&conn, &fs6, part(6).0, 6);

    // A path in a logical partition: partition 5, offset = start + fs offset.
    let fs_blocks = debugfs(&fs5, "blocks /etc/fstab");
    let first: u64 = fs_blocks
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (p, off): (i64, i64) = conn
        .query_row(
            "SELECT partition, disk_offset FROM file_extents
             WHERE path = '/etc/fstab' AND partition = 5 AND logical_offset = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((p, off as u64), (5, part(5).0 + first * 4096));
}

/// 4096-byte logical sectors: fdisk -b 4096 writes the GPT (sgdisk and
/// sfdisk cannot do that on a plain file).
#[test]
fn gpt_with_4096_byte_sectors_from_fdisk() {
    let dir = tempdir();
    let disk = dir.path().join("gpt4k.img");
    let size = 48 * MIB;
    sparse_file(&disk, size);
    // g: new GPT; partition 1 at sector 256 (1 MiB) of 16 MiB; partition 2
    // right after it, 8 MiB.
    run_tool_stdin(
        "fdisk",
        &["-b", "4096", disk.to_str().unwrap()],
        "g\nn\n1\n256\n4351\nn\n2\n4352\n6399\nw\n",
    );
    let listing = run_tool("fdisk", &["-b", "4096", "-l", disk.to_str().unwrap()]);
    assert!(listing.contains("Disklabel type: gpt"), "{listing}");
    let hdr = read_at(&disk, 4096, 512);
    assert_eq!(&hdr[..8], b"EFI PART", "no GPT header at LBA 1 of 4096");
    let p1 = (256 * 4096, 4352 * 4096);
    let p2 = (4352 * 4096, 6400 * 4096);
    let fs1 = make_fs(dir.path(), "p1", "ext4", 4096, p1.1 - p1.0, 1);
    place(&disk, &fs1, p1.0);

    for extra in [&[][..], &["--sector-size", "4096"][..]] {
        let map = dir.path().join("gpt4k.bmap");
        let conn = bmap_index_clean(&disk, &map, extra);
        let ss: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'sector_size'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ss, "4096", "sector size with {extra:?}");
        let got = partitions(&conn);
        assert_eq!(
            got.iter().map(|p| (p.0, p.3, p.4)).collect::<Vec<_>>(),
            vec![(1, p1.0, p1.1), (2, p2.0, p2.1)],
            "with {extra:?}"
        );
        let entries_lba = u64le(&hdr, 72);
        let array = u32le(&hdr, 80) * u32le(&hdr, 84);
        assert_eq!(
            object_extents(&conn, "mbr"),
            vec![("/dev/sda protective MBR".into(), 0, 4096)]
        );
        assert_eq!(
            object_extents(&conn, "gpt-header"),
            vec![
                ("/dev/sda GPT header".into(), 4096, 8192),
                ("/dev/sda GPT backup header".into(), size - 4096, size),
            ]
        );
        let ge = object_extents(&conn, "gpt-entries");
        assert_eq!(ge.len(), 2);
        assert_eq!(
            (ge[0].1, ge[0].2),
            (
                entries_lba * 4096,
                entries_lba * 4096 + array.div_ceil(4096) * 4096
            )
        );
        assert_eq!(ge[1].2, size - 4096);
        assert_layout_tiles(&conn, size);
        check_fs_in_partition(&conn, &fs1, p1.0, 1);
        // Partition 2 holds no filesystem.
        assert_eq!(layout_bytes(&conn, "partition", p2.0, p2.1), p2.1 - p2.0);
    }
}

#[test]
fn gpt_sparse_numbering_and_device_names() {
    let dir = tempdir();
    let disk = dir.path().join("gpt-gaps.img");
    let size = 40 * MIB;
    sparse_file(&disk, size);
    run_tool(
        "sgdisk",
        &[
            "-n",
            "5:4096:+8M",
            "-n",
            "2:24576:+12M",
            disk.to_str().unwrap(),
        ],
    );
    let p5 = sgdisk_info(&disk, 5);
    let p2 = sgdisk_info(&disk, 2);
    let fs = make_fs(dir.path(), "p5", "ext4", 4096, (p5.1 + 1 - p5.0) * 512, 5);
    place(&disk, &fs, p5.0 * 512);
    let map = dir.path().join("gaps.bmap");
    let conn = bmap_index_clean(&disk, &map, &["--device", "nvme0n1"]);
    let got: Vec<(u32, String, u64, u64)> = conn
        .prepare("SELECT number, device, start, end FROM partitions ORDER BY number")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "/dev/nvme0n1p2".into(), p2.0 * 512, (p2.1 + 1) * 512),
            (5, "/dev/nvme0n1p5".into(), p5.0 * 512, (p5.1 + 1) * 512),
        ]
    );
    assert_layout_tiles(&conn, size);
    let c = check_filesystem(
        &conn,
        &FsUnderTest {
            fs_img: &fs,
            offset: p5.0 * 512,
            partition: Some(5),
            device: "/dev/nvme0n1p5",
        },
    );
    assert!(c.paths_with_blocks > 20);
    // The space between the two partitions is unpartitioned.
    assert_eq!(
        layout_bytes(&conn, "unpartitioned", (p5.1 + 1) * 512, p2.0 * 512),
        (p2.0 - p5.1 - 1) * 512
    );
}

#[test]
fn bare_filesystem_with_trailing_bytes() {
    let dir = tempdir();
    let img = make_fs(dir.path(), "trail", "ext4", 4096, 16 * MIB, 0);
    let fs_copy = dir.path().join("trail-fs.img");
    std::fs::copy(&img, &fs_copy).unwrap();
    sparse_file(&img, 16 * MIB + 3000);
    let map = dir.path().join("trail.bmap");
    let conn = bmap_index_clean(&img, &map, &[]);
    // No partition table: bytes past the filesystem are the disk's (there
    // is no `unpartitioned` without a table).
    assert_layout_tiles(&conn, 16 * MIB + 3000);
    assert_eq!(
        layout_bytes(&conn, "disk", 16 * MIB, 16 * MIB + 3000),
        3000,
        "bytes past the filesystem belong to the disk"
    );
    check_filesystem(
        &conn,
        &FsUnderTest {
            fs_img: &fs_copy,
            offset: 0,
            partition: None,
            device: "/dev/sda",
        },
    );
}

#[test]
fn truncated_filesystem_gives_warnings_and_exit_2() {
    let dir = tempdir();
    let img = make_fs(dir.path(), "cut", "ext4", 4096, 32 * MIB, 0);
    sparse_file(&img, 20 * MIB);
    let map = dir.path().join("cut.bmap");
    let r = bmap_index(&img, &map, &[]);
    assert_eq!(r.status, 2, "stderr:\n{}", r.stderr);
    let conn = open_map(&map);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM warnings", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    assert_layout_tiles(&conn, 20 * MIB);
}
