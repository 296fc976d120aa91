//! bmap: maps every byte of a virtual machine's disk image to what lives
//! there and stores the answer in a SQLite map.
//!
//! The pipeline is [`image`] (positional reads) → [`volume`] (MBR, GPT or a
//! bare filesystem) → [`ext4`] (filesystem walker) → [`map`] (objects,
//! extents, layout) → [`store`] (the SQLite file, whose schema lives in
//! `schema/`). [`query`] reads maps back for `info`, `lookup` and `export`;
//! [`trace`] parses block I/O traces and [`replay`] joins them with a map;
//! [`serve`] exports an image over NBD and attributes requests live.
// Denied rather than forbidden: `prefetch` allows its one instruction, and
// `trace::mapped` its mapping of a trace and the SIGBUS handler that keeps a
// trace cut short while mapped from killing the process.
#![deny(unsafe_code)]

pub mod error;
pub mod ext4;
pub mod image;
pub mod index;
pub mod map;
pub mod plot;
mod prefetch;
pub mod query;
pub mod replay;
pub mod serve;
pub mod space;
pub mod sparsify;
pub mod store;
#[cfg(test)]
mod test_rng;
pub mod trace;
pub mod units;
pub mod volume;

pub use error::{Error, Result};
