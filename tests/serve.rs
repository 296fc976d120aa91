//! `bmap serve` with real NBD clients (qemu-img, qemu-io, nbdinfo,
//! nbdcopy), compared with nbdkit's log filter, and with hostile clients
//! written here that speak (or mangle) the protocol over the socket.
//!
//! The image is the shipped sample disk (GPT; /dev/sda1 boot, /dev/sda2
//! root), indexed by the real binary. Every external command runs under
//! `timeout`, every socket has read timeouts, and every server is killed
//! when its test ends, so nothing can hang the suite. A missing tool fails
//! the test, never skips it.
//!
//! The boot test is ignored by default (it needs qemu-system-x86_64, a
//! kernel in /boot, busybox and cpio): `cargo test --test serve --
//! --ignored boot`.

mod common;
mod replay_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replay_common::*;

const BMAP: &str = env!("CARGO_BIN_EXE_bmap");
/// Longest any external command may take.
const TOOL_TIMEOUT: &str = "60";

/// `timeout 60 TOOL ARGS…`.
fn timed(name: &str) -> Command {
    let mut c = Command::new(tool("timeout"));
    c.arg(TOOL_TIMEOUT).arg(tool(name));
    c
}

/// `sha256sum FILE` (the tool: sha2 in a debug build takes seconds).
fn sha256(p: &Path) -> String {
    let out = run(timed("sha256sum").arg(p));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A running `bmap serve`, killed when dropped.
struct Served {
    child: Child,
    uri: String,
    stderr: Arc<Mutex<String>>,
}

impl Served {
    /// Starts `bmap serve ARGS` and waits for the URI it prints.
    fn start(args: &[&std::ffi::OsStr]) -> Served {
        let mut child = Command::new(BMAP)
            .arg("serve")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let err = child.stderr.take().unwrap();
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Some(uri) = line.strip_prefix("bmap: connect to ") {
                        let _ = tx.send(uri.to_string());
                    }
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let uri = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "bmap serve printed no URI; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        Served { child, uri, stderr }
    }

    fn socket(&self) -> PathBuf {
        PathBuf::from(
            self.uri
                .strip_prefix("nbd+unix:///?socket=")
                .expect("a Unix socket URI"),
        )
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Still running (it must survive every hostile client).
    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "bmap serve exited; stderr:\n{}",
            self.stderr()
        );
        assert!(!self.stderr().contains("panicked"), "{}", self.stderr());
    }
}

impl Drop for Served {
    /// SIGINT first, so the server removes its socket directory as a
    /// user's Ctrl-C would; SIGKILL if it has not gone within 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bmap serve IMG --map MAP --log LOG EXTRA…` on the sample.
fn serve(s: &Sample, log: &Path, extra: &[&str]) -> Served {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        s.img.as_os_str(),
        "--map".as_ref(),
        s.map.as_os_str(),
        "--log".as_ref(),
        log.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    Served::start(&args)
}

/// Runs `bmap serve ARGS` to completion (for --run and refusals).
fn serve_output(cwd: &Path, args: &[&std::ffi::OsStr]) -> Output {
    run_with_timeout(
        Command::new(BMAP)
            .current_dir(cwd)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null()),
    )
}

fn run_with_timeout(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    // Read both pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command timed out: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// The log's lines, waiting briefly for `n` of them (the server writes
/// them before it replies, so this is only for safety).
fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// (op, offset, count) of every request in an nbdkit-format log, as a
/// multiset; Extents (block status) are left out: bmap serve offers no
/// block status, so a client asks nbdkit for it but not bmap.
fn requests(log: &Path) -> BTreeMap<(String, u64, u64), usize> {
    let text = std::fs::read_to_string(log).unwrap();
    let mut m = BTreeMap::new();
    for l in text.lines() {
        let Some(rest) = l.split_once(" connection=").map(|x| x.1) else {
            continue;
        };
        let mut w = rest.split_whitespace().skip(1);
        let Some(op) = w.next() else { continue };
        if !matches!(op, "Read" | "Write" | "Trim" | "Zero" | "Flush" | "Cache") {
            continue;
        }
        let mut off = 0;
        let mut cnt = 0;
        for t in w {
            if let Some(v) = t.strip_prefix("offset=0x") {
                off = u64::from_str_radix(v, 16).unwrap();
            } else if let Some(v) = t.strip_prefix("count=0x") {
                cnt = u64::from_str_radix(v, 16).unwrap();
            }
        }
        *m.entry((op.to_string(), off, cnt)).or_insert(0) += 1;
    }
    m
}

// ------------------------------------------------------------ real clients

#[test]
fn qemu_img_info_and_convert_give_an_identical_copy() {
    let s = sample();
    let sum = sha256(&s.img);
    let srv = serve(&s, &s.path("live.log"), &[]);
    let info = run(timed("qemu-img").args(["info", "--output=json", &srv.uri]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["virtual-size"], IMAGE_SIZE);
    let copy = s.path("copy.img");
    run(timed("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &srv.uri])
        .arg(&copy));
    assert_eq!(sha256(&copy), sum, "the copy differs from the image");
    assert_eq!(sha256(&s.img), sum, "the image changed");
}

#[test]
fn qemu_io_reads_of_file_extents_are_logged_as_those_files() {
    let s = sample();
    let log = s.path("live.log");
    let picks = [
        (2u32, "/etc/fstab"),
        (1, "/grub/grub.cfg"),
        (2, "/usr/bin/tool05"),
        (2, "/etc/hostname"),
    ];
    let srv = serve(&s, &log, &[]);
    let mut cmd = timed("qemu-io");
    cmd.args(["-r", "-f", "raw", &srv.uri]);
    let mut expect = Vec::new();
    for (part, path) in picks {
        for (off, len) in extents(&s.map, part, path) {
            cmd.arg("-c").arg(format!("read {off} {len}"));
        }
        expect.push(format!("read f /dev/sda{part} {path}"));
    }
    run(&mut cmd);
    let lines = log_lines(&log);
    // One connection, one line per file, in the order read.
    let got: Vec<String> = lines
        .iter()
        .map(|l| {
            let (prefix, rest) = l.split_once(' ').unwrap();
            assert_eq!(prefix, "[c1]", "{l}");
            rest.to_string()
        })
        .collect();
    assert_eq!(got, expect, "log:\n{}", lines.join("\n"));
}

#[test]
fn nbdinfo_lists_the_export() {
    let s = sample();
    let srv = serve(&s, &s.path("live.log"), &[]);
    let out = run(timed("nbdinfo").arg(&srv.uri));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("export-size: {IMAGE_SIZE}")),
        "{text}"
    );
    assert!(text.contains("is_read_only: true"), "{text}");
    assert!(text.contains("can_flush: true"), "{text}");
    assert!(text.contains("block_size_maximum: 33554432"), "{text}");
    let out = run(timed("nbdinfo").arg("--list").arg(&srv.uri));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("export=\"\""), "{text}");
    assert!(
        text.contains(&format!("export-size: {IMAGE_SIZE}")),
        "{text}"
    );
}

#[test]
fn nbdcopy_to_a_file_works() {
    let s = sample();
    let srv = serve(&s, &s.path("live.log"), &[]);
    let copy = s.path("copy.img");
    run(timed("nbdcopy").arg(&srv.uri).arg(&copy));
    assert_eq!(sha256(&copy), sha256(&s.img));
    // Everything was read, and the log says so: partition tables first.
    let lines = log_lines(&s.path("live.log"));
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("read mbr /dev/sda protective MBR")),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.ends_with("read f /dev/sda2 /etc/fstab")));
}

#[test]
fn trace_of_qemu_img_convert_matches_nbdkits_log_filter() {
    let s = sample();
    let script = format!(
        "{} convert -f raw -O raw \"$uri\" {}",
        tool("qemu-img").display(),
        s.path("copy.img").display()
    );
    let nk_log = s.path("nbdkit.log");
    let o = run_with_timeout(
        Command::new(tool("timeout"))
            .arg(TOOL_TIMEOUT)
            .arg(tool("nbdkit"))
            .arg("-U")
            .arg(s.sock())
            .arg("--filter=log")
            .arg("file")
            .arg(&s.img)
            .arg(format!("logfile={}", nk_log.display()))
            .arg("--run")
            .arg(&script),
    );
    assert!(o.status.success(), "nbdkit: {}", describe(&o));
    let trace = s.path("serve.trace");
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--log".as_ref(),
            s.path("live.log").as_os_str(),
            "--trace-out".as_ref(),
            trace.as_os_str(),
            "--run".as_ref(),
            script.as_ref(),
        ],
    );
    assert!(o.status.success(), "bmap serve: {}", describe(&o));
    let theirs = requests(&nk_log);
    let ours = requests(&trace);
    assert!(!ours.is_empty());
    assert_eq!(ours, theirs);

    // And bmap replay reads the trace on its own (format detected).
    let v = summary(&s.map, &trace, &[], 0);
    let n: usize = ours.values().sum();
    assert_eq!(total(&v, "requests"), n as u64);
    assert_eq!(total(&v, "failed"), 0);
    assert_eq!(total(&v, "bytes_read"), 2 * IMAGE_SIZE / 2);
    assert_eq!(v["format"], "nbdkit");
}

#[test]
fn replay_reads_the_trace_out_file() {
    let s = sample();
    let trace = s.path("t.log");
    let fstab = extents(&s.map, 2, "/etc/fstab");
    let script = format!(
        "{} -r -f raw \"$uri\" -c 'read {} {}'",
        tool("qemu-io").display(),
        fstab[0].0,
        fstab[0].1,
    );
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--log".as_ref(),
            s.path("live.log").as_os_str(),
            "--trace-out".as_ref(),
            trace.as_os_str(),
            "--run".as_ref(),
            script.as_ref(),
        ],
    );
    // No --map: sample.img.bmap does not exist, so the only *.bmap in
    // the current directory is used.
    assert!(o.status.success(), "{}", describe(&o));
    let out = replay(&s.map, &trace, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "read f /dev/sda2 /etc/fstab\n");
    let live = std::fs::read_to_string(s.path("live.log")).unwrap();
    assert_eq!(live, "[c1] read f /dev/sda2 /etc/fstab\n");
    let v = summary(&s.map, &trace, &[], 0);
    assert_eq!(total(&v, "requests"), 1);
    assert_eq!(v["format"], "nbdkit");
}

#[test]
fn writable_overlay_keeps_the_image_unchanged() {
    let s = sample();
    let sum = sha256(&s.img);
    let overlay = s.path("overlay");
    let srv = serve(
        &s,
        &s.path("live.log"),
        &["--writable", "--overlay", overlay.to_str().unwrap()],
    );
    let (off, len) = extents(&s.map, 2, "/etc/fstab")[0];
    // Unaligned as well as aligned, crossing a 4 KiB block.
    let unaligned = off + 4096 - 100;
    // Zeroes (NBD_CMD_WRITE_ZEROES) and a discard (NBD_CMD_TRIM) further on.
    let zoff = (off + 4096 - 100 + 300) / 4096 * 4096 + 3 * 4096 + 512;
    run(timed("qemu-io")
        .args(["-f", "raw", &srv.uri])
        .args(["-c", &format!("write -P 0xab {off} {len}")])
        .args(["-c", &format!("write -P 0xcd {unaligned} 300")])
        .args(["-c", &format!("write -z {zoff} 5000")])
        .args(["-c", &format!("discard {} 4096", zoff + 16384)])
        .args(["-c", "flush"]));
    // A new connection reads the writes back (and the bytes around them
    // from the image).
    run(timed("qemu-io")
        .args(["-r", "-f", "raw", &srv.uri])
        .args(["-c", &format!("read -P 0xab {off} {}", unaligned - off)])
        .args(["-c", &format!("read -P 0xcd {unaligned} 300")])
        .args(["-c", &format!("read -P 0 {zoff} 5000")]));
    let trace_ops = log_lines(&s.path("live.log"));
    assert!(
        trace_ops.iter().any(|l| l.starts_with("[c1] zero ")),
        "{trace_ops:?}"
    );
    assert!(
        trace_ops.iter().any(|l| l.starts_with("[c1] trim ")),
        "{trace_ops:?}"
    );
    let before = std::fs::read(&s.img).unwrap();
    let end = (unaligned + 300) as usize;
    let mut tail = vec![0u8; 4096];
    let f = std::fs::File::open(&s.img).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut tail, end as u64).unwrap();
    let copy = s.path("copy.img");
    run(timed("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &srv.uri])
        .arg(&copy));
    let after = std::fs::read(&copy).unwrap();
    assert_eq!(&after[end..end + 4096], &tail[..]);
    assert_eq!(&after[..off as usize], &before[..off as usize]);
    assert_eq!(sha256(&s.img), sum, "the base image was written");
    let live = log_lines(&s.path("live.log"));
    assert!(
        live.contains(&"[c1] write f /dev/sda2 /etc/fstab".to_string()),
        "{live:?}"
    );
    drop(srv);

    // --writable alone is refused; the overlay is never reused.
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--writable".as_ref(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overlay"), "{}", stderr(&o));
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--writable".as_ref(),
            "--overlay".as_ref(),
            overlay.as_os_str(),
            "--run".as_ref(),
            "true".as_ref(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("overlay"), "{}", stderr(&o));
    assert_eq!(sha256(&s.img), sum);
}

#[test]
fn writable_i_mean_it_writes_the_image_in_place() {
    let s = sample();
    let img = s.path("direct.img");
    std::fs::copy(&s.img, &img).unwrap();
    let o = serve_output(
        s.dir.path(),
        &[
            img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--log".as_ref(),
            s.path("live.log").as_os_str(),
            "--writable".as_ref(),
            "--i-mean-it".as_ref(),
            "--run".as_ref(),
            format!(
                "{} -f raw \"$uri\" -c 'write -P 0x5a 1000 100' -c flush",
                tool("qemu-io").display()
            )
            .as_ref(),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    assert!(stderr(&o).contains("WRITABLE IN PLACE"), "{}", describe(&o));
    let data = image_bytes(&img, 1000, 100);
    assert!(data.iter().all(|&b| b == 0x5a));
    assert_eq!(image_bytes(&img, 0, 1000), image_bytes(&s.img, 0, 1000));
}

#[test]
fn read_only_export_refuses_writes() {
    let s = sample();
    let sum = sha256(&s.img);
    let srv = serve(&s, &s.path("live.log"), &[]);
    let o = run_with_timeout(
        timed("qemu-io")
            .args(["-f", "raw", &srv.uri])
            .args(["-c", "write -P 0xab 0 4096"]),
    );
    // qemu sees NBD_FLAG_READ_ONLY and will not open the export for
    // writing (the server's own EPERM for a write that comes anyway is
    // tested with a raw client below).
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!o.status.success(), "{text}");
    let t = text.to_lowercase();
    assert!(
        t.contains("read-only") || t.contains("permission denied"),
        "{text}"
    );
    assert_eq!(sha256(&s.img), sum);
}

#[test]
fn run_returns_the_status_and_sets_the_environment() {
    let s = sample();
    let env = s.path("env.txt");
    let script = format!(
        "echo \"$uri|$nbd|$socket|$port\" > {}; test -S \"$socket\" && exit 7",
        env.display()
    );
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--run".as_ref(),
            script.as_ref(),
        ],
    );
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
    let line = std::fs::read_to_string(&env).unwrap();
    let f: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(f.len(), 4, "{line}");
    assert_eq!(f[0], format!("nbd+unix:///?socket={}", f[2]));
    assert_eq!(f[1], f[0]);
    assert_eq!(f[3], "");
    // The private socket directory is gone.
    let dir = Path::new(f[2]).parent().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());

    // TCP on loopback, any free port.
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--port".as_ref(),
            "0".as_ref(),
            "--run".as_ref(),
            format!(
                "echo \"$uri|$port\" > {}; {} \"$uri\" > /dev/null",
                env.display(),
                tool("nbdinfo").display()
            )
            .as_ref(),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    let line = std::fs::read_to_string(&env).unwrap();
    let (uri, port) = line.trim_end().split_once('|').unwrap();
    assert_eq!(uri, format!("nbd://127.0.0.1:{port}"));
    assert!(port.parse::<u16>().unwrap() > 0);

    // A chosen socket path is removed at the end too.
    let sock = s.path("chosen.sock");
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--socket".as_ref(),
            sock.as_os_str(),
            "--run".as_ref(),
            "exit 0".as_ref(),
        ],
    );
    assert!(o.status.success(), "{}", describe(&o));
    assert!(!sock.exists());
}

#[test]
fn the_map_is_found_beside_the_image_or_the_error_says_how() {
    let s = sample();
    // Two maps in the directory, neither named after the image: ambiguous.
    std::fs::copy(&s.map, s.path("other.bmap")).unwrap();
    let o = serve_output(
        s.dir.path(),
        &[s.img.as_os_str(), "--run".as_ref(), "true".as_ref()],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no map for") && e.contains("several maps"),
        "{e}"
    );
    // IMAGE.bmap wins over the others.
    std::fs::rename(&s.map, s.path("sample.img.bmap")).unwrap();
    let o = serve_output(
        s.dir.path(),
        &[s.img.as_os_str(), "--run".as_ref(), "true".as_ref()],
    );
    assert!(o.status.success(), "{}", describe(&o));
    assert!(stderr(&o).contains("with map "), "{}", describe(&o));
    assert!(stderr(&o).contains("sample.img.bmap"), "{}", describe(&o));
    // No map at all.
    std::fs::remove_file(s.path("sample.img.bmap")).unwrap();
    std::fs::remove_file(s.path("other.bmap")).unwrap();
    let o = serve_output(s.dir.path(), &[s.img.as_os_str()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("no map for") && e.contains("bmap index"), "{e}");
    // A map that is not a map.
    std::fs::write(s.path("bad.bmap"), b"not sqlite").unwrap();
    let o = serve_output(
        s.dir.path(),
        &[s.img.as_os_str(), "--map".as_ref(), "bad.bmap".as_ref()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad.bmap"), "{}", describe(&o));
}

#[test]
fn ctrl_c_flushes_the_trace_and_removes_the_socket() {
    let s = sample();
    let trace = s.path("t.log");
    let mut srv = serve(
        &s,
        &s.path("live.log"),
        &["--trace-out", trace.to_str().unwrap()],
    );
    let sock = srv.socket();
    let (off, len) = extents(&s.map, 2, "/etc/fstab")[0];
    // A client still connected when Ctrl-C comes.
    let mut c = connect(&sock);
    negotiate(&mut c);
    let (err, _) = nbd_read(&mut c, 1, off, len as u32);
    assert_eq!(err, 0);
    run(Command::new(tool("kill"))
        .arg("-INT")
        .arg(srv.child.id().to_string()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "bmap serve ignored SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains(&format!(
            "connection=1 Read id=1 offset={off:#x} count={len:#x} ..."
        )),
        "{text}"
    );
    assert!(
        text.contains("connection=1 ...Read id=1 return=0"),
        "{text}"
    );
    assert!(!sock.exists());
    assert!(!sock.parent().unwrap().exists());
    let live = std::fs::read_to_string(s.path("live.log")).unwrap();
    assert_eq!(live, "[c1] read f /dev/sda2 /etc/fstab\n");
}

// ------------------------------------------------------------ hostile clients

/// A raw client: connected, with timeouts so a test cannot hang.
fn connect(sock: &Path) -> UnixStream {
    let c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

fn read_n(c: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    c.read_exact(&mut b).unwrap();
    b
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// Sends an option; returns the replies up to the final one (ACK or error):
/// (reply type, payload).
fn option(c: &mut UnixStream, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    c.write_all(&m).unwrap();
    let mut replies = Vec::new();
    loop {
        let h = read_n(c, 20);
        assert_eq!(&h[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        assert_eq!(be32(&h[8..]), opt);
        let kind = be32(&h[12..]);
        let len = be32(&h[16..]) as usize;
        assert!(len < 100_000);
        let payload = read_n(c, len);
        replies.push((kind, payload));
        if kind != 2 && kind != 3 {
            return replies;
        }
    }
}

/// The greeting and client flags.
fn greet(c: &mut UnixStream) {
    let g = read_n(c, 18);
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    c.write_all(&3u32.to_be_bytes()).unwrap();
}

fn go_payload() -> Vec<u8> {
    let mut d = 0u32.to_be_bytes().to_vec();
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
    d
}

/// Handshake through NBD_OPT_GO; returns the export size.
fn negotiate(c: &mut UnixStream) -> u64 {
    greet(c);
    let replies = option(c, 7, &go_payload());
    assert_eq!(replies.last().unwrap().0, 1, "GO not acknowledged");
    let export = replies
        .iter()
        .find(|(k, p)| *k == 3 && p[..2] == [0, 0])
        .expect("NBD_INFO_EXPORT");
    u64::from_be_bytes(export.1[2..10].try_into().unwrap())
}

fn send_request(c: &mut UnixStream, kind: u16, cookie: u64, offset: u64, len: u32) {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    c.write_all(&r).unwrap();
}

/// A simple reply: (error, cookie).
fn reply(c: &mut UnixStream) -> (u32, u64) {
    let h = read_n(c, 16);
    assert_eq!(be32(&h), 0x6744_6698);
    (
        be32(&h[4..]),
        u64::from_be_bytes(h[8..].try_into().unwrap()),
    )
}

/// READ: the error and, on success, the data.
fn nbd_read(c: &mut UnixStream, cookie: u64, offset: u64, len: u32) -> (u32, Vec<u8>) {
    send_request(c, 0, cookie, offset, len);
    let (err, ck) = reply(c);
    assert_eq!(ck, cookie);
    if err != 0 {
        return (err, Vec::new());
    }
    (0, read_n(c, len as usize))
}

fn image_bytes(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(img).unwrap();
    let mut b = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, offset).unwrap();
    b
}

/// After hostile clients: a well-behaved one still gets the right bytes.
fn still_serves(sock: &Path, img: &Path) {
    let mut c = connect(sock);
    assert_eq!(negotiate(&mut c), IMAGE_SIZE);
    let (err, data) = nbd_read(&mut c, 99, 1 << 20, 65536);
    assert_eq!(err, 0);
    assert_eq!(data, image_bytes(img, 1 << 20, 65536));
    send_request(&mut c, 2, 0, 0, 0); // NBD_CMD_DISC
}

#[test]
fn hostile_garbage_instead_of_the_handshake() {
    let s = sample();
    let sum = sha256(&s.img);
    let mut srv = serve(&s, &s.path("live.log"), &[]);
    let sock = srv.socket();
    // An HTTP client: its request is read as client flags, which are
    // unknown, and the server closes.
    let mut c = connect(&sock);
    let _ = read_n(&mut c, 18);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    // Random bytes instead of an option.
    let mut c = connect(&sock);
    greet(&mut c);
    c.write_all(&[0x5a; 64]).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // A client that connects and goes away at once.
    drop(connect(&sock));
    still_serves(&sock, &s.img);
    srv.assert_alive();
    assert_eq!(sha256(&s.img), sum);
}

#[test]
fn hostile_unknown_and_oversized_options() {
    let s = sample();
    let mut srv = serve(&s, &s.path("live.log"), &[]);
    let sock = srv.socket();
    let mut c = connect(&sock);
    greet(&mut c);
    // Unknown option, and structured replies: declined, connection kept.
    let r = option(&mut c, 0xdead, b"payload");
    assert_eq!(r, vec![(0x8000_0001, Vec::new())]);
    let r = option(&mut c, 8, b"");
    assert_eq!(r[0].0, 0x8000_0001);
    // A malformed GO (name length past the end): invalid, kept.
    let r = option(&mut c, 7, &[0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert_eq!(r.last().unwrap().0, 0x8000_0003);
    // LIST, then INFO, then GO: all work after that.
    let r = option(&mut c, 3, b"");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0], (2, vec![0, 0, 0, 0]));
    let r = option(&mut c, 6, &go_payload());
    assert_eq!(r.last().unwrap().0, 1);
    let r = option(&mut c, 7, &go_payload());
    assert_eq!(r.last().unwrap().0, 1);
    let (err, data) = nbd_read(&mut c, 1, 0, 512);
    assert_eq!(err, 0);
    assert_eq!(data, image_bytes(&s.img, 0, 512));

    // A 4 GiB option: refused (NBD_REP_ERR_TOO_BIG) and closed, never read.
    let mut c = connect(&sock);
    greet(&mut c);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    c.write_all(&m).unwrap();
    let h = read_n(&mut c, 20);
    assert_eq!(be32(&h[12..]), 0x8000_0009);
    let len = be32(&h[16..]) as usize;
    let _ = read_n(&mut c, len);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty());

    // NBD_OPT_EXPORT_NAME works too (the old way in).
    let mut c = connect(&sock);
    greet(&mut c);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&m).unwrap();
    let r = read_n(&mut c, 10); // NO_ZEROES was agreed: no padding
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), IMAGE_SIZE);
    let (err, _) = nbd_read(&mut c, 5, 512, 512);
    assert_eq!(err, 0);

    still_serves(&sock, &s.img);
    srv.assert_alive();
}

#[test]
fn hostile_requests_past_the_end_and_too_large() {
    let s = sample();
    let sum = sha256(&s.img);
    let mut srv = serve(
        &s,
        &s.path("live.log"),
        &["--trace-out", s.path("t.log").to_str().unwrap()],
    );
    let sock = srv.socket();
    let mut c = connect(&sock);
    negotiate(&mut c);
    // Past the end, straddling the end, wrapping around: EINVAL, kept.
    for (off, len) in [
        (IMAGE_SIZE, 512u32),
        (IMAGE_SIZE - 512, 1024),
        (u64::MAX - 10, 512),
    ] {
        let (err, _) = nbd_read(&mut c, 7, off, len);
        assert_eq!(err, 22, "read {off}+{len}");
    }
    let (err, data) = nbd_read(&mut c, 8, IMAGE_SIZE - 512, 512);
    assert_eq!(err, 0);
    assert_eq!(data, image_bytes(&s.img, IMAGE_SIZE - 512, 512));
    // A 4 GiB read: EINVAL without the server allocating for it.
    let (err, _) = nbd_read(&mut c, 9, 0, u32::MAX);
    assert_eq!(err, 22);
    // A write to a read-only export: EPERM, payload consumed, in step.
    send_request(&mut c, 1, 10, 0, 4096);
    c.write_all(&[0xab; 4096]).unwrap();
    assert_eq!(reply(&mut c), (1, 10));
    // A write larger than the maximum: its payload is read and dropped,
    // EINVAL, and the stream stays in step.
    let big = (32u32 << 20) + 4096;
    send_request(&mut c, 1, 11, 0, big);
    let chunk = vec![0xcd; 1 << 20];
    let mut left = big as usize;
    while left > 0 {
        let n = left.min(chunk.len());
        c.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    assert_eq!(reply(&mut c), (22, 11));
    // Unknown command: EINVAL.
    send_request(&mut c, 0x77, 12, 0, 0);
    assert_eq!(reply(&mut c), (22, 12));
    let (err, data) = nbd_read(&mut c, 13, 0, 4096);
    assert_eq!(err, 0);
    assert_eq!(data, image_bytes(&s.img, 0, 4096));
    send_request(&mut c, 2, 14, 0, 0);
    still_serves(&sock, &s.img);
    srv.assert_alive();
    assert_eq!(sha256(&s.img), sum);
    // The failures are in the trace, and replay reads them.
    let text = std::fs::read_to_string(s.path("t.log")).unwrap();
    assert!(text.contains("return=-1 error=EINVAL"), "{text}");
    assert!(text.contains("return=-1 error=EPERM"), "{text}");
    let live = std::fs::read_to_string(s.path("live.log")).unwrap();
    assert!(live.contains("[c1] read failed (EINVAL)"), "{live}");
    let out = replay(&s.map, &s.path("t.log"), &[]);
    let log = stdout(&out);
    assert!(log.contains("read failed (EINVAL)"), "{}", describe(&out));
    assert!(log.contains("write failed (EPERM)"), "{}", describe(&out));
}

#[test]
fn hostile_disconnect_mid_request() {
    let s = sample();
    let mut srv = serve(&s, &s.path("live.log"), &[]);
    let sock = srv.socket();
    // Half a request header, then gone.
    let mut c = connect(&sock);
    negotiate(&mut c);
    c.write_all(&0x2560_9513u32.to_be_bytes()).unwrap();
    drop(c);
    // A write announcing 64 KiB that sends 100 bytes, then gone.
    let mut c = connect(&sock);
    negotiate(&mut c);
    send_request(&mut c, 1, 1, 0, 65536);
    c.write_all(&[1; 100]).unwrap();
    drop(c);
    // A read whose reply is never read: the client goes while the server
    // writes 32 MiB to it.
    let mut c = connect(&sock);
    negotiate(&mut c);
    send_request(&mut c, 0, 1, 0, 32 << 20);
    drop(c);
    // Gone in the middle of the handshake.
    let mut c = connect(&sock);
    greet(&mut c);
    c.write_all(b"IHAVEOPT\0\0\0\x07").unwrap();
    drop(c);
    still_serves(&sock, &s.img);
    srv.assert_alive();
}

#[test]
fn hostile_fifty_concurrent_connections() {
    let s = sample();
    let sum = sha256(&s.img);
    let mut srv = serve(&s, &s.path("live.log"), &[]);
    let sock = srv.socket();
    let img = Arc::new(std::fs::read(&s.img).unwrap());
    // All connect first, then all read: 50 connections open at once.
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let threads: Vec<_> = (0..50u64)
        .map(|i| {
            let sock = sock.clone();
            let img = Arc::clone(&img);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut c = connect(&sock);
                assert_eq!(negotiate(&mut c), IMAGE_SIZE);
                barrier.wait();
                for k in 0..8u64 {
                    let off = (i * 1_000_003 + k * 131_071) % (IMAGE_SIZE - 65536);
                    let (err, data) = nbd_read(&mut c, k, off, 65536);
                    assert_eq!(err, 0);
                    assert!(
                        data == img[off as usize..off as usize + 65536],
                        "conn {i} read {off}"
                    );
                }
                send_request(&mut c, 2, 0, 0, 0);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    srv.assert_alive();
    still_serves(&sock, &s.img);
    assert_eq!(sha256(&s.img), sum);
    // Every connection's lines carry its own prefix.
    let live = std::fs::read_to_string(s.path("live.log")).unwrap();
    assert!(live.lines().all(|l| l.starts_with("[c")), "{live}");
    assert!(live.contains("[c50] ") || live.contains("[c51] "));
}

// ------------------------------------------------------------ boot

/// The guest's /init: load the virtio modules, mount the root filesystem
/// from the exported disk read-only, read /etc/fstab, power off.
const BOOT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    [ -f /lib/$m.ko ] && insmod /lib/$m.ko
done
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do [ -b /dev/vda2 ] && break; sleep 0.2; done
mount -t ext4 -o ro /dev/vda2 /mnt && cat /mnt/etc/fstab && echo BMAP-BOOT-OK
poweroff -f
"#;

/// Builds an initramfs from busybox (static) and the virtio modules of
/// `kernel`'s release; returns its path.
fn boot_initramfs(dir: &Path, kernel: &Path) -> PathBuf {
    let release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("a /boot/vmlinuz-RELEASE kernel")
        .to_string();
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::copy(tool("busybox"), root.join("bin/busybox")).unwrap();
    let modules = PathBuf::from(format!("/lib/modules/{release}/kernel/drivers"));
    for m in [
        "virtio/virtio_ring.ko",
        "virtio/virtio.ko",
        "virtio/virtio_pci_modern_dev.ko",
        "virtio/virtio_pci_legacy_dev.ko",
        "virtio/virtio_pci.ko",
        "block/virtio_blk.ko",
    ] {
        // Built into some kernels: then there is no module to load.
        let src = modules.join(m);
        if src.is_file() {
            let name = src.file_name().unwrap();
            std::fs::copy(&src, root.join("lib").join(name)).unwrap();
        }
    }
    let init = root.join("init");
    std::fs::write(&init, BOOT_INIT).unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.join("initramfs.cpio.gz");
    run(Command::new("sh").current_dir(&root).arg("-c").arg(format!(
        "find . | {} -o -H newc --quiet | gzip > '{}'",
        tool("cpio").display(),
        out.display()
    )));
    out
}

/// Boots a Linux kernel and a tiny busybox initramfs in qemu with the
/// export as its virtio disk; the guest mounts /dev/vda2 read-only and
/// reads /etc/fstab, and bmap serve's log shows exactly that read.
/// Ignored by default: it needs qemu-system-x86_64, a kernel in /boot with
/// its modules, busybox-static and cpio (`apt-get install qemu-system-x86
/// qemu-utils linux-image-cloud-amd64 busybox-static cpio`; install
/// qemu-utils with qemu-system-x86 so their versions match). Run it with
/// `cargo test --test serve -- --ignored boot`. qemu runs without KVM
/// (a few seconds), so it also works where /dev/kvm does not.
#[test]
#[ignore]
fn boot_a_kernel_from_the_export() {
    let s = sample();
    let kernel = std::fs::read_dir("/boot")
        .expect("/boot")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .max()
        .expect("a kernel in /boot (apt-get install linux-image-cloud-amd64)");
    let initrd = boot_initramfs(s.dir.path(), &kernel);
    let log = s.path("live.log");
    let console = s.path("console.txt");
    let script = format!(
        "timeout 100 {} -accel tcg -m 256 -nographic -no-reboot -kernel '{}' -initrd '{}' \
         -append 'console=ttyS0 panic=-1 quiet' \
         -drive file=\"$uri\",format=raw,if=virtio,readonly=on > '{}' 2>&1",
        tool("qemu-system-x86_64").display(),
        kernel.display(),
        initrd.display(),
        console.display()
    );
    let o = serve_output(
        s.dir.path(),
        &[
            s.img.as_os_str(),
            "--map".as_ref(),
            s.map.as_os_str(),
            "--log".as_ref(),
            log.as_os_str(),
            "--run".as_ref(),
            script.as_ref(),
        ],
    );
    let console_text =
        String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    assert!(
        o.status.success(),
        "{}\nconsole:\n{console_text}",
        describe(&o)
    );
    assert!(
        console_text.contains("BMAP-BOOT-OK"),
        "the guest did not read its fstab:\n{console_text}"
    );
    let lines = log_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("read f /dev/sda2 /etc/fstab")),
        "bmap serve did not log the guest's read of /etc/fstab: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("read d /dev/sda2 /etc")),
        "{lines:?}"
    );
}
