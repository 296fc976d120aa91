//! Directory entries (`struct ext4_dir_entry_2`). htree index blocks look
//! like entries with inode 0 spanning the block, so one linear parser reads
//! both classic and hashed directories.

use crate::error::{Error, Result};
use crate::ext4::InodeNo;
use crate::image::le;

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub inode: InodeNo,
    pub name: Vec<u8>,
    pub file_type: u8,
}

/// Parses the entries of one directory block (or the inline-data area).
/// `offset` is the absolute byte offset of `block` in the image. Entries
/// before a corrupt one are returned with the error.
pub fn parse_block(block: &[u8], offset: u64, out: &mut Vec<DirEntry>) -> Result<()> {
    let mut pos = 0usize;
    while pos + 8 <= block.len() {
        let inode = le::u32_at(block, pos);
        let raw = le::u16_at(block, pos + 4);
        // 64 KiB blocks encode rec_len in the low two bits too.
        let rec_len = if block.len() >= 65536 && (raw == 0 || raw == 65535) {
            block.len()
        } else {
            usize::from(raw & 0xFFFC) | (usize::from(raw & 3) << 16)
        };
        let name_len = usize::from(le::u8_at(block, pos + 6));
        let file_type = le::u8_at(block, pos + 7);
        let at = offset + pos as u64;
        if rec_len < 8 || rec_len % 4 != 0 {
            return Err(Error::corrupt(
                "directory entry",
                at,
                format!("rec_len {rec_len}"),
            ));
        }
        if pos + rec_len > block.len() {
            return Err(Error::corrupt(
                "directory entry",
                at,
                format!(
                    "rec_len {rec_len} runs past the end of the block ({} bytes left)",
                    block.len() - pos
                ),
            ));
        }
        if inode != 0 {
            if 8 + name_len > rec_len || name_len == 0 {
                return Err(Error::corrupt(
                    "directory entry",
                    at,
                    format!("name length {name_len} does not fit rec_len {rec_len}"),
                ));
            }
            out.push(DirEntry {
                inode,
                name: block[pos + 8..pos + 8 + name_len].to_vec(),
                file_type,
            });
        }
        pos += rec_len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(inode: u32, rec_len: u16, name: &[u8]) -> Vec<u8> {
        let mut e = inode.to_le_bytes().to_vec();
        e.extend(rec_len.to_le_bytes());
        e.push(name.len() as u8);
        e.push(1);
        e.extend(name);
        e.resize(rec_len as usize, 0);
        e
    }

    #[test]
    fn parses_entries() {
        let mut b = entry(2, 12, b".");
        b.extend(entry(12, 1012, b"hello"));
        let mut out = Vec::new();
        parse_block(&b, 0, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].name, b"hello");
    }

    #[test]
    fn zero_rec_len_is_an_error_with_offset() {
        let mut b = entry(2, 12, b".");
        b.extend(entry(12, 0, b"x"));
        b.resize(1024, 0);
        let mut out = Vec::new();
        match parse_block(&b, 4096, &mut out) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, 4096 + 12),
            other => panic!("{other:?}"),
        }
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn rec_len_past_block_is_an_error() {
        let b = entry(2, 12, b".");
        let mut big = b.clone();
        big[4..6].copy_from_slice(&2000u16.to_le_bytes());
        big.resize(1024, 0);
        assert!(parse_block(&big, 0, &mut Vec::new()).is_err());
    }
}
