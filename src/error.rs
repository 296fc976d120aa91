//! Errors of the library. Every corruption names the absolute byte offset in
//! the image where the offending structure lives, so a user can look at it
//! with a hex editor.

use std::io;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while reading an image or a map.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host could not read the image.
    #[error("I/O error at byte offset {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The image ends before a structure that should be there.
    #[error("image is truncated: {what} at byte offset {offset} needs {len} bytes, image has {image_size}")]
    Truncated {
        what: &'static str,
        offset: u64,
        len: u64,
        image_size: u64,
    },
    /// A structure on disk holds a value that cannot be right.
    #[error("corrupt {what} at byte offset {offset}: {detail}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        detail: String,
    },
    /// A valid structure that bmap does not handle (yet).
    #[error("unsupported {what} at byte offset {offset}: {detail}")]
    Unsupported {
        what: &'static str,
        offset: u64,
        detail: String,
    },
    /// The map database could not be read or written.
    #[error("map database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A map that this version of bmap cannot read.
    #[error("{0}")]
    Map(String),
}

impl Error {
    /// Shorthand for [`Error::Corrupt`].
    pub fn corrupt(what: &'static str, offset: u64, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            what,
            offset,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(what: &'static str, offset: u64, detail: impl Into<String>) -> Self {
        Error::Unsupported {
            what,
            offset,
            detail: detail.into(),
        }
    }

    /// The byte offset in the image the error is about, when there is one.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Io { offset, .. }
            | Error::Truncated { offset, .. }
            | Error::Corrupt { offset, .. }
            | Error::Unsupported { offset, .. } => Some(*offset),
            Error::Sql(_) | Error::Map(_) => None,
        }
    }
}
