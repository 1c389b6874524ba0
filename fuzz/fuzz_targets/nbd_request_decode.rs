//! Fuzzes the NBD codec (untrusted bytes from any NBD client): handshake options, request
//! headers and their validation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lazyblock_nbd::fuzz_request_decode(data);
});
