//! `bmap plot`: the SVG parses, the legend has one entry per kind drawn
//! (every kind of the layout, at a fine enough grid), partitions are
//! labelled, and a trace's accesses are drawn in the kinds they touched.

mod common;
mod replay_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const BMAP: &str = env!("CARGO_BIN_EXE_bmap");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command that must succeed; its standard output.
fn run(cmd: &mut Command) -> String {
    replay_common::stdout(&common::run(cmd))
}

fn sql(map: &Path, q: &str) -> Vec<String> {
    run(Command::new("sqlite3").arg("-readonly").arg(map).arg(q))
        .lines()
        .map(str::to_string)
        .collect()
}

/// (legend kinds, kinds of drawn marks, partition labels) of an SVG.
fn parse(svg: &str) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let doc = roxmltree::Document::parse(svg).expect("valid SVG (XML)");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let mut legend = BTreeSet::new();
    let mut drawn = BTreeSet::new();
    let mut labels = Vec::new();
    let mut legend_entries = 0;
    for n in doc.descendants() {
        match n.attribute("class") {
            Some("legend-entry") => {
                legend_entries += 1;
                legend.insert(n.attribute("data-kind").unwrap().to_string());
            }
            Some("partition") => labels.push(n.attribute("data-label").unwrap().to_string()),
            _ => {}
        }
        if n.tag_name().name() == "rect" {
            if let Some(k) = n.attribute("data-kind") {
                if n.parent().and_then(|p| p.attribute("class")) != Some("legend-entry") {
                    drawn.insert(k.to_string());
                }
            }
        }
    }
    assert_eq!(legend_entries, legend.len(), "one legend entry per kind");
    (legend, drawn, labels)
}

#[test]
fn the_layout_svg_has_a_legend_entry_per_kind_and_labelled_partitions() {
    let s = replay_common::sample();
    let (dir, map) = (&s.dir, s.map.clone());
    let out = dir.path().join("layout.svg");
    run(Command::new(BMAP).arg("plot").arg(&map).arg("-o").arg(&out));
    let svg = std::fs::read_to_string(&out).unwrap();
    let (legend, drawn, labels) = parse(&svg);
    assert_eq!(legend, drawn, "the legend lists exactly the kinds drawn");
    let in_map: BTreeSet<String> = sql(&map, "SELECT DISTINCT kind FROM layout")
        .into_iter()
        .collect();
    assert!(legend.is_subset(&in_map));
    assert_eq!(
        labels,
        sql(&map, "SELECT device FROM partitions ORDER BY start")
    );
    assert!(legend.contains("file") && legend.contains("free") && legend.contains("inode-table"));

    // With 512-byte cells every kind of the layout owns some cell.
    let fine = dir.path().join("fine.svg");
    run(Command::new(BMAP)
        .arg("plot")
        .arg(&map)
        .args(["--columns", "2048", "--rows", "4096", "-o"])
        .arg(&fine));
    let (legend, drawn, _) = parse(&std::fs::read_to_string(&fine).unwrap());
    assert_eq!(legend, drawn);
    assert_eq!(legend, in_map, "every kind in the map is drawn and listed");
}

#[test]
fn the_access_plot_draws_the_trace_in_the_kinds_it_touched() {
    let s = replay_common::sample();
    let map = s.map.clone();
    let trace = repo().join("sample-maps/boot.nbdkit.log");
    let svg = run(Command::new(BMAP)
        .arg("plot")
        .arg(&map)
        .arg("--trace")
        .arg(&trace)
        .args(["-o", "-"]));
    let (legend, drawn, _) = parse(&svg);
    assert_eq!(legend, drawn);
    // The kinds `bmap replay --summary` counts bytes in for this trace,
    // in the layout's words: files, directories, the partition table
    // region (reads of the disk's first sectors).
    assert!(legend.contains("file"), "{legend:?}");
    assert!(legend.contains("directory"), "{legend:?}");
    assert!(
        svg.contains("53 requests (53 reads, 0 writes"),
        "{svg:.400}"
    );
}

#[test]
fn a_trace_with_nothing_to_plot_is_an_error() {
    let s = replay_common::sample();
    let (dir, map) = (&s.dir, s.map.clone());
    let trace = dir.path().join("empty.csv");
    std::fs::write(&trace, "time,op,offset,length\n0.5,flush,0,0\n").unwrap();
    let out = Command::new(BMAP)
        .arg("plot")
        .arg(&map)
        .arg("--trace")
        .arg(&trace)
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reads or writes to plot"));
}
