//! Drawing. Everything here takes `&App`: rendering cannot change state,
//! and does no I/O — what it shows was computed when the state changed.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::app::{App, Focus, Mark, PromptKind};
use crate::kinds::{self, KINDS};
use crate::replay::GROUPS;
use crate::units::size;

/// Where each part of the screen goes.
pub struct Areas {
    pub title: Rect,
    pub map: Rect,
    /// The map's inside: one character per cell.
    pub grid: Rect,
    pub tree: Rect,
    pub files: Option<Rect>,
    pub details: Rect,
    pub replay: Option<Rect>,
    pub legend: Rect,
    pub status: Rect,
}

pub fn areas(screen: Rect, app: &App) -> Areas {
    let has_replay = app.replay.is_some() || app.trace_pending;
    let legend_height = legend_lines(app, screen.width).len().clamp(1, 3) as u16;
    let [title, body, details, replay, legend, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(5),
        Constraint::Length(if has_replay { 4 } else { 0 }),
        Constraint::Length(legend_height),
        Constraint::Length(2),
    ])
    .areas(screen);
    let side = (screen.width * 2 / 5).clamp(24, 48).min(screen.width / 2);
    let [map, sidebar] =
        Layout::horizontal([Constraint::Min(10), Constraint::Length(side)]).areas(body);
    let (tree, files) = if has_replay {
        let [t, f] = Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(sidebar);
        (t, Some(f))
    } else {
        (sidebar, None)
    };
    Areas {
        title,
        map,
        grid: Block::default().borders(Borders::ALL).inner(map),
        tree,
        files,
        details,
        replay: has_replay.then_some(replay),
        legend,
        status,
    }
}

pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let a = areas(frame.area(), app);
    draw_title(frame, app, a.title);
    draw_map(frame, app, a.map, a.grid);
    if app.search.is_some() {
        draw_results(frame, app, a.tree);
    } else {
        draw_tree(frame, app, a.tree);
    }
    if let Some(files) = a.files {
        draw_files(frame, app, files);
    }
    draw_details(frame, app, a.details);
    if let Some(r) = a.replay {
        draw_replay(frame, app, r);
    }
    frame.render_widget(Paragraph::new(legend_lines(app, a.legend.width)), a.legend);
    draw_status(frame, app, a.status);
    if app.help {
        draw_help(frame, frame.area());
    }
}

fn pane<'a>(title: String, focused: bool) -> Block<'a> {
    let style = if focused {
        Style::new().add_modifier(Modifier::BOLD)
    } else {
        Style::new().add_modifier(Modifier::DIM)
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(Span::styled(title, style))
}

fn draw_title(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let mut left = format!(
        " bmap · {} · {} · {}/cell",
        app.title,
        size(app.summary.image_size),
        size(app.cell)
    );
    if let Some((what, f)) = app.progress {
        left.push_str(&format!(" · {what} {:.0}%", f * 100.0));
    }
    let right = "? help  q quit ";
    let pad = usize::from(area.width).saturating_sub(left.chars().count() + right.len());
    let line = Line::from(vec![
        Span::styled(left, Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(" ".repeat(pad)),
        Span::raw(right),
    ]);
    frame.render_widget(
        Paragraph::new(line).style(Style::new().add_modifier(Modifier::REVERSED)),
        area,
    );
}

/// A cell's character and style: its kind, then any mark over it.
fn cell_look(app: &App, kind: kinds::KindId, mark: Mark) -> (char, Style) {
    if kind == kinds::NONE {
        return (' ', Style::new());
    }
    let k = kinds::style(kind);
    let (glyph, bg, extra) = match mark {
        Mark::None => (k.glyph, k.color, Modifier::empty()),
        Mark::Read => (':', k.color, Modifier::BOLD),
        Mark::Written => ('w', Color::LightRed, Modifier::BOLD),
        Mark::Selected => ('@', Color::White, Modifier::BOLD),
        Mark::Warm => ('+', Color::Yellow, Modifier::BOLD),
        Mark::Hot => ('#', Color::LightYellow, Modifier::BOLD),
    };
    let style = if app.color {
        Style::new().fg(Color::Black).bg(bg).add_modifier(extra)
    } else {
        Style::new().add_modifier(extra)
    };
    (glyph, style)
}

fn draw_map(frame: &mut Frame<'_>, app: &App, area: Rect, grid: Rect) {
    let total_rows = app.total_cells().div_ceil(app.cols.max(1));
    let title = format!(
        "Layout rows {}-{} of {}",
        app.top_row + 1,
        (app.top_row + app.rows).min(total_rows),
        total_rows
    );
    frame.render_widget(pane(title, app.focus == Focus::Map), area);
    if app.overview.is_none() {
        let text = match app.progress {
            Some((what, f)) => format!("{what}… {:.0}%", f * 100.0),
            None => "no layout".into(),
        };
        frame.render_widget(Paragraph::new(text), grid);
        return;
    }
    let buf: &mut Buffer = frame.buffer_mut();
    let first_cell = app.top_row * app.cols;
    for (i, (&kind, &mark)) in app.cells.iter().zip(&app.marks).enumerate() {
        let (col, row) = (i as u64 % app.cols, i as u64 / app.cols);
        if col >= u64::from(grid.width) || row >= u64::from(grid.height) {
            continue;
        }
        let (x, y) = (grid.x + col as u16, grid.y + row as u16);
        let (glyph, mut style) = cell_look(app, kind, mark);
        if first_cell + i as u64 == app.cursor {
            style = style.add_modifier(Modifier::REVERSED);
            if !app.color || kind == kinds::NONE {
                style = Style::new().add_modifier(Modifier::REVERSED);
            }
        }
        if let Some(cell) = buf.cell_mut((x, y)) {
            cell.set_char(glyph).set_style(style);
        }
    }
}

/// The tree's label for an object: the last path component for files and
/// directories, the name without its device for metadata.
fn label(row: &crate::mapdb::ObjectRow) -> String {
    if let Some(path) = &row.path {
        let base = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("/");
        return if row.kind == "directory" && base != "/" {
            format!("{base}/")
        } else {
            base.to_string()
        };
    }
    match (&row.device, row.kind.as_str()) {
        (Some(dev), k) if !matches!(k, "disk" | "partition" | "filesystem") => row
            .name
            .strip_prefix(dev.as_str())
            .map(|s| s.trim_start().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| row.name.clone()),
        _ => row.name.clone(),
    }
}

/// The first row of a window of `height` rows that shows `selected`.
fn window(selected: usize, height: usize) -> usize {
    if height == 0 {
        0
    } else {
        (selected + 1).saturating_sub(height)
    }
}

fn draw_tree(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let focused = app.focus == Focus::Tree;
    let mut title = "Objects".to_string();
    if app.tree.hidden > 0 {
        title.push_str(&format!(" ({} more: search)", app.tree.hidden));
    }
    let block = pane(title, focused);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let h = usize::from(inner.height);
    let top = window(app.tree.selected, h);
    let lines: Vec<Line> = app
        .tree
        .nodes
        .iter()
        .enumerate()
        .skip(top)
        .take(h)
        .map(|(i, n)| {
            let marker = if n.row.children == 0 {
                "  "
            } else if n.expanded {
                "▾ "
            } else {
                "▸ "
            };
            let indent = "  ".repeat(usize::from(n.depth.min(20)));
            let mut style = Style::new();
            if i == app.tree.selected {
                style = if focused {
                    style.add_modifier(Modifier::REVERSED)
                } else {
                    style.add_modifier(Modifier::UNDERLINED)
                };
            }
            let label = label(&n.row);
            // "inode-table group 3" needs no "inode-table" after it.
            let kind = if label.contains(n.row.kind.as_str()) {
                String::new()
            } else {
                format!(" {}", n.row.kind)
            };
            Line::from(vec![
                Span::styled(format!("{indent}{marker}{label}"), style),
                Span::styled(kind, Style::new().add_modifier(Modifier::DIM)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_results(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let Some(s) = &app.search else { return };
    let focused = app.focus == Focus::Results;
    let title = if s.pending {
        format!("Search \"{}\": searching…", s.query)
    } else if s.results.len() as u64 >= crate::worker::SEARCH_LIMIT {
        format!("Search \"{}\": first {}", s.query, s.results.len())
    } else {
        format!("Search \"{}\": {} found", s.query, s.results.len())
    };
    let block = pane(title, focused);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let h = usize::from(inner.height);
    let top = window(s.selected, h);
    let lines: Vec<Line> = s
        .results
        .iter()
        .enumerate()
        .skip(top)
        .take(h)
        .map(|(i, (_, path))| {
            let style = if i == s.selected && focused {
                Style::new().add_modifier(Modifier::REVERSED)
            } else {
                Style::new()
            };
            Line::styled(path.clone(), style)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_files(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let Some(state) = &app.replay else {
        frame.render_widget(pane("Files read".into(), false), area);
        return;
    };
    let n = state.files_read;
    let block = pane(format!("Files read, in order: {n}"), false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let h = usize::from(inner.height);
    let reads = &state.replay.first_reads[..n.min(state.replay.first_reads.len())];
    let start = reads.len().saturating_sub(h);
    let lines: Vec<Line> = reads[start..]
        .iter()
        .enumerate()
        .map(|(k, &(i, id))| {
            let name = state
                .replay
                .objects
                .get(&id)
                .map_or_else(|| format!("object {id}"), |o| o.name.clone());
            let age = state.shown.saturating_sub(i + 1);
            let style = if age < crate::app::HOT {
                Style::new().add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            };
            Line::styled(format!("{:>4} {name}", start + k + 1), style)
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_details(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let block = pane("Details".into(), false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(d) = &app.details else {
        let hint = "Enter selects the object under the cursor or in the tree · / search · g go to offset · Tab switch pane";
        frame.render_widget(
            Paragraph::new(hint)
                .style(Style::new().add_modifier(Modifier::DIM))
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    };
    let o = &d.object;
    let mut head = vec![
        Span::styled(
            format!("{} ", o.kind),
            Style::new().add_modifier(Modifier::BOLD),
        ),
        Span::raw(o.name.clone()),
    ];
    if let Some(inode) = o.inode {
        head.push(Span::raw(format!("  inode {inode}")));
    }
    if let Some(s) = o.size.and_then(|s| u64::try_from(s).ok()) {
        head.push(Span::raw(format!("  size {}", size(s))));
    }
    let e = &d.extents;
    let second = if e.count == 0 {
        "no extents of its own (its bytes are in the layout only)".to_string()
    } else {
        let contiguity = e.largest as f64 / e.allocated.max(1) as f64;
        format!(
            "allocated {} in {} extent{}; largest {}, contiguity {:.2}{}",
            size(e.allocated),
            e.count,
            if e.count == 1 { "" } else { "s" },
            size(e.largest),
            contiguity,
            if e.count > 1 { " (fragmented)" } else { "" }
        )
    };
    let mut extents = String::new();
    for x in &e.first {
        if !extents.is_empty() {
            extents.push_str("  ");
        }
        extents.push_str(&format!(
            "{} → {:#x} +{}",
            x.logical,
            x.disk,
            size(x.length)
        ));
    }
    if e.count > e.first.len() as u64 {
        extents.push_str(&format!("  … {} more", e.count - e.first.len() as u64));
    }
    let parents: Vec<String> = d.parents.iter().map(|p| p.name.clone()).collect();
    let lines = vec![
        Line::from(head),
        Line::raw(second),
        Line::raw(if extents.is_empty() {
            format!("in {}", parents.join(" ◂ "))
        } else {
            format!("extents (logical → disk): {extents}")
        }),
    ];
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_replay(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let Some(state) = &app.replay else {
        let text = match app.progress {
            Some((what, f)) if app.trace_pending => format!("{what}… {:.0}%", f * 100.0),
            _ => "loading the trace…".into(),
        };
        let block = pane("Replay".into(), false);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        frame.render_widget(Paragraph::new(text), inner);
        return;
    };
    let r = &state.replay;
    let block = pane(format!("Replay: {}", r.trace.name), false);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut first = format!(
        "{} {}×  request {}/{}  t=+{:.3}s",
        if state.playing {
            "▶ playing"
        } else {
            "❚❚ paused"
        },
        state.speed(),
        state.shown,
        r.len(),
        state.seconds()
    );
    if let Some(last) = state.shown.checked_sub(1) {
        if let Some(req) = r.trace.requests.get(last) {
            let op = match req.op {
                crate::replay::TraceOp::Read => "read",
                crate::replay::TraceOp::Write => "write",
                crate::replay::TraceOp::Other => "other",
            };
            let what = r
                .trace
                .pieces_of(last)
                .iter()
                .find_map(|p| p.object.and_then(|id| r.objects.get(&id)))
                .map_or("beyond the image".to_string(), |o| o.name.clone());
            first.push_str(&format!(
                "  {op} {:#x} +{}{} {what}",
                req.offset,
                size(req.length),
                if req.failed { " FAILED" } else { " →" }
            ));
        }
    }
    let mut counters = vec![Span::raw("read: ")];
    let mut written = 0u64;
    for (g, &(read, write)) in GROUPS.iter().zip(&state.counters) {
        written += write;
        if read > 0 {
            counters.push(Span::raw(format!("{g} {}  ", size(read))));
        }
    }
    if counters.len() == 1 {
        counters.push(Span::raw("nothing yet  "));
    }
    counters.push(Span::raw(format!("· written {}", size(written))));
    frame.render_widget(
        Paragraph::new(vec![Line::raw(first), Line::from(counters)]),
        inner,
    );
}

/// The legend, wrapped to `width`: one entry per glyph among the kinds the
/// map has, plus the replay's marks when a trace is loaded.
pub fn legend_lines(app: &App, width: u16) -> Vec<Line<'static>> {
    let present = app
        .overview
        .as_ref()
        .map_or([false; KINDS.len()], |o| o.present);
    let mut entries: Vec<(char, Style, String)> = kinds::legend(&present)
        .into_iter()
        .map(|(glyph, color, name)| {
            let style = if app.color {
                Style::new().fg(Color::Black).bg(color)
            } else {
                Style::new()
            };
            (glyph, style, name.to_string())
        })
        .collect();
    let mut marks = vec![('@', Mark::Selected, "selected")];
    if app.replay.is_some() {
        marks.extend([
            ('#', Mark::Hot, "just read"),
            ('+', Mark::Warm, "recent"),
            (':', Mark::Read, "read"),
            ('w', Mark::Written, "written"),
        ]);
    }
    for (glyph, mark, name) in marks {
        let (_, style) = cell_look(app, kinds::id("file"), mark);
        entries.push((glyph, style, name.to_string()));
    }
    let mut lines = Vec::new();
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut used = 0usize;
    for (glyph, style, name) in entries {
        let len = name.chars().count() + 4;
        if used > 0 && used + len > usize::from(width) {
            lines.push(Line::from(std::mem::take(&mut spans)));
            used = 0;
        }
        spans.push(Span::styled(glyph.to_string(), style));
        spans.push(Span::raw(format!(" {name}  ")));
        used += len;
    }
    if !spans.is_empty() {
        lines.push(Line::from(spans));
    }
    lines
}

fn draw_status(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let info = &app.cursor_info;
    let first = if let Some(p) = &app.prompt {
        let label = match p.kind {
            PromptKind::Search => "search paths: ",
            PromptKind::Goto => "go to offset (0x…, 1M, 2048s): ",
        };
        Line::from(vec![
            Span::styled(label, Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("{}▏", p.text)),
        ])
    } else if let Some(m) = &app.message {
        Line::styled(m.clone(), Style::new().add_modifier(Modifier::BOLD))
    } else {
        Line::raw(format!(
            "{:#x}-{:#x} ({})  cell {} of {}",
            info.start,
            info.end,
            size(info.end - info.start),
            app.cursor + 1,
            app.total_cells()
        ))
    };
    let mut objects = String::new();
    for (i, (kind, name, bytes)) in info.owners.iter().enumerate() {
        if i > 0 {
            objects.push_str(" | ");
        }
        // The kind where the name does not already say it.
        if name.contains(kind.as_str()) {
            objects.push_str(name);
        } else {
            objects.push_str(&format!("{kind} {name}"));
        }
        if info.owner_count > 1 {
            let span = (info.end - info.start).max(1);
            objects.push_str(&format!(" {:.0}%", *bytes as f64 * 100.0 / span as f64));
        }
    }
    let more = info.owner_count.saturating_sub(info.owners.len() as u64);
    if more > 0 {
        objects.push_str(&format!(
            " | {more}{} more",
            if info.capped { "+" } else { "" }
        ));
    }
    for (_, name) in &info.containers {
        objects.push_str(&format!(" ◂ {name}"));
    }
    frame.render_widget(Paragraph::new(vec![first, Line::raw(objects)]), area);
}

const HELP: &[(&str, &str)] = &[
    (
        "arrows hjkl",
        "move the cursor (map) or the selection (tree, results)",
    ),
    ("PgUp PgDn", "a page up or down; Home End: first or last"),
    ("+ -", "zoom in (down to one block per cell) or out"),
    ("Tab", "switch pane: map, objects tree, search results"),
    (
        "Enter",
        "select: the object under the cursor, or in the tree",
    ),
    ("→ ←", "tree: open or close an entry"),
    ("/", "search paths (substring, any case); Enter jumps"),
    ("g", "go to an offset: 1048576, 0x100000, 1M, 2048s"),
    ("space", "replay: play or pause"),
    (". ,", "replay: one request forward or back"),
    ("< >", "replay: 1% of the trace back or forward"),
    ("[ ]", "replay: slower or faster"),
    ("Esc", "clear the selection or close the search"),
    ("q Ctrl-C", "quit"),
];

fn draw_help(frame: &mut Frame<'_>, screen: Rect) {
    let width = screen.width.min(76);
    let height = (HELP.len() as u16 + 4).min(screen.height);
    let area = Rect::new(
        screen.x + (screen.width - width) / 2,
        screen.y + (screen.height - height) / 2,
        width,
        height,
    );
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>12}  "),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "any key closes this help",
        Style::new().add_modifier(Modifier::DIM),
    ));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("Keys")),
        area,
    );
}
