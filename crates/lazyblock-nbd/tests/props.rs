//! Property tests: round trips, and arbitrary bytes never panic a decoder.
#![allow(clippy::unwrap_used)]

use lazyblock_nbd::fuzz_request_decode;
use lazyblock_nbd::handshake::{
    decode_client_flags, decode_option, decode_option_reply, encode_option, opt, ClientOption,
    InfoRequest, DEFAULT_MAX_OPTION_LEN,
};
use lazyblock_nbd::transmission::{
    decode_request, validate, Command, ExportLimits, Request, RequestHeader, SimpleReply,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Read),
        Just(Command::Write),
        Just(Command::Disconnect),
        Just(Command::Flush),
        Just(Command::Trim),
        Just(Command::Cache),
        Just(Command::WriteZeroes),
    ]
}

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn info_request() -> impl Strategy<Value = InfoRequest> {
    (name(), proptest::collection::vec(any::<u16>(), 0..8))
        .prop_map(|(name, requests)| InfoRequest { name, requests })
}

fn client_option() -> impl Strategy<Value = ClientOption> {
    prop_oneof![
        name().prop_map(ClientOption::ExportName),
        Just(ClientOption::Abort),
        Just(ClientOption::List),
        info_request().prop_map(ClientOption::Info),
        info_request().prop_map(ClientOption::Go),
        Just(ClientOption::StructuredReply),
        (12u32..).prop_map(|option| ClientOption::Unsupported { option }),
        Just(ClientOption::Unsupported {
            option: opt::STARTTLS
        }),
    ]
}

proptest! {
    #[test]
    fn request_round_trip(
        cookie in any::<u64>(), flags in any::<u16>(), command in command(),
        offset in any::<u64>(), length in any::<u32>(), tail in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let req = Request { cookie, flags, command, offset, length };
        let mut bytes = req.header().encode().to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(decode_request(&bytes), Ok(Some((req, 28))));
    }

    #[test]
    fn raw_header_round_trip(flags in any::<u16>(), command in any::<u16>(), cookie in any::<u64>(),
                             offset in any::<u64>(), length in any::<u32>()) {
        let h = RequestHeader { flags, command, cookie, offset, length };
        prop_assert_eq!(RequestHeader::decode(&h.encode()), Ok(Some((h, 28))));
        match h.parse() {
            Ok(req) => prop_assert_eq!(req.header(), h),
            Err(e) => {
                prop_assert!(command > 6);
                prop_assert_eq!(e.reply_cookie(), Some(cookie));
            }
        }
    }

    #[test]
    fn option_round_trip(option in client_option()) {
        let mut bytes = Vec::new();
        encode_option(&option, &mut bytes);
        let len = bytes.len();
        bytes.extend_from_slice(b"IHAVEOPT");
        prop_assert_eq!(decode_option(&bytes, DEFAULT_MAX_OPTION_LEN), Ok(Some((option, len))));
        for cut in 0..len {
            prop_assert_eq!(decode_option(&bytes[..cut], DEFAULT_MAX_OPTION_LEN), Ok(None));
        }
    }

    #[test]
    fn simple_reply_round_trip(error in any::<u32>(), cookie in any::<u64>()) {
        let r = SimpleReply { error, cookie };
        prop_assert_eq!(SimpleReply::decode(&r.encode()), Ok(Some((r, 16))));
    }

    #[test]
    fn validate_accepts_only_in_range(command in command(), offset in any::<u64>(), length in any::<u32>(),
                                      size in any::<u64>(), read_only in any::<bool>()) {
        let req = Request { cookie: 0, flags: 0, command, offset, length };
        let limits = ExportLimits { size, read_only, max_request_len: 1 << 25 };
        if validate(&req, &limits).is_ok() && command.has_range() {
            prop_assert!(length > 0);
            prop_assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= size));
            prop_assert!(!(read_only && command.is_write()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        fuzz_request_decode(&data);
        let _ = decode_client_flags(&data);
        let _ = decode_option(&data, u32::MAX);
        let _ = decode_option_reply(&data, 64);
    }

    #[test]
    fn framed_garbage_never_panics(option in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = b"IHAVEOPT".to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&data);
        let (parsed, used) = decode_option(&bytes, DEFAULT_MAX_OPTION_LEN).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(parsed.code(), option);
    }
}

/// Runs the fuzz body over fixed seeds: valid streams, truncations and random mutations.
#[test]
fn fuzz_body_over_seeds() {
    let mut seeds: Vec<Vec<u8>> = vec![Vec::new()];
    let mut stream = Vec::new();
    for (i, command) in [
        Command::Read,
        Command::Write,
        Command::Trim,
        Command::Flush,
        Command::Disconnect,
    ]
    .into_iter()
    .enumerate()
    {
        let req = Request {
            cookie: i as u64,
            flags: 0,
            command,
            offset: 512,
            length: 4,
        };
        stream.extend_from_slice(&req.header().encode());
        stream.extend(std::iter::repeat_n(0xab, req.payload_len() as usize));
    }
    seeds.push(stream.clone());
    let mut opts = Vec::new();
    encode_option(
        &ClientOption::Go(InfoRequest {
            name: "x".into(),
            requests: vec![0, 1, 2, 3],
        }),
        &mut opts,
    );
    seeds.push(opts);
    seeds.push(vec![0, 0, 0, 3]);

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6e6264);
    for seed in seeds.clone() {
        for cut in 0..=seed.len() {
            fuzz_request_decode(&seed[..cut]);
        }
        for _ in 0..500 {
            let mut m = seed.clone();
            if m.is_empty() {
                m.push(0);
            }
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..m.len());
                m[at] = rng.random();
            }
            fuzz_request_decode(&m);
        }
    }
}
