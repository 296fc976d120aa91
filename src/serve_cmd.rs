//! `bmap serve`: finds the map, opens the image and the outputs, binds the
//! socket, then serves (or, with `--run`, serves while a command runs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};

use bmap::replay::MapIndex;
use bmap::serve::export::{Export, Mode};
use bmap::serve::log::{trace_header, Sink};
use bmap::serve::Server;
use bmap::store;
use bmap::units::human;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The raw disk image to export (opened read-only unless --writable).
    pub image: PathBuf,
    /// The map [default: IMAGE.bmap if it exists, else the only *.bmap
    /// in the current directory].
    #[arg(long)]
    pub map: Option<PathBuf>,
    /// Listen on this Unix socket [default: a socket in a new private
    /// temporary directory].
    #[arg(long, conflicts_with = "port")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP port N of 127.0.0.1 instead (0: any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Write the live log here [default: standard output].
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Record every request in nbdkit's log-filter format, which
    /// `bmap replay` reads.
    #[arg(long)]
    pub trace_out: Option<PathBuf>,
    /// Accept writes (into --overlay, or with --i-mean-it into IMAGE).
    #[arg(long)]
    pub writable: bool,
    /// Copy-on-write overlay for writes: a new file (refused if it
    /// exists); IMAGE is never modified.
    #[arg(long, requires = "writable")]
    pub overlay: Option<PathBuf>,
    /// With --writable and no --overlay: really write to IMAGE.
    #[arg(long, requires = "writable")]
    pub i_mean_it: bool,
    /// Run `sh -c CMD` with $uri, $nbd, $socket and $port set, serve
    /// until it exits, then exit with its status.
    #[arg(long, value_name = "CMD")]
    pub run: Option<String>,
}

/// What has to go when the server stops: the socket, and the private
/// directory it was made in.
#[derive(Clone, Default)]
struct Cleanup {
    socket: Option<PathBuf>,
    dir: Option<PathBuf>,
}

impl Cleanup {
    fn run(&self) {
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The map: `--map`, else `IMAGE.bmap` when it exists, else the only
/// `*.bmap` in the current directory.
fn map_path(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(m) = &args.map {
        return Ok(m.clone());
    }
    let mut beside = args.image.as_os_str().to_os_string();
    beside.push(".bmap");
    let beside = PathBuf::from(beside);
    if beside.is_file() {
        return Ok(beside);
    }
    crate::replay_cmd::find_map().with_context(|| {
        format!(
            "no map for {}: {} does not exist (make one with `bmap index {}`)",
            args.image.display(),
            beside.display(),
            args.image.display()
        )
    })
}

/// A new directory only we can enter, for the default socket.
fn private_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "bmap-serve-{pid}-{:x}",
            nanos.wrapping_add(attempt)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating socket directory {}", dir.display()))
            }
        }
    }
    bail!("could not create a private directory in {}", base.display())
}

enum Bound {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mode = match (&args.overlay, args.writable, args.i_mean_it) {
        (_, false, _) => Mode::ReadOnly,
        (Some(o), true, _) => Mode::Overlay(o.clone()),
        (None, true, true) => Mode::Direct,
        (None, true, false) => bail!(
            "--writable without --overlay would let the guest write to {} itself; \
             add --overlay FILE to keep the image unchanged, or --i-mean-it to write it in place",
            args.image.display()
        ),
    };
    let map = map_path(&args)?;
    let conn =
        store::open(&map, false).with_context(|| format!("opening map {}", map.display()))?;
    let index = MapIndex::load(&conn).with_context(|| format!("loading map {}", map.display()))?;
    drop(conn);
    let export = Export::open(&args.image, &mode)?;
    if index.image_size != export.size() {
        eprintln!(
            "bmap: warning: {} has {} bytes but the map {} was made of an image of {} bytes; is this the right map?",
            args.image.display(),
            export.size(),
            map.display(),
            index.image_size
        );
    }
    let log: Box<dyn Write + Send> = match &args.log {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating log {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let trace = match &args.trace_out {
        Some(p) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("creating trace {}", p.display()))?,
            );
            f.write_all(trace_header().as_bytes())
                .and_then(|()| f.flush())
                .with_context(|| format!("writing trace {}", p.display()))?;
            Some(Sink::new(Box::new(f)))
        }
        None => None,
    };

    let mut cleanup = Cleanup::default();
    let (bound, uri, socket, port) = match (args.port, &args.socket) {
        (Some(port), _) => {
            let l = std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
            let port = l.local_addr()?.port();
            (
                Bound::Tcp(l),
                format!("nbd://127.0.0.1:{port}"),
                None,
                Some(port),
            )
        }
        (None, socket) => {
            let path = match socket {
                Some(p) => {
                    if std::fs::symlink_metadata(p).is_ok() {
                        bail!(
                            "{} exists; remove it or choose another --socket",
                            p.display()
                        );
                    }
                    p.clone()
                }
                None => {
                    let dir = private_dir()?;
                    cleanup.dir = Some(dir.clone());
                    dir.join("nbd.sock")
                }
            };
            let l = std::os::unix::net::UnixListener::bind(&path).map_err(|e| {
                cleanup.run();
                anyhow::anyhow!("listening on {}: {e}", path.display())
            })?;
            cleanup.socket = Some(path.clone());
            let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            (
                Bound::Unix(l),
                format!("nbd+unix:///?socket={}", abs.display()),
                Some(abs),
                None,
            )
        }
    };

    let server = Arc::new(Server::new(export, index, Sink::new(log), trace));
    {
        let server = Arc::clone(&server);
        let cleanup = cleanup.clone();
        // Ctrl-C (and SIGTERM/SIGHUP): everything answered is already
        // flushed; take the locks so nothing is cut mid-line, remove the
        // socket, and go.
        ctrlc::set_handler(move || {
            server.flush();
            cleanup.run();
            eprintln!("\nbmap: serve: interrupted; log and trace flushed");
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let what = match &mode {
        Mode::ReadOnly => "read-only".to_string(),
        Mode::Overlay(o) => format!("writable, writes go to overlay {}", o.display()),
        Mode::Direct => "WRITABLE IN PLACE".to_string(),
    };
    eprintln!(
        "bmap: serving {} ({}, {what}) with map {}",
        args.image.display(),
        human(server.export.size()),
        map.display()
    );
    eprintln!("bmap: connect to {uri}");

    let accept = {
        let server = Arc::clone(&server);
        std::thread::spawn(move || match bound {
            Bound::Unix(l) => server.serve(l),
            Bound::Tcp(l) => server.serve(l),
        })
    };

    let Some(cmd) = &args.run else {
        let r = accept.join();
        server.flush();
        cleanup.run();
        return match r {
            Ok(Ok(())) => Ok(ExitCode::SUCCESS),
            Ok(Err(e)) => Err(e).context("accepting connections"),
            Err(panic) => std::panic::resume_unwind(panic),
        };
    };
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("uri", &uri)
        .env("nbd", &uri)
        .env("socket", socket.as_deref().unwrap_or(Path::new("")))
        .env("unixsocket", socket.as_deref().unwrap_or(Path::new("")))
        .env("port", port.map(|p| p.to_string()).unwrap_or_default())
        .status();
    server.flush();
    cleanup.run();
    let status = status.with_context(|| format!("running sh -c {cmd:?}"))?;
    let code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}
