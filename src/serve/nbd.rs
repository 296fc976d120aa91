//! The NBD wire protocol, as far as `bmap serve` speaks it: constants from
//! the protocol document (`doc/proto.md` of the NBD project), and pure
//! functions that encode and decode the handshake, option haggling and
//! transmission messages over byte buffers. Nothing here does I/O, so every
//! decoder can be fed hostile bytes in unit tests.
//!
//! All integers on the wire are big-endian.

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: follows [`NBD_MAGIC`] in the newstyle greeting and starts
/// every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Starts every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// NBD_INFO_* types inside an NBD_REP_INFO reply.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;

// Errors in simple replies (Linux errno values, as the protocol fixes them).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;

/// The name nbdkit's log filter (and errno) gives an NBD error.
pub fn error_name(e: u32) -> &'static str {
    match e {
        0 => "OK",
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        _ => "EIO",
    }
}

/// Block size constraints advertised in `NBD_INFO_BLOCK_SIZE`: any
/// alignment works (reads are positional), 4 KiB is what a page cache
/// likes, and 32 MiB is both the largest request accepted and the largest
/// buffer a connection ever allocates.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_REQUEST: u32 = 32 << 20;

/// Longest option payload read. The longest legitimate one is NBD_OPT_GO
/// with a 4096-byte name (the protocol's limit) and a few info requests;
/// anything longer is refused without being read into memory.
pub const MAX_OPTION_LEN: u32 = 16 * 1024;
/// Longest export name the protocol allows.
pub const MAX_NAME_LEN: usize = 4096;

/// Size of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Size of a simple reply header.
pub const REPLY_LEN: usize = 16;

/// Why bytes from a client cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic 0x{0:x} (not an NBD client, or the stream lost sync)")]
    BadMagic(u64),
    #[error("unknown client flags 0x{0:x}")]
    ClientFlags(u32),
    #[error("option {option} carries {len} bytes, more than the {max} accepted")]
    OptionTooLong { option: u32, len: u32, max: u32 },
    #[error("malformed option {option}: {what}")]
    BadOption { option: u32, what: &'static str },
}

/// The server's 18-byte greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// What the client's 4 flag bytes ask for: fixed newstyle, no zeroes.
/// Unknown bits mean a client we do not understand; the protocol says to
/// close the connection.
pub fn parse_client_flags(b: [u8; 4]) -> Result<u32, ProtoError> {
    let f = u32::from_be_bytes(b);
    if f & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::ClientFlags(f));
    }
    Ok(f)
}

/// An option header: `IHAVEOPT`, option number, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

/// Parses an option header. A payload longer than [`MAX_OPTION_LEN`] is an
/// error: the caller refuses it and closes, never allocating for it.
pub fn parse_option_header(b: &[u8; 16]) -> Result<OptionHeader, ProtoError> {
    let magic = be64(&b[..8]);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic(magic));
    }
    let option = be32(&b[8..12]);
    let len = be32(&b[12..16]);
    if len > MAX_OPTION_LEN {
        return Err(ProtoError::OptionTooLong {
            option,
            len,
            max: MAX_OPTION_LEN,
        });
    }
    Ok(OptionHeader { option, len })
}

/// Appends an option reply (header and payload) to `out`.
pub fn option_reply(out: &mut Vec<u8>, option: u32, reply: u32, payload: &[u8]) {
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    // Payloads are built here, from our own short strings and numbers.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The payload of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and the
/// information types requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: Vec<u8>,
    pub infos: Vec<u16>,
}

/// Parses an `NBD_OPT_INFO`/`NBD_OPT_GO` payload, checking every length
/// against the bytes actually present.
pub fn parse_info_request(option: u32, data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let bad = |what| ProtoError::BadOption { option, what };
    let name_len = data.get(..4).map(be32).ok_or(bad("shorter than 4 bytes"))? as usize;
    if name_len > MAX_NAME_LEN {
        return Err(bad("export name longer than 4096 bytes"));
    }
    let rest = &data[4..];
    let name = rest
        .get(..name_len)
        .ok_or(bad("export name length past the end of the option"))?;
    let rest = &rest[name_len..];
    let n = rest
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(bad("no count of information requests"))? as usize;
    let rest = &rest[2..];
    if rest.len() != n * 2 {
        return Err(bad(
            "count of information requests does not match its length",
        ));
    }
    let infos = rest
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest {
        name: name.to_vec(),
        infos,
    })
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..].copy_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_BLOCK_SIZE` with [`MIN_BLOCK`], [`PREFERRED_BLOCK`] and
/// [`MAX_REQUEST`].
pub fn info_block_size() -> [u8; 14] {
    let mut b = [0u8; 14];
    b[..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&MIN_BLOCK.to_be_bytes());
    b[6..10].copy_from_slice(&PREFERRED_BLOCK.to_be_bytes());
    b[10..].copy_from_slice(&MAX_REQUEST.to_be_bytes());
    b
}

/// `NBD_REP_SERVER` payload for `NBD_OPT_LIST`: one export name.
pub fn list_entry(name: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + name.len());
    b.extend_from_slice(&(name.len() as u32).to_be_bytes());
    b.extend_from_slice(name);
    b
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes
/// unless the client agreed to `NO_ZEROES`.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + 124);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.resize(10 + 124, 0);
    }
    b
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Parses a request header; a wrong magic means the stream is lost.
pub fn parse_request(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let magic = be32(&b[..4]);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic(u64::from(magic)));
    }
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        kind: u16::from_be_bytes([b[6], b[7]]),
        cookie: be64(&b[8..16]),
        offset: be64(&b[16..24]),
        len: be32(&b[24..28]),
    })
}

/// Writes a simple reply header into `b`.
pub fn simple_reply(b: &mut [u8; REPLY_LEN], error: u32, cookie: u64) {
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..].copy_from_slice(&cookie.to_be_bytes());
}

/// Checks a request's range against the export: `Ok` or the NBD error to
/// answer with. Lengths over [`MAX_REQUEST`] are `EINVAL` for every
/// command that moves data (the client was told the limit); a range past
/// the end is `ENOSPC` for commands that write and `EINVAL` otherwise, as
/// the protocol asks.
pub fn check_range(r: &Request, size: u64) -> Result<(), u32> {
    if r.len > MAX_REQUEST && matches!(r.kind, CMD_READ | CMD_WRITE) {
        return Err(EINVAL);
    }
    let writes = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    match r.offset.checked_add(u64::from(r.len)) {
        Some(end) if end <= size => Ok(()),
        _ if writes => Err(ENOSPC),
        _ => Err(EINVAL),
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_flags() {
        let g = greeting();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags([0, 0, 0, 3]), Ok(3));
        assert_eq!(parse_client_flags([0, 0, 0, 1]), Ok(1));
        assert!(parse_client_flags([0, 0, 0, 4]).is_err());
        assert!(parse_client_flags(*b"GET ").is_err());
    }

    #[test]
    fn option_headers() {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(b"IHAVEOPT");
        b[8..12].copy_from_slice(&7u32.to_be_bytes());
        b[12..].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(
            parse_option_header(&b),
            Ok(OptionHeader { option: 7, len: 10 })
        );
        b[12..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_option_header(&b),
            Err(ProtoError::OptionTooLong { .. })
        ));
        b[0] = b'X';
        assert!(matches!(
            parse_option_header(&b),
            Err(ProtoError::BadMagic(_))
        ));
    }

    #[test]
    fn option_reply_layout() {
        let mut out = Vec::new();
        option_reply(&mut out, OPT_GO, REP_ACK, &[]);
        assert_eq!(out.len(), 20);
        assert_eq!(&out[..8], &OPT_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[8..12], &7u32.to_be_bytes());
        assert_eq!(&out[12..16], &1u32.to_be_bytes());
        assert_eq!(&out[16..], &[0, 0, 0, 0]);
    }

    fn info_payload(name: &[u8], infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    #[test]
    fn info_requests() {
        let d = info_payload(b"disk", &[INFO_BLOCK_SIZE, INFO_NAME]);
        assert_eq!(
            parse_info_request(OPT_GO, &d),
            Ok(InfoRequest {
                name: b"disk".to_vec(),
                infos: vec![3, 1]
            })
        );
        // Every truncation is an error, never a panic.
        for cut in 0..d.len() {
            assert!(parse_info_request(OPT_GO, &d[..cut]).is_err(), "cut {cut}");
        }
        // A name length far past the payload.
        let mut d = info_payload(b"", &[]);
        d[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(OPT_GO, &d).is_err());
        // Trailing bytes.
        let mut d = info_payload(b"", &[]);
        d.push(0);
        assert!(parse_info_request(OPT_GO, &d).is_err());
    }

    #[test]
    fn info_blocks() {
        let e = info_export(0x4000000, FLAG_HAS_FLAGS | FLAG_READ_ONLY);
        assert_eq!(&e[..2], &[0, 0]);
        assert_eq!(&e[2..10], &0x4000000u64.to_be_bytes());
        assert_eq!(&e[10..], &[0, 3]);
        let b = info_block_size();
        assert_eq!(&b[..2], &[0, 3]);
        assert_eq!(&b[2..6], &1u32.to_be_bytes());
        assert_eq!(&b[6..10], &4096u32.to_be_bytes());
        assert_eq!(&b[10..], &(32u32 << 20).to_be_bytes());
    }

    #[test]
    fn export_name_reply_zeroes() {
        assert_eq!(export_name_reply(1, 1, true).len(), 10);
        let r = export_name_reply(1, 1, false);
        assert_eq!(r.len(), 134);
        assert!(r[10..].iter().all(|&b| b == 0));
    }

    fn request(kind: u16, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&kind.to_be_bytes());
        b[8..16].copy_from_slice(&0xdead_beefu64.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..].copy_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn requests_and_ranges() {
        let r = parse_request(&request(CMD_READ, 4096, 512)).unwrap();
        assert_eq!(r.cookie, 0xdead_beef);
        assert_eq!((r.kind, r.offset, r.len), (CMD_READ, 4096, 512));
        assert_eq!(check_range(&r, 8192), Ok(()));
        assert_eq!(check_range(&r, 4096), Err(EINVAL));
        let w = parse_request(&request(CMD_WRITE, 4096, 512)).unwrap();
        assert_eq!(check_range(&w, 4096), Err(ENOSPC));
        let huge = parse_request(&request(CMD_READ, 0, u32::MAX)).unwrap();
        assert_eq!(check_range(&huge, u64::MAX), Err(EINVAL));
        let wrap = parse_request(&request(CMD_READ, u64::MAX, 1)).unwrap();
        assert_eq!(check_range(&wrap, u64::MAX), Err(EINVAL));
        let trim = parse_request(&request(CMD_TRIM, 0, u32::MAX)).unwrap();
        assert_eq!(check_range(&trim, 1 << 33), Ok(()));
        let mut bad = request(CMD_READ, 0, 1);
        bad[0] = 0;
        assert!(parse_request(&bad).is_err());
    }

    #[test]
    fn reply_header() {
        let mut b = [0u8; REPLY_LEN];
        simple_reply(&mut b, EINVAL, 7);
        assert_eq!(&b[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&b[4..8], &22u32.to_be_bytes());
        assert_eq!(&b[8..], &7u64.to_be_bytes());
    }
}
