//! The GUID partition table: protective MBR, primary header at LBA 1 and its
//! entry array, and the backup array and header at the end of the disk.

use crate::error::{Error, Result};
use crate::image::{le, ReadAt};
use crate::map::{Kind, MapBuilder, Object, ObjectId};
use crate::volume::{add_partition, format_guid, NewPartition, Region, VolumeOptions, Volumes};

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The spec's minimum header; anything smaller cannot hold the fields.
const MIN_HEADER_SIZE: u32 = 92;
/// An entry array larger than this is not a partition table anyone made.
const MAX_ARRAY_BYTES: u64 = 4 << 20;

/// True if a GPT header signature sits at LBA 1 for this sector size.
pub fn probe(img: &dyn ReadAt, sector_size: u64) -> bool {
    let mut b = [0u8; 8];
    img.read_exact_at(&mut b, sector_size).is_ok() && &b == SIGNATURE
}

/// A parsed GPT header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub offset: u64,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: String,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
    pub crc_ok: bool,
}

impl Header {
    /// Parses and checks the header in `sector` (read at byte `offset`).
    pub fn parse(sector: &[u8], offset: u64) -> Result<Header> {
        if sector.get(..8) != Some(SIGNATURE.as_slice()) {
            return Err(Error::corrupt(
                "GPT header",
                offset,
                "no \"EFI PART\" signature",
            ));
        }
        let header_size = le::u32_at(sector, 12);
        if header_size < MIN_HEADER_SIZE || header_size as usize > sector.len() {
            return Err(Error::corrupt(
                "GPT header",
                offset + 12,
                format!(
                    "header size {header_size} outside {MIN_HEADER_SIZE}..={}",
                    sector.len()
                ),
            ));
        }
        let stored_crc = le::u32_at(sector, 16);
        let mut copy = sector[..header_size as usize].to_vec();
        copy[16..20].fill(0);
        let crc_ok = crc32fast::hash(&copy) == stored_crc;
        let num_entries = le::u32_at(sector, 80);
        let entry_size = le::u32_at(sector, 84);
        if entry_size < 128 || !entry_size.is_multiple_of(8) || entry_size > 4096 {
            return Err(Error::corrupt(
                "GPT header",
                offset + 84,
                format!(
                    "partition entry size {entry_size} is not a multiple of 8 between 128 and 4096"
                ),
            ));
        }
        let array_bytes = u64::from(num_entries) * u64::from(entry_size);
        if array_bytes > MAX_ARRAY_BYTES {
            return Err(Error::corrupt(
                "GPT header",
                offset + 80,
                format!(
                    "{num_entries} entries of {entry_size} bytes exceed {MAX_ARRAY_BYTES} bytes"
                ),
            ));
        }
        Ok(Header {
            offset,
            my_lba: le::u64_at(sector, 24),
            alternate_lba: le::u64_at(sector, 32),
            first_usable: le::u64_at(sector, 40),
            last_usable: le::u64_at(sector, 48),
            disk_guid: format_guid(sector.get(56..72).unwrap_or(&[])),
            entries_lba: le::u64_at(sector, 72),
            num_entries,
            entry_size,
            entries_crc: le::u32_at(sector, 88),
            crc_ok,
        })
    }

    fn array_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u32,
    pub type_guid: String,
    pub unique_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

/// Parses the used entries of an entry array.
pub fn parse_entries(array: &[u8], header: &Header) -> Vec<Entry> {
    let size = header.entry_size as usize;
    array
        .chunks_exact(size)
        .take(header.num_entries as usize)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|&b| b != 0))
        .map(|(i, e)| {
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            Entry {
                index: i as u32,
                type_guid: format_guid(&e[0..16]),
                unique_guid: format_guid(&e[16..32]),
                first_lba: le::u64_at(e, 32),
                last_lba: le::u64_at(e, 40),
                name: String::from_utf16_lossy(&units),
            }
        })
        .collect()
}

/// Human name for well-known partition type GUIDs.
pub fn type_name(guid: &str) -> Option<&'static str> {
    Some(match guid {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        _ => return None,
    })
}

fn read_header(img: &dyn ReadAt, lba: u64, ss: u64) -> Result<Header> {
    let offset = lba
        .checked_mul(ss)
        .ok_or_else(|| Error::corrupt("GPT header", 0, format!("LBA {lba} overflows")))?;
    let sector = img.read_vec("GPT header", offset, ss)?;
    Header::parse(&sector, offset)
}

pub fn scan(
    img: &dyn ReadAt,
    map: &mut MapBuilder,
    opts: &VolumeOptions,
    vols: &mut Volumes,
) -> Result<()> {
    let ss = vols.sector_size;
    let size = img.size();
    let last_lba = (size / ss).saturating_sub(1);
    let disk = opts.naming.disk_path();

    let mut pmbr = Object::new(Kind::Mbr, format!("{disk} protective MBR"));
    pmbr.parent = Some(vols.disk);
    pmbr.device = Some(disk.clone());
    let pmbr = map.add_object(pmbr);
    map.add_extent(pmbr, 0..ss, 0, 0);

    let primary = read_header(img, 1, ss)?;
    if !primary.crc_ok {
        map.warn(
            Some(primary.offset + 16),
            "primary GPT header checksum does not match",
        );
    }
    add_structure(
        map,
        vols.disk,
        Kind::GptHeader,
        format!("{disk} GPT header"),
        primary.offset,
        ss,
    );

    let backup = if primary.alternate_lba > last_lba {
        map.warn(
            Some(primary.offset + 32),
            format!(
                "backup GPT header LBA {} is past the end of the disk (last LBA {last_lba})",
                primary.alternate_lba
            ),
        );
        None
    } else {
        match read_header(img, primary.alternate_lba, ss) {
            Ok(h) => Some(h),
            Err(e) => {
                map.warn(e.offset(), format!("backup GPT header: {e}"));
                None
            }
        }
    };

    // The primary table is authoritative; the backup is used when the
    // primary entry array fails its checksum and the backup's passes.
    let mut entries = read_array(
        img,
        map,
        &primary,
        ss,
        vols.disk,
        &format!("{disk} GPT entries"),
    )?;
    if let Some(b) = &backup {
        add_structure(
            map,
            vols.disk,
            Kind::GptHeader,
            format!("{disk} GPT backup header"),
            b.offset,
            ss,
        );
        match read_array(
            img,
            map,
            b,
            ss,
            vols.disk,
            &format!("{disk} GPT backup entries"),
        ) {
            Ok(backup_entries) => {
                if entries.is_none() {
                    entries = backup_entries;
                }
            }
            Err(e) => map.warn(e.offset(), format!("backup GPT entries: {e}")),
        }
    }
    let Some(entries) = entries else {
        map.warn(
            Some(primary.offset),
            "no GPT entry array passes its checksum; partitions not mapped",
        );
        return Ok(());
    };

    for e in entries {
        let number = e.index + 1;
        let device = opts.naming.partition_path(number);
        let entry_offset = primary.entries_lba.saturating_mul(ss)
            + u64::from(e.index) * u64::from(primary.entry_size);
        let range = e
            .first_lba
            .checked_mul(ss)
            .zip(e.last_lba.checked_add(1).and_then(|l| l.checked_mul(ss)));
        let Some((start, end)) = range.filter(|(s, e)| s < e) else {
            map.warn(
                Some(entry_offset),
                format!(
                    "partition {device} has first LBA {} after last LBA {}",
                    e.first_lba, e.last_lba
                ),
            );
            continue;
        };
        if start >= size {
            map.warn(
                Some(entry_offset),
                format!("partition {device} starts past the end of the disk; ignored"),
            );
            continue;
        }
        if end > size {
            map.warn(Some(entry_offset), format!("partition {device} ends at byte {end}, past the end of the disk ({size} bytes); clipped"));
        }
        let range = start..end.min(size);
        let type_desc = type_name(&e.type_guid).map_or(e.type_guid.clone(), str::to_string);
        let id = add_partition(
            map,
            NewPartition {
                parent: vols.disk,
                number,
                device: device.clone(),
                range: range.clone(),
                scheme: "gpt",
                role: "primary",
                type_id: e.type_guid.clone(),
                label: (!e.name.is_empty()).then(|| e.name.clone()),
                uuid: Some(e.unique_guid.clone()),
                detail: format!("gpt partition, type {type_desc}, name {:?}", e.name),
                entry_offset,
            },
        );
        vols.regions.push(Region {
            range,
            parent: id,
            partition: Some(number),
            device,
        });
    }
    Ok(())
}

fn add_structure(
    map: &mut MapBuilder,
    disk: ObjectId,
    kind: Kind,
    name: String,
    offset: u64,
    len: u64,
) -> ObjectId {
    let mut obj = Object::new(kind, name);
    obj.parent = Some(disk);
    obj.device = map.object(disk).device.clone();
    let id = map.add_object(obj);
    map.add_extent(id, offset..offset.saturating_add(len), 0, 0);
    id
}

/// Reads an entry array and adds it to the map. `Ok(None)` when its
/// checksum fails (warned).
fn read_array(
    img: &dyn ReadAt,
    map: &mut MapBuilder,
    header: &Header,
    ss: u64,
    disk: ObjectId,
    name: &str,
) -> Result<Option<Vec<Entry>>> {
    let offset = header.entries_lba.checked_mul(ss).ok_or_else(|| {
        Error::corrupt(
            "GPT header",
            header.offset + 72,
            format!("entry array LBA {} overflows", header.entries_lba),
        )
    })?;
    let bytes = header.array_bytes();
    let array = img.read_vec("GPT entry array", offset, bytes)?;
    let padded = bytes.div_ceil(ss) * ss;
    add_structure(
        map,
        disk,
        Kind::GptEntries,
        name.to_string(),
        offset,
        padded,
    );
    if crc32fast::hash(&array) != header.entries_crc {
        map.warn(Some(offset), format!("{name}: checksum does not match"));
        return Ok(None);
    }
    Ok(Some(parse_entries(&array, header)))
}
