//! Pictures of a map as SVG: the layout (a linear strip of the partitions
//! above a grid of equal cells coloured by the kind owning most of each
//! cell's bytes, as `bmap tui` draws it), and a trace's accesses over time
//! (offset against time, like seekwatcher and iowatcher, coloured by kind).
//!
//! Everything here turns plain data into a string; reading the map and
//! the trace is the command's business.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

use bmap_tui::kinds::{self, KindId};

use crate::units::human;

/// A partition (or any labelled range) drawn on the strip above the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub label: String,
    pub start: u64,
    pub end: u64,
}

/// The colour of a kind in the pictures: the TUI's colour, as RGB.
pub fn color(kind: KindId) -> &'static str {
    kinds::rgb(kind)
}

/// XML-escapes text for an attribute or element.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn legend(svg: &mut String, present: &BTreeSet<KindId>, x: f64, y: f64, width: f64) -> f64 {
    let (mut cx, mut cy) = (x, y);
    let _ = writeln!(svg, r#"<g class="legend">"#);
    for &k in present {
        let name = kinds::name(k);
        let w = 22.0 + 7.0 * name.len() as f64;
        if cx + w > x + width && cx > x {
            cx = x;
            cy += 18.0;
        }
        let _ = writeln!(
            svg,
            r##"<g class="legend-entry" data-kind="{name}"><rect x="{cx:.1}" y="{cy:.1}" width="12" height="12" fill="{}" stroke="#333" stroke-width="0.5"/><text x="{:.1}" y="{:.1}">{name}</text></g>"##,
            color(k),
            cx + 16.0,
            cy + 10.5
        );
        cx += w + 8.0;
    }
    let _ = writeln!(svg, "</g>");
    cy + 18.0
}

/// The document's opening: size, fonts, a white background.
fn svg_open(width: f64, height: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    svg
}

/// The cell size for `cells` cells over `image_size` bytes: a power of
/// two, so cells line up with blocks.
fn cell_size(image_size: u64, cells: u64) -> u64 {
    image_size
        .div_ceil(cells.max(1))
        .max(512)
        .checked_next_power_of_two()
        .unwrap_or(1 << 63)
}

/// The layout picture. `segments` are the layout's (start, end, kind) in
/// order; `columns` cells per row of the grid.
pub fn layout_svg(
    title: &str,
    image_size: u64,
    segments: &[(u64, u64, KindId)],
    partitions: &[Span],
    columns: u32,
    max_rows: u32,
) -> String {
    const CELL: f64 = 4.0;
    const MARGIN: f64 = 20.0;
    // Bounded whatever the arguments: at most 2048 × 8192 cells.
    let columns = columns.clamp(16, 2048);
    let max_rows = max_rows.clamp(1, 8192);
    let cell = cell_size(image_size, u64::from(columns) * u64::from(max_rows));
    let n = image_size.div_ceil(cell);
    let rows = n.div_ceil(u64::from(columns));
    let mut kinds_of = vec![kinds::NONE; n as usize];
    bmap_tui::grid::fill_from_segments(0, cell, image_size, segments, &mut kinds_of);
    let present: BTreeSet<KindId> = kinds_of
        .iter()
        .copied()
        .filter(|&k| k != kinds::NONE)
        .collect();

    let grid_w = f64::from(columns) * CELL;
    let width = grid_w + 2.0 * MARGIN;
    let strip_y = 50.0;
    let grid_y = strip_y + 60.0;
    let grid_h = rows as f64 * CELL;
    // Legend height is only known once laid out; draw it into its own
    // buffer first.
    let mut legend_svg = String::new();
    let legend_end = legend(
        &mut legend_svg,
        &present,
        MARGIN,
        grid_y + grid_h + 20.0,
        grid_w,
    );
    let height = legend_end + MARGIN;

    let mut svg = svg_open(width, height);
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN}" y="40">{} · {} per cell · {} cells · left to right, top to bottom</text>"#,
        human(image_size),
        human(cell),
        n
    );

    // The strip: the disk drawn linearly, partitions labelled.
    let _ = writeln!(svg, r#"<g class="partitions">"#);
    let _ = writeln!(
        svg,
        r##"<rect x="{MARGIN}" y="{strip_y}" width="{grid_w:.1}" height="22" fill="#eeeeee" stroke="#333" stroke-width="0.5"/>"##
    );
    let scale = grid_w / image_size.max(1) as f64;
    for p in partitions {
        let (s, e) = (p.start.min(image_size), p.end.min(image_size));
        if s >= e {
            continue;
        }
        let x = MARGIN + s as f64 * scale;
        let w = ((e - s) as f64 * scale).max(1.0);
        let _ = writeln!(
            svg,
            r##"<g class="partition" data-label="{label}"><rect x="{x:.1}" y="{strip_y}" width="{w:.1}" height="22" fill="#9ec5f0" stroke="#1f4e8c" stroke-width="0.8"/><text x="{:.1}" y="{:.1}" clip-path="none">{label} ({})</text></g>"##,
            x + 3.0,
            strip_y + 15.0,
            human(e - s),
            label = esc(&p.label),
        );
        // Where the partition starts in the grid below.
        let first_cell = s / cell;
        let gx = MARGIN + (first_cell % u64::from(columns)) as f64 * CELL;
        let gy = grid_y + (first_cell / u64::from(columns)) as f64 * CELL;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{gx:.1}" y2="{gy:.1}" stroke="#1f4e8c" stroke-width="0.6" stroke-dasharray="2,2"/>"##,
            strip_y + 22.0
        );
    }
    let _ = writeln!(svg, "</g>");

    // The grid, one rect per run of equal cells in a row.
    let _ = writeln!(svg, r#"<g class="grid" shape-rendering="crispEdges">"#);
    for row in 0..rows {
        let first = row * u64::from(columns);
        let last = (first + u64::from(columns)).min(n);
        let mut i = first;
        while i < last {
            let k = kinds_of[i as usize];
            let mut j = i + 1;
            while j < last && kinds_of[j as usize] == k {
                j += 1;
            }
            if k != kinds::NONE {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{CELL}" fill="{}" data-kind="{}"/>"#,
                    MARGIN + (i - first) as f64 * CELL,
                    grid_y + row as f64 * CELL,
                    (j - i) as f64 * CELL,
                    color(k),
                    kinds::name(k)
                );
            }
            i = j;
        }
    }
    let _ = writeln!(svg, "</g>");
    svg.push_str(&legend_svg);
    svg.push_str("</svg>\n");
    svg
}

/// One access for the time plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Access {
    pub time: f64,
    pub offset: u64,
    pub length: u64,
    pub kind: KindId,
    pub write: bool,
}

/// Offset against time. Accesses are binned to the plot's pixels (per
/// kind), so a million requests draw as at most a few hundred thousand
/// marks.
pub fn accesses_svg(title: &str, image_size: u64, accesses: &[Access]) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 500.0;
    const LEFT: f64 = 90.0;
    const TOP: f64 = 60.0;
    let t0 = accesses
        .iter()
        .map(|a| a.time)
        .fold(f64::INFINITY, f64::min);
    let t1 = accesses
        .iter()
        .map(|a| a.time)
        .fold(f64::NEG_INFINITY, f64::max);
    let (t0, span) = if t0.is_finite() && t1 > t0 {
        (t0, t1 - t0)
    } else {
        (if t0.is_finite() { t0 } else { 0.0 }, 1.0)
    };
    let ymax = image_size.max(1) as f64;
    let present: BTreeSet<KindId> = accesses.iter().map(|a| a.kind).collect();
    let mut legend_svg = String::new();
    let legend_end = legend(&mut legend_svg, &present, LEFT, TOP + H + 45.0, W);
    let width = LEFT + W + 30.0;
    let height = legend_end + 20.0;
    let mut svg = svg_open(width, height);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let reads = accesses.iter().filter(|a| !a.write).count();
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="42">{} requests ({reads} reads, {} writes, writes outlined) over {span:.3} s · disk offset against time</text>"#,
        accesses.len(),
        accesses.len() - reads
    );
    let _ = writeln!(
        svg,
        r##"<rect class="plot-area" x="{LEFT}" y="{TOP}" width="{W}" height="{H}" fill="#fafafa" stroke="#333" stroke-width="0.8"/>"##
    );
    // Axes: five ticks each.
    let _ = writeln!(svg, r#"<g class="axes">"#);
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let x = LEFT + f * W;
        let y = TOP + H - f * H;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{:.3} s</text>"##,
            TOP + H,
            TOP + H + 5.0,
            TOP + H + 18.0,
            f * span
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 5.0,
            LEFT - 8.0,
            y + 4.0,
            human((f * ymax) as u64)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since the first request</text>"#,
        LEFT + W / 2.0,
        TOP + H + 34.0
    );
    let _ = writeln!(svg, "</g>");
    let _ = writeln!(svg, r#"<g class="accesses" shape-rendering="crispEdges">"#);
    let mut seen: HashSet<(u32, u32, KindId, bool)> = HashSet::new();
    for a in accesses {
        let x = ((a.time - t0) / span * (W - 2.0)).clamp(0.0, W - 2.0) as u32;
        let y0 = (a.offset as f64 / ymax * H).clamp(0.0, H - 1.0) as u32;
        let y1 = ((a.offset.saturating_add(a.length)) as f64 / ymax * H).clamp(0.0, H - 1.0) as u32;
        for y in y0..=y1.max(y0) {
            if !seen.insert((x, y, a.kind, a.write)) {
                continue;
            }
            let stroke = if a.write {
                r##" stroke="#000" stroke-width="0.4""##
            } else {
                ""
            };
            // 3×3 marks: one pixel would be lost at any normal zoom.
            let _ = writeln!(
                svg,
                r#"<rect x="{:.0}" y="{:.0}" width="3" height="3" fill="{}"{stroke} data-kind="{}"/>"#,
                LEFT + f64::from(x),
                TOP + H - 3.0 - f64::from(y).min(H - 3.0),
                color(a.kind),
                kinds::name(a.kind)
            );
        }
    }
    let _ = writeln!(svg, "</g>");
    svg.push_str(&legend_svg);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use bmap_tui::kinds::KINDS;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(esc("x\u{1}y"), "x?y");
    }

    #[test]
    fn cells_are_powers_of_two() {
        assert_eq!(cell_size(64 << 20, 32768), 2048);
        assert_eq!(cell_size(1000, 32768), 512);
        assert!(cell_size(u64::MAX, 1).is_power_of_two());
    }

    #[test]
    fn every_kind_has_a_colour_of_its_own_class() {
        for k in 0..KINDS.len() {
            assert!(color(k as KindId).starts_with('#'));
        }
        assert_ne!(color(kinds::id("file")), color(kinds::id("free")));
    }

    #[test]
    fn many_accesses_to_one_pixel_draw_once() {
        let a = Access {
            time: 1.0,
            offset: 0,
            length: 1,
            kind: kinds::id("file"),
            write: false,
        };
        let svg = accesses_svg("t", 1 << 30, &vec![a; 10_000]);
        assert_eq!(svg.matches("data-kind=\"file\"/>").count(), 1);
    }
}
