//! The ext2/3/4 superblock (`struct ext4_super_block`), 1024 bytes at
//! byte 1024 of the filesystem.

use crate::error::{Error, Result};
use crate::image::{le, ReadAt};

pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 1024;
pub const MAGIC: u16 = 0xEF53;

pub mod compat {
    pub const HAS_JOURNAL: u32 = 0x4;
    pub const EXT_ATTR: u32 = 0x8;
    pub const RESIZE_INODE: u32 = 0x10;
    pub const DIR_INDEX: u32 = 0x20;
    pub const SPARSE_SUPER2: u32 = 0x200;
    pub const ORPHAN_FILE: u32 = 0x1000;
}
pub mod incompat {
    pub const COMPRESSION: u32 = 0x1;
    pub const FILETYPE: u32 = 0x2;
    pub const RECOVER: u32 = 0x4;
    pub const JOURNAL_DEV: u32 = 0x8;
    pub const META_BG: u32 = 0x10;
    pub const EXTENTS: u32 = 0x40;
    pub const BIT64: u32 = 0x80;
    pub const MMP: u32 = 0x100;
    pub const FLEX_BG: u32 = 0x200;
    pub const EA_INODE: u32 = 0x400;
    pub const DIRDATA: u32 = 0x1000;
    pub const CSUM_SEED: u32 = 0x2000;
    pub const LARGEDIR: u32 = 0x4000;
    pub const INLINE_DATA: u32 = 0x8000;
    pub const ENCRYPT: u32 = 0x10000;
    pub const CASEFOLD: u32 = 0x20000;
    /// Everything this walker understands well enough to map.
    pub const KNOWN: u32 = FILETYPE
        | RECOVER
        | META_BG
        | EXTENTS
        | BIT64
        | MMP
        | FLEX_BG
        | EA_INODE
        | CSUM_SEED
        | LARGEDIR
        | INLINE_DATA
        | ENCRYPT
        | CASEFOLD;
}
pub mod ro_compat {
    pub const SPARSE_SUPER: u32 = 0x1;
    pub const LARGE_FILE: u32 = 0x2;
    pub const HUGE_FILE: u32 = 0x8;
    pub const GDT_CSUM: u32 = 0x10;
    pub const BIGALLOC: u32 = 0x200;
    pub const METADATA_CSUM: u32 = 0x400;
}

/// The fields bmap needs, with readable names; values are validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks_count: u64,
    pub free_inodes_count: u32,
    pub first_data_block: u64,
    pub log_block_size: u32,
    pub blocks_per_group: u64,
    pub inodes_per_group: u32,
    pub state: u16,
    pub rev_level: u32,
    pub first_ino: u32,
    pub inode_size: u64,
    /// Which group this copy lives in (0 for the primary).
    pub block_group_nr: u16,
    pub feature_compat: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub uuid: [u8; 16],
    pub volume_name: String,
    pub reserved_gdt_blocks: u64,
    pub journal_uuid: [u8; 16],
    pub journal_inum: u32,
    pub journal_dev: u32,
    pub desc_size: u64,
    pub first_meta_bg: u64,
    pub mmp_block: u64,
    pub backup_bgs: [u32; 2],
    pub usr_quota_inum: u32,
    pub grp_quota_inum: u32,
    pub prj_quota_inum: u32,
    pub orphan_file_inum: u32,
}

impl Superblock {
    /// Parses and checks a superblock. `offset` is its absolute byte offset
    /// in the image, used in errors.
    pub fn parse(b: &[u8], offset: u64) -> Result<Superblock> {
        let corrupt = |field_off: u64, detail: String| {
            Error::corrupt("ext superblock", offset + field_off, detail)
        };
        if b.len() < SUPERBLOCK_SIZE {
            return Err(corrupt(0, format!("only {} bytes", b.len())));
        }
        let magic = le::u16_at(b, 0x38);
        if magic != MAGIC {
            return Err(corrupt(
                0x38,
                format!("magic 0x{magic:04x}, expected 0x{MAGIC:04x}"),
            ));
        }
        let feature_compat = le::u32_at(b, 0x5C);
        let feature_incompat = le::u32_at(b, 0x60);
        let feature_ro_compat = le::u32_at(b, 0x64);
        let is_64bit = feature_incompat & incompat::BIT64 != 0;
        let log_block_size = le::u32_at(b, 0x18);
        if log_block_size > 6 {
            return Err(corrupt(
                0x18,
                format!("block size 2^(10+{log_block_size}) is larger than 64 KiB"),
            ));
        }
        let block_size = 1024u64 << log_block_size;
        if feature_ro_compat & ro_compat::BIGALLOC != 0 {
            return Err(Error::unsupported(
                "ext4 feature",
                offset + 0x64,
                "bigalloc (cluster allocation) is not supported yet; the filesystem is not mapped",
            ));
        }
        if feature_incompat & incompat::JOURNAL_DEV != 0 {
            return Err(Error::unsupported(
                "ext4 feature",
                offset + 0x60,
                "this is an external journal device, not a filesystem",
            ));
        }
        let unknown = feature_incompat & !incompat::KNOWN;
        if unknown != 0 {
            return Err(Error::unsupported(
                "ext4 feature",
                offset + 0x60,
                format!("incompatible feature bits 0x{unknown:x} are not understood"),
            ));
        }
        let hi = |lo_off: usize, hi_off: usize| {
            let lo = u64::from(le::u32_at(b, lo_off));
            if is_64bit {
                lo | u64::from(le::u32_at(b, hi_off)) << 32
            } else {
                lo
            }
        };
        let blocks_count = hi(0x4, 0x150);
        let first_data_block = u64::from(le::u32_at(b, 0x14));
        if blocks_count == 0 || first_data_block >= blocks_count {
            return Err(corrupt(
                0x4,
                format!("block count {blocks_count} with first data block {first_data_block}"),
            ));
        }
        if first_data_block > 1 || (block_size == 1024 && first_data_block != 1) {
            return Err(corrupt(
                0x14,
                format!("first data block {first_data_block} with {block_size}-byte blocks"),
            ));
        }
        let blocks_per_group = u64::from(le::u32_at(b, 0x20));
        if blocks_per_group < 8 || blocks_per_group > 8 * block_size || blocks_per_group % 8 != 0 {
            return Err(corrupt(
                0x20,
                format!("{blocks_per_group} blocks per group (block size {block_size})"),
            ));
        }
        let inodes_per_group = le::u32_at(b, 0x28);
        if inodes_per_group == 0 || u64::from(inodes_per_group) > 8 * block_size {
            return Err(corrupt(
                0x28,
                format!("{inodes_per_group} inodes per group (block size {block_size})"),
            ));
        }
        let rev_level = le::u32_at(b, 0x4C);
        let (first_ino, inode_size) = if rev_level == 0 {
            (11, 128)
        } else {
            (le::u32_at(b, 0x54), u64::from(le::u16_at(b, 0x58)))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            return Err(corrupt(0x58, format!("inode size {inode_size}")));
        }
        let desc_size = if is_64bit {
            let d = u64::from(le::u16_at(b, 0xFE));
            if !(64..=1024).contains(&d) || !d.is_power_of_two() {
                return Err(corrupt(
                    0xFE,
                    format!("group descriptor size {d} with the 64bit feature"),
                ));
            }
            d
        } else {
            32
        };
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut journal_uuid = [0; 16];
        journal_uuid.copy_from_slice(&b[0xD0..0xE0]);
        let name = &b[0x78..0x88];
        let name_len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        Ok(Superblock {
            inodes_count: le::u32_at(b, 0x0),
            blocks_count,
            free_blocks_count: hi(0xC, 0x158),
            free_inodes_count: le::u32_at(b, 0x10),
            first_data_block,
            log_block_size,
            blocks_per_group,
            inodes_per_group,
            state: le::u16_at(b, 0x3A),
            rev_level,
            first_ino,
            inode_size,
            block_group_nr: le::u16_at(b, 0x5A),
            feature_compat,
            feature_incompat,
            feature_ro_compat,
            uuid,
            volume_name: String::from_utf8_lossy(&name[..name_len]).into_owned(),
            reserved_gdt_blocks: u64::from(le::u16_at(b, 0xCE)),
            journal_uuid,
            journal_inum: le::u32_at(b, 0xE0),
            journal_dev: le::u32_at(b, 0xE4),
            desc_size,
            first_meta_bg: u64::from(le::u32_at(b, 0x104)),
            mmp_block: le::u64_at(b, 0x168),
            backup_bgs: [le::u32_at(b, 0x24C), le::u32_at(b, 0x250)],
            usr_quota_inum: le::u32_at(b, 0x240),
            grp_quota_inum: le::u32_at(b, 0x244),
            prj_quota_inum: le::u32_at(b, 0x26C),
            orphan_file_inum: le::u32_at(b, 0x280),
        })
    }

    pub fn block_size(&self) -> u64 {
        1024 << self.log_block_size
    }

    pub fn has_compat(&self, bit: u32) -> bool {
        self.feature_compat & bit != 0
    }
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.feature_incompat & bit != 0
    }
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.feature_ro_compat & bit != 0
    }

    /// Group descriptor checksums make the UNINIT flags trustworthy.
    pub fn has_group_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::GDT_CSUM) || self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// Number of block groups.
    pub fn groups(&self) -> u64 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// First block of a group.
    pub fn group_first_block(&self, group: u64) -> u64 {
        self.first_data_block + group * self.blocks_per_group
    }

    /// Blocks in a group (the last one may be short).
    pub fn group_blocks(&self, group: u64) -> u64 {
        let first = self.group_first_block(group);
        self.blocks_per_group
            .min(self.blocks_count.saturating_sub(first))
    }

    /// Does this group hold a superblock copy (and, without meta_bg, a
    /// group descriptor copy)? sparse_super: 0, 1 and powers of 3, 5, 7;
    /// sparse_super2: the two groups the superblock names.
    pub fn group_has_super(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if self.has_compat(compat::SPARSE_SUPER2) {
            return self
                .backup_bgs
                .iter()
                .any(|&g| g != 0 && u64::from(g) == group);
        }
        if !self.has_ro_compat(ro_compat::SPARSE_SUPER) || group == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut n = base;
            while n < group {
                n *= base;
            }
            n == group
        })
    }

    /// Descriptors per block.
    pub fn descs_per_block(&self) -> u64 {
        self.block_size() / self.desc_size
    }

    /// Blocks the full descriptor table takes.
    pub fn gdt_blocks(&self) -> u64 {
        self.groups().div_ceil(self.descs_per_block())
    }

    /// Feature names as dumpe2fs prints them.
    pub fn feature_names(&self) -> Vec<&'static str> {
        const COMPAT: &[(u32, &str)] = &[
            (0x1, "dir_prealloc"),
            (0x2, "imagic_inodes"),
            (0x4, "has_journal"),
            (0x8, "ext_attr"),
            (0x10, "resize_inode"),
            (0x20, "dir_index"),
            (0x40, "lazy_bg"),
            (0x200, "sparse_super2"),
            (0x400, "fast_commit"),
            (0x800, "stable_inodes"),
            (0x1000, "orphan_file"),
        ];
        const INCOMPAT: &[(u32, &str)] = &[
            (0x1, "compression"),
            (0x2, "filetype"),
            (0x4, "needs_recovery"),
            (0x8, "journal_dev"),
            (0x10, "meta_bg"),
            (0x40, "extent"),
            (0x80, "64bit"),
            (0x100, "mmp"),
            (0x200, "flex_bg"),
            (0x400, "ea_inode"),
            (0x1000, "dirdata"),
            (0x2000, "metadata_csum_seed"),
            (0x4000, "large_dir"),
            (0x8000, "inline_data"),
            (0x10000, "encrypt"),
            (0x20000, "casefold"),
        ];
        const RO: &[(u32, &str)] = &[
            (0x1, "sparse_super"),
            (0x2, "large_file"),
            (0x8, "huge_file"),
            (0x10, "uninit_bg"),
            (0x20, "dir_nlink"),
            (0x40, "extra_isize"),
            (0x100, "quota"),
            (0x200, "bigalloc"),
            (0x400, "metadata_csum"),
            (0x1000, "read-only"),
            (0x2000, "project"),
            (0x8000, "verity"),
            (0x10000, "orphan_present"),
        ];
        let pick = |set: u32, table: &[(u32, &'static str)]| {
            table
                .iter()
                .filter(move |(bit, _)| set & bit != 0)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
        };
        let mut v = pick(self.feature_compat, COMPAT);
        v.extend(pick(self.feature_incompat, INCOMPAT));
        v.extend(pick(self.feature_ro_compat, RO));
        v
    }

    /// "ext2", "ext3" or "ext4", by the features the way blkid decides.
    pub fn fs_type(&self) -> &'static str {
        let ext4_only = incompat::EXTENTS
            | incompat::BIT64
            | incompat::FLEX_BG
            | incompat::INLINE_DATA
            | incompat::MMP;
        if self.feature_incompat & ext4_only != 0
            || self.has_ro_compat(
                ro_compat::HUGE_FILE | ro_compat::GDT_CSUM | ro_compat::METADATA_CSUM,
            )
        {
            "ext4"
        } else if self.has_compat(compat::HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        }
    }
}

/// Offsets (from the filesystem's start) where group 1's superblock copy
/// sits for each block size when groups have mke2fs's default 8 × block
/// size blocks — where e2fsck looks when the primary is damaged.
pub fn backup_candidates() -> impl Iterator<Item = (u64, u32)> {
    (0..=6u32).map(|log| {
        let bs = 1024u64 << log;
        let first_data_block = u64::from(log == 0);
        ((first_data_block + 8 * bs) * bs, log)
    })
}

/// Reads the superblock of the filesystem starting at `fs_start`. When the
/// primary copy is damaged, group 1's backup is used if one is found (its
/// offset is returned); otherwise the primary's error is.
pub fn read(img: &dyn ReadAt, fs_start: u64) -> Result<(Superblock, Option<u64>)> {
    let primary_at = fs_start + SUPERBLOCK_OFFSET;
    let primary = img
        .read_vec("ext superblock", primary_at, SUPERBLOCK_SIZE as u64)
        .and_then(|b| Superblock::parse(&b, primary_at));
    let err = match primary {
        Ok(sb) => return Ok((sb, None)),
        Err(e) => e,
    };
    for (offset, log) in backup_candidates() {
        let Some(at) = fs_start.checked_add(offset) else {
            continue;
        };
        let Ok(bytes) = img.read_vec("ext superblock backup", at, SUPERBLOCK_SIZE as u64) else {
            continue;
        };
        if let Ok(sb) = Superblock::parse(&bytes, at) {
            if sb.log_block_size == log && sb.block_group_nr == 1 {
                return Ok((sb, Some(at)));
            }
        }
    }
    Err(err)
}

/// True if an ext2/3/4 superblock, primary or group 1's backup, is found for
/// a filesystem starting at `fs_start`.
pub fn probe(img: &dyn ReadAt, fs_start: u64) -> bool {
    let mut magic = [0u8; 2];
    let primary = img
        .read_exact_at(
            &mut magic,
            fs_start.saturating_add(SUPERBLOCK_OFFSET + 0x38),
        )
        .is_ok()
        && u16::from_le_bytes(magic) == MAGIC;
    primary
        || backup_candidates().any(|(offset, log)| {
            let mut b = [0u8; 0x5C];
            fs_start
                .checked_add(offset)
                .is_some_and(|at| img.read_exact_at(&mut b, at).is_ok())
                && le::u16_at(&b, 0x38) == MAGIC
                && le::u32_at(&b, 0x18) == log
                && le::u16_at(&b, 0x5A) == 1
        })
}

/// Formats a UUID as blkid does.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE];
        b[0x38..0x3A].copy_from_slice(&MAGIC.to_le_bytes());
        b[0x4..0x8].copy_from_slice(&8192u32.to_le_bytes());
        b[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        b[0x20..0x24].copy_from_slice(&32768u32.to_le_bytes());
        b[0x28..0x2C].copy_from_slice(&2048u32.to_le_bytes());
        b[0x4C..0x50].copy_from_slice(&1u32.to_le_bytes());
        b[0x54..0x58].copy_from_slice(&11u32.to_le_bytes());
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        b
    }

    #[test]
    fn parses_minimal() {
        let sb = Superblock::parse(&minimal(), 1024).unwrap();
        assert_eq!(sb.block_size(), 4096);
        assert_eq!(sb.groups(), 1);
        assert_eq!(sb.fs_type(), "ext2");
    }

    #[test]
    fn wrong_magic_names_its_offset() {
        let mut b = minimal();
        b[0x38] = 0;
        match Superblock::parse(&b, 1024) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, 1024 + 0x38),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absurd_fields_are_refused() {
        for (off, bytes) in [
            (0x18, 30u32.to_le_bytes()),
            (0x20, 0u32.to_le_bytes()),
            (0x28, 0u32.to_le_bytes()),
            (0x4, 0u32.to_le_bytes()),
        ] {
            let mut b = minimal();
            b[off..off + 4].copy_from_slice(&bytes);
            assert!(
                matches!(Superblock::parse(&b, 0), Err(Error::Corrupt { .. })),
                "field 0x{off:x}"
            );
        }
    }

    #[test]
    fn sparse_super_groups() {
        let mut b = minimal();
        b[0x64..0x68].copy_from_slice(&ro_compat::SPARSE_SUPER.to_le_bytes());
        let sb = Superblock::parse(&b, 0).unwrap();
        let with: Vec<u64> = (0..60).filter(|&g| sb.group_has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
