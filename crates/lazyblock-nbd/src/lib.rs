//! The pure NBD (Network Block Device) wire protocol codec of lazyblock.
//!
//! This crate owns the bytes of the NBD protocol as the agent's NBD server speaks it
//! (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>):
//!
//! - [`handshake`]: the fixed newstyle handshake: the server greeting, the client flags, option
//!   haggling (`NBD_OPT_EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO`, `STRUCTURED_REPLY`, anything
//!   else answered `NBD_REP_ERR_UNSUP`) and every option reply the server sends;
//! - [`transmission`]: the 28-byte request header, its validation against an export
//!   ([`transmission::validate`] returns the NBD errno to answer), simple replies and the
//!   transmission flags.
//!
//! It does no I/O, knows no async runtime and never panics on input: decoders are incremental
//! (`decode(&[u8]) -> Result<Option<(message, consumed)>, NbdError>`, `Ok(None)` meaning "read
//! more bytes"), encoders append to a `Vec<u8>`. The server is a thin loop that reads bytes,
//! calls a decoder, acts, and writes what an encoder produced.

pub mod handshake;
pub mod transmission;

mod error;

pub use error::{ErrorKind, NbdError};
pub use transmission::fuzz_request_decode;

/// Reads a big-endian `u16` at `at`, `None` if `buf` is too short.
fn be_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// Reads a big-endian `u32` at `at`.
fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Reads a big-endian `u64` at `at`.
fn be_u64(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}
