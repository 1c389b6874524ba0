//! Fuzzes the L2 stripe frame decoder (untrusted bytes from memcached): it must never panic, and
//! whatever it accepts must rebuild, with a codec of its k/n from k copies of its payload under
//! distinct indexes, without panicking (the bytes are garbage; the caller's hash check rejects
//! them).
#![no_main]

use lazyblock_cache::l2::stripe::{decode_frame, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((header, payload)) = decode_frame(data) else {
        return;
    };
    assert_eq!(&header.to_bytes()[..], &data[..lazyblock_cache::l2::stripe::HEADER_LEN]);
    let (k, n) = (usize::from(header.k), usize::from(header.n));
    let Ok(codec) = Codec::new(k, n) else {
        panic!("decode_frame accepted k={k} n={n}, Codec::new refused it");
    };
    // The first k stripes from the frame's own index on (mod n): parity when it is one.
    let first = usize::from(header.index);
    let stripes: Vec<(usize, &[u8])> = (0..k).map(|j| ((first + j) % n, payload)).collect();
    let rebuilt = codec
        .rebuild(&header.id, header.chunk_len as usize, &stripes)
        .expect("valid stripes rebuild");
    assert_eq!(rebuilt.data.len(), header.chunk_len as usize);
});
