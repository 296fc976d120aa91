//! The whole pipeline (volumes, then ext2/3/4 walks, then the layout) over
//! arbitrary bytes through `bmap::index::index`.
#![no_main]

use bmap::image::MemImage;
use bmap::index::{index, IndexOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let img = MemImage(data.to_vec());
    match index(
        &img,
        &IndexOptions::default(),
        &indicatif::ProgressBar::hidden(),
    ) {
        Ok(idx) => {
            // The layout tiles the image exactly.
            let mut pos = 0;
            for s in &idx.layout {
                assert_eq!(s.start, pos);
                assert!(s.start < s.end);
                pos = s.end;
            }
            assert_eq!(pos, data.len() as u64);
        }
        Err(e) => assert!(e.offset().is_some(), "error without an offset: {e}"),
    }
});
