//! Times `bmap tui`'s own work on a map: the first frame, the full map,
//! redraws while moving the cursor and scrolling, redraws while a replay
//! plays, and peak memory. Frames go through crossterm's real escape-code
//! writer into a byte sink, on a fixed 120×40 viewport.
//!
//! Usage: tui_bench MAP [--width W] [--height H]
//! (bench/tui.sh runs it on the index benchmark's 200,000-file map.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bmap_tui::app::{App, TraceSource};
use bmap_tui::keys::Action;
use ratatui::backend::CrosstermBackend;
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

type Term = Terminal<CrosstermBackend<std::io::Sink>>;

fn draw(terminal: &mut Term, app: &App) {
    terminal.draw(|f| bmap_tui::ui::draw(f, app)).expect("draw");
}

fn stats(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    if n == 0 {
        return;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<34} n={n:<5} median {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        ms(samples[n / 2]),
        ms(samples[(n * 99 / 100).min(n - 1)]),
        ms(samples[n - 1])
    );
}

/// Applies `action` and redraws, `n` times; returns each round's time.
fn rounds(
    terminal: &mut Term,
    app: &mut App,
    n: usize,
    mut action: impl FnMut(usize) -> Action,
) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            app.apply(action(i));
            app.poll_worker();
            if app.take_dirty() {
                draw(terminal, app);
            }
            t.elapsed()
        })
        .collect()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let start = Instant::now();
    let mut args = std::env::args().skip(1);
    let map = std::path::PathBuf::from(args.next().expect("usage: tui_bench MAP"));
    let (mut width, mut height) = (120u16, 40u16);
    while let Some(a) = args.next() {
        let v = args.next().and_then(|v| v.parse().ok()).expect("a number");
        match a.as_str() {
            "--width" => width = v,
            "--height" => height = v,
            _ => panic!("unknown option {a}"),
        }
    }
    let path = map.clone();
    let opener: bmap_tui::Opener =
        Arc::new(move || bmap::store::open(&path, false).map_err(|e| e.to_string()));
    let mut app = App::new(opener, "bench".into(), TraceSource::None).expect("open the map");
    let mut terminal = Terminal::with_options(
        CrosstermBackend::new(std::io::sink()),
        TerminalOptions {
            viewport: Viewport::Fixed(Rect::new(0, 0, width, height)),
        },
    )
    .expect("terminal");
    app.resize(width, height);
    draw(&mut terminal, &app);
    let first_frame = start.elapsed();
    while app.busy() {
        std::thread::sleep(Duration::from_millis(1));
        app.poll_worker();
    }
    app.take_dirty();
    draw(&mut terminal, &app);
    let ready = start.elapsed();
    println!("map                                {}", map.display());
    println!(
        "first frame (progress shown)       {:.1} ms",
        first_frame.as_secs_f64() * 1e3
    );
    println!(
        "whole map drawn{}           {:.1} ms",
        if app.replay.is_some() {
            " + trace loaded"
        } else {
            "                "
        },
        ready.as_secs_f64() * 1e3
    );

    // Cursor moves on the whole-disk view: right along rows, down a row
    // every 40 moves.
    let moves = rounds(&mut terminal, &mut app, 2000, |i| {
        if i % 40 == 39 {
            Action::Down
        } else {
            Action::Right
        }
    });
    stats("cursor move, zoomed out", moves);
    // Page through a middle zoom and the finest zoom, where cells come from
    // the map's segments rather than the overview.
    for zoom_ins in [6, 30] {
        for _ in 0..zoom_ins {
            app.apply(Action::ZoomIn);
        }
        app.take_dirty();
        stats(
            &format!("page down, {} KiB/cell", app.cell / 1024),
            rounds(&mut terminal, &mut app, 300, |_| Action::PageDown),
        );
        stats(
            &format!("cursor move, {} KiB/cell", app.cell / 1024),
            rounds(&mut terminal, &mut app, 1000, |i| {
                if i % 2 == 0 {
                    Action::Right
                } else {
                    Action::Down
                }
            }),
        );
    }
    for _ in 0..40 {
        app.apply(Action::ZoomOut);
    }
    app.take_dirty();

    if let Some(n) = app.replay.as_ref().map(|r| r.replay.len()) {
        println!("trace requests                     {n}");
        // Step through the first 1,000 requests, then 1% jumps to the end.
        stats(
            "replay step (.)",
            rounds(&mut terminal, &mut app, 1000, |_| Action::StepForward),
        );
        stats(
            "replay jump (>)",
            rounds(&mut terminal, &mut app, 100, |_| Action::JumpForward),
        );
        // Play from the start at 100,000× (the trace's whole timeline in
        // seconds), timing each frame's tick and redraw.
        app.apply(Action::JumpBack);
        while app.replay.as_ref().is_some_and(|r| r.shown > 0) {
            app.apply(Action::JumpBack);
        }
        // A speed at which the whole trace plays in a few seconds.
        let duration = app
            .replay
            .as_ref()
            .map_or(0.0, |r| r.replay.seconds_of(n.saturating_sub(1)));
        for _ in 0..20 {
            app.apply(Action::Slower);
        }
        while app
            .replay
            .as_ref()
            .is_some_and(|r| duration / r.speed() > 8.0)
        {
            let before = app.replay.as_ref().map(|r| r.speed);
            app.apply(Action::Faster);
            if app.replay.as_ref().map(|r| r.speed) == before {
                break;
            }
        }
        println!("trace duration                     {duration:.1} s");
        app.apply(Action::PlayPause);
        let speed = app.replay.as_ref().map_or(0.0, |r| r.speed());
        let mut frames = Vec::new();
        let play_start = Instant::now();
        while app.playing() && play_start.elapsed() < Duration::from_secs(20) {
            let t = Instant::now();
            app.tick(Instant::now());
            if app.take_dirty() {
                draw(&mut terminal, &app);
            }
            frames.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(16));
        }
        let shown = app.replay.as_ref().map_or(0, |r| r.shown);
        stats(&format!("replay frame, playing at {speed}×"), frames);
        println!(
            "played {shown} of {n} requests in {:.1} s",
            play_start.elapsed().as_secs_f64()
        );
    }
    println!(
        "peak RSS                           {} MiB",
        peak_rss_kib() / 1024
    );
}
