//! The fixed newstyle handshake: greeting, client flags, option haggling and option replies.
//!
//! Flow (server side): send [`server_greeting`]; decode [`decode_client_flags`]; then loop on
//! [`decode_option`] and answer each [`ClientOption`] with the encoders below, until
//! `NBD_OPT_EXPORT_NAME` ([`encode_export_name_reply`]) or a successful `NBD_OPT_GO`
//! ([`encode_go_replies`]) moves the connection to transmission, or `NBD_OPT_ABORT` ends it.

use crate::{be_u16, be_u32, be_u64, NbdError};

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, sent by the server in the greeting and by the client before every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic that starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server may omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not expect the 124 zero bytes.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

/// Length of the server greeting.
pub const GREETING_LEN: usize = 18;
/// Length of the client flags.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Length of an option header (`IHAVEOPT`, option, data length).
pub const OPTION_HEADER_LEN: usize = 16;
/// A sensible bound for option data: names SHOULD be at most 256 bytes.
pub const DEFAULT_MAX_OPTION_LEN: u32 = 4096;
/// Number of zero bytes after the `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was agreed.
pub const EXPORT_NAME_ZEROES: usize = 124;

/// Option codes (`NBD_OPT_*`).
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`: choose an export, no reply on error (the server closes).
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`: the client gives up.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`: list exports.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_PEEK_EXPORT` (withdrawn).
    pub const PEEK_EXPORT: u32 = 4;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`: describe an export.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT`.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT`.
    pub const SET_META_CONTEXT: u32 = 10;
    /// `NBD_OPT_EXTENDED_HEADERS`.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`).
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`: one export of a `NBD_OPT_LIST`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`: one information item of `NBD_OPT_INFO`/`NBD_OPT_GO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// The bit set on every error reply.
    pub const ERR_BIT: u32 = 1 << 31;
    /// `NBD_REP_ERR_UNSUP`: unknown or unsupported option.
    pub const ERR_UNSUP: u32 = ERR_BIT | 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = ERR_BIT | 2;
    /// `NBD_REP_ERR_INVALID`: malformed option.
    pub const ERR_INVALID: u32 = ERR_BIT | 3;
    /// `NBD_REP_ERR_PLATFORM`.
    pub const ERR_PLATFORM: u32 = ERR_BIT | 4;
    /// `NBD_REP_ERR_TLS_REQD`.
    pub const ERR_TLS_REQD: u32 = ERR_BIT | 5;
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    pub const ERR_UNKNOWN: u32 = ERR_BIT | 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = ERR_BIT | 7;
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERR_BIT | 8;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = ERR_BIT | 9;
}

/// Information types (`NBD_INFO_*`) of `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`: the canonical export name.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`: a human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// The 18-byte server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags
/// `FIXED_NEWSTYLE | NO_ZEROES`.
pub fn server_greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// What the client agreed to in its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client set `NBD_FLAG_C_NO_ZEROES`: omit the 124 zero bytes after
    /// `NBD_OPT_EXPORT_NAME`.
    pub no_zeroes: bool,
}

/// Decodes the 4 client flags bytes that follow the greeting.
///
/// Errors (the server closes): `FIXED_NEWSTYLE` not set (this codec speaks only fixed
/// newstyle), or bits set that the server did not offer.
pub fn decode_client_flags(buf: &[u8]) -> Result<Option<(ClientFlags, usize)>, NbdError> {
    let Some(flags) = be_u32(buf, 0) else {
        return Ok(None);
    };
    if flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(NbdError::BadClientFlags {
            flags,
            reason: "unknown flags set",
        });
    }
    if flags & CLIENT_FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::BadClientFlags {
            flags,
            reason: "client does not speak fixed newstyle",
        });
    }
    let no_zeroes = flags & CLIENT_FLAG_NO_ZEROES != 0;
    Ok(Some((ClientFlags { no_zeroes }, CLIENT_FLAGS_LEN)))
}

/// The export name and information types of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export name (empty: the default export).
    pub name: String,
    /// The `NBD_INFO_*` types the client asked for, in order (may repeat or be unknown).
    pub requests: Vec<u16>,
}

/// One option the client sent, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: answer [`encode_export_name_reply`] or close.
    ExportName(String),
    /// `NBD_OPT_ABORT`: answer [`encode_ack`] (optional) and close.
    Abort,
    /// `NBD_OPT_LIST`: answer one [`encode_server`] (or [`encode_server_with_description`]) per export, then [`encode_ack`].
    List,
    /// `NBD_OPT_INFO`: answer [`encode_go_replies`] (or an error), stay in haggling.
    Info(InfoRequest),
    /// `NBD_OPT_GO`: answer [`encode_go_replies`] and enter transmission (or an error).
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`: this server answers `NBD_REP_ERR_UNSUP`.
    StructuredReply,
    /// A known option whose data is malformed: answer `NBD_REP_ERR_INVALID`; for
    /// `NBD_OPT_EXPORT_NAME`, which has no error reply, close the connection.
    Invalid {
        /// The option code.
        option: u32,
        /// What is wrong, for the error message.
        reason: &'static str,
    },
    /// Any other option (its data skipped): answer `NBD_REP_ERR_UNSUP`.
    Unsupported {
        /// The option code.
        option: u32,
    },
}

impl ClientOption {
    /// The option code, to put in the reply.
    pub fn code(&self) -> u32 {
        match self {
            Self::ExportName(_) => opt::EXPORT_NAME,
            Self::Abort => opt::ABORT,
            Self::List => opt::LIST,
            Self::Info(_) => opt::INFO,
            Self::Go(_) => opt::GO,
            Self::StructuredReply => opt::STRUCTURED_REPLY,
            Self::Invalid { option, .. } | Self::Unsupported { option } => *option,
        }
    }
}

/// Decodes one option: the 16-byte header and `length` bytes of data.
///
/// Returns `Ok(None)` until the whole option is in `buf`. Errors (the server closes): bad
/// `IHAVEOPT` magic, or data longer than `max_len` (checked from the header alone, so a
/// server never buffers more than `OPTION_HEADER_LEN + max_len` bytes).
pub fn decode_option(buf: &[u8], max_len: u32) -> Result<Option<(ClientOption, usize)>, NbdError> {
    let (Some(magic), Some(option), Some(len)) = (be_u64(buf, 0), be_u32(buf, 8), be_u32(buf, 12))
    else {
        // Check the magic as early as 8 bytes are in, so garbage fails fast.
        if let Some(magic) = be_u64(buf, 0) {
            if magic != IHAVEOPT {
                return Err(NbdError::BadMagic {
                    what: "option",
                    found: magic,
                });
            }
        }
        return Ok(None);
    };
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic {
            what: "option",
            found: magic,
        });
    }
    if len > max_len {
        return Err(NbdError::TooLarge {
            what: "option data",
            len: u64::from(len),
            max: u64::from(max_len),
        });
    }
    let Some(total) = OPTION_HEADER_LEN.checked_add(len as usize) else {
        return Ok(None);
    };
    let Some(data) = buf.get(OPTION_HEADER_LEN..total) else {
        return Ok(None);
    };
    Ok(Some((parse_option(option, data), total)))
}

fn parse_option(option: u32, data: &[u8]) -> ClientOption {
    let invalid = |reason| ClientOption::Invalid { option, reason };
    match option {
        opt::EXPORT_NAME => match parse_name(data) {
            Ok(name) => ClientOption::ExportName(name),
            Err(reason) => invalid(reason),
        },
        opt::ABORT => ClientOption::Abort,
        opt::LIST if data.is_empty() => ClientOption::List,
        opt::STRUCTURED_REPLY if data.is_empty() => ClientOption::StructuredReply,
        opt::LIST | opt::STRUCTURED_REPLY => invalid("option takes no data"),
        opt::INFO | opt::GO => match parse_info_request(data) {
            Ok(req) if option == opt::INFO => ClientOption::Info(req),
            Ok(req) => ClientOption::Go(req),
            Err(reason) => invalid(reason),
        },
        _ => ClientOption::Unsupported { option },
    }
}

fn parse_name(bytes: &[u8]) -> Result<String, &'static str> {
    let name = std::str::from_utf8(bytes).map_err(|_| "export name is not UTF-8")?;
    if name.contains('\0') {
        return Err("export name contains NUL");
    }
    Ok(name.to_owned())
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest, &'static str> {
    const SHORT: &str = "info request is truncated";
    let name_len = be_u32(data, 0).ok_or(SHORT)? as usize;
    let name_end = 4usize.checked_add(name_len).ok_or(SHORT)?;
    let name = parse_name(data.get(4..name_end).ok_or(SHORT)?)?;
    let count = usize::from(be_u16(data, name_end).ok_or(SHORT)?);
    let list = data.get(name_end + 2..).ok_or(SHORT)?;
    if list.len() != count * 2 {
        return Err("info request length does not match its count");
    }
    let requests = list
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok(InfoRequest { name, requests })
}

/// Encodes an option as a client sends it (`IHAVEOPT`, code, length, data): for tests and
/// tools. [`ClientOption::Invalid`] and [`ClientOption::Unsupported`] encode with no data.
pub fn encode_option(option: &ClientOption, out: &mut Vec<u8>) {
    let mut data = Vec::new();
    match option {
        ClientOption::ExportName(name) => data.extend_from_slice(name.as_bytes()),
        ClientOption::Info(req) | ClientOption::Go(req) => {
            data.extend_from_slice(&(req.name.len() as u32).to_be_bytes());
            data.extend_from_slice(req.name.as_bytes());
            data.extend_from_slice(&(req.requests.len() as u16).to_be_bytes());
            for r in &req.requests {
                data.extend_from_slice(&r.to_be_bytes());
            }
        }
        ClientOption::Abort
        | ClientOption::List
        | ClientOption::StructuredReply
        | ClientOption::Invalid { .. }
        | ClientOption::Unsupported { .. } => {}
    }
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.code().to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
}

/// Encodes an option reply: magic, option, reply type, length, data.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Encodes `NBD_REP_ACK` for `option`.
pub fn encode_ack(option: u32, out: &mut Vec<u8>) {
    encode_option_reply(option, rep::ACK, &[], out);
}

/// Encodes `NBD_REP_SERVER` (one export of `NBD_OPT_LIST`): name length, name.
pub fn encode_server(option: u32, name: &str, out: &mut Vec<u8>) {
    encode_server_with_description(option, name, "", out);
}

/// Encodes `NBD_REP_SERVER` with a human-readable description after the name (the rest of
/// the reply data, as the protocol allows; `nbdinfo --list` shows it).
pub fn encode_server_with_description(
    option: u32,
    name: &str,
    description: &str,
    out: &mut Vec<u8>,
) {
    let mut data = Vec::with_capacity(4 + name.len() + description.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    data.extend_from_slice(description.as_bytes());
    encode_option_reply(option, rep::SERVER, &data, out);
}

/// Encodes an error reply (`reply_type` one of `rep::ERR_*`) with a human-readable message.
pub fn encode_error(option: u32, reply_type: u32, message: &str, out: &mut Vec<u8>) {
    encode_option_reply(option, reply_type, message.as_bytes(), out);
}

/// One information item of `NBD_REP_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info<'a> {
    /// `NBD_INFO_EXPORT`: export size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags ([`crate::transmission::tx_flags`]).
        flags: u16,
    },
    /// `NBD_INFO_NAME`.
    Name(&'a str),
    /// `NBD_INFO_DESCRIPTION`.
    Description(&'a str),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
}

/// Block size constraints of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size (power of two, at most 64 KiB).
    pub min: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum payload of a request.
    pub max: u32,
}

/// Encodes `NBD_REP_INFO` carrying `info`.
pub fn encode_info(option: u32, info: &Info<'_>, out: &mut Vec<u8>) {
    let mut data = Vec::new();
    match info {
        Info::Export { size, flags } => {
            data.extend_from_slice(&info::EXPORT.to_be_bytes());
            data.extend_from_slice(&size.to_be_bytes());
            data.extend_from_slice(&flags.to_be_bytes());
        }
        Info::Name(name) => {
            data.extend_from_slice(&info::NAME.to_be_bytes());
            data.extend_from_slice(name.as_bytes());
        }
        Info::Description(text) => {
            data.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
            data.extend_from_slice(text.as_bytes());
        }
        Info::BlockSize(bs) => {
            data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
            data.extend_from_slice(&bs.min.to_be_bytes());
            data.extend_from_slice(&bs.preferred.to_be_bytes());
            data.extend_from_slice(&bs.max.to_be_bytes());
        }
    }
    encode_option_reply(option, rep::INFO, &data, out);
}

/// What the server knows about the export a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Canonical name.
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags ([`crate::transmission::tx_flags`]).
    pub flags: u16,
    /// Block size constraints, always sent when present (the spec allows it unrequested).
    pub block_size: Option<BlockSize>,
}

/// Encodes the successful answer to `NBD_OPT_INFO` / `NBD_OPT_GO` (`option`): the requested
/// `NBD_INFO_NAME` / `NBD_INFO_DESCRIPTION` (unknown requests ignored), `NBD_INFO_BLOCK_SIZE`
/// when known, `NBD_INFO_EXPORT` always, then `NBD_REP_ACK`.
pub fn encode_go_replies(option: u32, export: &ExportInfo, requests: &[u16], out: &mut Vec<u8>) {
    if requests.contains(&info::NAME) {
        encode_info(option, &Info::Name(&export.name), out);
    }
    if let Some(text) = export.description.as_deref() {
        if requests.contains(&info::DESCRIPTION) {
            encode_info(option, &Info::Description(text), out);
        }
    }
    if let Some(bs) = export.block_size {
        encode_info(option, &Info::BlockSize(bs), out);
    }
    let exported = Info::Export {
        size: export.size,
        flags: export.flags,
    };
    encode_info(option, &exported, out);
    encode_ack(option, out);
}

/// Encodes the reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes
/// unless the client set `NBD_FLAG_C_NO_ZEROES` (`no_zeroes`).
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_ZEROES]);
    }
}

/// An option reply as a client reads it (for tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    /// The option answered.
    pub option: u32,
    /// `rep::*`.
    pub reply_type: u32,
    /// The reply data.
    pub data: Vec<u8>,
}

/// Decodes one option reply (client side), data bounded by `max_len`.
pub fn decode_option_reply(
    buf: &[u8],
    max_len: u32,
) -> Result<Option<(OptionReply, usize)>, NbdError> {
    let (Some(magic), Some(option), Some(reply_type), Some(len)) = (
        be_u64(buf, 0),
        be_u32(buf, 8),
        be_u32(buf, 12),
        be_u32(buf, 16),
    ) else {
        return Ok(None);
    };
    if magic != OPTION_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            what: "option reply",
            found: magic,
        });
    }
    if len > max_len {
        return Err(NbdError::TooLarge {
            what: "option reply data",
            len: u64::from(len),
            max: u64::from(max_len),
        });
    }
    let Some(total) = 20usize.checked_add(len as usize) else {
        return Ok(None);
    };
    let Some(data) = buf.get(20..total) else {
        return Ok(None);
    };
    let reply = OptionReply {
        option,
        reply_type,
        data: data.to_vec(),
    };
    Ok(Some((reply, total)))
}
