//! `bmap tui`: the real event loop driven by scripted keys on ratatui's
//! `TestBackend` (insta snapshots of each view), the grid's cells checked
//! against an independent computation from the `layout` view, the replay's
//! counters against `bmap replay --summary`, and the real binary in tmux.

mod common;
mod replay_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bmap_tui::app::{App, TraceSource};
use bmap_tui::{run_loop, ScriptedInput, Step};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use replay_common::{sample, Sample};

const BMAP: &str = env!("CARGO_BIN_EXE_bmap");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command that must succeed; its standard output.
fn run(cmd: &mut Command) -> String {
    replay_common::stdout(&common::run(cmd))
}

/// The shipped sample disk, indexed (`replay_common::sample`); with
/// `trace`, the shipped boot trace stored in the map too.
fn sample_map(trace: bool) -> Sample {
    let s = sample();
    if trace {
        run(Command::new(BMAP)
            .arg("replay")
            .arg(repo().join("sample-maps/boot.nbdkit.log"))
            .arg("--map")
            .arg(&s.map)
            .arg("--store"));
    }
    s
}

fn opener(map: &Path) -> bmap_tui::Opener {
    let map = map.to_path_buf();
    Arc::new(move || bmap::store::open(&map, false).map_err(|e| e.to_string()))
}

fn app(map: &Path) -> App {
    let mut app = App::new(opener(map), "sample.bmap".into(), TraceSource::None).expect("app");
    app.color = false;
    app
}

fn key(c: char) -> Step {
    Step::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn code(c: KeyCode) -> Step {
    Step::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn text(s: &str) -> Vec<Step> {
    s.chars().map(key).collect()
}

/// The screen as text, one line per row, trailing spaces trimmed.
fn screen(terminal: &Terminal<TestBackend>) -> String {
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf.cell((x, y)).map_or(" ", |c| c.symbol()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Runs the real loop on a `width`×`height` test terminal until the
/// script ends.
fn drive(app: &mut App, width: u16, height: u16, steps: Vec<Step>) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
    let mut all = vec![Step::Idle];
    all.extend(steps);
    all.push(Step::Idle);
    run_loop(&mut terminal, app, &mut ScriptedInput::new(all)).expect("loop");
    terminal
}

fn snapshot(name: &str, terminal: &Terminal<TestBackend>) {
    insta::with_settings!({ snapshot_path => repo().join("tests/snapshots"), prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, screen(terminal));
    });
}

#[test]
fn first_screen_at_80x24() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    let t = drive(&mut app, 80, 24, vec![]);
    snapshot("first_screen_80x24", &t);
    // The whole 64 MiB image is on the first screen, zoomed out.
    assert_eq!(app.top_row, 0);
    assert!(app.total_cells() <= app.cols * app.rows);
}

#[test]
fn zooming_in_and_moving_the_cursor_names_what_is_under_it() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    let cell0 = {
        drive(&mut app, 120, 40, vec![]);
        app.cell
    };
    let mut steps = text("++");
    steps.extend(text("jjjlll"));
    let t = drive(&mut app, 120, 40, steps);
    assert_eq!(app.cell, cell0 / 4);
    assert_eq!(app.cursor, 3 * app.cols + 3);
    snapshot("zoomed_cursor_120x40", &t);
    // Zoom bottoms out at one filesystem block per cell.
    drive(&mut app, 120, 40, text("++++++++++++++++++++++"));
    assert_eq!(app.cell, 1024, "the boot filesystem has 1 KiB blocks");
}

#[test]
fn the_status_line_names_the_objects_under_the_cursor_most_specific_first() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    let fstab: u64 = run(Command::new("sqlite3")
        .arg(&map)
        .arg("SELECT disk_offset FROM file_extents WHERE path = '/etc/fstab'"))
    .trim()
    .parse()
    .unwrap();
    let mut steps = vec![key('g')];
    steps.extend(text(&format!("{fstab:#x}")));
    steps.push(code(KeyCode::Enter));
    steps.extend(text("+++++++++++++++++"));
    let t = drive(&mut app, 120, 40, steps);
    let (start, end) = app.cursor_range();
    assert!(start <= fstab && fstab < end);
    let status = screen(&t);
    let last = status.lines().last().unwrap();
    assert!(
        last.starts_with(
            "file /dev/sda2 /etc/fstab ◂ /etc ◂ / ◂ /dev/sda2 ext4 ◂ /dev/sda2 ◂ /dev/sda"
        ),
        "{last}"
    );
}

#[test]
fn the_tree_opens_lazily_and_selecting_shows_details_and_extents() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    // Tree pane; /dev/sda1 is the first child of the disk; open it, then
    // its filesystem; select the kernel.
    let mut steps = vec![code(KeyCode::Tab), key('j'), code(KeyCode::Right), key('j')];
    steps.extend([code(KeyCode::Right), key('j'), code(KeyCode::Right)]);
    let before = app.tree.nodes.len();
    drive(&mut app, 100, 30, steps);
    assert!(app.tree.nodes.len() > before);
    let kernel = app
        .tree
        .nodes
        .iter()
        .position(|n| n.row.path.as_deref() == Some("/vmlinuz-6.1.0-sample"))
        .expect("the kernel is listed");
    let moves = kernel - app.tree.selected;
    let mut steps: Vec<Step> = (0..moves).map(|_| key('j')).collect();
    steps.push(code(KeyCode::Enter));
    let t = drive(&mut app, 100, 30, steps);
    snapshot("tree_kernel_selected_100x30", &t);
    let d = app.details.as_ref().expect("details");
    assert_eq!(d.object.path.as_deref(), Some("/vmlinuz-6.1.0-sample"));
    // Its extents are marked, and only cells its extents touch.
    let debugfs_blocks = run(Command::new("sqlite3")
        .arg(&map)
        .arg("SELECT sum(length) FROM file_extents WHERE path = '/vmlinuz-6.1.0-sample'"));
    assert_eq!(d.extents.allocated.to_string(), debugfs_blocks.trim());
    assert!(app.marks.contains(&bmap_tui::app::Mark::Selected));
}

#[test]
fn search_lists_matches_and_enter_jumps_to_the_file() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    let mut steps = vec![key('/')];
    steps.extend(text("TOOL0"));
    steps.push(code(KeyCode::Enter));
    steps.push(Step::Idle);
    steps.extend([key('j'), key('j'), code(KeyCode::Enter)]);
    let t = drive(&mut app, 100, 30, steps);
    snapshot("search_tool0_100x30", &t);
    let s = app.search.as_ref().expect("search");
    let expected = run(Command::new("sqlite3")
        .arg(&map)
        .arg("SELECT count(*) FROM names WHERE lower(path) LIKE '%tool0%'"));
    assert_eq!(s.results.len().to_string(), expected.trim());
    let d = app.details.as_ref().expect("jumped");
    assert_eq!(d.object.name, s.results[2].1);
    let first = run(Command::new("sqlite3").arg(&map).arg(format!(
        "SELECT min(disk_offset) FROM file_extents WHERE path = '{}'",
        d.object.path.as_deref().unwrap()
    )));
    let (start, end) = app.cursor_range();
    let first: u64 = first.trim().parse().unwrap();
    assert!(
        start <= first && first < end,
        "cursor on the file's first byte"
    );
}

#[test]
fn goto_takes_every_spelling_and_explains_mistakes() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    for spelling in ["16M", "0x1000000", "16777216", "32768s"] {
        let mut steps = vec![key('g')];
        steps.extend(text(spelling));
        steps.push(code(KeyCode::Enter));
        drive(&mut app, 80, 24, steps);
        let (start, end) = app.cursor_range();
        assert!(start <= 16 << 20 && 16 << 20 < end, "{spelling}");
    }
    let mut steps = vec![key('g')];
    steps.extend(text("1G"));
    steps.push(code(KeyCode::Enter));
    let t = drive(&mut app, 80, 24, steps);
    assert!(screen(&t).contains("is past the end of the image (64 MiB)"));
    let mut steps = vec![key('g')];
    steps.extend(text("12 parsecs"));
    steps.push(code(KeyCode::Enter));
    let t = drive(&mut app, 80, 24, steps);
    snapshot("goto_mistake_80x24", &t);
}

#[test]
fn help_opens_and_any_key_closes_it() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    let t = drive(&mut app, 80, 24, vec![key('?')]);
    snapshot("help_80x24", &t);
    assert!(app.help);
    drive(&mut app, 80, 24, vec![key('x')]);
    assert!(!app.help && !app.quit);
}

#[test]
fn q_quits_and_resizing_keeps_the_cursor() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = app(&map);
    drive(&mut app, 80, 24, text("+++jjjjl"));
    let (byte, _) = app.cursor_range();
    let t = drive(&mut app, 120, 40, vec![]);
    let (start, end) = app.cursor_range();
    assert!(start <= byte && byte < end, "the cursor stays on its bytes");
    snapshot("resized_120x40", &t);
    // Tiny terminals draw without panicking.
    for (w, h) in [(20, 8), (1, 1), (200, 3)] {
        drive(&mut app, w, h, text("jjll+-?x/a"));
        drive(
            &mut app,
            w,
            h,
            vec![code(KeyCode::Enter), Step::Idle, code(KeyCode::Esc)],
        );
    }
    drive(&mut app, 80, 24, vec![key('q')]);
    assert!(app.quit);
}

/// Each cell's kind, computed independently from the `layout` view: the
/// kind owning the most bytes of the cell (ties to the more specific).
#[test]
fn every_cell_shows_the_kind_owning_most_of_its_bytes_at_every_zoom() {
    let s = sample_map(false);
    let map = s.map.clone();
    let rows = run(Command::new("sqlite3")
        .arg(&map)
        .arg("SELECT start, end, kind FROM layout ORDER BY start"));
    let segments: Vec<(u64, u64, String)> = rows
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_string(),
            )
        })
        .collect();
    let mut app = app(&map);
    drive(&mut app, 100, 30, vec![]);
    let mut checked = 0;
    loop {
        let first = app.first_visible_byte();
        for (i, &kind) in app.cells.iter().enumerate() {
            let a = first + i as u64 * app.cell;
            let b = (a + app.cell).min(app.summary.image_size);
            if a >= b {
                assert_eq!(kind, bmap_tui::kinds::NONE);
                continue;
            }
            let mut bytes: std::collections::BTreeMap<&str, u64> = Default::default();
            for (s, e, k) in &segments {
                let (s, e) = ((*s).max(a), (*e).min(b));
                if s < e {
                    *bytes.entry(k.as_str()).or_default() += e - s;
                }
            }
            let most = bytes.values().copied().max().unwrap();
            let winners: Vec<&str> = bytes
                .iter()
                .filter(|(_, &v)| v == most)
                .map(|(k, _)| *k)
                .collect();
            let got = bmap_tui::kinds::name(kind);
            assert!(
                winners.contains(&got),
                "cell {a:#x}+{}: got {got}, want one of {winners:?}",
                app.cell
            );
            if winners.len() > 1 {
                let rank = |k: &str| bmap_tui::kinds::style(bmap_tui::kinds::id(k)).rank;
                assert_eq!(rank(got), winners.iter().map(|w| rank(w)).max().unwrap());
            }
            checked += 1;
        }
        if app.cell == 1024 {
            break;
        }
        // Zoom in on the middle of the root filesystem, where kinds mix.
        let mut steps = vec![key('g')];
        steps.extend(text("20M"));
        steps.push(code(KeyCode::Enter));
        steps.push(key('+'));
        drive(&mut app, 100, 30, steps);
    }
    assert!(checked > 5_000, "{checked} cells checked");
}

fn stored_trace_app(map: &Path) -> App {
    let mut app = App::new(opener(map), "sample.bmap".into(), TraceSource::None).expect("app");
    app.color = false;
    app
}

#[test]
fn a_stored_trace_replays_step_by_step() {
    let s = sample_map(true);
    let map = s.map.clone();
    let mut app = stored_trace_app(&map);
    let t = drive(&mut app, 120, 40, text(".........."));
    snapshot("replay_10_requests_120x40", &t);
    let state = app.replay.as_ref().expect("the stored trace is loaded");
    assert_eq!(state.shown, 10);
    drive(&mut app, 120, 40, text(",,,"));
    let state = app.replay.as_ref().unwrap();
    assert_eq!(state.shown, 7);
    // Counters kept step by step, both ways, equal counting afresh.
    assert_eq!(state.counters, state.replay.counters(7));
    drive(&mut app, 120, 40, text(">>>>,,<"));
    let state = app.replay.as_ref().unwrap();
    assert_eq!(state.counters, state.replay.counters(state.shown));
    // Play runs to the end on its own (the sample trace lasts 12 ms).
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
    let started = Instant::now();
    let mut steps = vec![key(' ')];
    // Idle steps let the clock run; the loop polls every 16 ms.
    steps.extend((0..50).map(|_| Step::Idle));
    run_loop(&mut terminal, &mut app, &mut ScriptedInput::new(steps)).unwrap();
    while app.playing() && started.elapsed() < Duration::from_secs(10) {
        run_loop(
            &mut terminal,
            &mut app,
            &mut ScriptedInput::new([Step::Idle]),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        app.tick(Instant::now());
    }
    let state = app.replay.as_ref().unwrap();
    assert_eq!(state.shown, state.replay.len());
    assert!(!state.playing);
}

/// At the end of the trace, the TUI's counters and files agree with `bmap
/// replay --summary --json` on the same trace.
#[test]
fn replay_counters_agree_with_bmap_replay() {
    let s = sample_map(true);
    let map = s.map.clone();
    let mut app = stored_trace_app(&map);
    drive(&mut app, 120, 40, vec![]);
    let n = app.replay.as_ref().unwrap().replay.len();
    let steps: Vec<Step> = (0..n).map(|_| key('.')).collect();
    drive(&mut app, 120, 40, steps);
    let state = app.replay.as_ref().unwrap();
    assert_eq!(state.shown, n);
    let json = run(Command::new(BMAP)
        .arg("replay")
        .arg(repo().join("sample-maps/boot.nbdkit.log"))
        .arg("--map")
        .arg(&map)
        .arg("--summary")
        .arg("--json"));
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    let bmap_kind = |name: &str| -> u64 {
        summary["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kind"] == name)
            .map(|k| k["bytes_read"].as_u64().unwrap())
            .sum()
    };
    let ours: std::collections::HashMap<&str, u64> = bmap_tui::replay::GROUPS
        .iter()
        .zip(state.counters.iter())
        .map(|(g, c)| (*g, c.0))
        .collect();
    assert_eq!(ours["file"], bmap_kind("file data"));
    assert_eq!(ours["directory"], bmap_kind("directories"));
    assert_eq!(ours["inode-table"], bmap_kind("inode tables"));
    assert_eq!(ours["partition tables"], bmap_kind("partition tables"));
    assert_eq!(
        ours["unmapped"],
        bmap_kind("unmapped (no filesystem object)")
    );
    assert_eq!(ours["free"], bmap_kind("free space"));
    let total: u64 = ours.values().sum();
    assert_eq!(total, summary["totals"]["bytes_read"].as_u64().unwrap());
    let files: Vec<String> = summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "file" || f["kind"] == "symlink")
        .map(|f| {
            format!(
                "{} {}",
                f["device"].as_str().unwrap(),
                f["path"].as_str().unwrap()
            )
        })
        .collect();
    let ours: Vec<String> = state.replay.first_reads[..state.files_read]
        .iter()
        .map(|(_, id)| state.replay.objects[id].name.clone())
        .collect();
    assert_eq!(ours, files, "files in first-access order");
}

/// The real binary in a real terminal (tmux): search, jump, quit, and the
/// terminal given back each way the program can end.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, command: &str) -> Tmux {
        // A fresh server per session: a new server on the socket of one
        // just killed can find it still shutting down.
        static SESSIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Tmux {
            socket: dir.join(format!("tmux-{n}.sock")),
        };
        let command = format!("{command}; echo $? > '{}'", t.status_file().display());
        t.run(&[
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            "-s",
            "tui",
            &command,
        ]);
        t.run(&["set-option", "-t", "tui", "remain-on-exit", "on"]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (tests/run.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "tui"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend(keys);
        self.run(&args);
    }

    fn wait_for(&self, what: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "waiting for {what:?}; pane: {}; screen:\n{s}",
                self.run(&["display-message", "-p", "-t", "tui", "dead=#{pane_dead} cmd=#{pane_current_command} pid=#{pane_pid} start=#{pane_start_command}"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the program to end; returns its exit status.
    /// Waits for the program to end; returns its exit status, which the
    /// wrapping shell writes to a file (tmux 3.3 does not always keep a
    /// dead pane's status).
    fn wait_exit(&self) -> i32 {
        let start = Instant::now();
        loop {
            if let Ok(status) = std::fs::read_to_string(self.status_file()) {
                if status.ends_with('\n') {
                    return status.trim().parse().unwrap_or(-1);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the TUI did not exit; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status_file(&self) -> PathBuf {
        self.socket.with_extension("status")
    }

    /// The pid of `bmap tui` itself: the child of the pane's shell.
    fn pid(&self) -> String {
        let shell = self.run(&["display-message", "-p", "-t", "tui", "#{pane_pid}"]);
        let shell = shell.trim();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        let pid = children
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(!pid.is_empty(), "no child of the pane's shell {shell}");
        pid
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

/// `bmap tui` under a shell that records how it ended (see
/// [`Tmux::wait_exit`]).
fn tui_command(map: &Path, extra: &str) -> String {
    format!("{BMAP} tui '{}' {extra}", map.display())
}

#[test]
fn in_tmux_search_jump_and_quit() {
    let s = sample_map(false);
    let (dir, map) = (&s.dir, s.map.clone());
    let t = Tmux::start(dir.path(), &tui_command(&map, ""));
    t.wait_for("Layout rows");
    t.wait_for("_ unpart");
    t.keys(&["/", "fstab", "Enter"]);
    t.wait_for("Search \"fstab\": 1 found");
    t.keys(&["Enter"]);
    t.wait_for("inode");
    // Zoomed in to one block, the cursor's cell is the file's alone.
    t.keys(&["+"; 12]);
    let s = t.wait_for("1 KiB/cell");
    assert!(s.contains("file /dev/sda2 /etc/fstab  inode"), "{s}");
    assert!(
        s.contains("file /dev/sda2 /etc/fstab ◂ /etc ◂ / ◂ /dev/sda2 ext4"),
        "{s}"
    );
    t.keys(&["q"]);
    assert_eq!(t.wait_exit(), 0);
    // The alternate screen is gone: the terminal is the user's again.
    assert!(!t.screen().contains("Layout rows"));
}

#[test]
fn in_tmux_ctrl_c_and_sigterm_give_the_terminal_back() {
    let s = sample_map(false);
    let (dir, map) = (&s.dir, s.map.clone());
    {
        let t = Tmux::start(dir.path(), &tui_command(&map, ""));
        t.wait_for("Layout rows");
        t.keys(&["C-c"]);
        assert_eq!(t.wait_exit(), 0);
        assert!(!t.screen().contains("Layout rows"));
    }
    let t = Tmux::start(dir.path(), &tui_command(&map, "--no-color"));
    t.wait_for("Layout rows");
    let pid = t.pid();
    run(Command::new("kill").arg("-TERM").arg(&pid));
    assert_eq!(t.wait_exit(), 0);
    assert!(!t.screen().contains("Layout rows"));
}

/// A closed terminal (an SSH session dropped, tmux killed) hangs the TUI
/// up; it must exit, not linger reading a dead terminal.
#[test]
fn in_tmux_a_hangup_ends_the_tui() {
    let s = sample_map(false);
    let (dir, map) = (&s.dir, s.map.clone());
    let t = Tmux::start(dir.path(), &tui_command(&map, ""));
    t.wait_for("Layout rows");
    let pid = t.pid();
    t.run(&["kill-server"]);
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let start = Instant::now();
    while proc_dir.join("status").exists() {
        let state = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
        if state.contains("State:\tZ") {
            break; // exited; its parent has not reaped it yet
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = Command::new("kill").arg("-9").arg(&pid).status();
            panic!("bmap tui {pid} still running 10 s after its terminal went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn in_tmux_a_trace_file_replays() {
    let s = sample_map(false);
    let (dir, map) = (&s.dir, s.map.clone());
    let trace = repo().join("sample-maps/boot.nbdkit.log");
    let t = Tmux::start(
        dir.path(),
        &tui_command(&map, &format!("--trace '{}'", trace.display())),
    );
    t.wait_for("Replay: boot.nbdkit.log");
    t.wait_for("request 0/53");
    t.keys(&["."; 53]);
    let s = t.wait_for("request 53/53");
    assert!(s.contains("Files read, in order: 10"), "{s}");
    assert!(s.contains("/dev/sda2 /var/log/boot.log"), "{s}");
    t.keys(&["q"]);
    assert_eq!(t.wait_exit(), 0);
}

#[test]
fn a_missing_trace_or_map_is_a_clear_error_before_the_screen_changes() {
    let s = sample_map(false);
    let map = s.map.clone();
    let out = Command::new(BMAP)
        .args(["tui"])
        .arg(&map)
        .args(["--trace", "no-such-trace"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-trace: no such trace file, and no trace of that name"),
        "{err}"
    );
    assert!(err.contains("the map has no stored traces"), "{err}");
    let out = Command::new(BMAP)
        .args(["tui", "/nonexistent.bmap"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such map file"));
}

#[test]
fn in_colour_each_kind_has_its_colour_and_the_glyphs_stay() {
    let s = sample_map(false);
    let map = s.map.clone();
    let mut app = App::new(opener(&map), "sample.bmap".into(), TraceSource::None).unwrap();
    assert!(app.color, "colour is the default");
    let t = drive(&mut app, 80, 24, vec![]);
    let buf = t.backend().buffer();
    let mut seen = std::collections::HashSet::new();
    let grid = bmap_tui::ui::areas(ratatui::layout::Rect::new(0, 0, 80, 24), &app).grid;
    for y in grid.y..grid.y + grid.height {
        for x in grid.x..grid.x + grid.width {
            let cell = buf.cell((x, y)).unwrap();
            let Some(glyph) = cell.symbol().chars().next() else {
                continue;
            };
            let Some(style) = bmap_tui::kinds::KINDS.iter().find(|k| k.glyph == glyph) else {
                continue;
            };
            if x == grid.x && y == grid.y {
                continue; // the cursor, reversed
            }
            assert_eq!(cell.bg, style.color, "{glyph} at {x},{y}");
            seen.insert(glyph);
        }
    }
    for glyph in ['f', 'i', 'j', '.', '_'] {
        assert!(seen.contains(&glyph), "{glyph} drawn in colour");
    }
}

/// The schema-4 views the TUI reads are plain SQL: the stock sqlite3 shell
/// reads them, and they agree with the tables and views they restate.
#[test]
fn the_browse_views_agree_with_the_tables() {
    let s = sample_map(true);
    let map = s.map.clone();
    let q = |sql: &str| run(Command::new("sqlite3").arg("-readonly").arg(&map).arg(sql));
    assert_eq!(
        q("SELECT sum(children) FROM object_tree"),
        q("SELECT count(*) FROM objects WHERE parent IS NOT NULL")
    );
    assert_eq!(
        q("SELECT count(*), sum(end - start) FROM layout_objects"),
        q("SELECT count(*), sum(end - start) FROM layout")
    );
    assert_eq!(
        q("SELECT group_concat(kind) FROM (SELECT l.kind FROM layout_objects l ORDER BY start)"),
        q("SELECT group_concat(kind) FROM (SELECT kind FROM layout ORDER BY start)")
    );
    assert_eq!(
        q("SELECT count(*), sum(length) FROM object_extents e JOIN objects o ON o.id = e.object_id WHERE o.kind = 'file'"),
        q("SELECT count(*), sum(length) FROM file_extents WHERE kind = 'file' AND path IN (SELECT path FROM objects WHERE kind = 'file')")
    );
    assert_eq!(
        q("SELECT count(*), sum(bytes) FROM trace_pieces"),
        q("SELECT count(*), sum(bytes) FROM accessed_objects")
    );
}
