//! The volume layer: partition tables (MBR with its EBR chain, GPT) or a
//! filesystem on the whole disk. It adds the disk, table structures,
//! partitions and unpartitioned space to the map and returns the regions
//! that may hold a filesystem.

pub mod gpt;
pub mod mbr;

use std::ops::Range;

use crate::error::Result;
use crate::image::{le, ReadAt};
use crate::map::{Kind, MapBuilder, Object, ObjectId, PartitionInfo};

/// How the guest names the disk and its partitions.
#[derive(Debug, Clone)]
pub struct DeviceNaming {
    /// Base name without `/dev/`, e.g. `sda`, `vda`, `nvme0n1`.
    pub disk: String,
}

impl DeviceNaming {
    pub fn new(disk: &str) -> Self {
        DeviceNaming {
            disk: disk.trim_start_matches("/dev/").to_string(),
        }
    }

    pub fn disk_path(&self) -> String {
        format!("/dev/{}", self.disk)
    }

    /// `/dev/sda1`, or `/dev/nvme0n1p1` when the disk name ends in a digit,
    /// as the kernel names them.
    pub fn partition_path(&self, number: u32) -> String {
        if self.disk.ends_with(|c: char| c.is_ascii_digit()) {
            format!("/dev/{}p{number}", self.disk)
        } else {
            format!("/dev/{}{number}", self.disk)
        }
    }
}

/// A region of the image that may hold a filesystem.
#[derive(Debug, Clone)]
pub struct Region {
    pub range: Range<u64>,
    pub parent: ObjectId,
    /// 1-based partition number; `None` for the whole disk.
    pub partition: Option<u32>,
    pub device: String,
}

/// What the volume layer found.
#[derive(Debug)]
pub struct Volumes {
    pub disk: ObjectId,
    pub scheme: &'static str,
    pub sector_size: u64,
    pub regions: Vec<Region>,
}

/// Options for the volume scan.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    pub naming: DeviceNaming,
    /// Logical sector size; `None` detects it (GPT at 512 or 4096, else 512).
    pub sector_size: Option<u64>,
}

/// True if an ext2/3/4 filesystem (its primary superblock, or group 1's
/// backup when the primary is damaged) starts at `start`.
pub fn has_ext_magic(img: &dyn ReadAt, start: u64) -> bool {
    crate::ext4::superblock::probe(img, start)
}

/// Scans the partition table (if any) and adds disk-level objects.
pub fn scan(img: &dyn ReadAt, map: &mut MapBuilder, opts: &VolumeOptions) -> Result<Volumes> {
    let size = img.size();
    let mut disk_obj = Object::new(Kind::Disk, opts.naming.disk_path());
    disk_obj.device = Some(opts.naming.disk_path());
    disk_obj.size = Some(size);
    let disk = map.add_object(disk_obj);
    map.add_extent(disk, 0..size, 0, 0);

    let gpt_sector = match opts.sector_size {
        Some(ss) => gpt::probe(img, ss).then_some(ss),
        None => [512, 4096].into_iter().find(|&ss| gpt::probe(img, ss)),
    };
    let sector_size = gpt_sector.or(opts.sector_size).unwrap_or(512);

    let mut volumes = Volumes {
        disk,
        scheme: "none",
        sector_size,
        regions: Vec::new(),
    };
    let mut sector0 = vec![0u8; 512];
    let has_sector0 = img.read_exact_at(&mut sector0, 0).is_ok();
    let mbr_signature = has_sector0 && le::u16_at(&sector0, 510) == 0xAA55;

    if gpt_sector.is_some() {
        volumes.scheme = "gpt";
        gpt::scan(img, map, opts, &mut volumes)?;
    } else if mbr_signature && mbr::looks_like_table(&sector0) {
        volumes.scheme = "mbr";
        mbr::scan(img, map, opts, &mut volumes)?;
    } else if has_ext_magic(img, 0) {
        volumes.scheme = "none";
        volumes.regions.push(Region {
            range: 0..size,
            parent: disk,
            partition: None,
            device: opts.naming.disk_path(),
        });
    } else {
        map.warn(
            Some(0),
            "no partition table or ext2/3/4 filesystem recognised; the disk is mapped as a whole",
        );
    }
    add_unpartitioned(map, &volumes, size);
    Ok(volumes)
}

/// A partition table entry, resolved to bytes, about to enter the map.
pub(crate) struct NewPartition {
    pub parent: ObjectId,
    pub number: u32,
    pub device: String,
    pub range: Range<u64>,
    pub scheme: &'static str,
    pub role: &'static str,
    pub type_id: String,
    pub label: Option<String>,
    pub uuid: Option<String>,
    pub detail: String,
    /// Where the table entry lives, for warnings about it.
    pub entry_offset: u64,
}

/// Adds a partition object and its table row, warning when it overlaps a
/// sibling (primaries with primaries, logicals with logicals; a logical
/// partition inside its extended partition is not an overlap).
pub(crate) fn add_partition(map: &mut MapBuilder, p: NewPartition) -> ObjectId {
    let logical = p.role == "logical";
    let overlaps: Vec<String> = map
        .partitions
        .iter()
        .filter(|q| {
            (q.role == "logical") == logical && q.start < p.range.end && p.range.start < q.end
        })
        .map(|q| q.device.clone())
        .collect();
    for other in overlaps {
        map.warn(
            Some(p.entry_offset),
            format!("partition {} overlaps {other}", p.device),
        );
    }
    let mut obj = Object::new(Kind::Partition, p.device.clone());
    obj.parent = Some(p.parent);
    obj.partition = Some(p.number);
    obj.device = Some(p.device.clone());
    obj.size = Some(p.range.end - p.range.start);
    obj.detail = Some(p.detail);
    let id = map.add_object(obj);
    map.add_extent(id, p.range.clone(), 0, 0);
    map.partitions.push(PartitionInfo {
        object: id,
        number: p.number,
        device: p.device,
        scheme: p.scheme,
        start: p.range.start,
        end: p.range.end,
        type_id: p.type_id,
        label: p.label,
        uuid: p.uuid,
        role: p.role,
    });
    id
}

/// Gives every byte that no top-level partition covers to one
/// `unpartitioned` object (table structures still win over it by rank).
fn add_unpartitioned(map: &mut MapBuilder, volumes: &Volumes, size: u64) {
    if volumes.scheme == "none" {
        return;
    }
    let mut covered: Vec<Range<u64>> = map
        .partitions
        .iter()
        .filter(|p| p.role != "logical")
        .map(|p| p.start..p.end.min(size))
        .collect();
    covered.sort_by_key(|r| r.start);
    let mut gaps = Vec::new();
    let mut pos = 0;
    for r in covered {
        if r.start > pos {
            gaps.push(pos..r.start);
        }
        pos = pos.max(r.end);
    }
    if pos < size {
        gaps.push(pos..size);
    }
    if gaps.is_empty() {
        return;
    }
    let mut obj = Object::new(
        Kind::Unpartitioned,
        format!("{} unpartitioned", map.object(volumes.disk).name),
    );
    obj.parent = Some(volumes.disk);
    obj.device = map.object(volumes.disk).device.clone();
    obj.size = Some(gaps.iter().map(|g| g.end - g.start).sum());
    let id = map.add_object(obj);
    map.add_concatenated(id, gaps);
}

/// Formats a GUID stored in the mixed-endian on-disk form.
pub fn format_guid(b: &[u8]) -> String {
    if b.len() < 16 {
        return String::new();
    }
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le::u32_at(b, 0),
        le::u16_at(b, 4),
        le::u16_at(b, 6),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_names_get_p() {
        assert_eq!(DeviceNaming::new("sda").partition_path(2), "/dev/sda2");
        assert_eq!(DeviceNaming::new("/dev/vda").partition_path(1), "/dev/vda1");
        assert_eq!(
            DeviceNaming::new("nvme0n1").partition_path(3),
            "/dev/nvme0n1p3"
        );
    }

    #[test]
    fn guid_is_mixed_endian() {
        let b = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        assert_eq!(format_guid(&b), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }
}
