//! `bmap tui`: browse a disk image's map and watch a boot replay in the
//! terminal.
//!
//! The map (a SQLite file `bmap index` wrote) is the only input: every
//! query goes through the schema's public views ([`mapdb`]), slow work runs
//! on a [`worker`] thread, [`app`] holds the state and applies [`keys`]'
//! actions, and [`ui`] draws it from a read-only borrow. The event loop is
//! generic over the terminal backend and the input, so tests drive the
//! real loop with scripted keys on ratatui's `TestBackend`.
#![forbid(unsafe_code)]

pub mod app;
pub mod grid;
pub mod keys;
pub mod kinds;
pub mod mapdb;
pub mod replay;
pub mod ui;
pub mod units;
pub mod worker;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{self, Event, KeyEvent};
use ratatui::backend::Backend;
use ratatui::Terminal;

pub use app::{App, TraceSource};
pub use mapdb::Opener;
pub use replay::{TraceData, TraceLoader, TraceOp, TracePiece, TraceRequest};

/// What the loop gets from its input.
pub enum Input {
    Key(KeyEvent),
    Resize(u16, u16),
    /// Nothing happened within the timeout.
    Idle,
    /// The input is exhausted (scripted input only).
    End,
}

/// Where keys come from: the terminal, or a test's script.
pub trait InputSource {
    fn next(&mut self, timeout: Duration, app: &App) -> io::Result<Input>;
}

/// Keys from the real terminal, and a flag that a signal asked us to stop.
pub struct TerminalInput {
    pub interrupted: Arc<AtomicBool>,
}

impl InputSource for TerminalInput {
    fn next(&mut self, timeout: Duration, _app: &App) -> io::Result<Input> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Ok(Input::End);
        }
        if !event::poll(timeout)? {
            return Ok(Input::Idle);
        }
        Ok(match event::read()? {
            Event::Key(k) => Input::Key(k),
            Event::Resize(w, h) => Input::Resize(w, h),
            _ => Input::Idle,
        })
    }
}

/// A test's keys. [`Step::Idle`] waits until the worker has finished
/// whatever it was doing, so a snapshot never catches a half-loaded map.
pub enum Step {
    Key(KeyEvent),
    Resize(u16, u16),
    Idle,
}

pub struct ScriptedInput {
    pub steps: VecDeque<Step>,
}

impl ScriptedInput {
    pub fn new(steps: impl IntoIterator<Item = Step>) -> ScriptedInput {
        ScriptedInput {
            steps: steps.into_iter().collect(),
        }
    }
}

impl InputSource for ScriptedInput {
    fn next(&mut self, timeout: Duration, app: &App) -> io::Result<Input> {
        match self.steps.front() {
            None => Ok(Input::End),
            Some(Step::Idle) => {
                if app.busy() {
                    std::thread::sleep(timeout.min(Duration::from_millis(5)));
                } else {
                    self.steps.pop_front();
                }
                Ok(Input::Idle)
            }
            Some(_) => Ok(match self.steps.pop_front() {
                Some(Step::Key(k)) => Input::Key(k),
                Some(Step::Resize(w, h)) => Input::Resize(w, h),
                _ => Input::Idle,
            }),
        }
    }
}

/// The event loop: draw when something changed, then wait for input, the
/// worker or the next playback frame, whichever comes first.
pub fn run_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    input: &mut dyn InputSource,
) -> io::Result<()> {
    let size = terminal.size()?;
    app.resize(size.width, size.height);
    loop {
        app.poll_worker();
        app.tick(std::time::Instant::now());
        if app.take_dirty() {
            terminal.draw(|f| ui::draw(f, app))?;
        }
        if app.quit {
            return Ok(());
        }
        let timeout = if app.playing() {
            Duration::from_millis(16)
        } else if app.busy() {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(250)
        };
        match input.next(timeout, app)? {
            Input::Key(k) => {
                if let Some(action) = keys::action(app.mode(), k) {
                    app.apply(action);
                }
            }
            Input::Resize(w, h) => {
                terminal.autoresize()?;
                app.resize(w, h);
            }
            Input::Idle => {}
            Input::End => return Ok(()),
        }
    }
}

/// Puts the terminal back: raw mode off, main screen, cursor shown. Safe
/// to call twice (the panic hook and the normal exit both do).
pub fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Options of `bmap tui`.
pub struct Options {
    /// Shown in the title bar.
    pub title: String,
    pub trace: TraceSource,
    pub color: bool,
    /// Set by the caller's signal handler (SIGINT, SIGTERM, SIGHUP); the
    /// loop then ends at its next turn.
    pub interrupted: Arc<AtomicBool>,
}

/// Runs the TUI on the real terminal until the user quits.
pub fn run(opener: Opener, options: Options) -> Result<(), String> {
    let mut app = App::new(opener, options.title, options.trace)?;
    app.color = options.color;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    crossterm::terminal::enable_raw_mode().map_err(|e| format!("terminal: {e}"))?;
    let setup = crossterm::execute!(
        io::stdout(),
        crossterm::terminal::EnterAlternateScreen,
        crossterm::cursor::Hide
    );
    let result = setup.and_then(|_| {
        let backend = ratatui::backend::CrosstermBackend::new(io::stdout());
        let mut terminal = Terminal::new(backend)?;
        terminal.clear()?;
        let mut input = TerminalInput {
            interrupted: options.interrupted,
        };
        run_loop(&mut terminal, &mut app, &mut input)
    });
    restore_terminal();
    result.map_err(|e| format!("terminal: {e}"))
}
