//! Fuzzes the GC record decoders (root state and halt record, untrusted bytes from the origin):
//! they must never panic, and whatever they accept must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lazyblock_format::fuzz_root_state_decode(data);
});
