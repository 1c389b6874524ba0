//! Transmission: request headers, their validation, simple replies, transmission flags.
//!
//! Loop (server side): [`decode_request`]; on [`NbdError::UnknownCommand`] answer
//! `errno::EINVAL` to its cookie; otherwise read [`Request::payload_len`] payload bytes,
//! [`validate`] the request, serve it or answer the errno with [`encode_simple_reply`]
//! (a `NBD_CMD_READ` reply with error 0 is followed by `length` data bytes).

use crate::{be_u16, be_u32, be_u64, NbdError};

/// Magic of a request header.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Length of a request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// A sensible maximum payload (read or write length): 32 MiB.
pub const DEFAULT_MAX_REQUEST_LEN: u32 = 32 << 20;

/// Transmission flags (`NBD_FLAG_*`), sent with the export size.
pub mod tx_flags {
    /// `NBD_FLAG_HAS_FLAGS`: always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF`.
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_FLAG_SEND_RESIZE`.
    pub const SEND_RESIZE: u16 = 1 << 9;
    /// `NBD_FLAG_SEND_CACHE`.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command types (`NBD_CMD_*`).
pub mod cmd {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_CACHE`.
    pub const CACHE: u16 = 5;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cmd_flags {
    /// `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF` (only with structured replies, which this codec does not offer).
    pub const DF: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_REQ_ONE`.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `NBD_CMD_FLAG_FAST_ZERO`.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// NBD error values sent in replies (fixed by the protocol, not the host's errno).
pub mod errno {
    /// Success.
    pub const OK: u32 = 0;
    /// `NBD_EPERM`: write to a read-only export.
    pub const EPERM: u32 = 1;
    /// `NBD_EIO`.
    pub const EIO: u32 = 5;
    /// `NBD_ENOMEM`.
    pub const ENOMEM: u32 = 12;
    /// `NBD_EINVAL`: malformed request, unknown command or flag, out of range.
    pub const EINVAL: u32 = 22;
    /// `NBD_ENOSPC`: write past the end of the export.
    pub const ENOSPC: u32 = 28;
    /// `NBD_EOVERFLOW`: length larger than the server's maximum.
    pub const EOVERFLOW: u32 = 75;
    /// `NBD_ENOTSUP`.
    pub const ENOTSUP: u32 = 95;
    /// `NBD_ESHUTDOWN`: the server is shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// A request header as on the wire, before its command is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Command flags (`cmd_flags`).
    pub flags: u16,
    /// Command type (`cmd`).
    pub command: u16,
    /// The client's cookie (handle), echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl RequestHeader {
    /// Encodes the 28 bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Decodes a header; `Ok(None)` until 28 bytes are in. Error: bad magic (checked as soon
    /// as 4 bytes are in).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, NbdError> {
        let Some(magic) = be_u32(buf, 0) else {
            return Ok(None);
        };
        if magic != REQUEST_MAGIC {
            return Err(NbdError::BadMagic {
                what: "request",
                found: u64::from(magic),
            });
        }
        let (Some(flags), Some(command), Some(cookie), Some(offset), Some(length)) = (
            be_u16(buf, 4),
            be_u16(buf, 6),
            be_u64(buf, 8),
            be_u64(buf, 16),
            be_u32(buf, 24),
        ) else {
            return Ok(None);
        };
        let header = Self {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        Ok(Some((header, REQUEST_HEADER_LEN)))
    }

    /// Interprets the command type. Error: [`NbdError::UnknownCommand`], carrying the cookie.
    pub fn parse(&self) -> Result<Request, NbdError> {
        let command = match self.command {
            cmd::READ => Command::Read,
            cmd::WRITE => Command::Write,
            cmd::DISC => Command::Disconnect,
            cmd::FLUSH => Command::Flush,
            cmd::TRIM => Command::Trim,
            cmd::CACHE => Command::Cache,
            cmd::WRITE_ZEROES => Command::WriteZeroes,
            other => {
                return Err(NbdError::UnknownCommand {
                    cookie: self.cookie,
                    command: other,
                })
            }
        };
        Ok(Request {
            cookie: self.cookie,
            flags: self.flags,
            command,
            offset: self.offset,
            length: self.length,
        })
    }
}

/// The commands this codec knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`: `length` payload bytes follow the header.
    Write,
    /// `NBD_CMD_DISC`: no reply; close after in-flight requests.
    Disconnect,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
}

impl Command {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Self::Read => cmd::READ,
            Self::Write => cmd::WRITE,
            Self::Disconnect => cmd::DISC,
            Self::Flush => cmd::FLUSH,
            Self::Trim => cmd::TRIM,
            Self::Cache => cmd::CACHE,
            Self::WriteZeroes => cmd::WRITE_ZEROES,
        }
    }

    /// The command flags that may accompany this command.
    pub fn allowed_flags(self) -> u16 {
        match self {
            Self::Write | Self::Trim => cmd_flags::FUA,
            Self::WriteZeroes => cmd_flags::FUA | cmd_flags::NO_HOLE | cmd_flags::FAST_ZERO,
            Self::Read | Self::Disconnect | Self::Flush | Self::Cache => 0,
        }
    }

    /// Whether the command modifies the export.
    pub fn is_write(self) -> bool {
        matches!(self, Self::Write | Self::Trim | Self::WriteZeroes)
    }

    /// Whether the command addresses a byte range (`offset`, `length`).
    pub fn has_range(self) -> bool {
        !matches!(self, Self::Disconnect | Self::Flush)
    }
}

/// A decoded request with a known command (not yet validated against an export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// The cookie to echo in the reply.
    pub cookie: u64,
    /// Command flags.
    pub flags: u16,
    /// The command.
    pub command: Command,
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl Request {
    /// Bytes of payload following the header on the wire: `length` for a write, else 0.
    /// The server must consume them (or close) even when it answers an error.
    pub fn payload_len(&self) -> u32 {
        match self.command {
            Command::Write => self.length,
            _ => 0,
        }
    }

    /// The wire header of this request.
    pub fn header(&self) -> RequestHeader {
        RequestHeader {
            flags: self.flags,
            command: self.command.code(),
            cookie: self.cookie,
            offset: self.offset,
            length: self.length,
        }
    }
}

/// Decodes and interprets one request header (the payload of a write is not included).
///
/// `Ok(None)`: read more. Errors: bad magic (close), or [`NbdError::UnknownCommand`]: the
/// [`REQUEST_HEADER_LEN`] bytes are consumed, answer `errno::EINVAL` to its cookie.
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, NbdError> {
    match RequestHeader::decode(buf)? {
        None => Ok(None),
        Some((header, used)) => Ok(Some((header.parse()?, used))),
    }
}

/// The export a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// Export size in bytes.
    pub size: u64,
    /// The export is read-only.
    pub read_only: bool,
    /// Maximum length of a read or write (payload-carrying) request.
    pub max_request_len: u32,
}

/// Checks a request against an export; `Err` carries the NBD errno to answer.
///
/// In order: command flags not allowed for the command → `EINVAL`; a modifying command on a
/// read-only export → `EPERM`; zero length on a ranged command → `EINVAL`; a read or write
/// longer than `max_request_len` → `EOVERFLOW`; `offset + length` overflowing → `EINVAL`;
/// past the end → `ENOSPC` for a write / write-zeroes, `EINVAL` otherwise. Trim, write-zeroes
/// and cache carry no payload, so `max_request_len` does not bound them.
pub fn validate(req: &Request, limits: &ExportLimits) -> Result<(), u32> {
    if req.flags & !req.command.allowed_flags() != 0 {
        return Err(errno::EINVAL);
    }
    if req.command.is_write() && limits.read_only {
        return Err(errno::EPERM);
    }
    if !req.command.has_range() {
        return Ok(());
    }
    if req.length == 0 {
        return Err(errno::EINVAL);
    }
    if matches!(req.command, Command::Read | Command::Write) && req.length > limits.max_request_len
    {
        return Err(errno::EOVERFLOW);
    }
    let Some(end) = req.offset.checked_add(u64::from(req.length)) else {
        return Err(errno::EINVAL);
    };
    if end > limits.size {
        return Err(match req.command {
            Command::Write | Command::WriteZeroes => errno::ENOSPC,
            _ => errno::EINVAL,
        });
    }
    Ok(())
}

/// A simple reply header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimpleReply {
    /// NBD errno (0 on success).
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReply {
    /// Encodes the 16 bytes.
    pub fn encode(&self) -> [u8; SIMPLE_REPLY_LEN] {
        let mut out = [0u8; SIMPLE_REPLY_LEN];
        out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.error.to_be_bytes());
        out[8..].copy_from_slice(&self.cookie.to_be_bytes());
        out
    }

    /// Decodes a simple reply header (client side).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, NbdError> {
        let (Some(magic), Some(error), Some(cookie)) =
            (be_u32(buf, 0), be_u32(buf, 4), be_u64(buf, 8))
        else {
            return Ok(None);
        };
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(NbdError::BadMagic {
                what: "simple reply",
                found: u64::from(magic),
            });
        }
        Ok(Some((Self { error, cookie }, SIMPLE_REPLY_LEN)))
    }
}

/// Appends a simple reply (`error` an [`errno`] value, 0 on success) for `cookie`.
pub fn encode_simple_reply(cookie: u64, error: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&SimpleReply { error, cookie }.encode());
}

/// Fuzz body: runs the transmission and handshake decoders (and validation) over `data`,
/// as a server would, consuming messages until it needs more bytes or meets an error.
/// Must never panic.
pub fn fuzz_request_decode(data: &[u8]) {
    let limits = ExportLimits {
        size: 1 << 30,
        read_only: false,
        max_request_len: DEFAULT_MAX_REQUEST_LEN,
    };
    let mut rest = data;
    loop {
        match decode_request(rest) {
            Ok(Some((req, used))) => {
                let _ = validate(&req, &limits);
                let skip = used.saturating_add(req.payload_len() as usize);
                rest = rest.get(skip..).unwrap_or(&[]);
            }
            Err(e) if e.reply_cookie().is_some() => {
                rest = rest.get(REQUEST_HEADER_LEN..).unwrap_or(&[]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = crate::handshake::decode_client_flags(data);
    let _ = crate::handshake::decode_option(data, crate::handshake::DEFAULT_MAX_OPTION_LEN);
    let _ = crate::handshake::decode_option(data, u32::MAX);
    let _ = crate::handshake::decode_option_reply(data, u32::MAX);
    let _ = SimpleReply::decode(data);
}
