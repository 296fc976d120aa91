//! The packed map's decoder (`bmap::replay::packed::decode`) over
//! arbitrary blobs: it must refuse or decode, never panic, never allocate
//! beyond what the blobs' lengths bound, and whatever it decodes must be
//! usable: segments sorted, disjoint and not empty, every object's names
//! whole strings.
#![no_main]

use bmap::replay::packed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Three blobs from one input: two length bytes, then the bytes.
    let (Some(&a), Some(&b)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    let a = usize::from(a).min(rest.len());
    let (segments, rest) = rest.split_at(a);
    let b = usize::from(b).min(rest.len());
    let (objects, strings) = rest.split_at(b);
    let kinds = bmap::map::Kind::ALL.map(bmap::map::Kind::as_str).join(",");
    let mut prev_end = 0u64;
    let table = packed::decode(&kinds, segments, objects, strings.to_vec(), |s, e, _| {
        assert!(s >= prev_end && s < e);
        prev_end = e;
    });
    if let Some(t) = table {
        for id in 0..t.len() as u32 {
            let o = t.get(id).unwrap();
            let _ = (o.label(), o.code(), o.name.len(), o.device, o.path);
        }
    }
});
