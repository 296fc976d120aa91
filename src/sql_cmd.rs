//! `bmap sql`: run SQL on a map and print the rows as an aligned table,
//! CSV or JSON. Read-only unless `--write`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rusqlite::types::Value;

use bmap::{query, store};

pub struct Args {
    pub map: PathBuf,
    pub query: Option<String>,
    pub csv: bool,
    pub json: bool,
    pub human: bool,
    pub write: bool,
}

/// One statement's result.
struct ResultSet {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conn = store::open(&args.map, args.write)?;
    query::register_functions(&conn, &args.map)?;
    let sql = match args.query {
        Some(q) => q,
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading SQL from standard input")?;
            s
        }
    };
    let mut results = Vec::new();
    let mut batch = rusqlite::Batch::new(&conn, &sql);
    while let Some(mut st) = batch.next().map_err(|e| anyhow::anyhow!("{e}"))? {
        let columns: Vec<String> = st.column_names().iter().map(|c| c.to_string()).collect();
        let n = columns.len();
        if n == 0 {
            st.raw_execute().map_err(|e| anyhow::anyhow!("{e}"))?;
            continue;
        }
        let mut rows = Vec::new();
        let mut q = st.raw_query();
        while let Some(r) = q.next().map_err(|e| anyhow::anyhow!("{e}"))? {
            rows.push(
                (0..n)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        results.push(ResultSet { columns, rows });
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = if args.json {
        write_json(&mut out, &results)
    } else if args.csv {
        write_csv(&mut out, &results, args.human)
    } else {
        write_table(&mut out, &results, args.human)
    };
    match r.and_then(|()| out.flush().map_err(Into::into)) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        r => r.map(|()| ExitCode::SUCCESS),
    }
}

/// Columns whose integers are byte counts, shown as sizes with `--human`.
fn is_size_column(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["bytes", "size", "length"].iter().any(|w| n.contains(w))
}

fn text(v: &Value, human: bool, column: &str) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) if human && is_size_column(column) => match u64::try_from(*i) {
            Ok(u) => bmap::units::human(u),
            Err(_) => i.to_string(),
        },
        Value::Integer(i) => i.to_string(),
        // `{:?}` keeps the point of whole numbers: 1.0, not 1.
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}

fn write_table(out: &mut dyn Write, results: &[ResultSet], human: bool) -> anyhow::Result<()> {
    for (k, rs) in results.iter().enumerate() {
        if k > 0 {
            writeln!(out)?;
        }
        let cells: Vec<Vec<String>> = rs
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(&rs.columns)
                    .map(|(v, c)| text(v, human, c))
                    .collect()
            })
            .collect();
        let mut width: Vec<usize> = rs.columns.iter().map(|c| c.chars().count()).collect();
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        // Numbers are right-aligned, everything else left.
        let numeric: Vec<bool> = (0..rs.columns.len())
            .map(|i| {
                rs.rows
                    .iter()
                    .any(|r| matches!(r[i], Value::Integer(_) | Value::Real(_)))
                    && rs
                        .rows
                        .iter()
                        .all(|r| matches!(r[i], Value::Integer(_) | Value::Real(_) | Value::Null))
            })
            .collect();
        let line = |out: &mut dyn Write, row: &[String]| -> std::io::Result<()> {
            let parts: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = width[i].saturating_sub(c.chars().count());
                    if numeric[i] {
                        format!("{}{c}", " ".repeat(pad))
                    } else {
                        format!("{c}{}", " ".repeat(pad))
                    }
                })
                .collect();
            writeln!(out, "{}", parts.join("  ").trim_end())
        };
        line(out, &rs.columns)?;
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(out, "{}", rule.join("  "))?;
        for row in &cells {
            line(out, row)?;
        }
    }
    Ok(())
}

fn write_csv(out: &mut dyn Write, results: &[ResultSet], human: bool) -> anyhow::Result<()> {
    // Statements may differ in their number of columns.
    let mut w = csv::WriterBuilder::new().flexible(true).from_writer(out);
    for rs in results {
        w.write_record(&rs.columns)?;
        for r in &rs.rows {
            w.write_record(r.iter().zip(&rs.columns).map(|(v, c)| match v {
                Value::Null => String::new(),
                v => text(v, human, c),
            }))?;
        }
    }
    w.flush()?;
    Ok(())
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => (*i).into(),
        Value::Real(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Text(t) => t.clone().into(),
        Value::Blob(b) => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into(),
    }
}

fn write_json(out: &mut dyn Write, results: &[ResultSet]) -> anyhow::Result<()> {
    let sets: Vec<serde_json::Value> = results
        .iter()
        .map(|rs| {
            rs.rows
                .iter()
                .map(|r| {
                    let obj: serde_json::Map<String, serde_json::Value> = rs
                        .columns
                        .iter()
                        .cloned()
                        .zip(r.iter().map(json_value))
                        .collect();
                    serde_json::Value::Object(obj)
                })
                .collect::<Vec<_>>()
                .into()
        })
        .collect();
    // One statement: a list of row objects; several: a list of such lists.
    let doc = match sets.len() {
        1 => sets.into_iter().next().unwrap_or_default(),
        _ => serde_json::Value::Array(sets),
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}
