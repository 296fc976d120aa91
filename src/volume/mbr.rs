//! The DOS/MBR partition table: four primary slots in sector 0, and an
//! extended partition holding a chain of EBRs, one per logical partition.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::image::{le, ReadAt};
use crate::map::{Kind, MapBuilder, Object, ObjectId};
use crate::volume::{self, NewPartition, Region, VolumeOptions, Volumes};

const TABLE_OFFSET: usize = 446;
const ENTRY_SIZE: usize = 16;
/// Linux stops following an EBR chain well before this; a longer chain is
/// a loop or garbage.
const MAX_LOGICAL: usize = 256;

/// One slot of a partition table sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub status: u8,
    pub type_id: u8,
    pub lba_start: u32,
    pub sectors: u32,
}

impl Entry {
    pub fn parse(sector: &[u8], slot: usize) -> Entry {
        let o = TABLE_OFFSET + slot * ENTRY_SIZE;
        Entry {
            status: le::u8_at(sector, o),
            type_id: le::u8_at(sector, o + 4),
            lba_start: le::u32_at(sector, o + 8),
            sectors: le::u32_at(sector, o + 12),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.type_id == 0 || self.sectors == 0
    }

    pub fn is_extended(&self) -> bool {
        matches!(self.type_id, 0x05 | 0x0F | 0x85)
    }
}

/// Sector 0 carries 0x55AA but so do FAT and NTFS boot sectors; a table
/// has status bytes of 0x00 or 0x80 and at least one used slot.
pub fn looks_like_table(sector0: &[u8]) -> bool {
    let entries: Vec<Entry> = (0..4).map(|i| Entry::parse(sector0, i)).collect();
    entries.iter().all(|e| e.status == 0 || e.status == 0x80)
        && entries.iter().any(|e| !e.is_empty())
}

struct Ctx<'a> {
    img: &'a dyn ReadAt,
    opts: &'a VolumeOptions,
    ss: u64,
    size: u64,
}

impl Ctx<'_> {
    /// Byte range of a partition, clipped to the disk with a warning.
    fn range(
        &self,
        map: &mut MapBuilder,
        what: &str,
        table_offset: u64,
        lba: u64,
        sectors: u64,
    ) -> Option<std::ops::Range<u64>> {
        let start = lba.checked_mul(self.ss)?;
        let end = lba.checked_add(sectors)?.checked_mul(self.ss)?;
        if start >= self.size {
            map.warn(
                Some(table_offset),
                format!(
                    "{what} starts at byte {start}, past the end of the disk ({} bytes); ignored",
                    self.size
                ),
            );
            return None;
        }
        if end > self.size {
            map.warn(
                Some(table_offset),
                format!(
                    "{what} ends at byte {end}, past the end of the disk ({} bytes); clipped",
                    self.size
                ),
            );
        }
        Some(start..end.min(self.size))
    }
}

pub fn scan(
    img: &dyn ReadAt,
    map: &mut MapBuilder,
    opts: &VolumeOptions,
    vols: &mut Volumes,
) -> Result<()> {
    let ss = vols.sector_size;
    let ctx = Ctx {
        img,
        opts,
        ss,
        size: img.size(),
    };
    let sector0 = img.read_vec("MBR", 0, ss.min(img.size()))?;
    let mut mbr = Object::new(Kind::Mbr, format!("{} MBR", opts.naming.disk_path()));
    mbr.parent = Some(vols.disk);
    mbr.device = Some(opts.naming.disk_path());
    let mbr = map.add_object(mbr);
    map.add_extent(mbr, 0..ss, 0, 0);

    for slot in 0..4 {
        let e = Entry::parse(&sector0, slot);
        if e.is_empty() {
            continue;
        }
        let number = slot as u32 + 1;
        let device = opts.naming.partition_path(number);
        let table_offset = (TABLE_OFFSET + slot * ENTRY_SIZE) as u64;
        let Some(range) = ctx.range(
            map,
            &format!("partition {device}"),
            table_offset,
            e.lba_start.into(),
            e.sectors.into(),
        ) else {
            continue;
        };
        if e.type_id == 0xEE {
            map.warn(
                Some(table_offset),
                format!("{device} is a GPT protective partition but no valid GPT header was found at LBA 1"),
            );
        }
        let role = if e.is_extended() {
            "extended"
        } else {
            "primary"
        };
        let id = add_partition(
            map,
            vols.disk,
            number,
            &device,
            range.clone(),
            e.type_id,
            role,
            table_offset,
        );
        if e.is_extended() {
            scan_ebr_chain(&ctx, map, id, range, u64::from(e.lba_start), vols)?;
        } else {
            vols.regions.push(Region {
                range,
                parent: id,
                partition: Some(number),
                device,
            });
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn add_partition(
    map: &mut MapBuilder,
    parent: ObjectId,
    number: u32,
    device: &str,
    range: std::ops::Range<u64>,
    type_id: u8,
    role: &'static str,
    entry_offset: u64,
) -> ObjectId {
    volume::add_partition(
        map,
        NewPartition {
            parent,
            number,
            device: device.to_string(),
            range,
            scheme: "mbr",
            role,
            type_id: format!("0x{type_id:02x}"),
            label: None,
            uuid: None,
            detail: format!("mbr {role} partition, type 0x{type_id:02x}"),
            entry_offset,
        },
    )
}

/// Follows the EBR chain inside an extended partition. Each EBR's first slot
/// is a logical partition relative to the EBR itself; its second slot links
/// to the next EBR relative to the start of the extended partition.
fn scan_ebr_chain(
    ctx: &Ctx<'_>,
    map: &mut MapBuilder,
    extended: ObjectId,
    container: std::ops::Range<u64>,
    ext_lba: u64,
    vols: &mut Volumes,
) -> Result<()> {
    let mut seen = HashSet::new();
    let mut ebr_lba = ext_lba;
    // Where the link to the current EBR is stored: the damage to name when
    // that link leads outside the extended partition or back into the chain.
    let mut link_at = container.start;
    let mut number = 5u32;
    for _ in 0..MAX_LOGICAL {
        let offset = ebr_lba.checked_mul(ctx.ss).filter(|&o| o < container.end);
        let Some(offset) = offset else {
            map.warn(
                Some(link_at),
                format!(
                    "EBR at sector {ebr_lba} lies outside the extended partition; chain stopped"
                ),
            );
            return Ok(());
        };
        if !seen.insert(ebr_lba) {
            map.warn(
                Some(link_at),
                format!("EBR chain loops back to sector {ebr_lba}; chain stopped"),
            );
            return Ok(());
        }
        let sector = match ctx.img.read_vec("EBR", offset, ctx.ss) {
            Ok(s) => s,
            Err(e @ Error::Truncated { .. }) => {
                map.warn(Some(offset), format!("{e}; chain stopped"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if le::u16_at(&sector, 510) != 0xAA55 {
            map.warn(Some(offset), "EBR without 0x55AA signature; chain stopped");
            return Ok(());
        }
        let device = ctx.opts.naming.partition_path(number);
        let mut ebr = Object::new(
            Kind::Ebr,
            format!("{} EBR of {device}", ctx.opts.naming.disk_path()),
        );
        ebr.parent = Some(extended);
        ebr.device = Some(ctx.opts.naming.disk_path());
        let ebr_id = map.add_object(ebr);
        map.add_extent(ebr_id, offset..offset + ctx.ss, 0, 0);

        let logical = Entry::parse(&sector, 0);
        if !logical.is_empty() {
            let table_offset = offset + TABLE_OFFSET as u64;
            if let Some(range) = ebr_lba
                .checked_add(logical.lba_start.into())
                .and_then(|lba| {
                    ctx.range(
                        map,
                        &format!("partition {device}"),
                        table_offset,
                        lba,
                        logical.sectors.into(),
                    )
                })
            {
                if range.start < container.start || range.end > container.end {
                    map.warn(
                        Some(table_offset),
                        format!("logical partition {device} lies outside its extended partition"),
                    );
                }
                let id = add_partition(
                    map,
                    extended,
                    number,
                    &device,
                    range.clone(),
                    logical.type_id,
                    "logical",
                    table_offset,
                );
                vols.regions.push(Region {
                    range,
                    parent: id,
                    partition: Some(number),
                    device,
                });
            }
            number += 1;
        }
        let link = Entry::parse(&sector, 1);
        if link.is_empty() || !link.is_extended() {
            return Ok(());
        }
        link_at = offset + (TABLE_OFFSET + ENTRY_SIZE) as u64;
        ebr_lba = ext_lba.saturating_add(link.lba_start.into());
    }
    map.warn(
        Some(container.start),
        format!("more than {MAX_LOGICAL} logical partitions; chain stopped"),
    );
    Ok(())
}
