//! The TUI's state and what each action does to it. Drawing reads this
//! state through `&App` ([`crate::ui`]); only [`App::apply`],
//! [`App::resize`], [`App::tick`] and [`App::poll_worker`] change it.

use std::time::Instant;

use crate::grid::{self, Overview};
use crate::keys::{Action, Mode};
use crate::kinds::{self, KindId};
use crate::mapdb::{ExtentSummary, MapDb, MapSummary, ObjectRow, Opener};
use crate::replay::{Replay, TraceLoader, GROUPS};
use crate::ui;
use crate::units;
use crate::worker::{Job, Report, Worker};

/// Where a replay comes from.
pub enum TraceSource {
    None,
    /// A trace file, parsed and joined with the map by the caller's loader.
    File(TraceLoader),
    /// A trace stored in the map by `bmap replay --store`.
    Stored(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Map,
    Tree,
    Results,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptKind {
    Search,
    Goto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub kind: PromptKind,
    pub text: String,
}

/// How a cell is marked over its kind's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    None,
    /// Read earlier in the replay.
    Read,
    Written,
    /// Read in the last few hundred requests.
    Warm,
    /// Read in the last few requests.
    Hot,
    /// An extent of the selected object: what the user asked to see wins.
    Selected,
}

/// A request is "hot" for this many requests after it, "warm" for
/// [`WARM`].
pub const HOT: usize = 16;
pub const WARM: usize = 512;

#[derive(Debug, Clone)]
pub struct TreeNode {
    pub row: ObjectRow,
    pub depth: u16,
    pub expanded: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub nodes: Vec<TreeNode>,
    pub selected: usize,
    /// Children not listed because a directory had more than
    /// [`CHILD_LIMIT`]; they are found with search.
    pub hidden: u64,
}

/// A directory with more entries than this lists only the first ones.
pub const CHILD_LIMIT: u64 = 5000;

#[derive(Debug, Clone)]
pub struct Details {
    pub object: ObjectRow,
    pub extents: ExtentSummary,
    pub parents: Vec<ObjectRow>,
}

#[derive(Debug, Clone, Default)]
pub struct CursorInfo {
    pub start: u64,
    pub end: u64,
    /// (kind, name, bytes in the cell), most bytes first.
    pub owners: Vec<(String, String, u64)>,
    pub owner_count: u64,
    pub capped: bool,
    /// The containers of the first owner, innermost first: (kind, name).
    pub containers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct SearchState {
    pub query: String,
    pub generation: u64,
    pub results: Vec<(i64, String)>,
    pub selected: usize,
    pub pending: bool,
}

pub const SPEEDS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 100.0, 1000.0, 10_000.0, 100_000.0,
];

pub struct ReplayState {
    pub replay: Replay,
    /// How many requests have been played.
    pub shown: usize,
    pub playing: bool,
    pub speed: usize,
    /// When playback (re)started, and the trace time it started from.
    clock: Option<(Instant, f64)>,
    pub counters: [(u64, u64); GROUPS.len()],
    pub files_read: usize,
}

impl ReplayState {
    pub fn speed(&self) -> f64 {
        SPEEDS[self.speed.min(SPEEDS.len() - 1)]
    }

    /// Trace seconds at the current position.
    pub fn seconds(&self) -> f64 {
        match self.shown {
            0 => 0.0,
            n => self.replay.seconds_of(n - 1),
        }
    }
}

pub struct App {
    pub title: String,
    pub summary: MapSummary,
    db: MapDb,
    worker: Worker,
    pub overview: Option<Overview>,
    /// Slow work under way: what and how far.
    pub progress: Option<(&'static str, f64)>,
    /// One line of feedback (an error, an offset out of range…).
    pub message: Option<String>,
    /// Bytes per cell, a power of two.
    pub cell: u64,
    pub cols: u64,
    pub rows: u64,
    pub top_row: u64,
    pub cursor: u64,
    /// The exact byte of the last jump (goto, search, tree).
    anchor: Option<u64>,
    pub cells: Vec<KindId>,
    pub marks: Vec<Mark>,
    pub focus: Focus,
    pub prompt: Option<Prompt>,
    pub help: bool,
    pub tree: Tree,
    pub details: Option<Details>,
    pub cursor_info: CursorInfo,
    pub search: Option<SearchState>,
    pub replay: Option<ReplayState>,
    /// Whether a trace is being loaded (so "no replay" is not final yet).
    pub trace_pending: bool,
    pub quit: bool,
    /// Off with `NO_COLOR` or `--no-color`: glyphs and bold/reverse only.
    pub color: bool,
    pub width: u16,
    pub height: u16,
    dirty: bool,
}

impl App {
    pub fn new(opener: Opener, title: String, trace: TraceSource) -> Result<App, String> {
        let db = MapDb::new(opener()?);
        let summary = db.summary().map_err(|e| format!("reading the map: {e}"))?;
        if summary.image_size == 0 {
            return Err("the map records no image size; is it a bmap map?".into());
        }
        let worker = Worker::start(opener);
        worker.send(Job::Overview {
            image_size: summary.image_size,
            min_cell: summary.min_block,
        });
        let trace_pending = match trace {
            TraceSource::File(loader) => {
                worker.send(Job::TraceFile(loader));
                true
            }
            TraceSource::Stored(name) => {
                worker.send(Job::StoredTrace(name));
                true
            }
            TraceSource::None => match summary.traces.last() {
                Some(name) => {
                    worker.send(Job::StoredTrace(name.clone()));
                    true
                }
                None => false,
            },
        };
        let mut app = App {
            title,
            summary,
            db,
            worker,
            overview: None,
            progress: Some(("reading the layout", 0.0)),
            message: None,
            cell: 0,
            cols: 1,
            rows: 1,
            top_row: 0,
            cursor: 0,
            anchor: None,
            cells: Vec::new(),
            marks: Vec::new(),
            focus: Focus::Map,
            prompt: None,
            help: false,
            tree: Tree::default(),
            details: None,
            cursor_info: CursorInfo::default(),
            search: None,
            replay: None,
            trace_pending,
            quit: false,
            color: true,
            width: 80,
            height: 24,
            dirty: true,
        };
        app.load_tree_roots();
        app.resize(80, 24);
        Ok(app)
    }

    pub fn mode(&self) -> Mode {
        if self.help {
            Mode::Help
        } else if self.prompt.is_some() {
            Mode::Prompt
        } else {
            Mode::Normal
        }
    }

    /// Work still running on the worker.
    pub fn busy(&self) -> bool {
        self.overview.is_none()
            || self.trace_pending
            || self.search.as_ref().is_some_and(|s| s.pending)
    }

    pub fn playing(&self) -> bool {
        self.replay.as_ref().is_some_and(|r| r.playing)
    }

    /// True once after anything visible changed.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    // ----- geometry -----

    pub fn total_cells(&self) -> u64 {
        self.summary.image_size.div_ceil(self.cell.max(1))
    }

    fn total_rows(&self) -> u64 {
        self.total_cells().div_ceil(self.cols.max(1))
    }

    /// The coarsest zoom: the whole image on one screen.
    fn max_cell(&self) -> u64 {
        let cells = (self.cols * self.rows).max(1);
        let want = self.summary.image_size.div_ceil(cells).max(self.min_cell());
        want.checked_next_power_of_two().unwrap_or(1 << 63)
    }

    fn min_cell(&self) -> u64 {
        self.summary.min_block.max(1)
    }

    pub fn first_visible_byte(&self) -> u64 {
        self.top_row
            .saturating_mul(self.cols)
            .saturating_mul(self.cell)
    }

    pub fn cursor_range(&self) -> (u64, u64) {
        let start = self.cursor.saturating_mul(self.cell);
        let end = start.saturating_add(self.cell).min(self.summary.image_size);
        (start, end)
    }

    pub fn resize(&mut self, width: u16, height: u16) {
        self.width = width;
        self.height = height;
        let areas = ui::areas(ratatui::layout::Rect::new(0, 0, width, height), self);
        let cursor_byte = self.cursor.saturating_mul(self.cell);
        self.cols = u64::from(areas.grid.width.max(1));
        self.rows = u64::from(areas.grid.height.max(1));
        let max = self.max_cell();
        if self.cell == 0 || self.cell > max {
            self.cell = max;
        }
        self.cursor = cursor_byte / self.cell;
        self.refresh_view();
    }

    fn set_cell(&mut self, cell: u64) {
        let cell = cell.clamp(self.min_cell(), self.max_cell());
        if cell == self.cell {
            return;
        }
        // Zooming in after a jump homes in on the byte jumped to.
        let (start, end) = self.cursor_range();
        let cursor_byte = self
            .anchor
            .filter(|b| (start..end).contains(b))
            .unwrap_or(start);
        self.cell = cell;
        self.cursor = cursor_byte / cell;
        // Keep the cursor's row where it was on screen, if possible.
        self.top_row = (self.cursor / self.cols).saturating_sub(self.rows / 2);
        self.refresh_view();
    }

    fn move_cursor(&mut self, delta: i64) {
        let last = self.total_cells().saturating_sub(1);
        let next = if delta < 0 {
            self.cursor.saturating_sub(delta.unsigned_abs())
        } else {
            self.cursor.saturating_add(delta as u64).min(last)
        };
        self.cursor_to(next);
    }

    fn cursor_to(&mut self, cell: u64) {
        self.cursor = cell.min(self.total_cells().saturating_sub(1));
        let row = self.cursor / self.cols.max(1);
        let old_top = self.top_row;
        if row < self.top_row {
            self.top_row = row;
        } else if row >= self.top_row + self.rows {
            self.top_row = row + 1 - self.rows;
        }
        if self.top_row != old_top {
            self.refresh_view();
        } else {
            self.update_cursor_info();
            self.dirty = true;
        }
    }

    fn cursor_to_byte(&mut self, byte: u64) {
        self.cursor_to(byte / self.cell.max(1));
        self.anchor = Some(byte);
    }

    /// Recomputes everything that depends on what is on screen.
    fn refresh_view(&mut self) {
        let max_top = self.total_rows().saturating_sub(self.rows);
        self.top_row = self.top_row.min(max_top);
        let row = self.cursor / self.cols.max(1);
        if row < self.top_row || row >= self.top_row + self.rows {
            self.top_row = row.saturating_sub(self.rows / 2).min(max_top);
        }
        self.compute_cells();
        self.compute_marks();
        self.update_cursor_info();
        self.dirty = true;
    }

    fn compute_cells(&mut self) {
        let n = (self.cols * self.rows) as usize;
        self.cells.clear();
        self.cells.resize(n, kinds::NONE);
        let first = self.first_visible_byte();
        let image_size = self.summary.image_size;
        match &self.overview {
            Some(o) if self.cell >= o.bucket => {
                o.fill(first, self.cell, &mut self.cells);
                // Cells past the end of the image stay empty.
                let total = self.total_cells();
                let first_cell = self.top_row * self.cols;
                for (i, c) in self.cells.iter_mut().enumerate() {
                    if first_cell + i as u64 >= total {
                        *c = kinds::NONE;
                    }
                }
            }
            Some(_) => {
                let end = first
                    .saturating_add(self.cell.saturating_mul(n as u64))
                    .min(image_size);
                let mut segments = Vec::new();
                let read = self
                    .db
                    .segments_in(first, end, &mut |s, e, k| segments.push((s, e, k)));
                if let Err(e) = read {
                    self.message = Some(format!("reading the layout: {e}"));
                }
                grid::fill_from_segments(first, self.cell, image_size, &segments, &mut self.cells);
            }
            None => {}
        }
    }

    fn visible_range(&self) -> (u64, u64) {
        let first = self.first_visible_byte();
        let end = first
            .saturating_add(self.cell.saturating_mul(self.cols * self.rows))
            .min(self.summary.image_size);
        (first, end)
    }

    /// Marks the cells of the visible range that `[a, b)` covers.
    fn mark_range(&mut self, a: u64, b: u64, mark: Mark) {
        let (first, end) = self.visible_range();
        let (a, b) = (a.max(first), b.min(end));
        if a >= b {
            return;
        }
        let lo = ((a - first) / self.cell) as usize;
        let hi = ((b - 1 - first) / self.cell) as usize;
        for m in self.marks.iter_mut().take(hi + 1).skip(lo) {
            if mark > *m {
                *m = mark;
            }
        }
    }

    fn compute_marks(&mut self) {
        let n = (self.cols * self.rows) as usize;
        self.marks.clear();
        self.marks.resize(n, Mark::None);
        let (first, end) = self.visible_range();
        if let Some(d) = &self.details {
            let id = d.object.id;
            match self.db.extents_in(id, first, end, 100_000) {
                Ok(ranges) => {
                    for r in ranges {
                        self.mark_range(r.start, r.end, Mark::Selected);
                    }
                }
                Err(e) => self.message = Some(format!("reading extents: {e}")),
            }
        }
        let Some(state) = &self.replay else { return };
        let shown = state.shown;
        let touches: Vec<_> = state.replay.touching(shown, first, end).collect();
        for (i, range, op) in touches {
            let age = shown - 1 - i;
            let mark = match op {
                crate::replay::TraceOp::Write => Mark::Written,
                _ if age < HOT => Mark::Hot,
                _ if age < WARM => Mark::Warm,
                _ => Mark::Read,
            };
            self.mark_range(range.start, range.end, mark);
        }
    }

    fn update_cursor_info(&mut self) {
        let (start, end) = self.cursor_range();
        let mut info = CursorInfo {
            start,
            end,
            ..CursorInfo::default()
        };
        match self.db.owners(start, end, 10_000) {
            Ok(owners) => {
                info.owner_count = owners.count;
                info.capped = owners.capped;
                for (i, &(id, bytes)) in owners.top.iter().enumerate() {
                    let chain = self.db.chain(id).unwrap_or_default();
                    let Some(first) = chain.first() else { continue };
                    info.owners
                        .push((first.kind.clone(), first.name.clone(), bytes));
                    if i == 0 {
                        // Directories by path: their device is the file's.
                        info.containers = chain[1..]
                            .iter()
                            .map(|o| {
                                let label = match (&o.path, o.kind.as_str()) {
                                    (Some(p), "directory") => p.clone(),
                                    _ => o.name.clone(),
                                };
                                (o.kind.clone(), label)
                            })
                            .collect();
                    }
                }
            }
            Err(e) => self.message = Some(format!("looking up the cursor: {e}")),
        }
        self.cursor_info = info;
    }

    // ----- tree -----

    fn load_tree_roots(&mut self) {
        match self.db.children(None, CHILD_LIMIT) {
            Ok(rows) => {
                self.tree.nodes = rows
                    .into_iter()
                    .map(|row| TreeNode {
                        row,
                        depth: 0,
                        expanded: false,
                    })
                    .collect();
                // The disk is always worth opening: it shows the partitions.
                if self.tree.nodes.len() == 1 {
                    self.expand(0);
                }
            }
            Err(e) => self.message = Some(format!("reading the object tree: {e}")),
        }
    }

    fn expand(&mut self, index: usize) {
        let Some(node) = self.tree.nodes.get(index) else {
            return;
        };
        if node.expanded || node.row.children == 0 {
            return;
        }
        let (id, depth, total) = (node.row.id, node.depth, node.row.children);
        match self.db.children(Some(id), CHILD_LIMIT) {
            Ok(rows) => {
                self.tree.hidden += u64::try_from(total)
                    .unwrap_or(0)
                    .saturating_sub(rows.len() as u64);
                let new = rows.into_iter().map(|row| TreeNode {
                    row,
                    depth: depth.saturating_add(1),
                    expanded: false,
                });
                self.tree.nodes.splice(index + 1..index + 1, new);
                self.tree.nodes[index].expanded = true;
            }
            Err(e) => self.message = Some(format!("reading the object tree: {e}")),
        }
        self.dirty = true;
    }

    fn collapse(&mut self, index: usize) {
        let Some(node) = self.tree.nodes.get(index) else {
            return;
        };
        let depth = node.depth;
        let end = self.tree.nodes[index + 1..]
            .iter()
            .position(|n| n.depth <= depth)
            .map_or(self.tree.nodes.len(), |p| index + 1 + p);
        self.tree.nodes.drain(index + 1..end);
        self.tree.nodes[index].expanded = false;
        if self.tree.selected > index && self.tree.selected < end {
            self.tree.selected = index;
        }
        self.dirty = true;
    }

    /// Opens the tree down to `chain` (innermost first) and selects it.
    fn reveal(&mut self, chain: &[ObjectRow]) {
        let mut index: Option<usize> = None;
        for object in chain.iter().rev() {
            let from = index.map_or(0, |i| i + 1);
            let found = self.tree.nodes[from.min(self.tree.nodes.len())..]
                .iter()
                .position(|n| n.row.id == object.id)
                .map(|p| from + p);
            let Some(i) = found else { return };
            if object.id != chain[0].id {
                self.expand(i);
            }
            index = Some(i);
        }
        if let Some(i) = index {
            self.tree.selected = i;
        }
    }

    fn tree_move(&mut self, delta: i64) {
        let last = self.tree.nodes.len().saturating_sub(1);
        let next = if delta < 0 {
            self.tree
                .selected
                .saturating_sub(delta.unsigned_abs() as usize)
        } else {
            (self.tree.selected + delta as usize).min(last)
        };
        if next != self.tree.selected {
            self.tree.selected = next;
            if let Some(id) = self.tree.nodes.get(next).map(|n| n.row.id) {
                self.select(id, false);
            }
        }
    }

    // ----- selection -----

    /// Shows `id` in the details pane and marks its extents; with `jump`,
    /// also moves the map to its first byte and the tree to it.
    fn select(&mut self, id: i64, jump: bool) {
        let object = match self.db.object(id) {
            Ok(Some(o)) => o,
            Ok(None) => {
                self.message = Some(format!("object {id} is not in the map"));
                return;
            }
            Err(e) => {
                self.message = Some(format!("reading object {id}: {e}"));
                return;
            }
        };
        let extents = self.db.extents(id, 8).unwrap_or_default();
        let chain = self.db.chain(id).unwrap_or_default();
        let parents = chain.iter().skip(1).cloned().collect();
        self.details = Some(Details {
            object,
            extents,
            parents,
        });
        if jump {
            self.reveal(&chain);
            if let Ok(Some(byte)) = self.db.first_byte(id) {
                self.cursor_to_byte(byte);
            }
        }
        self.compute_marks();
        self.dirty = true;
    }

    // ----- replay -----

    fn set_shown(&mut self, shown: usize) {
        let Some(state) = &mut self.replay else {
            return;
        };
        let shown = shown.min(state.replay.len());
        if shown == state.shown {
            return;
        }
        if shown > state.shown {
            state
                .replay
                .count(state.shown..shown, &mut state.counters, true);
        } else {
            state
                .replay
                .count(shown..state.shown, &mut state.counters, false);
        }
        state.shown = shown;
        state.files_read = state.replay.files_read(shown);
        self.compute_marks();
        self.dirty = true;
    }

    fn step(&mut self, delta: i64) {
        let Some(state) = &mut self.replay else {
            self.message = Some(
                "no trace: start with --trace FILE, or store one with bmap replay --store".into(),
            );
            self.dirty = true;
            return;
        };
        state.playing = false;
        state.clock = None;
        let shown = if delta < 0 {
            state.shown.saturating_sub(delta.unsigned_abs() as usize)
        } else {
            state.shown.saturating_add(delta as usize)
        };
        self.set_shown(shown);
        self.dirty = true;
    }

    fn play_pause(&mut self) {
        let Some(state) = &mut self.replay else {
            self.step(0);
            return;
        };
        if state.playing {
            state.playing = false;
            state.clock = None;
        } else {
            if state.shown >= state.replay.len() {
                state.shown = 0;
            }
            state.playing = true;
            state.clock = Some((Instant::now(), state.seconds()));
        }
        let shown = state.shown;
        state.counters = state.replay.counters(shown);
        state.files_read = state.replay.files_read(shown);
        self.compute_marks();
        self.dirty = true;
    }

    fn change_speed(&mut self, faster: bool) {
        let Some(state) = &mut self.replay else {
            return;
        };
        state.speed = if faster {
            (state.speed + 1).min(SPEEDS.len() - 1)
        } else {
            state.speed.saturating_sub(1)
        };
        if state.playing {
            state.clock = Some((Instant::now(), state.seconds()));
        }
        self.dirty = true;
    }

    /// Advances playback to `now`.
    pub fn tick(&mut self, now: Instant) {
        let Some(state) = &mut self.replay else {
            return;
        };
        let Some((started, from)) = state.clock else {
            return;
        };
        if !state.playing {
            return;
        }
        let seconds = from + now.saturating_duration_since(started).as_secs_f64() * state.speed();
        let shown = state.replay.shown_at(seconds).max(state.shown);
        if shown >= state.replay.len() {
            state.playing = false;
            state.clock = None;
            self.dirty = true;
        }
        self.set_shown(shown);
    }

    // ----- the worker -----

    pub fn poll_worker(&mut self) {
        while let Ok(report) = self.worker.reports.try_recv() {
            self.dirty = true;
            match report {
                Report::Progress { what, fraction } => self.progress = Some((what, fraction)),
                Report::Overview(o) => {
                    self.overview = Some(*o);
                    self.progress = None;
                    self.refresh_view();
                }
                Report::Replay(replay) => {
                    self.trace_pending = false;
                    self.progress = None;
                    let counters = replay.counters(0);
                    self.replay = Some(ReplayState {
                        replay: *replay,
                        shown: 0,
                        playing: false,
                        speed: 3,
                        clock: None,
                        counters,
                        files_read: 0,
                    });
                    // The replay pane takes room from the map.
                    self.resize(self.width, self.height);
                }
                Report::Search {
                    generation,
                    results,
                } => {
                    if let Some(s) = &mut self.search {
                        if s.generation == generation {
                            s.results = results;
                            s.selected = 0;
                            s.pending = false;
                        }
                    }
                }
                Report::Failed { what, message } => {
                    self.progress = None;
                    if what.contains("trace") || what.contains("joining") {
                        self.trace_pending = false;
                    }
                    if let Some(s) = &mut self.search {
                        s.pending = false;
                    }
                    self.message = Some(format!("{what}: {message}"));
                }
            }
        }
    }

    // ----- actions -----

    pub fn apply(&mut self, action: Action) {
        self.dirty = true;
        if self.help {
            self.help = false;
            if action == Action::Quit {
                self.quit = true;
            }
            return;
        }
        if self.prompt.is_some() {
            self.apply_prompt(action);
            return;
        }
        let page = (self.cols * self.rows.saturating_sub(1).max(1)) as i64;
        let tree_page = i64::from(self.height / 2).max(1);
        match (action, self.focus) {
            (Action::Quit, _) => self.quit = true,
            (Action::Help, _) => self.help = true,
            (Action::NextPane, _) => {
                // Search results take the tree's place on screen.
                self.focus = match self.focus {
                    Focus::Map if self.search.is_some() => Focus::Results,
                    Focus::Map => Focus::Tree,
                    _ => Focus::Map,
                };
            }
            (Action::ZoomIn, _) => self.set_cell(self.cell / 2),
            (Action::ZoomOut, _) => self.set_cell(self.cell.saturating_mul(2)),
            (Action::Search, _) => {
                self.prompt = Some(Prompt {
                    kind: PromptKind::Search,
                    text: self
                        .search
                        .as_ref()
                        .map(|s| s.query.clone())
                        .unwrap_or_default(),
                })
            }
            (Action::Goto, _) => {
                self.prompt = Some(Prompt {
                    kind: PromptKind::Goto,
                    text: String::new(),
                })
            }
            (Action::PlayPause, _) => self.play_pause(),
            (Action::StepForward, _) => self.step(1),
            (Action::StepBack, _) => self.step(-1),
            (Action::JumpForward | Action::JumpBack, _) => {
                let len = self.replay.as_ref().map_or(0, |r| r.replay.len());
                let jump = (len / 100).max(1) as i64;
                self.step(if action == Action::JumpBack {
                    -jump
                } else {
                    jump
                });
            }
            (Action::Slower, _) => self.change_speed(false),
            (Action::Faster, _) => self.change_speed(true),

            (Action::Up, Focus::Map) => self.move_cursor(-(self.cols as i64)),
            (Action::Down, Focus::Map) => self.move_cursor(self.cols as i64),
            (Action::Left, Focus::Map) => self.move_cursor(-1),
            (Action::Right, Focus::Map) => self.move_cursor(1),
            (Action::PageUp, Focus::Map) => self.move_cursor(-page),
            (Action::PageDown, Focus::Map) => self.move_cursor(page),
            (Action::Home, Focus::Map) => self.cursor_to(0),
            (Action::End, Focus::Map) => self.cursor_to(u64::MAX),
            (Action::Select, Focus::Map) => {
                if let Some(id) = self
                    .db
                    .owners(self.cursor_range().0, self.cursor_range().1, 10_000)
                    .ok()
                    .and_then(|o| o.top.first().map(|t| t.0))
                {
                    let chain = self.db.chain(id).unwrap_or_default();
                    self.reveal(&chain);
                    self.select(id, false);
                }
            }
            (Action::Back, Focus::Map) => {
                self.details = None;
                self.message = None;
                self.compute_marks();
            }

            (Action::Up, Focus::Tree) => self.tree_move(-1),
            (Action::Down, Focus::Tree) => self.tree_move(1),
            (Action::PageUp, Focus::Tree) => self.tree_move(-tree_page),
            (Action::PageDown, Focus::Tree) => self.tree_move(tree_page),
            (Action::Home, Focus::Tree) => self.tree_move(i64::MIN / 2),
            (Action::End, Focus::Tree) => self.tree_move(i64::MAX / 2),
            (Action::Right, Focus::Tree) => self.expand(self.tree.selected),
            (Action::Left | Action::Back, Focus::Tree) => {
                let i = self.tree.selected;
                match self.tree.nodes.get(i) {
                    Some(n) if n.expanded => self.collapse(i),
                    Some(n) => {
                        // Go to the parent, as file managers do.
                        let depth = n.depth;
                        if let Some(p) = self.tree.nodes[..i].iter().rposition(|p| p.depth < depth)
                        {
                            self.tree.selected = p;
                        }
                    }
                    None => {}
                }
            }
            (Action::Select, Focus::Tree) => {
                let i = self.tree.selected;
                if let Some(id) = self.tree.nodes.get(i).map(|n| n.row.id) {
                    self.expand(i);
                    self.select(id, true);
                }
            }

            (Action::Up, Focus::Results) => self.results_move(-1),
            (Action::Down, Focus::Results) => self.results_move(1),
            (Action::PageUp, Focus::Results) => self.results_move(-tree_page),
            (Action::PageDown, Focus::Results) => self.results_move(tree_page),
            (Action::Select | Action::Right, Focus::Results) => {
                let hit = self
                    .search
                    .as_ref()
                    .and_then(|s| s.results.get(s.selected).map(|r| r.0));
                if let Some(id) = hit {
                    self.select(id, true);
                }
            }
            (Action::Back | Action::Left, Focus::Results) => {
                self.search = None;
                self.focus = Focus::Map;
                self.resize(self.width, self.height);
            }
            _ => {}
        }
    }

    fn results_move(&mut self, delta: i64) {
        if let Some(s) = &mut self.search {
            let last = s.results.len().saturating_sub(1);
            s.selected = if delta < 0 {
                s.selected.saturating_sub(delta.unsigned_abs() as usize)
            } else {
                (s.selected + delta as usize).min(last)
            };
        }
    }

    fn apply_prompt(&mut self, action: Action) {
        let Some(prompt) = &mut self.prompt else {
            return;
        };
        match action {
            Action::Quit => self.quit = true,
            Action::Type(c) => prompt.text.push(c),
            Action::Erase => {
                prompt.text.pop();
            }
            Action::Cancel => self.prompt = None,
            Action::Submit => {
                let Some(prompt) = self.prompt.take() else {
                    return;
                };
                match prompt.kind {
                    PromptKind::Goto => self.goto(&prompt.text),
                    PromptKind::Search => self.start_search(prompt.text),
                }
            }
            _ => {}
        }
    }

    fn goto(&mut self, text: &str) {
        match units::parse_offset(text) {
            Ok(byte) if byte < self.summary.image_size => {
                self.message = None;
                self.focus = Focus::Map;
                self.cursor_to_byte(byte);
            }
            Ok(byte) => {
                self.message = Some(format!(
                    "offset {byte:#x} is past the end of the image ({})",
                    units::size(self.summary.image_size)
                ))
            }
            Err(e) => self.message = Some(e),
        }
    }

    fn start_search(&mut self, query: String) {
        if query.is_empty() {
            return;
        }
        let generation = self.search.as_ref().map_or(0, |s| s.generation) + 1;
        self.worker.send(Job::Search {
            generation,
            needle: query.clone(),
        });
        self.search = Some(SearchState {
            query,
            generation,
            results: Vec::new(),
            selected: 0,
            pending: true,
        });
        self.focus = Focus::Results;
        self.message = None;
    }
}
