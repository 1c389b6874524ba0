//! Arbitrary bytes as an uncompressed layer tar, applied twice (see
//! `lazyblock_oci::fuzz::fuzz_layer_apply`, which `cargo test` also runs over seeds).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lazyblock_oci::fuzz::fuzz_layer_apply(data);
});
