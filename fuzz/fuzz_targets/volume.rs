//! MBR/EBR/GPT parsing: `bmap::volume::scan` over arbitrary bytes.
#![no_main]

use bmap::image::MemImage;
use bmap::map::MapBuilder;
use bmap::volume::{self, DeviceNaming, VolumeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the sector size (detect, 512 or 4096), the rest
    // is the image.
    let (sector_size, image) = match data.split_first() {
        Some((b, rest)) => (
            match b % 3 {
                0 => None,
                1 => Some(512),
                _ => Some(4096),
            },
            rest,
        ),
        None => (None, data),
    };
    let img = MemImage(image.to_vec());
    let mut map = MapBuilder::new(image.len() as u64);
    let opts = VolumeOptions {
        naming: DeviceNaming::new("sda"),
        sector_size,
    };
    if let Err(e) = volume::scan(&img, &mut map, &opts) {
        assert!(e.offset().is_some(), "error without an offset: {e}");
    }
    let disk = bmap::map::ObjectId(0);
    let _ = map.layout(disk);
});
