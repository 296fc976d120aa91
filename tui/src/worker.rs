//! The thread that does the slow work (building the overview, loading and
//! resolving a trace, searching names) on its own connection to the map,
//! so the UI thread only ever waits for its next key.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

use crate::grid::Overview;
use crate::mapdb::{MapDb, Opener};
use crate::replay::{Replay, TraceLoader};

pub enum Job {
    Overview { image_size: u64, min_cell: u64 },
    TraceFile(TraceLoader),
    StoredTrace(String),
    Search { generation: u64, needle: String },
}

pub enum Report {
    Progress {
        what: &'static str,
        fraction: f64,
    },
    Overview(Box<Overview>),
    Replay(Box<Replay>),
    Search {
        generation: u64,
        results: Vec<(i64, String)>,
    },
    Failed {
        what: &'static str,
        message: String,
    },
}

pub struct Worker {
    jobs: Option<Sender<Job>>,
    pub reports: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
}

/// Names are searched up to this many hits; the list says when it stopped.
pub const SEARCH_LIMIT: u64 = 1000;

impl Worker {
    pub fn start(opener: Opener) -> Worker {
        let (jobs, job_rx) = channel::<Job>();
        let (report_tx, reports) = channel::<Report>();
        let thread = std::thread::Builder::new()
            .name("bmap-tui-worker".into())
            .spawn(move || serve(opener, job_rx, report_tx))
            .ok();
        Worker {
            jobs: Some(jobs),
            reports,
            thread,
        }
    }

    pub fn send(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // A worker that died has already reported why.
            let _ = jobs.send(job);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current job; a long
        // job (a huge trace) is not waited for, so quitting stays instant.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn serve(opener: Opener, jobs: Receiver<Job>, reports: Sender<Report>) {
    let db = match opener() {
        Ok(conn) => MapDb::new(conn),
        Err(message) => {
            let _ = reports.send(Report::Failed {
                what: "opening the map",
                message,
            });
            return;
        }
    };
    for job in jobs {
        let report = match job {
            Job::Overview {
                image_size,
                min_cell,
            } => {
                let progress = |fraction| {
                    let _ = reports.send(Report::Progress {
                        what: "reading the layout",
                        fraction,
                    });
                };
                match Overview::build(&db, image_size, min_cell, &progress) {
                    Ok(o) => Report::Overview(Box::new(o)),
                    Err(e) => Report::Failed {
                        what: "reading the layout",
                        message: e.to_string(),
                    },
                }
            }
            Job::TraceFile(loader) => {
                let progress = |fraction| {
                    let _ = reports.send(Report::Progress {
                        what: "reading the trace",
                        fraction,
                    });
                };
                match loader(&progress) {
                    Ok(data) => resolve(&db, data, &reports),
                    Err(message) => Report::Failed {
                        what: "reading the trace",
                        message,
                    },
                }
            }
            Job::StoredTrace(name) => {
                let progress = |fraction| {
                    let _ = reports.send(Report::Progress {
                        what: "loading the stored trace",
                        fraction,
                    });
                };
                match db.stored_trace(&name, &progress) {
                    Ok(data) => resolve(&db, data, &reports),
                    Err(e) => Report::Failed {
                        what: "loading the stored trace",
                        message: e.to_string(),
                    },
                }
            }
            Job::Search { generation, needle } => match db.search(&needle, SEARCH_LIMIT) {
                Ok(results) => Report::Search {
                    generation,
                    results,
                },
                Err(e) => Report::Failed {
                    what: "searching",
                    message: e.to_string(),
                },
            },
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

fn resolve(db: &MapDb, data: crate::replay::TraceData, reports: &Sender<Report>) -> Report {
    let progress = |fraction| {
        let _ = reports.send(Report::Progress {
            what: "joining the trace with the map",
            fraction,
        });
    };
    match Replay::new(data, db, &progress) {
        Ok(r) => Report::Replay(Box::new(r)),
        Err(e) => Report::Failed {
            what: "joining the trace with the map",
            message: e.to_string(),
        },
    }
}
