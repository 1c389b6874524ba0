//! Fuzzes the manifest decoder (untrusted bytes from the store): it must never panic, and
//! whatever it accepts must answer every accessor consistently and fail cleanly on a key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lazyblock_format::fuzz_manifest_decode(data);
});
