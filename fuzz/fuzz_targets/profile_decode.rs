//! Fuzzes the start-up profile decoder (untrusted bytes from the origin): it must never panic,
//! and whatever it accepts must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lazyblock_format::fuzz_profile_decode(data);
});
