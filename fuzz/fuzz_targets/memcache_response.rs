//! The memcached response parser on arbitrary bytes: a cache node is not trusted. Neither parser
//! may panic, and a parsed answer must lie within the bytes given and respect the size bound.
#![no_main]

use lazyblock_cache::l2::memcache::{parse_get, parse_store, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 16;
    if let Ok(Parsed::Done(value, used)) = parse_get(data, b"lbs1:4-5:k:0", max) {
        assert!(used <= data.len());
        if let Some(v) = value {
            assert!(v.len() <= max && v.end <= used);
        }
    }
    if let Ok(Parsed::Done((), used)) = parse_store(data) {
        assert!(used <= data.len());
    }
    // Fed in two pieces, the first piece never parses as a different complete answer.
    let cut = data.len() / 2;
    if let Ok(Parsed::Done(first, used)) = parse_get(&data[..cut], b"lbs1:4-5:k:0", max) {
        assert_eq!(
            parse_get(data, b"lbs1:4-5:k:0", max).ok(),
            Some(Parsed::Done(first, used))
        );
    }
});
