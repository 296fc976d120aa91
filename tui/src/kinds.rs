//! How each kind of object looks on the map: a glyph (so the map reads
//! without colour too), a colour, and a rank that breaks ties between kinds
//! owning equal shares of a cell in favour of the more specific one.

use ratatui::style::Color;

/// A kind's index in [`KINDS`]; small so a screen of cells is a few KiB.
pub type KindId = u8;

pub struct KindStyle {
    pub name: &'static str,
    /// The legend's name: short, so the legend fits two lines at 80 columns.
    pub short: &'static str,
    pub glyph: char,
    pub color: Color,
    /// Higher wins a tie: file data beats metadata beats free space beats
    /// containers.
    pub rank: u8,
}

const fn k(
    name: &'static str,
    short: &'static str,
    glyph: char,
    color: Color,
    rank: u8,
) -> KindStyle {
    KindStyle {
        name,
        short,
        glyph,
        color,
        rank,
    }
}

/// The map's kind vocabulary (DESIGN.md), plus `other` for a kind this
/// TUI does not know (a newer bmap may add kinds; they still draw).
pub const KINDS: &[KindStyle] = &[
    k("file", "file", 'f', Color::Green, 90),
    k("directory", "dir", 'd', Color::LightGreen, 89),
    k("symlink", "symlink", 'l', Color::LightCyan, 88),
    k("extent-block", "tree blk", 'e', Color::LightMagenta, 80),
    k("indirect-block", "tree blk", 'e', Color::LightMagenta, 80),
    k("xattr-block", "xattr", 'x', Color::Magenta, 79),
    k("inode-table", "inodes", 'i', Color::Yellow, 70),
    k("block-bitmap", "bitmap", 'b', Color::LightYellow, 69),
    k("inode-bitmap", "bitmap", 'b', Color::LightYellow, 69),
    k("superblock", "sb", 'S', Color::LightRed, 68),
    k("superblock-backup", "sb copy", 's', Color::Red, 67),
    k("group-descriptors", "gdt", 'G', Color::LightRed, 66),
    k("reserved-gdt", "rsv gdt", 'r', Color::Red, 65),
    k("journal", "journal", 'j', Color::Cyan, 64),
    k("boot-block", "boot", 'B', Color::Red, 63),
    k("mmp", "mmp", 'm', Color::Red, 62),
    k("special-inode", "special", 'n', Color::LightBlue, 61),
    k("unknown", "unclaimed", '?', Color::LightRed, 60),
    k("free", "free", '.', Color::DarkGray, 40),
    k("filesystem", "fs", 'F', Color::Blue, 30),
    k("mbr", "mbr", 'M', Color::Magenta, 25),
    k("ebr", "ebr", 'M', Color::Magenta, 25),
    k("gpt-header", "gpt hdr", 'H', Color::Magenta, 25),
    k("gpt-entries", "gpt tbl", 'E', Color::Magenta, 25),
    k("partition", "part", 'p', Color::Blue, 20),
    k("unpartitioned", "unpart", '_', Color::Gray, 10),
    k("disk", "disk", 'D', Color::Gray, 5),
    k("other", "other", '*', Color::White, 1),
];

/// [`KINDS`] index of `other`.
pub const OTHER: KindId = (KINDS.len() - 1) as KindId;

/// Marks a cell past the end of the image.
pub const NONE: KindId = KindId::MAX;

pub fn id(kind: &str) -> KindId {
    KINDS
        .iter()
        .position(|k| k.name == kind)
        .map_or(OTHER, |i| i as KindId)
}

pub fn style(id: KindId) -> &'static KindStyle {
    KINDS.get(usize::from(id)).unwrap_or(&KINDS[OTHER as usize])
}

/// A kind's colour as `#rrggbb`, for pictures outside the terminal (`bmap
/// plot`): the terminal colour's usual look.
pub fn rgb(id: KindId) -> &'static str {
    match style(id).color {
        Color::Green => "#2e9d3a",
        Color::LightGreen => "#8fd16a",
        Color::LightCyan => "#7fdbe6",
        Color::LightMagenta => "#e08ae6",
        Color::Magenta => "#a43cae",
        Color::Yellow => "#e0b000",
        Color::LightYellow => "#f5e27a",
        Color::LightRed => "#f07070",
        Color::Red => "#c0392b",
        Color::Cyan => "#1aa3b8",
        Color::LightBlue => "#8ab4f0",
        Color::DarkGray => "#5a5a5a",
        Color::Blue => "#2f5fb3",
        Color::Gray => "#b8b8b8",
        _ => "#ffffff",
    }
}

pub fn name(id: KindId) -> &'static str {
    style(id).name
}

/// The kind owning most of `bytes` (indexed by [`KindId`]); ties go to the
/// higher rank, so the answer does not depend on the order kinds are listed.
pub fn dominant(bytes: &[u64; KINDS.len()]) -> KindId {
    let mut best = NONE;
    let mut best_bytes = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        if b == 0 {
            continue;
        }
        let better =
            b > best_bytes || (b == best_bytes && best != NONE && KINDS[i].rank > style(best).rank);
        if better {
            best = i as KindId;
            best_bytes = b;
        }
    }
    best
}

/// The legend's entries for the kinds in `present`, one per glyph: kinds
/// that share a glyph (the two bitmaps, the two tree-block kinds) share
/// an entry.
pub fn legend(present: &[bool; KINDS.len()]) -> Vec<(char, Color, &'static str)> {
    let mut out: Vec<(char, Color, &'static str)> = Vec::new();
    for (i, style) in KINDS.iter().enumerate() {
        if present[i] && !out.iter().any(|e| e.0 == style.glyph) {
            out.push((style.glyph, style.color, style.short));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(pairs: &[(&str, u64)]) -> [u64; KINDS.len()] {
        let mut b = [0u64; KINDS.len()];
        for &(k, n) in pairs {
            b[usize::from(id(k))] += n;
        }
        b
    }

    #[test]
    fn the_kind_owning_most_bytes_wins() {
        let b = bytes(&[("free", 3000), ("file", 1000), ("inode-table", 100)]);
        assert_eq!(name(dominant(&b)), "free");
        let b = bytes(&[("free", 1000), ("file", 3000)]);
        assert_eq!(name(dominant(&b)), "file");
    }

    #[test]
    fn ties_go_to_the_more_specific_kind() {
        let b = bytes(&[("free", 512), ("file", 512)]);
        assert_eq!(name(dominant(&b)), "file");
        let b = bytes(&[("partition", 512), ("inode-table", 512)]);
        assert_eq!(name(dominant(&b)), "inode-table");
    }

    #[test]
    fn an_empty_cell_has_no_kind() {
        assert_eq!(dominant(&[0; KINDS.len()]), NONE);
    }

    #[test]
    fn unknown_kinds_still_draw() {
        assert_eq!(name(id("zfs-uberblock")), "other");
    }

    #[test]
    fn glyphs_tell_the_classes_apart() {
        // Without colour, the classes the issue names must differ by glyph.
        let classes = [
            "partition",
            "inode-table",
            "block-bitmap",
            "superblock",
            "journal",
            "directory",
            "file",
            "free",
            "unpartitioned",
        ];
        let mut glyphs: Vec<char> = classes.iter().map(|c| style(id(c)).glyph).collect();
        glyphs.sort_unstable();
        glyphs.dedup();
        assert_eq!(glyphs.len(), classes.len());
    }
}
