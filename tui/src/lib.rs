//! Terminal UI for bmap maps.
//!
//! Placeholder crate: the TUI issue fills it in. It will read maps only
//! through the public views in `schema/`, never through indexing code.
