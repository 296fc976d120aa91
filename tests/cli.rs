//! The command line as a user meets it, on the shipped sample disk (a GPT
//! disk that sgdisk and mke2fs -d made): index, info, lookup, export.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::prelude::*;

fn bmap() -> Command {
    Command::cargo_bin("bmap").expect("bmap binary")
}

/// Unpacks the sample image into `dir`.
fn sample_image(dir: &Path) -> PathBuf {
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-maps/sample.img.gz");
    let img = dir.join("sample.img");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(&gz)
        .output()
        .expect("gzip must be installed");
    assert!(out.status.success(), "gzip -dc {}", gz.display());
    std::fs::write(&img, out.stdout).unwrap();
    img
}

/// `bmap index IMG -o MAP`, which must succeed cleanly.
fn index_to(img: &Path, map: &Path) {
    bmap()
        .arg("index")
        .arg(img)
        .arg("-o")
        .arg(map)
        .assert()
        .success();
}

fn index(dir: &Path) -> (PathBuf, PathBuf) {
    let img = sample_image(dir);
    let map = dir.join("sample.bmap");
    index_to(&img, &map);
    (img, map)
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn index_is_read_only_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample_image(dir.path());
    let before = sha256(&img);
    let mut perms = std::fs::metadata(&img).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&img, perms).unwrap();
    let map = dir.path().join("m.bmap");
    index_to(&img, &map);
    assert_eq!(sha256(&img), before, "the image changed");
    let out = bmap()
        .arg("index")
        .arg(&img)
        .arg("-o")
        .arg(&map)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    bmap()
        .arg("index")
        .arg(&img)
        .arg("-o")
        .arg(&map)
        .arg("--force")
        .assert()
        .success();
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn info_json_describes_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    let (_, map) = index(dir.path());
    let out = bmap().arg("info").arg(&map).arg("--json").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["partition_scheme"], "gpt");
    let parts = v["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["device"], "/dev/sda1");
    assert_eq!(parts[0]["start"], 2048 * 512);
    let fss = v["filesystems"].as_array().unwrap();
    assert_eq!(fss.len(), 2);
    assert!(fss.iter().all(|f| f["unknown_bytes"] == 0));
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0);
    let total: u64 = v["layout_by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, v["image_size"].as_u64().unwrap());
}

#[test]
fn lookup_names_file_and_containers_most_specific_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_, map) = index(dir.path());
    let conn = rusqlite::Connection::open(&map).unwrap();
    let (offset, length): (i64, i64) = conn
        .query_row(
            "SELECT disk_offset, length FROM file_extents WHERE path = '/etc/passwd' ORDER BY logical_offset LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(length > 0);
    let at = offset + 10;
    let out = bmap()
        .args(["lookup"])
        .arg(&map)
        .arg(format!("0x{at:x}"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objs = v["segments"][0]["objects"].as_array().unwrap();
    let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "file");
    assert!(objs[0]["path"] == "/etc/passwd" || objs[0]["path"] == "/etc/passwd.hardlink");
    assert_eq!(objs[0]["offset_in_object"], 10);
    assert_eq!(
        &kinds[kinds.len() - 3..],
        &["filesystem", "partition", "disk"]
    );
    // Text output names the same file.
    let text = bmap()
        .args(["lookup"])
        .arg(&map)
        .arg(at.to_string())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("/dev/sda2 /etc/passwd"));
    // Past the end is an error.
    bmap()
        .args(["lookup"])
        .arg(&map)
        .arg("1T")
        .assert()
        .failure();
}

#[test]
fn export_virt_bmap_format() {
    let dir = tempfile::tempdir().unwrap();
    let (img, map) = index(dir.path());
    let out = bmap()
        .args(["export"])
        .arg(&map)
        .args(["--format", "virt-bmap"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let size = std::fs::metadata(&img).unwrap().len();
    let first = text.lines().next().unwrap();
    assert_eq!(first, format!("1 0 {size:x} v /dev/sda"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("1 100000 1100000 p /dev/sda1")),
        "{text}"
    );
    let fstab = text
        .lines()
        .find(|l| l.ends_with(" f /dev/sda2 /etc/fstab"))
        .expect("fstab line");
    let fields: Vec<&str> = fstab.split(' ').collect();
    let start = u64::from_str_radix(fields[1], 16).unwrap();
    let end = u64::from_str_radix(fields[2], 16).unwrap();
    assert!(start < end && end <= size);
    assert!(text.lines().any(|l| l.ends_with(" d /dev/sda2 /etc")));
    for l in text.lines() {
        let f: Vec<&str> = l.splitn(6, ' ').collect();
        assert_eq!(f[0], "1");
        assert!(matches!(f[3], "v" | "p" | "d" | "f"), "{l}");
    }
}

#[test]
fn not_a_map_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("x.bmap");
    std::fs::write(&bogus, b"hello").unwrap();
    let out = bmap().arg("info").arg(&bogus).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let missing = bmap()
        .arg("info")
        .arg(dir.path().join("none.bmap"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such map"));
}

#[test]
fn sqlite3_reads_the_public_views() {
    // The map must not need bmap to be read: the stock sqlite3 shell opens
    // it and every public view.
    let dir = tempfile::tempdir().unwrap();
    let (_, map) = index(dir.path());
    let out = Command::new("sqlite3")
        .arg(&map)
        .arg("SELECT count(*) > 0 FROM file_extents; SELECT sum(\"end\" - start) FROM layout;")
        .output()
        .expect("sqlite3 must be installed (tests/run.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, vec!["1".to_string(), (64u64 << 20).to_string()]);
}

#[test]
fn container_formats_are_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let img = sample_image(dir.path());
    for (format, name) in [
        ("qcow2", "qcow2"),
        ("vmdk", "vmdk"),
        ("vdi", "vdi"),
        ("vhdx", "vhdx"),
    ] {
        let converted = dir.path().join(format!("sample.{format}"));
        let out = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", format])
            .arg(&img)
            .arg(&converted)
            .output()
            .expect("qemu-img must be installed (tests/run.sh installs qemu-utils)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let map = dir.path().join(format!("{format}.bmap"));
        let out = bmap()
            .arg("index")
            .arg(&converted)
            .arg("-o")
            .arg(&map)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{format}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("{name} image")) && stderr.contains("qemu-img convert"),
            "{stderr}"
        );
        assert!(!map.exists());
    }
}

#[test]
fn shipped_trace_replays_against_the_shipped_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (_, map) = index(dir.path());
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-maps/boot.nbdkit.log");
    let out = bmap()
        .arg("replay")
        .arg(&trace)
        .arg("--map")
        .arg(&map)
        .arg("--boot-list")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8(out.stdout).unwrap();
    let expected = [
        "/grub/grub.cfg",
        "/vmlinuz-6.1.0-sample",
        "/initrd.img-6.1.0-sample",
        "/etc/fstab",
        "/etc/hostname",
        "/etc/passwd",
        "/etc/systemd/system/sample.service",
        "/usr/bin/tool00",
        "/usr/bin/tool07",
        "/var/log/boot.log",
    ];
    assert_eq!(list.lines().collect::<Vec<_>>(), expected);
}
