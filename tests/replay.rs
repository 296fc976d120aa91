//! `bmap replay` against traces made by the real producers: nbdkit's log
//! filter (with qemu-io, qemu-img convert and nbdcopy as clients, and the
//! error filter for failures), qemu-io's own trace events, and hand-written
//! blkparse and CSV fixtures whose requests are the extents the map (and
//! debugfs) give for chosen files. The image is the shipped sample disk
//! (GPT; /dev/sda1 boot, /dev/sda2 root), indexed by the real binary.
//!
//! Tools are required: a missing nbdkit, qemu-io, qemu-img, nbdcopy,
//! debugfs or sgdisk fails the test, never skips it.

mod common;
mod replay_common;

use std::collections::BTreeMap;
use std::path::Path;

use replay_common::*;

/// The files most tests read, in this order: whole files on both
/// partitions, and the first 64 KiB of the kernel only.
fn picks(map: &Path) -> Vec<Pick> {
    let vmlinuz = extents(map, 1, "/vmlinuz-6.1.0-sample");
    assert!(vmlinuz[0].1 >= 65536);
    vec![
        Pick::whole(map, 2, "/usr/bin/tool05"),
        Pick::whole(map, 1, "/grub/grub.cfg"),
        Pick::whole(map, 2, "/etc/fstab"),
        Pick {
            partition: 1,
            path: "/vmlinuz-6.1.0-sample",
            reads: vec![(vmlinuz[0].0, 65536)],
        },
        Pick::whole(map, 2, "/etc/hostname"),
    ]
}

fn all_reads(picks: &[Pick]) -> Vec<(u64, u64)> {
    picks.iter().flat_map(|p| p.reads.clone()).collect()
}

/// The sample, the picks, and an nbdkit log of qemu-io reading exactly
/// their ranges.
fn nbdkit_file_reads() -> (Sample, Vec<Pick>, std::path::PathBuf) {
    let s = sample();
    let picks = picks(&s.map);
    let log = s.path("nbdkit.log");
    let o = nbdkit(
        &s,
        &s.img,
        &log,
        &[],
        &[],
        &qemu_io_script(&s, &all_reads(&picks)),
    );
    assert!(o.status.success(), "nbdkit/qemu-io: {}", describe(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches(" Read id=").count(),
        all_reads(&picks).len(),
        "qemu-io issued other reads than ours:\n{text}"
    );
    (s, picks, log)
}

#[test]
fn map_extents_agree_with_debugfs() {
    let s = sample();
    for (n, bs, paths) in [
        (
            2u32,
            4096u64,
            &["/etc/fstab", "/usr/bin/tool05", "/etc/hostname"][..],
        ),
        (1, 1024, &["/grub/grub.cfg", "/vmlinuz-6.1.0-sample"][..]),
    ] {
        let (first, last) = sgdisk_info(&s.img, n);
        let fs = s.path(&format!("p{n}.img"));
        extract(&s.img, first * SECTOR, (last + 1 - first) * SECTOR, &fs);
        for p in paths {
            let mut from_map: Vec<u64> = Vec::new();
            for (off, len) in extents(&s.map, n, p) {
                assert_eq!((off - first * SECTOR) % bs, 0);
                let b0 = (off - first * SECTOR) / bs;
                from_map.extend(b0..b0 + len.div_ceil(bs));
            }
            assert_eq!(from_map, debugfs_blocks(&fs, p), "{p} on /dev/sda{n}");
        }
    }
}

#[test]
fn nbdkit_summary_names_exactly_the_files_read() {
    let (s, picks, log) = nbdkit_file_reads();
    let v = summary(&s.map, &log, &[], 0);
    assert_eq!(v["format"], "nbdkit");
    assert_eq!(files_read(&v), expected(&picks), "{v:#}");
    let reads = all_reads(&picks);
    assert_eq!(total(&v, "requests"), reads.len() as u64);
    assert_eq!(total(&v, "reads"), reads.len() as u64);
    assert_eq!(total(&v, "failed"), 0);
    assert_eq!(total(&v, "writes"), 0);
    assert_eq!(
        total(&v, "bytes_read"),
        reads.iter().map(|r| r.1).sum::<u64>()
    );
    assert_eq!(v["warnings"], 0);
    // First-access order and a partial read's percentage.
    let files = v["files"].as_array().unwrap();
    let order: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    let want: Vec<&str> = picks.iter().map(|p| p.path).collect();
    assert_eq!(order, want);
    let seqs: Vec<u64> = files
        .iter()
        .map(|f| f["first_seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let k = files
        .iter()
        .find(|f| f["path"] == "/vmlinuz-6.1.0-sample")
        .unwrap();
    assert_eq!(k["unique_bytes_read"], 65536);
    let pct = k["percent_read"].as_f64().unwrap();
    assert!(pct > 1.0 && pct < 3.0, "{k}");
    let fstab = files.iter().find(|f| f["path"] == "/etc/fstab").unwrap();
    assert_eq!(fstab["percent_read"].as_f64().unwrap(), 100.0);
    assert_eq!(fstab["reread_bytes"], 0);
    assert!(fstab["first_time"].as_f64().is_some(), "{fstab}");
    // All bytes were file data.
    let kinds = v["kinds"].as_array().unwrap();
    for k in kinds {
        if k["kind"] != "file data" {
            assert_eq!(k["bytes_read"], 0, "{k}");
        }
    }
    assert_eq!(v["free_space_reads"]["requests"], 0);
}

#[test]
fn nbdkit_text_log_has_one_line_per_object() {
    let (s, picks, log) = nbdkit_file_reads();
    let o = replay(&s.map, &log, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    let want: Vec<String> = picks
        .iter()
        .map(|p| format!("read f /dev/sda{} {}", p.partition, p.path))
        .collect();
    assert_eq!(lines, want);
}

#[test]
fn nbdkit_boot_list_is_in_read_order() {
    let (s, picks, log) = nbdkit_file_reads();
    let o = replay(&s.map, &log, &["--boot-list"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let got: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    let want: Vec<String> = picks.iter().map(|p| p.path.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn nbdkit_log_csv_round_trips() {
    let (s, picks, log) = nbdkit_file_reads();
    let o = replay(&s.map, &log, &["--csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    for h in [
        "seq",
        "time",
        "op",
        "kind",
        "object",
        "partition",
        "path",
        "disk_offset",
        "length",
        "object_offset",
    ] {
        assert!(
            headers.iter().any(|x| x == h),
            "no {h} column in {headers:?}"
        );
    }
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let mut pieces = Vec::new();
    for rec in r.records() {
        let rec = rec.expect("valid CSV record");
        assert_eq!(&rec[col("op")], "read");
        assert_eq!(&rec[col("kind")], "file");
        let key = format!("/dev/sda{} {}", &rec[col("partition")], &rec[col("path")]);
        assert!(rec[col("object")].ends_with(&rec[col("path")]));
        let len: u64 = rec[col("length")].parse().unwrap();
        *got.entry(key).or_default() += len;
        pieces.push((rec[col("disk_offset")].parse::<u64>().unwrap(), len));
    }
    assert_eq!(got, expected(&picks));
    assert_eq!(pieces, all_reads(&picks));
}

#[test]
fn nbdkit_log_json_lines_parse() {
    let (s, picks, log) = nbdkit_file_reads();
    let o = replay(&s.map, &log, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let mut seqs = Vec::new();
    for line in stdout(&o).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for k in [
            "seq",
            "time",
            "op",
            "kind",
            "object",
            "partition",
            "path",
            "disk_offset",
            "length",
            "object_offset",
        ] {
            assert!(v.get(k).is_some(), "no {k} in {line}");
        }
        assert_eq!(v["op"], "read");
        assert_eq!(v["kind"], "file");
        let key = format!("/dev/sda{} {}", v["partition"], v["path"].as_str().unwrap());
        *got.entry(key).or_default() += v["length"].as_u64().unwrap();
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(got, expected(&picks));
    assert_eq!(
        seqs,
        (1..=all_reads(&picks).len() as u64).collect::<Vec<_>>()
    );
}

#[test]
fn verbose_log_gives_offsets_inside_files() {
    let (s, picks, log) = nbdkit_file_reads();
    let o = replay(&s.map, &log, &["--json", "-v"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    // tool05's second extent (if any) starts at that extent's logical offset;
    // the first piece of every file is at offset 0.
    let mut first_of: BTreeMap<String, u64> = BTreeMap::new();
    for line in stdout(&o).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let path = v["path"].as_str().unwrap().to_string();
        let off = v["object_offset"].as_u64().expect("object_offset with -v");
        first_of.entry(path).or_insert(off);
    }
    for p in &picks {
        assert_eq!(first_of[p.path], 0, "{}", p.path);
    }
}

/// Every file with data appears, with all its bytes, and every byte of the
/// image was read.
fn assert_whole_image(map: &Path, v: &serde_json::Value) {
    assert_eq!(total(v, "bytes_read"), IMAGE_SIZE, "{v:#}");
    assert_eq!(total(v, "failed"), 0);
    let got = files_read(v);
    let objects = objects_with_data(map);
    assert!(objects.len() > 60);
    for ((part, _), (names, bytes)) in &objects {
        let hit: Vec<&String> = names
            .iter()
            .filter(|n| got.contains_key(&format!("/dev/sda{part} {n}")))
            .collect();
        assert_eq!(
            hit.len(),
            1,
            "{names:?} on /dev/sda{part} not (once) in the summary"
        );
        assert_eq!(
            got[&format!("/dev/sda{part} {}", hit[0])],
            *bytes,
            "{names:?} bytes"
        );
    }
    assert_eq!(got.len(), objects.len(), "extra files in {got:#?}");
    let kinds: u64 = v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["bytes_read"].as_u64().unwrap())
        .sum();
    assert_eq!(kinds, IMAGE_SIZE);
}

#[test]
fn qemu_img_convert_reads_every_byte() {
    let s = sample();
    let log = s.path("convert.log");
    let out = s.path("out.img");
    let script = format!(
        "{} convert -f raw -O raw '{}' '{}'",
        tool("qemu-img").display(),
        s.uri(),
        out.display()
    );
    let o = nbdkit(&s, &s.img, &log, &[], &[], &script);
    assert!(o.status.success(), "{}", describe(&o));
    let v = summary(&s.map, &log, &[], 0);
    assert_whole_image(&s.map, &v);
    // The text log names metadata, directories and files alike.
    let o = replay(&s.map, &log, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let text = stdout(&o);
    for want in [
        "read d /dev/sda2 /etc",
        "read f /dev/sda2 /etc/fstab",
        "read f /dev/sda1 /grub/grub.cfg",
        "read d /dev/sda1 /grub",
        "read inode-table /dev/sda2 group 0",
        "read superblock /dev/sda1",
        "read journal /dev/sda2",
    ] {
        assert!(text.lines().any(|l| l == want), "no `{want}` in\n{text}");
    }
    assert!(!text.contains("beyond-end"));
}

#[test]
fn nbdcopy_reads_every_byte_over_several_connections() {
    let s = sample();
    let log = s.path("nbdcopy.log");
    let out = s.path("out.img");
    let script = format!(
        "{} '{}' '{}'",
        tool("nbdcopy").display(),
        s.uri(),
        out.display()
    );
    let o = nbdkit(&s, &s.img, &log, &[], &[], &script);
    assert!(o.status.success(), "{}", describe(&o));
    let v = summary(&s.map, &log, &[], 0);
    assert_whole_image(&s.map, &v);
    // nbdcopy's Extents queries are not reads.
    let text = std::fs::read_to_string(&log).unwrap();
    let reads = text.matches(" Read id=").count() as u64;
    assert_eq!(total(&v, "reads"), reads);
    assert!(text.contains(" Extents id="));
    assert_eq!(total(&v, "requests") - total(&v, "other"), reads);
}

/// Reorders a real nbdkit log: every request issued first (in order), then
/// every completion in reverse order.
fn issue_all_then_complete_reversed(text: &str) -> String {
    let mut head = Vec::new();
    let mut issues = Vec::new();
    let mut done = Vec::new();
    let mut tail = Vec::new();
    for l in text.lines() {
        if l.contains(" ...Read id=") {
            done.push(l);
        } else if l.contains(" Read id=") {
            issues.push(l);
        } else if issues.is_empty() {
            head.push(l);
        } else {
            tail.push(l);
        }
    }
    done.reverse();
    let mut out = String::new();
    for l in head.iter().chain(&issues).chain(&done).chain(&tail) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[test]
fn two_connections_pair_by_connection_and_id() {
    let s = sample();
    let p = picks(&s.map);
    let (a, b) = p.split_at(2);
    let log = s.path("two.log");
    let script = format!(
        "{} & {}; wait",
        qemu_io_script(&s, &all_reads(a)),
        qemu_io_script(&s, &all_reads(b))
    );
    let o = nbdkit(&s, &s.img, &log, &[], &[], &script);
    assert!(o.status.success(), "{}", describe(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("connection=1 Read id=1 "), "{text}");
    assert!(text.contains("connection=2 Read id=1 "), "{text}");
    let v = summary(&s.map, &log, &[], 0);
    assert_eq!(files_read(&v), expected(&p));
    assert_eq!(total(&v, "reads"), all_reads(&p).len() as u64);

    // Same requests, completions in another order: same result.
    let shuffled = s.path("shuffled.log");
    std::fs::write(&shuffled, issue_all_then_complete_reversed(&text)).unwrap();
    let w = summary(&s.map, &shuffled, &[], 0);
    assert_eq!(files_read(&w), expected(&p));
    assert_eq!(w["totals"]["bytes_read"], v["totals"]["bytes_read"]);
    assert_eq!(w["totals"]["reads"], v["totals"]["reads"]);

    // Fail the request with id=1 on the connection that read `b` only: the
    // other connection's id=1 still counts.
    let b_issue = text
        .lines()
        .find(|l| l.contains(&format!(" Read id=1 offset={:#x} ", all_reads(b)[0].0)))
        .unwrap_or_else(|| panic!("b's first read is not id=1:\n{text}"));
    let conn_b: u64 = b_issue
        .split_whitespace()
        .find_map(|w| w.strip_prefix("connection="))
        .unwrap()
        .parse()
        .unwrap();
    let failed: String = issue_all_then_complete_reversed(&text)
        .lines()
        .map(|l| {
            if l.contains(&format!("connection={conn_b} ...Read id=1 ")) {
                format!(
                    "{} ...Read id=1 return=-1 error=EIO\n",
                    l.split(" ...Read").next().unwrap()
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let failed_log = s.path("failed.log");
    std::fs::write(&failed_log, failed).unwrap();
    let f = summary(&s.map, &failed_log, &[], 0);
    assert_eq!(total(&f, "failed"), 1, "{f:#}");
    let mut want = expected(&p);
    let first_b = &b[0];
    *want.get_mut(&first_b.key()).unwrap() -= first_b.reads[0].1;
    want.retain(|_, v| *v > 0);
    assert_eq!(files_read(&f), want);
}

#[test]
fn failed_requests_are_reported_and_not_counted() {
    let s = sample();
    let p = picks(&s.map);
    let err = s.path("inject-errors");
    let log = s.path("err.log");
    // Reads of the first file succeed, the second file's fail, the rest
    // succeed again.
    let script = format!(
        "{}; touch '{e}'; {}; rm -f '{e}'; {}",
        qemu_io_script(&s, &p[0].reads),
        qemu_io_script(&s, &p[1].reads),
        qemu_io_script(&s, &all_reads(&p[2..])),
        e = err.display()
    );
    let errfile = format!("error-file={}", err.display());
    let o = nbdkit(
        &s,
        &s.img,
        &log,
        &["error"],
        &["error=EIO", "error-pread-rate=100%", &errfile],
        &script,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let failures = text.matches("error=EIO").count();
    assert!(
        failures >= 1,
        "nbdkit injected no error: {}\n{text}",
        describe(&o)
    );
    let v = summary(&s.map, &log, &[], 0);
    assert_eq!(total(&v, "failed"), failures as u64, "{v:#}");
    let mut want = expected(&p);
    want.remove(&p[1].key());
    assert_eq!(files_read(&v), want);
    let good: u64 = p
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, p)| p.bytes())
        .sum();
    assert_eq!(total(&v, "bytes_read"), good);

    // The text log says where.
    let o = replay(&s.map, &log, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (off, len) = p[1].reads[0];
    let issue_line = lines_with(&text, &format!("Read id=1 offset={off:#x} count={len:#x} "));
    assert_eq!(issue_line.len(), 1, "{text}");
    let want_line = format!(
        "read failed (EIO) at {off:#x}+{len} (line {})",
        issue_line[0]
    );
    assert!(
        stdout(&o).lines().any(|l| l == want_line),
        "no `{want_line}` in\n{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains(p[1].path));

    // Every read failing: nothing is attributed.
    let log2 = s.path("err-all.log");
    let o = nbdkit(
        &s,
        &s.img,
        &log2,
        &["error"],
        &["error=EIO", "error-rate=100%"],
        &qemu_io_script(&s, &all_reads(&p)),
    );
    assert!(!o.status.success());
    let v = summary(&s.map, &log2, &[], 0);
    assert!(total(&v, "failed") >= 1);
    assert_eq!(total(&v, "bytes_read"), 0);
    assert_eq!(files_read(&v), BTreeMap::new());
}

/// qemu-io with `--trace blk_co_p*`: the events go to stderr.
fn qemu_trace(
    s: &Sample,
    name: &str,
    raw: bool,
    reads: &[(u64, u64)],
    merge_stdout: bool,
) -> std::path::PathBuf {
    let trace = s.path(name);
    let mut script = format!("{} --trace 'blk_co_p*' -r", tool("qemu-io").display());
    if raw {
        script.push_str(" -f raw");
    }
    script.push_str(&format!(" '{}'", s.img.display()));
    for (o, l) in reads {
        script.push_str(&format!(" -c 'read {o} {l}'"));
    }
    if merge_stdout {
        script.push_str(&format!(" > '{}' 2>&1", trace.display()));
    } else {
        script.push_str(&format!(" 2> '{}'", trace.display()));
    }
    run(std::process::Command::new("sh").arg("-c").arg(&script));
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains("blk_co_preadv"), "no trace events:\n{text}");
    trace
}

#[test]
fn qemu_trace_events_name_exactly_the_files_read() {
    let s = sample();
    let p = picks(&s.map);
    let trace = qemu_trace(&s, "qemu.trace", true, &all_reads(&p), false);
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(v["format"], "qemu");
    assert_eq!(files_read(&v), expected(&p), "{v:#}");
    assert_eq!(total(&v, "reads"), all_reads(&p).len() as u64);
    let o = replay(&s.map, &trace, &["--boot-list"]);
    let got: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert_eq!(
        got,
        p.iter().map(|p| p.path.to_string()).collect::<Vec<_>>()
    );
}

#[test]
fn qemu_trace_mixed_with_qemu_io_output() {
    let s = sample();
    let p = picks(&s.map);
    let trace = qemu_trace(&s, "mixed.trace", true, &all_reads(&p), true);
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(text.contains("bytes at offset"), "{text}");
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert_ne!(o.status.code(), Some(1), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p), "{v:#}");
    assert_eq!(total(&v, "reads"), all_reads(&p).len() as u64);
}

#[test]
fn qemu_format_probe_is_not_attributed() {
    let s = sample();
    let p = picks(&s.map);
    let trace = qemu_trace(&s, "probe.trace", false, &all_reads(&p), false);
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains("offset 0 bytes 512"),
        "qemu did not probe:\n{text}"
    );
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p), "{v:#}");
    assert_eq!(
        total(&v, "bytes_read"),
        all_reads(&p).iter().map(|r| r.1).sum::<u64>(),
        "the probe read was counted: {v:#}"
    );
    for k in v["kinds"].as_array().unwrap() {
        if k["kind"] == "partition tables" {
            assert_eq!(k["bytes_read"], 0, "{v:#}");
        }
    }
    let o = replay(&s.map, &trace, &[]);
    assert!(!stdout(&o).contains("mbr"), "{}", stdout(&o));
    assert!(!stdout(&o).to_lowercase().contains("gpt"), "{}", stdout(&o));
    // …but a real read of sector 0 through the same BlockBackend is.
    let mut reads = vec![(0u64, 512u64)];
    reads.extend(all_reads(&p));
    let trace = qemu_trace(&s, "probe2.trace", false, &reads, false);
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        total(&v, "bytes_read"),
        reads.iter().map(|r| r.1).sum::<u64>(),
        "{v:#}"
    );
}

fn blk_summary(out: &mut String, dev: &str) {
    out.push_str(&format!(
        "CPU0 ({dev}):
 Reads Queued:           5,      120KiB\t Writes Queued:           0,        0KiB
 Read Dispatches:        5,      120KiB\t Write Dispatches:        0,        0KiB
 Reads Requeued:         0\t\t Writes Requeued:         0
 Reads Completed:        5,      120KiB\t Writes Completed:        0,        0KiB
 Read Merges:            0,        0KiB\t Write Merges:            0,        0KiB
 Read depth:             1        \t Write depth:             0
 IO unplugs:             0        \t Timer unplugs:           0

Total ({dev}):
 Reads Queued:           5,      120KiB\t Writes Queued:           0,        0KiB
 Read Dispatches:        5,      120KiB\t Write Dispatches:        0,        0KiB
 Reads Requeued:         0\t\t Writes Requeued:         0
 Reads Completed:        5,      120KiB\t Writes Completed:        0,        0KiB
 Read Merges:            0,        0KiB\t Write Merges:            0,        0KiB
 IO unplugs:             0        \t Timer unplugs:           0

Throughput (R/W): 3000KiB/s / 0KiB/s
Events ({dev}): 25 entries
Skips: 0 forward (0 -   0.0%)
"
    ));
}

/// A blkparse fixture reading `picks` on the device that starts at byte
/// `base` of the disk (0: the whole disk). With `remap`, the first request
/// is preceded by an `A` line (remapped from /dev/sda2, as a whole-disk
/// trace shows). The first request is also queued in two halves, the second
/// back-merged (`M` action), with one dispatch; the second request is
/// flagged metadata (`RM`). Returns (text, D requests, Q requests).
fn blkparse_fixture(picks: &[Pick], base: u64, dev: &str, remap: bool) -> (String, usize, usize) {
    let mut out = String::new();
    let mut seq = 0;
    let mut t = 0.0;
    let mut d = 0;
    let mut q = 0;
    let mut line = |out: &mut String, seq: &mut u64, a: &str, rwbs: &str, rest: String| {
        *seq += 1;
        t += 0.000_011;
        let pid = if a == "C" { 0 } else { 412 };
        out.push_str(&format!(
            "{dev:>5} {:>3} {:>8} {:>14.9} {pid:>5}  {a:<2} {rwbs:>3} {rest}\n",
            0, seq, t
        ));
    };
    for (i, (off, len)) in all_reads(picks).into_iter().enumerate() {
        assert_eq!(off % SECTOR, 0);
        let sector = (off - base) / SECTOR;
        let n = len.div_ceil(SECTOR);
        let rwbs = if i == 1 { "RM" } else { "R" };
        if i == 0 {
            assert!(n >= 16);
            if remap {
                line(
                    &mut out,
                    &mut seq,
                    "A",
                    rwbs,
                    format!("{sector} + {n} <- (8,2) {}", sector - 34816),
                );
            }
            let half = n / 2;
            line(
                &mut out,
                &mut seq,
                "Q",
                rwbs,
                format!("{sector} + {half} [systemd]"),
            );
            line(
                &mut out,
                &mut seq,
                "G",
                rwbs,
                format!("{sector} + {half} [systemd]"),
            );
            line(
                &mut out,
                &mut seq,
                "I",
                rwbs,
                format!("{sector} + {half} [systemd]"),
            );
            line(
                &mut out,
                &mut seq,
                "Q",
                rwbs,
                format!("{} + {} [systemd]", sector + half, n - half),
            );
            line(
                &mut out,
                &mut seq,
                "M",
                rwbs,
                format!("{} + {} [systemd]", sector + half, n - half),
            );
            q += 2;
        } else {
            for a in ["Q", "G", "I"] {
                line(
                    &mut out,
                    &mut seq,
                    a,
                    rwbs,
                    format!("{sector} + {n} [systemd]"),
                );
            }
            q += 1;
        }
        line(
            &mut out,
            &mut seq,
            "D",
            rwbs,
            format!("{sector} + {n} [systemd]"),
        );
        line(&mut out, &mut seq, "C", rwbs, format!("{sector} + {n} [0]"));
        d += 1;
    }
    blk_summary(&mut out, dev);
    (out, d, q)
}

#[test]
fn blkparse_default_output_uses_d_then_q() {
    let s = sample();
    let p = picks(&s.map);
    let (text, d, q) = blkparse_fixture(&p, 0, "8,0", true);
    let trace = s.path("blk.txt");
    std::fs::write(&trace, &text).unwrap();
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(v["format"], "blkparse", "{text}");
    assert_eq!(
        total(&v, "requests"),
        d as u64,
        "D lines only: {v:#}\n{text}"
    );
    assert_eq!(files_read(&v), expected(&p), "{text}");
    let first = v["files"][0]["first_time"].as_f64().expect("blkparse time");
    assert!(first > 0.0 && first < 1.0, "{v:#}");
    // --action Q: the same files, counted per queued piece.
    let v = summary(&s.map, &trace, &["--action", "Q"], 0);
    assert_eq!(total(&v, "requests"), q as u64, "{v:#}");
    assert_eq!(files_read(&v), expected(&p));
    // Explicit format too.
    let v = summary(&s.map, &trace, &["--format", "blkparse"], 0);
    assert_eq!(files_read(&v), expected(&p));
}

#[test]
fn blkparse_q_only_trace_falls_back_to_q() {
    let s = sample();
    let p = picks(&s.map);
    let (text, _, _) = blkparse_fixture(&p, 0, "8,0", true);
    let q_only: String = text
        .lines()
        .filter(|l| l.split_whitespace().nth(5) != Some("D"))
        .map(|l| format!("{l}\n"))
        .collect();
    let trace = s.path("q.txt");
    std::fs::write(&trace, q_only).unwrap();
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(files_read(&v), expected(&p));
}

#[test]
fn blkparse_partition_trace_with_offset() {
    let s = sample();
    let p2 = s.part_start(2);
    assert_eq!(p2, 34816 * SECTOR);
    let p: Vec<Pick> = picks(&s.map)
        .into_iter()
        .filter(|p| p.partition == 2)
        .collect();
    let (text, _, _) = blkparse_fixture(&p, p2, "8,2", false);
    let trace = s.path("blk-sda2.txt");
    std::fs::write(&trace, &text).unwrap();
    for off in [p2.to_string(), "34816s".to_string()] {
        let v = summary(&s.map, &trace, &["--offset", &off], 0);
        assert_eq!(files_read(&v), expected(&p), "--offset {off}: {v:#}");
    }
    // Without --offset the same sectors land near the start of the disk:
    // not on these files.
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in expected(&p).keys() {
        assert!(!files_read(&v).contains_key(k), "{k} without --offset");
    }
}

#[test]
fn csv_fixture_reads_and_writes() {
    let s = sample();
    let p = picks(&s.map);
    let mut text = String::from("time,op,offset,length\n");
    let mut t = 1.5;
    for (o, l) in all_reads(&p) {
        text.push_str(&format!("{t:.6},read,{o},{l}\n"));
        t += 0.25;
    }
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    text.push_str(&format!("{t:.6},write,{},{}\n", fstab.0, fstab.1));
    let trace = s.path("trace.csv");
    std::fs::write(&trace, &text).unwrap();
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(v["format"], "csv");
    assert_eq!(files_read(&v), expected(&p));
    assert_eq!(total(&v, "writes"), 1);
    assert_eq!(total(&v, "bytes_written"), fstab.1);
    let f = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/fstab")
        .unwrap();
    assert_eq!(f["bytes_written"], fstab.1);
    assert_eq!(v["files"][0]["first_time"].as_f64(), Some(1.5));
    assert_eq!(v["totals"]["first_time"].as_f64(), Some(1.5));
    let o = replay(&s.map, &trace, &[]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l == "write f /dev/sda2 /etc/fstab"),
        "{}",
        stdout(&o)
    );
    // Boot list: files read only.
    let o = replay(&s.map, &trace, &["--boot-list"]);
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        p.iter().map(|p| p.path).collect::<Vec<_>>()
    );
    // Hex offsets, no time column values.
    let hex: String = std::iter::once("time,op,offset,length\n".to_string())
        .chain(
            all_reads(&p)
                .iter()
                .map(|(o, l)| format!(",read,{o:#x},{l:#x}\n")),
        )
        .collect();
    let trace = s.path("hex.csv");
    std::fs::write(&trace, hex).unwrap();
    let v = summary(&s.map, &trace, &["--format", "csv"], 0);
    assert_eq!(files_read(&v), expected(&p));
}

fn count(map: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(map)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn store_writes_accesses_once() {
    let (s, picks, log) = nbdkit_file_reads();
    let n = all_reads(&picks).len() as i64;
    for _ in 0..2 {
        let o = replay(&s.map, &log, &["--store"]);
        assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
        assert_eq!(count(&s.map, "SELECT count(*) FROM accesses"), n);
    }
    assert_eq!(
        count(
            &s.map,
            "SELECT count(*) FROM accesses WHERE trace = 'nbdkit.log'"
        ),
        n
    );
    assert_eq!(count(&s.map, "SELECT count(DISTINCT seq) FROM accesses"), n);
    {
        let conn = rusqlite::Connection::open(&s.map).unwrap();
        let mut st = conn
            .prepare("SELECT seq, op, offset, length FROM accesses ORDER BY seq")
            .unwrap();
        let rows: Vec<(i64, String, i64, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let want: Vec<(i64, String, i64, i64)> = all_reads(&picks)
            .iter()
            .enumerate()
            .map(|(i, (o, l))| (i as i64 + 1, "read".to_string(), *o as i64, *l as i64))
            .collect();
        assert_eq!(rows, want);
        let mut st = conn
            .prepare(
                "SELECT partition, path, sum(bytes) FROM accessed_objects
                 WHERE trace = 'nbdkit.log' GROUP BY partition, path",
            )
            .unwrap();
        let got: BTreeMap<String, u64> = st
            .query_map([], |r| {
                Ok((
                    format!("/dev/sda{} {}", r.get::<_, i64>(0)?, r.get::<_, String>(1)?),
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got, expected(&picks));
    }

    // The sqlite3 shell reads the same views.
    let out = run(std::process::Command::new(tool("sqlite3")).arg(&s.map).arg(
        "SELECT path, sum(bytes) FROM accessed_objects WHERE kind = 'file' GROUP BY path ORDER BY path",
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let fstab = picks.iter().find(|p| p.path == "/etc/fstab").unwrap();
    assert!(
        text.lines()
            .any(|l| l == format!("/etc/fstab|{}", fstab.bytes())),
        "{text}"
    );

    // The same content under another name replaces the first copy
    // (schema/002_traces.sql: same content or same name replaces).
    let o = replay(&s.map, &log, &["--store", "--name", "boot-1"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(count(&s.map, "SELECT count(*) FROM accesses"), n);
    assert_eq!(
        count(
            &s.map,
            "SELECT count(*) FROM accesses WHERE trace = 'boot-1'"
        ),
        n
    );
    assert_eq!(count(&s.map, "SELECT count(*) FROM traces"), 1);
    // Another trace is stored beside it; then replaced by name.
    let two = s.path("two.csv");
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    std::fs::write(
        &two,
        format!("time,op,offset,length\n0,read,{},{}\n", fstab.0, fstab.1),
    )
    .unwrap();
    let o = replay(&s.map, &two, &["--store"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(count(&s.map, "SELECT count(*) FROM accesses"), n + 1);
    std::fs::write(
        &two,
        format!(
            "time,op,offset,length\n0,read,{},{}\n1,read,0,512\n",
            fstab.0, fstab.1
        ),
    )
    .unwrap();
    let o = replay(&s.map, &two, &["--store"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(
        count(
            &s.map,
            "SELECT count(*) FROM accesses WHERE trace = 'two.csv'"
        ),
        2
    );
    assert_eq!(count(&s.map, "SELECT count(*) FROM accesses"), n + 2);
    assert_eq!(
        count(
            &s.map,
            "SELECT count(*) FROM accessed_objects WHERE trace = 'two.csv' AND path = '/etc/fstab'"
        ),
        1
    );
    // The map is still a map.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bmap"))
        .arg("info")
        .arg(&s.map)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", describe(&o));
}

#[test]
fn store_keeps_beyond_end_requests() {
    let s = sample();
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    let text = format!(
        "time,op,offset,length\n0.1,read,{},{}\n0.2,read,{},8192\n",
        fstab.0,
        fstab.1,
        IMAGE_SIZE - 4096
    );
    let trace = s.path("edge.csv");
    std::fs::write(&trace, text).unwrap();
    let o = replay(&s.map, &trace, &["--store", "--summary", "--json"]);
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", describe(&o));
    assert_eq!(count(&s.map, "SELECT count(*) FROM accesses"), 2);
    assert_eq!(
        count(
            &s.map,
            "SELECT sum(bytes) FROM accessed_objects WHERE kind = 'beyond-end'"
        ),
        4096
    );
    assert_eq!(
        count(
            &s.map,
            "SELECT sum(bytes) FROM accessed_objects WHERE seq = 2"
        ),
        8192
    );
}

// ---- hostile traces ----

/// A real nbdkit log of the picks, as text.
fn real_log() -> (Sample, Vec<Pick>, String) {
    let (s, p, log) = nbdkit_file_reads();
    let text = std::fs::read_to_string(log).unwrap();
    (s, p, text)
}

#[test]
fn truncated_last_line_warns_and_keeps_the_rest() {
    let (s, p, text) = real_log();
    // Cut in the middle of the last request's issue line.
    let last_issue = text.rfind(" Read id=").unwrap();
    let cut = &text[..last_issue + 20];
    let line = cut.lines().count();
    let trace = s.path("cut.log");
    std::fs::write(&trace, cut).unwrap();
    let v = summary(&s.map, &trace, &[], 2);
    let mut want = expected(&p);
    want.remove(&p.last().unwrap().key());
    assert_eq!(files_read(&v), want);
    let o = replay(&s.map, &trace, &["--summary"]);
    assert!(
        stderr(&o).contains(&format!("line {line}:")),
        "{}",
        describe(&o)
    );
}

fn assert_warns_lines(o: &std::process::Output, lines: &[usize]) {
    assert_eq!(o.status.code(), Some(2), "{}", describe(o));
    for b in lines {
        assert!(
            stderr(o).contains(&format!("line {b}:")),
            "no warning naming line {b}: {}",
            describe(o)
        );
    }
    assert!(!stderr(o).contains("panicked"));
}

#[test]
fn garbage_lines_are_warnings_naming_their_lines() {
    let (s, p, text) = real_log();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Mangled request lines after the Connect line and before the last line.
    let connect = lines.iter().position(|l| l.contains(" Connect ")).unwrap();
    lines.insert(
        connect + 1,
        "2026-01-01 00:00:00.000000 connection=1 Read id=77 offset=0x1000 ...".into(),
    );
    let n = lines.len();
    lines.insert(
        n - 1,
        "2026-01-01 00:00:00.000000 connection=1 Read id=zz offset=banana".into(),
    );
    let bad = [connect + 2, n];
    let trace = s.path("garbage.log");
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let v = summary(&s.map, &trace, &[], 2);
    assert_eq!(files_read(&v), expected(&p));
    assert_eq!(
        total(&v, "reads"),
        p.iter().map(|p| p.reads.len() as u64).sum::<u64>()
    );
    let o = replay(&s.map, &trace, &["--summary"]);
    assert_warns_lines(&o, &bad);

    // CSV: garbage rows among good ones.
    let mut csv = String::from("time,op,offset,length\n");
    let mut bad = Vec::new();
    for (i, (off, len)) in all_reads(&p).into_iter().enumerate() {
        csv.push_str(&format!("{i},read,{off},{len}\n"));
        csv.push_str(
            [
                "garbage here\n",
                "1,frobnicate,0,512\n",
                "2,read,-5,512\n",
                "3,read,12,\n",
                "\u{1}\u{2}\u{3}\n",
            ][i % 5],
        );
        bad.push(2 + 2 * i + 1);
    }
    let trace = s.path("garbage.csv");
    std::fs::write(&trace, &csv).unwrap();
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert_warns_lines(&o, &bad);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p), "{csv}");

    // blkparse: garbage between requests.
    let (blk, d, _) = blkparse_fixture(&p, 0, "8,0", true);
    let mut lines: Vec<String> = blk.lines().map(str::to_string).collect();
    let at = lines
        .iter()
        .position(|l| l.split_whitespace().nth(5) == Some("C"))
        .unwrap();
    lines.insert(
        at + 1,
        "  8,0    0   99999  garbage  412  D   R notasector + 8 [x]".into(),
    );
    let trace = s.path("garbage.blk");
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert_warns_lines(&o, &[at + 2]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p));
    assert_eq!(total(&v, "requests"), d as u64);
}

/// The brief: garbage lines in a trace are warnings naming them. The nbdkit
/// parser documents that it skips lines "not about requests" silently, so a
/// line of free text in the middle of a log goes unreported.
#[test]
fn nbdkit_free_text_line_is_a_warning() {
    let (s, p, text) = real_log();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let connect = lines.iter().position(|l| l.contains(" Connect ")).unwrap();
    lines.insert(connect + 1, "this is not a log line at all".into());
    let trace = s.path("free-text.log");
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p));
    assert_warns_lines(&o, &[connect + 2]);
}

#[test]
fn offsets_overflowing_64_bits_warn_without_panic() {
    let (s, p, text) = real_log();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len();
    let ts = "2026-01-01 00:00:00.000001";
    lines.insert(
        n - 1,
        format!("{ts} connection=1 Read id=99 offset=0xffffffffffffffff count=0x1000 ..."),
    );
    lines.insert(n, format!("{ts} connection=1 ...Read id=99 return=0"));
    let trace = s.path("overflow.log");
    std::fs::write(&trace, lines.join("\n") + "\n").unwrap();
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", describe(&o));
    assert!(
        stderr(&o).contains(&format!("line {n}:")),
        "{}",
        describe(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p));

    // The same in CSV, and a 65-bit offset.
    let csv = format!(
        "time,op,offset,length\n0,read,{},{}\n0,read,18446744073709551615,4096\n0,read,0x1ffffffffffffffff,512\n",
        p[2].reads[0].0, p[2].reads[0].1
    );
    let trace = s.path("overflow.csv");
    std::fs::write(&trace, csv).unwrap();
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", describe(&o));
    assert!(stderr(&o).contains("line 3:"), "{}", describe(&o));
    assert!(stderr(&o).contains("line 4:"), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v)[&p[2].key()], p[2].bytes());
}

/// Peak RSS in KiB of `bmap replay - --summary --json` reading `trace`
/// from a pipe, by /usr/bin/time: the least of three runs.
///
/// From a pipe, because a trace that is a file is mapped, and the pages
/// of it that were read count in the peak too: for a long line, 2 to 2.5
/// MiB of it, as many as happened to be in memory at once. They are the
/// kernel's page cache, not memory bmap holds; what bmap holds is what is
/// measured here. The least of three, as the peak moves by a few hundred
/// KiB from run to run.
fn max_rss_kib(map: &Path, trace: &Path) -> u64 {
    (0..3).map(|_| one_max_rss_kib(map, trace)).min().unwrap()
}

fn one_max_rss_kib(map: &Path, trace: &Path) -> u64 {
    let rss = trace.with_extension("rss");
    let o = std::process::Command::new(tool("time"))
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_bmap"))
        .arg("replay")
        .arg("-")
        .arg("--map")
        .arg(map)
        .arg("--summary")
        .arg("--json")
        .stdin(std::fs::File::open(trace).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    let k = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    k
}

#[test]
fn five_megabyte_line_is_refused_in_bounded_memory() {
    let (s, p, text) = real_log();
    // The control ends the same way, in a line that never ends, a fifth
    // as long: it is refused by the same code and fills the same read
    // buffers (a chunk each), so what the two runs share cancels out, and
    // memory that grew with the line would show as 4 MiB more.
    let small = s.path("small.log");
    let mut short = text.clone().into_bytes();
    short.extend(std::iter::repeat_n(b'A', 1 << 20));
    std::fs::write(&small, &short).unwrap();
    let base = max_rss_kib(&s.map, &small);
    let mut big = text.clone().into_bytes();
    let line = text.lines().count() + 1;
    big.extend(std::iter::repeat_n(b'A', 5 << 20));
    let trace = s.path("big.log");
    std::fs::write(&trace, &big).unwrap();
    let rss = max_rss_kib(&s.map, &trace);
    // Read from the file, too: its line is refused the same way.
    let o = replay(&s.map, &trace, &["--summary", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(
        stderr(&o).contains(&format!("line {line}:")),
        "{}",
        describe(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p));
    assert!(
        rss < base + 3 * 1024,
        "peak RSS {rss} KiB vs {base} KiB for the same trace ending in a 1 MiB line"
    );
    // In the middle of the trace, with a newline, too.
    let mut mid = b"time,op,offset,length\n".to_vec();
    mid.extend(std::iter::repeat_n(b'9', 5 << 20));
    mid.extend(format!("\n0,read,{},{}\n", p[2].reads[0].0, p[2].reads[0].1).bytes());
    std::fs::write(&trace, &mid).unwrap();
    let o = replay(&s.map, &trace, &["--summary", "--json", "--format", "csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(stderr(&o).contains("line 2:"), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v)[&p[2].key()], p[2].bytes());
}

#[test]
fn trace_of_another_disk_warns_and_reads_beyond_the_end() {
    let s = sample();
    // A bigger disk with the same start: the guest reads fstab and then
    // past the end of the mapped image.
    let bigger = s.path("bigger.img");
    std::fs::copy(&s.img, &bigger).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bigger)
        .unwrap()
        .set_len(2 * IMAGE_SIZE)
        .unwrap();
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    let log = s.path("bigger.log");
    let reads = [
        fstab,
        (IMAGE_SIZE - 4096, 8192),
        (IMAGE_SIZE + (1 << 20), 4096),
    ];
    let o = nbdkit(&s, &bigger, &log, &[], &[], &qemu_io_script(&s, &reads));
    assert!(o.status.success(), "{}", describe(&o));
    let o = replay(&s.map, &log, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    let connect = lines_with(&std::fs::read_to_string(&log).unwrap(), " Connect ");
    assert!(
        stderr(&o).contains(&format!("line {}:", connect[0]))
            && stderr(&o).contains(&(2 * IMAGE_SIZE).to_string()),
        "{}",
        describe(&o)
    );
    let out = stdout(&o);
    assert!(
        out.lines().any(|l| l == "read f /dev/sda2 /etc/fstab"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l == "read beyond-end (past the end of the image)"),
        "{out}"
    );
    let v = summary(&s.map, &log, &[], 2);
    let beyond: u64 = v["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "beyond the end of the image")
        .map(|k| k["bytes_read"].as_u64().unwrap())
        .sum();
    assert_eq!(beyond, 4096 + 4096);
    assert_eq!(total(&v, "bytes_read"), fstab.1 + 8192 + 4096);
}

#[test]
fn empty_and_binary_traces() {
    let s = sample();
    let empty = s.path("empty.log");
    std::fs::write(&empty, b"").unwrap();
    let o = replay(&s.map, &empty, &[]);
    assert!(matches!(o.status.code(), Some(1 | 2)), "{}", describe(&o));
    assert!(!stderr(&o).contains("panicked"));
    assert!(!stderr(&o).trim().is_empty());
    for f in ["nbdkit", "qemu", "blkparse", "csv"] {
        let o = replay(&s.map, &empty, &["--format", f]);
        assert_eq!(o.status.code(), Some(2), "--format {f}: {}", describe(&o));
        assert!(stderr(&o).contains("no requests"), "{}", describe(&o));
    }
    // Binary: pseudo-random bytes with NULs and no newlines for long runs.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bin: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let binf = s.path("random.bin");
    std::fs::write(&binf, &bin).unwrap();
    let o = replay(&s.map, &binf, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(stderr(&o).contains("not a trace"), "{}", describe(&o));
    for f in ["nbdkit", "qemu", "blkparse", "csv"] {
        let o = replay(&s.map, &binf, &["--format", f, "--summary", "--json"]);
        assert!(
            matches!(o.status.code(), Some(1 | 2)),
            "--format {f}: {}",
            describe(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", describe(&o));
    }
    // The sample image itself (a real binary file).
    let o = replay(&s.map, &s.img, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn no_map_option_needs_exactly_one_map_in_the_directory() {
    let (s, p, log) = nbdkit_file_reads();
    // One map (the sample's) in the trace's directory: it is used.
    let o = replay_in(
        s.dir.path(),
        &[log.as_os_str(), "--summary".as_ref(), "--json".as_ref()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p));
    // None.
    let empty = tempfile::tempdir().unwrap();
    let o = replay_in(empty.path(), &[log.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(stderr(&o).contains("--map"), "{}", describe(&o));
    assert!(stderr(&o).contains("*.bmap"), "{}", describe(&o));
    // Two.
    std::fs::copy(&s.map, s.path("other.bmap")).unwrap();
    let o = replay_in(s.dir.path(), &[log.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let e = stderr(&o);
    assert!(
        e.contains("sample.bmap") && e.contains("other.bmap") && e.contains("--map"),
        "{e}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn nbdkit_writes_zeroes_trims_and_flushes() {
    let s = sample();
    let copy = s.path("writable.img");
    std::fs::copy(&s.img, &copy).unwrap();
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    let hostname = extents(&s.map, 2, "/etc/hostname")[0];
    let tool05 = extents(&s.map, 2, "/usr/bin/tool05")[0];
    let grub = extents(&s.map, 1, "/grub/grub.cfg")[0];
    let log = s.path("writes.log");
    let script = format!(
        "{} -f raw '{}' -c 'write -P 0xab {} {}' -c 'write -z {} {}' -c 'discard {} 8192' -c 'flush' -c 'read {} {}'",
        tool("qemu-io").display(),
        s.uri(),
        fstab.0,
        fstab.1,
        hostname.0,
        hostname.1,
        tool05.0,
        grub.0,
        grub.1
    );
    let o = nbdkit(&s, &copy, &log, &[], &[], &script);
    assert!(o.status.success(), "{}", describe(&o));
    let text = std::fs::read_to_string(&log).unwrap();
    for op in [
        " Write id=",
        " Zero id=",
        " Trim id=",
        " Flush id=",
        " Read id=",
    ] {
        assert!(text.contains(op), "no{op} in\n{text}");
    }
    let o = replay(&s.map, &log, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        [
            "write f /dev/sda2 /etc/fstab",
            "zero f /dev/sda2 /etc/hostname",
            "trim f /dev/sda2 /usr/bin/tool05",
            "read f /dev/sda1 /grub/grub.cfg"
        ]
    );
    let v = summary(&s.map, &log, &[], 0);
    assert_eq!(total(&v, "reads"), 1);
    assert_eq!(total(&v, "bytes_read"), grub.1);
    assert_eq!(total(&v, "writes"), 3);
    assert_eq!(total(&v, "bytes_written"), fstab.1 + hostname.1 + 8192);
    assert!(total(&v, "other") >= 1, "flush: {v:#}");
    let files = v["files"].as_array().unwrap();
    let by: BTreeMap<&str, (u64, u64)> = files
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                (
                    f["bytes_read"].as_u64().unwrap(),
                    f["bytes_written"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(by["/etc/fstab"], (0, fstab.1));
    assert_eq!(by["/etc/hostname"], (0, hostname.1));
    assert_eq!(by["/usr/bin/tool05"], (0, 8192));
    assert_eq!(by["/grub/grub.cfg"], (grub.1, 0));
    assert_eq!(by.len(), 4);
    // Boot list: what was read only.
    let o = replay(&s.map, &log, &["--boot-list"]);
    assert_eq!(stdout(&o), "/grub/grub.cfg\n");
}

#[test]
fn qemu_trace_writes_and_zero_writes() {
    let s = sample();
    let copy = s.path("writable.img");
    std::fs::copy(&s.img, &copy).unwrap();
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    let hostname = extents(&s.map, 2, "/etc/hostname")[0];
    let trace = s.path("w.trace");
    let script = format!(
        "{} --trace 'blk_co_p*' -f raw '{}' -c 'write -P 1 {} {}' -c 'write -z {} {}' -c 'read {} 512' 2> '{}'",
        tool("qemu-io").display(),
        copy.display(),
        fstab.0,
        fstab.1,
        hostname.0,
        hostname.1,
        fstab.0,
        trace.display()
    );
    run(std::process::Command::new("sh").arg("-c").arg(&script));
    let o = replay(&s.map, &trace, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert_eq!(
        stdout(&o).lines().collect::<Vec<_>>(),
        [
            "write f /dev/sda2 /etc/fstab",
            "zero f /dev/sda2 /etc/hostname",
            "read f /dev/sda2 /etc/fstab"
        ]
    );
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(total(&v, "bytes_written"), fstab.1 + hostname.1);
    assert_eq!(total(&v, "bytes_read"), 512);
}

#[test]
fn rereads_and_overlapping_reads() {
    let s = sample();
    let tool05 = extents(&s.map, 2, "/usr/bin/tool05");
    assert_eq!(tool05.len(), 1);
    let (o, len) = tool05[0];
    // [8K,16K), [0,4K), [12K,20K), then the whole file, then the first 4K.
    let reads = [
        (o + 8192, 8192),
        (o, 4096),
        (o + 12288, 8192),
        (o, len),
        (o, 4096),
    ];
    let mut text = String::from("time,op,offset,length\n");
    for (i, (off, l)) in reads.iter().enumerate() {
        text.push_str(&format!("{i},read,{off},{l}\n"));
    }
    let trace = s.path("reread.csv");
    std::fs::write(&trace, text).unwrap();
    let v = summary(&s.map, &trace, &[], 0);
    let f = &v["files"][0];
    assert_eq!(f["path"], "/usr/bin/tool05");
    let total_read: u64 = reads.iter().map(|r| r.1).sum();
    assert_eq!(f["bytes_read"], total_read);
    assert_eq!(f["unique_bytes_read"], len);
    assert_eq!(f["reread_bytes"], total_read - len);
    assert_eq!(f["requests"], reads.len() as u64);
    assert_eq!(f["first_seq"], 1);
}

#[test]
fn stdin_trace_is_the_same_as_the_file() {
    let (s, p, log) = nbdkit_file_reads();
    let from_file = replay(&s.map, &log, &["--summary", "--json"]);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bmap"));
    cmd.arg("replay")
        .arg("-")
        .arg("--map")
        .arg(&s.map)
        .arg("--summary")
        .arg("--json")
        .stdin(std::fs::File::open(&log).unwrap());
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let a: serde_json::Value = serde_json::from_slice(&from_file.stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&b), expected(&p));
    assert_eq!(a["totals"], b["totals"]);
    // Standard input is named as such, not by its command-line spelling.
    assert_eq!(b["trace"], "stdin");
    // --store needs a file.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bmap"));
    cmd.arg("replay")
        .arg("-")
        .arg("--map")
        .arg(&s.map)
        .arg("--store")
        .stdin(std::fs::File::open(&log).unwrap());
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
}

/// A blkparse trace with Q lines only (no D): from a file, replay falls
/// back to Q; from standard input it should too.
#[test]
fn blkparse_q_only_from_stdin_falls_back_to_q() {
    let s = sample();
    let p = picks(&s.map);
    let (text, _, _) = blkparse_fixture(&p, 0, "8,0", true);
    let q_only: String = text
        .lines()
        .filter(|l| l.split_whitespace().nth(5) != Some("D"))
        .map(|l| format!("{l}\n"))
        .collect();
    let trace = s.path("q.txt");
    std::fs::write(&trace, &q_only).unwrap();
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(files_read(&v), expected(&p));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_bmap"))
        .arg("replay")
        .arg("-")
        .arg("--map")
        .arg(&s.map)
        .arg("--summary")
        .arg("--json")
        .stdin(std::fs::File::open(&trace).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(files_read(&v), expected(&p));
}

/// Offsets past i64::MAX are valid u64 offsets (beyond the end of any
/// image); --store must keep them, or warn, not silently change them.
#[test]
fn store_keeps_offsets_past_i64_max() {
    let s = sample();
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    let far: u64 = 0xffff_ffff_ffff_e000;
    let trace = s.path("far.csv");
    std::fs::write(
        &trace,
        format!(
            "time,op,offset,length\n0,read,{},{}\n1,read,{far:#x},4096\n",
            fstab.0, fstab.1
        ),
    )
    .unwrap();
    let o = replay(&s.map, &trace, &["--store"]);
    // SQLite cannot hold the offset: the request is not stored, and the
    // warning names its line; nothing is stored clamped or wrapped.
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert!(stderr(&o).contains("line 3:"), "{}", stderr(&o));
    assert_eq!(
        count(&s.map, "SELECT count(*) FROM accesses WHERE seq = 2"),
        0
    );
    assert_eq!(
        count(&s.map, "SELECT count(*) FROM accesses WHERE seq = 1"),
        1
    );
    assert_eq!(
        count(
            &s.map,
            "SELECT count(*) FROM accesses WHERE offset < 0 OR offset >= 9223372036854775807"
        ),
        0
    );
    let _ = far;
}

#[test]
fn summary_csv_and_boot_list_formats() {
    let (s, p, log) = nbdkit_file_reads();
    let o = replay(&s.map, &log, &["--summary", "--csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let h: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let col = |n: &str| {
        h.iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("no {n} in {h:?}"))
    };
    let mut got = BTreeMap::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        got.insert(
            format!("{} {}", &rec[col("device")], &rec[col("path")]),
            rec[col("bytes_read")].parse::<u64>().unwrap(),
        );
    }
    assert_eq!(got, expected(&p));
    // Text summary names every file.
    let o = replay(&s.map, &log, &["--summary"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    for pk in &p {
        assert!(stdout(&o).contains(&pk.key()), "{}", stdout(&o));
    }
    // Boot list as JSON and CSV.
    let o = replay(&s.map, &log, &["--boot-list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, p.iter().map(|p| p.path).collect::<Vec<_>>());
    let o = replay(&s.map, &log, &["--boot-list", "--csv"]);
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let rows: Vec<(String, String)> = r
        .records()
        .map(|x| {
            let x = x.unwrap();
            (x[0].to_string(), x[2].to_string())
        })
        .collect();
    assert_eq!(
        rows,
        p.iter()
            .map(|p| (format!("/dev/sda{}", p.partition), p.path.to_string()))
            .collect::<Vec<_>>()
    );
}

/// The log's JSON lines share one set of keys (seq, time, op, kind, object,
/// partition, path, disk_offset, length, object_offset), as the CSV log's
/// columns do; a failed request's line must have them too.
#[test]
fn failed_requests_in_json_and_csv_logs() {
    let s = sample();
    let p = picks(&s.map);
    let log = s.path("fail.log");
    let o = nbdkit(
        &s,
        &s.img,
        &log,
        &["error"],
        &["error=EIO", "error-pread-rate=100%"],
        &qemu_io_script(&s, &p[2].reads),
    );
    assert!(!o.status.success());
    let (off, len) = p[2].reads[0];
    // CSV: the failed column says why; disk_offset and length say where.
    let o = replay(&s.map, &log, &["--csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let h: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let recs: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert!(!recs.is_empty());
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let rec = &recs[0];
    assert_eq!(&rec[col("failed")], "EIO");
    assert_eq!(&rec[col("disk_offset")], off.to_string());
    assert_eq!(&rec[col("length")], len.to_string());
    // JSON: the same keys on every line.
    let o = replay(&s.map, &log, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let line = stdout(&o).lines().next().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["failed"], "EIO", "{line}");
    for k in [
        "seq",
        "time",
        "op",
        "kind",
        "object",
        "partition",
        "path",
        "disk_offset",
        "length",
        "object_offset",
    ] {
        assert!(
            v.get(k).is_some(),
            "no {k:?} in the failed request's line {line}"
        );
    }
    assert_eq!(v["disk_offset"], off, "{line}");
}

/// blkparse: a D whose completion (C) carries an error failed; with the
/// default action (D) it must not count as bytes read.
#[test]
fn blkparse_failed_completion_fails_the_request() {
    let s = sample();
    let fstab = extents(&s.map, 2, "/etc/fstab")[0];
    let grub = extents(&s.map, 1, "/grub/grub.cfg")[0];
    let (a, an) = (fstab.0 / SECTOR, fstab.1 / SECTOR);
    let (b, bn) = (grub.0 / SECTOR, grub.1 / SECTOR);
    let text = format!(
        "  8,0    0        1     0.000000000   412  Q   R {a} + {an} [systemd]
  8,0    0        2     0.000001000   412  D   R {a} + {an} [systemd]
  8,0    0        3     0.000002000   412  Q   R {b} + {bn} [systemd]
  8,0    0        4     0.000003000   412  D   R {b} + {bn} [systemd]
  8,0    0        5     0.000004000     0  C   R {b} + {bn} [0]
  8,0    0        6     0.000005000     0  C   R {a} + {an} [-5]
"
    );
    let trace = s.path("cerr.txt");
    std::fs::write(&trace, &text).unwrap();
    // --action C: the completion says it failed.
    let v = summary(&s.map, &trace, &["--action", "C"], 0);
    assert_eq!(total(&v, "failed"), 1, "{v:#}");
    assert_eq!(
        files_read(&v),
        BTreeMap::from([("/dev/sda1 /grub/grub.cfg".to_string(), grub.1)])
    );
    // Default (D): the same.
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(total(&v, "requests"), 2, "{v:#}");
    assert_eq!(
        total(&v, "failed"),
        1,
        "D of a failed I/O counted as read: {v:#}"
    );
    assert_eq!(
        files_read(&v),
        BTreeMap::from([("/dev/sda1 /grub/grub.cfg".to_string(), grub.1)])
    );
}

/// Runs `bmap replay - ARGS` with `trace` on standard input: a pipe, so
/// the trace is replayed in order by one thread.
fn replay_stdin(map: &Path, trace: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = assert_cmd::Command::cargo_bin("bmap").unwrap();
    cmd.current_dir(map.parent().unwrap())
        .args(["replay", "-", "--map"])
        .arg(map)
        .args(extra)
        .pipe_stdin(trace)
        .unwrap();
    cmd.output().unwrap()
}

/// A trace file's summary and boot list, counted chunk by chunk on every
/// core, are byte for byte what the in-order replay of the same trace
/// from a pipe prints: here three nbdcopy runs at once, each reading the
/// sample disk 4 KiB at a time with 64 requests in flight on its own
/// connection: a log of several megabytes whose requests interleave and
/// cross chunk boundaries in flight.
#[test]
fn parallel_counts_agree_with_the_replay_in_order() {
    let s = sample();
    let log = s.path("small-requests.log");
    let copy = format!(
        "{} --request-size=4096 '{}' null:",
        tool("nbdcopy").display(),
        s.uri()
    );
    let script = format!("{copy} & {copy} & {copy} & wait");
    let o = nbdkit(&s, &s.img, &log, &[], &[], &script);
    assert!(o.status.success(), "{}", describe(&o));
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        len > 2 << 20,
        "a trace of {len} bytes spans fewer than three chunks"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // Each nbdcopy opens a connection of its own to read (and one more
    // to look at the export first).
    let reading: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains(" Read id="))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("connection=")))
        .collect();
    assert!(reading.len() >= 3, "{reading:?}");
    for view in [
        &["--summary"][..],
        &["--summary", "--csv"],
        &["--boot-list"],
    ] {
        let from_file = replay(&s.map, &log, view);
        let from_pipe = replay_stdin(&s.map, &log, view);
        assert_eq!(from_file.status.code(), Some(0), "{}", describe(&from_file));
        assert_eq!(from_pipe.status.code(), Some(0), "{}", describe(&from_pipe));
        // Only the trace's name differs: a pipe is "stdin".
        let named = stdout(&from_pipe).replacen("trace stdin ", "trace small-requests.log ", 1);
        assert!(
            stdout(&from_file) == named,
            "{view:?} differs:\n{}",
            describe(&from_file)
        );
        assert!(
            stdout(&from_file).lines().count() > 20,
            "{}",
            describe(&from_file)
        );
    }
    // Three copies of the disk: every byte read three times.
    let v = summary(&s.map, &log, &[], 0);
    assert_eq!(total(&v, "bytes_read"), 3 * IMAGE_SIZE, "{v:#}");
    assert_eq!(total(&v, "reads"), 3 * IMAGE_SIZE / 4096);
    assert_eq!(total(&v, "failed"), 0);
}
