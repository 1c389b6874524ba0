//! Exact byte vectors for every message, written from the NBD protocol document.
#![allow(clippy::unwrap_used)]

use lazyblock_nbd::handshake::{
    self, decode_client_flags, decode_option, encode_ack, encode_error, encode_export_name_reply,
    encode_go_replies, encode_info, encode_option, encode_server, encode_server_with_description,
    info, opt, rep, server_greeting, BlockSize, ClientFlags, ClientOption, ExportInfo, Info,
    InfoRequest, DEFAULT_MAX_OPTION_LEN,
};
use lazyblock_nbd::transmission::{
    cmd, cmd_flags, decode_request, encode_simple_reply, errno, tx_flags, validate, Command,
    ExportLimits, Request, RequestHeader, SimpleReply, DEFAULT_MAX_REQUEST_LEN,
};
use lazyblock_nbd::{ErrorKind, NbdError};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const IHAVEOPT: &str = "49484156454f5054";
const REPLY_MAGIC: &str = "0003e889045565a9";

#[test]
fn greeting_is_nbdmagic_ihaveopt_fixed_newstyle_no_zeroes() {
    let expected = [b"NBDMAGIC".as_slice(), b"IHAVEOPT", &[0x00, 0x03]].concat();
    assert_eq!(server_greeting().to_vec(), expected);
}

#[test]
fn client_flags() {
    let ok = |b: [u8; 4]| decode_client_flags(&b).unwrap().unwrap();
    assert_eq!(ok([0, 0, 0, 1]), (ClientFlags { no_zeroes: false }, 4));
    assert_eq!(ok([0, 0, 0, 3]), (ClientFlags { no_zeroes: true }, 4));
    assert_eq!(decode_client_flags(&[0, 0, 0]), Ok(None));
    for bad in [[0, 0, 0, 0], [0, 0, 0, 2], [0, 0, 0, 5], [0x80, 0, 0, 1]] {
        let err = decode_client_flags(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol, "{bad:?}");
    }
}

fn option(s: &str) -> (ClientOption, usize) {
    let bytes = hex(s);
    // Every strict prefix asks for more bytes.
    for cut in 0..bytes.len() {
        assert_eq!(
            decode_option(&bytes[..cut], DEFAULT_MAX_OPTION_LEN),
            Ok(None)
        );
    }
    let mut extended = bytes.clone();
    extended.extend_from_slice(b"next");
    let got = decode_option(&extended, DEFAULT_MAX_OPTION_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(got.1, bytes.len());
    got
}

#[test]
fn option_export_name() {
    let (o, _) = option(&format!("{IHAVEOPT} 00000001 00000004 64697363"));
    assert_eq!(o, ClientOption::ExportName("disc".into()));
    let (o, _) = option(&format!("{IHAVEOPT} 00000001 00000000"));
    assert_eq!(o, ClientOption::ExportName(String::new()));
    let (o, _) = option(&format!("{IHAVEOPT} 00000001 00000002 ff00"));
    assert!(matches!(o, ClientOption::Invalid { option: 1, .. }));
    let (o, _) = option(&format!("{IHAVEOPT} 00000001 00000002 6100"));
    assert!(matches!(o, ClientOption::Invalid { option: 1, .. }));
}

#[test]
fn option_abort_list_structured_reply() {
    assert_eq!(
        option(&format!("{IHAVEOPT} 00000002 00000000")).0,
        ClientOption::Abort
    );
    assert_eq!(
        option(&format!("{IHAVEOPT} 00000003 00000000")).0,
        ClientOption::List
    );
    let (o, _) = option(&format!("{IHAVEOPT} 00000003 00000001 00"));
    assert!(matches!(
        o,
        ClientOption::Invalid {
            option: opt::LIST,
            ..
        }
    ));
    let (o, _) = option(&format!("{IHAVEOPT} 00000008 00000000"));
    assert_eq!(o, ClientOption::StructuredReply);
    let (o, _) = option(&format!("{IHAVEOPT} 00000008 00000002 0000"));
    assert!(matches!(
        o,
        ClientOption::Invalid {
            option: opt::STRUCTURED_REPLY,
            ..
        }
    ));
}

#[test]
fn option_info_and_go() {
    // name "a", two requests: NAME, BLOCK_SIZE
    let body = "00000001 61 0002 0001 0003";
    let want = InfoRequest {
        name: "a".into(),
        requests: vec![info::NAME, info::BLOCK_SIZE],
    };
    let (o, n) = option(&format!("{IHAVEOPT} 00000006 0000000b {body}"));
    assert_eq!((o, n), (ClientOption::Info(want.clone()), 27));
    let (o, _) = option(&format!("{IHAVEOPT} 00000007 0000000b {body}"));
    assert_eq!(o, ClientOption::Go(want));
    // Default export, no requests.
    let (o, _) = option(&format!("{IHAVEOPT} 00000007 00000006 00000000 0000"));
    let empty = InfoRequest {
        name: String::new(),
        requests: vec![],
    };
    assert_eq!(o, ClientOption::Go(empty));
    // Count says 2, one present; name length past the data; trailing byte.
    for body in [
        "00000006 00000001 61 0002 0001",
        "00000006 000000ff 61 0000",
        "00000008 00000001 61 0000 00",
        "00000002 0000",
    ] {
        let len = hex(body).len() - 4;
        let data = &body[9..];
        let (o, _) = option(&format!("{IHAVEOPT} 00000007 {len:08x} {data}"));
        assert!(
            matches!(
                o,
                ClientOption::Invalid {
                    option: opt::GO,
                    ..
                }
            ),
            "{body}"
        );
    }
}

#[test]
fn option_unknown_is_unsupported_and_skipped() {
    let (o, n) = option(&format!("{IHAVEOPT} 00000005 00000000"));
    assert_eq!(
        (o, n),
        (
            ClientOption::Unsupported {
                option: opt::STARTTLS
            },
            16
        )
    );
    let (o, n) = option(&format!("{IHAVEOPT} 12345678 00000003 010203"));
    assert_eq!(
        (o, n),
        (
            ClientOption::Unsupported {
                option: 0x1234_5678
            },
            19
        )
    );
}

#[test]
fn option_errors() {
    let bad = hex("4e42444d41474943 00000001 00000000");
    let err = decode_option(&bad, DEFAULT_MAX_OPTION_LEN).unwrap_err();
    assert!(matches!(err, NbdError::BadMagic { what: "option", .. }));
    // The magic is judged as soon as 8 bytes are in.
    assert!(decode_option(&bad[..8], DEFAULT_MAX_OPTION_LEN).is_err());
    let big = hex(&format!("{IHAVEOPT} 00000001 00001001"));
    let err = decode_option(&big, DEFAULT_MAX_OPTION_LEN).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert!(err.to_string().contains("4097"), "{err}");
}

#[test]
fn client_option_encoder_matches_vectors() {
    let mut out = Vec::new();
    let go = ClientOption::Go(InfoRequest {
        name: "a".into(),
        requests: vec![1, 3],
    });
    encode_option(&go, &mut out);
    assert_eq!(
        out,
        hex(&format!(
            "{IHAVEOPT} 00000007 0000000b 00000001 61 0002 0001 0003"
        ))
    );
}

#[test]
fn option_replies() {
    let mut out = Vec::new();
    encode_ack(opt::GO, &mut out);
    assert_eq!(
        out,
        hex(&format!("{REPLY_MAGIC} 00000007 00000001 00000000"))
    );

    out.clear();
    encode_server(opt::LIST, "disc", &mut out);
    assert_eq!(
        out,
        hex(&format!(
            "{REPLY_MAGIC} 00000003 00000002 00000008 00000004 64697363"
        ))
    );

    out.clear();
    encode_server_with_description(opt::LIST, "disc", "ab", &mut out);
    assert_eq!(
        out,
        hex(&format!(
            "{REPLY_MAGIC} 00000003 00000002 0000000a 00000004 64697363 6162"
        ))
    );

    out.clear();
    encode_error(0x42, rep::ERR_UNSUP, "no", &mut out);
    assert_eq!(
        out,
        hex(&format!("{REPLY_MAGIC} 00000042 80000001 00000002 6e6f"))
    );
    assert_eq!(rep::ERR_INVALID, 0x8000_0003);
    assert_eq!(rep::ERR_UNKNOWN, 0x8000_0006);

    out.clear();
    let flags = tx_flags::HAS_FLAGS | tx_flags::READ_ONLY;
    encode_info(
        opt::GO,
        &Info::Export {
            size: 0x1_0000_0000,
            flags,
        },
        &mut out,
    );
    let export = format!("{REPLY_MAGIC} 00000007 00000003 0000000c 0000 0000000100000000 0003");
    assert_eq!(out, hex(&export));

    out.clear();
    encode_info(opt::INFO, &Info::Name("ab"), &mut out);
    assert_eq!(
        out,
        hex(&format!(
            "{REPLY_MAGIC} 00000006 00000003 00000004 0001 6162"
        ))
    );

    out.clear();
    encode_info(opt::INFO, &Info::Description("x"), &mut out);
    assert_eq!(
        out,
        hex(&format!("{REPLY_MAGIC} 00000006 00000003 00000003 0002 78"))
    );

    out.clear();
    let bs = BlockSize {
        min: 1,
        preferred: 4096,
        max: 32 << 20,
    };
    encode_info(opt::GO, &Info::BlockSize(bs), &mut out);
    let block = format!("{REPLY_MAGIC} 00000007 00000003 0000000e 0003 00000001 00001000 02000000");
    assert_eq!(out, hex(&block));
}

#[test]
fn go_replies_send_requested_infos_then_export_then_ack() {
    let export = ExportInfo {
        name: "ab".into(),
        description: Some("x".into()),
        size: 0x1_0000_0000,
        flags: tx_flags::HAS_FLAGS | tx_flags::READ_ONLY,
        block_size: None,
    };
    let mut out = Vec::new();
    encode_go_replies(opt::GO, &export, &[info::NAME, 99], &mut out);
    let mut want = Vec::new();
    encode_info(opt::GO, &Info::Name("ab"), &mut want);
    encode_info(
        opt::GO,
        &Info::Export {
            size: 0x1_0000_0000,
            flags: 3,
        },
        &mut want,
    );
    encode_ack(opt::GO, &mut want);
    assert_eq!(out, want);

    out.clear();
    encode_go_replies(opt::INFO, &export, &[], &mut out);
    assert_eq!(out.len(), 32 + 20);
}

#[test]
fn export_name_reply_with_and_without_zeroes() {
    let mut out = Vec::new();
    encode_export_name_reply(1 << 20, 0x0123, true, &mut out);
    assert_eq!(out, hex("0000000000100000 0123"));
    out.clear();
    encode_export_name_reply(1 << 20, 0x0123, false, &mut out);
    assert_eq!(out.len(), 10 + 124);
    assert_eq!(out[..10], hex("0000000000100000 0123"));
    assert!(out[10..].iter().all(|&b| b == 0));
}

fn request(s: &str) -> Result<Option<(Request, usize)>, NbdError> {
    decode_request(&hex(s))
}

#[test]
fn request_headers() {
    let read = "25609513 0000 0000 0102030405060708 0000000000001000 00000200";
    let (req, n) = request(read).unwrap().unwrap();
    assert_eq!(n, 28);
    let want = Request {
        cookie: 0x0102_0304_0506_0708,
        flags: 0,
        command: Command::Read,
        offset: 0x1000,
        length: 0x200,
    };
    assert_eq!(req, want);
    assert_eq!(req.header().encode().to_vec(), hex(read));

    let write = "25609513 0001 0001 00000000000000ff 0000000000000000 00000004";
    let (req, _) = request(write).unwrap().unwrap();
    assert_eq!(
        (req.command, req.flags, req.payload_len()),
        (Command::Write, cmd_flags::FUA, 4)
    );

    for (code, command) in [
        (cmd::DISC, Command::Disconnect),
        (cmd::FLUSH, Command::Flush),
        (cmd::TRIM, Command::Trim),
        (cmd::CACHE, Command::Cache),
        (cmd::WRITE_ZEROES, Command::WriteZeroes),
    ] {
        let s = format!("25609513 0000 {code:04x} 0000000000000001 0000000000000000 00000000");
        let (req, _) = request(&s).unwrap().unwrap();
        assert_eq!(req.command, command);
        assert_eq!(req.payload_len(), 0);
    }
}

#[test]
fn request_incomplete_bad_magic_unknown_command() {
    let read = hex("25609513 0000 0000 0102030405060708 0000000000001000 00000200");
    for cut in 0..28 {
        assert_eq!(decode_request(&read[..cut]), Ok(None), "{cut}");
    }
    let err = request("67446698 0000").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert_eq!(err.reply_cookie(), None);

    let err = request("25609513 0000 0007 00000000000000aa 0000000000000000 00000000").unwrap_err();
    assert_eq!(
        err,
        NbdError::UnknownCommand {
            cookie: 0xaa,
            command: 7
        }
    );
    assert_eq!(err.kind(), ErrorKind::UnknownCommand);
    assert_eq!(err.reply_cookie(), Some(0xaa));
}

#[test]
fn simple_replies() {
    let mut out = Vec::new();
    encode_simple_reply(0x0102_0304_0506_0708, errno::EINVAL, &mut out);
    assert_eq!(out, hex("67446698 00000016 0102030405060708"));
    let (r, n) = SimpleReply::decode(&out).unwrap().unwrap();
    assert_eq!(
        (r, n),
        (
            SimpleReply {
                error: 22,
                cookie: 0x0102_0304_0506_0708
            },
            16
        )
    );
    assert_eq!(SimpleReply::decode(&out[..15]), Ok(None));
    assert!(SimpleReply::decode(&hex("25609513 00000000 0000000000000000")).is_err());
}

#[test]
fn transmission_flag_and_errno_values() {
    assert_eq!(tx_flags::HAS_FLAGS, 0x0001);
    assert_eq!(tx_flags::READ_ONLY, 0x0002);
    assert_eq!(tx_flags::SEND_FLUSH, 0x0004);
    assert_eq!(tx_flags::SEND_FUA, 0x0008);
    assert_eq!(tx_flags::SEND_TRIM, 0x0020);
    assert_eq!(tx_flags::SEND_WRITE_ZEROES, 0x0040);
    assert_eq!(tx_flags::CAN_MULTI_CONN, 0x0100);
    assert_eq!(tx_flags::SEND_CACHE, 0x0400);
    assert_eq!(
        [
            errno::EPERM,
            errno::EIO,
            errno::ENOMEM,
            errno::EINVAL,
            errno::ENOSPC
        ],
        [1, 5, 12, 22, 28]
    );
    assert_eq!(
        [errno::EOVERFLOW, errno::ENOTSUP, errno::ESHUTDOWN],
        [75, 95, 108]
    );
}

fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
    Request {
        cookie: 1,
        flags,
        command,
        offset,
        length,
    }
}

#[test]
fn validation() {
    let rw = ExportLimits {
        size: 1 << 20,
        read_only: false,
        max_request_len: DEFAULT_MAX_REQUEST_LEN,
    };
    let ro = ExportLimits {
        read_only: true,
        ..rw
    };
    let small = ExportLimits {
        size: 1 << 40,
        max_request_len: 4096,
        ..rw
    };
    use Command::*;
    let cases: [(Request, &ExportLimits, Result<(), u32>); 20] = [
        (req(Read, 0, 0, 4096), &rw, Ok(())),
        (req(Read, 0, (1 << 20) - 1, 1), &rw, Ok(())),
        (req(Read, 0, 1 << 20, 1), &rw, Err(errno::EINVAL)),
        (req(Read, 0, 0, 0), &rw, Err(errno::EINVAL)),
        (req(Read, 0, u64::MAX, 2), &rw, Err(errno::EINVAL)),
        (req(Read, cmd_flags::FUA, 0, 1), &rw, Err(errno::EINVAL)),
        (req(Read, cmd_flags::DF, 0, 1), &rw, Err(errno::EINVAL)),
        (req(Read, 0, 0, 4097), &small, Err(errno::EOVERFLOW)),
        (req(Write, cmd_flags::FUA, 0, 512), &rw, Ok(())),
        (req(Write, 0, (1 << 20) - 1, 2), &rw, Err(errno::ENOSPC)),
        (req(Write, 0, 0, 512), &ro, Err(errno::EPERM)),
        (req(Write, 0, 0, 4097), &small, Err(errno::EOVERFLOW)),
        (req(Trim, 0, 0, 1 << 20), &ro, Err(errno::EPERM)),
        (req(Trim, 0, 0, 1 << 20), &small, Ok(())),
        (
            req(WriteZeroes, cmd_flags::NO_HOLE | cmd_flags::FAST_ZERO, 0, 1),
            &rw,
            Ok(()),
        ),
        (req(WriteZeroes, 0, 1 << 20, 1), &rw, Err(errno::ENOSPC)),
        (req(Cache, 0, 0, 1 << 20), &rw, Ok(())),
        (req(Flush, 0, 0, 0), &ro, Ok(())),
        (req(Flush, cmd_flags::FUA, 0, 0), &rw, Err(errno::EINVAL)),
        (req(Disconnect, 0, 0, 0), &ro, Ok(())),
    ];
    for (r, limits, want) in cases {
        assert_eq!(validate(&r, limits), want, "{r:?} {limits:?}");
    }
}

#[test]
fn header_round_trip_of_raw_fields() {
    let h = RequestHeader {
        flags: 0xffff,
        command: 0xfffe,
        cookie: u64::MAX,
        offset: 7,
        length: u32::MAX,
    };
    assert_eq!(RequestHeader::decode(&h.encode()), Ok(Some((h, 28))));
    let _ = handshake::GREETING_LEN;
}
