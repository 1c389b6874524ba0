//! Manifest codec: round trips, tamper detection, wrong keys, and the pinned bytes.

use lazyblock_format::{
    encode_manifest, seal_chunk, ChunkEntry, ChunkSize, FormatErrorKind, Manifest, ManifestHeader,
    ManifestRandom, RootId, Salt, TenantId, TenantKey,
};
use proptest::prelude::*;

fn header(image_size: u64, chunk_size: ChunkSize) -> ManifestHeader {
    ManifestHeader {
        tenant: TenantId::new("acme").expect("valid"),
        root: RootId::initial(),
        image_size,
        chunk_size,
        created_unix_secs: 1_700_000_000,
        source: "raw:disk.img".into(),
    }
}

fn random() -> ManifestRandom {
    ManifestRandom {
        data_key: [0x11; 32],
        wrap_nonce: [0x22; 12],
        table_nonce: [0x33; 12],
    }
}

/// Seals each chunk's plaintext (None = zero chunk) and returns the entries.
fn entries(chunks: &[Option<u8>]) -> Vec<ChunkEntry> {
    let salt = Salt::for_root(&RootId::initial());
    chunks
        .iter()
        .map(|c| match c {
            None => ChunkEntry::Zero,
            Some(fill) => {
                let mut data = vec![*fill; 64];
                let (name, key) = seal_chunk(&salt, &mut data).expect("seal");
                ChunkEntry::Data { name, key }
            }
        })
        .collect()
}

fn build(chunks: &[Option<u8>]) -> (Vec<ChunkEntry>, Vec<u8>) {
    let cs = ChunkSize::new(65536).expect("valid");
    let size = (chunks.len() as u64 - 1) * 65536 + 100;
    let e = entries(chunks);
    let (_, bytes) = encode_manifest(
        &header(size, cs),
        &e,
        b"",
        &TenantKey::from_bytes([7; 32]),
        &random(),
    )
    .expect("encode");
    (e, bytes)
}

#[test]
fn round_trip() {
    let chunks = [
        Some(1),
        None,
        Some(2),
        Some(1),
        None,
        None,
        None,
        None,
        Some(9),
    ];
    let (e, bytes) = build(&chunks);
    let m = Manifest::decode(&bytes).expect("decode");
    assert_eq!(m.chunk_count(), 9);
    assert_eq!(m.data_chunk_count(), 4);
    assert_eq!(m.distinct_chunks().len(), 3);
    assert_eq!(m.header().tenant.as_str(), "acme");
    assert_eq!(m.header().source, "raw:disk.img");
    let keys = m.open_keys(&TenantKey::from_bytes([7; 32])).expect("open");
    for (i, entry) in e.iter().enumerate() {
        match entry {
            ChunkEntry::Zero => {
                assert!(m.chunk(i as u64).is_none());
                assert!(keys.key(i as u64).is_none());
            }
            ChunkEntry::Data { name, key } => {
                assert_eq!(m.chunk(i as u64), Some(*name));
                assert_eq!(keys.key(i as u64), Some(key));
            }
        }
    }
    assert!(m.chunk(9).is_none());
}

#[test]
fn image_config_is_sealed_with_the_keys() {
    let cs = ChunkSize::new(65536).expect("valid");
    let config = br#"{"Env":["SECRET=hunter2"],"Entrypoint":["/bin/sh"]}"#;
    let (_, bytes) = encode_manifest(
        &header(65536, cs),
        &entries(&[Some(1)]),
        config,
        &TenantKey::from_bytes([7; 32]),
        &random(),
    )
    .expect("encode");
    assert!(
        !bytes.windows(7).any(|w| w == b"hunter2"),
        "the image configuration must not appear in clear"
    );
    let m = Manifest::decode(&bytes).expect("decode");
    let keys = m.open_keys(&TenantKey::from_bytes([7; 32])).expect("open");
    assert_eq!(keys.image_config(), config);
}

#[test]
fn wrong_tenant_key_is_named() {
    let (_, bytes) = build(&[Some(1), Some(2)]);
    let m = Manifest::decode(&bytes).expect("decode");
    let err = m
        .open_keys(&TenantKey::from_bytes([8; 32]))
        .expect_err("wrong key");
    assert_eq!(err.kind(), FormatErrorKind::WrongKey);
    assert!(err.to_string().contains("\"acme\""), "{err}");
}

#[test]
fn size_budget_for_1gib_random_image() {
    // 2048 stored chunks of 512 KiB: the manifest must stay within 0.02% of 1 GiB.
    let salt = Salt::for_root(&RootId::initial());
    let e: Vec<ChunkEntry> = (0..2048u32)
        .map(|i| {
            let mut d = i.to_le_bytes().to_vec();
            let (name, key) = seal_chunk(&salt, &mut d).expect("seal");
            ChunkEntry::Data { name, key }
        })
        .collect();
    let (_, bytes) = encode_manifest(
        &header(1 << 30, ChunkSize::DEFAULT),
        &e,
        b"",
        &TenantKey::from_bytes([7; 32]),
        &random(),
    )
    .expect("encode");
    let budget = (1u64 << 30) as f64 * 0.0002;
    assert!(
        (bytes.len() as f64) <= budget,
        "{} bytes > {budget}",
        bytes.len()
    );
}

#[test]
fn chunk_count_must_match_geometry() {
    let e = entries(&[Some(1)]);
    let err = encode_manifest(
        &header(65536 * 2, ChunkSize::new(65536).expect("valid")),
        &e,
        b"",
        &TenantKey::from_bytes([7; 32]),
        &random(),
    )
    .expect_err("mismatch");
    assert_eq!(err.kind(), FormatErrorKind::InvalidInput);
}

/// The bytes of a fixed manifest are pinned: a change here is a format change
/// (bump `MANIFEST_VERSION` and update `docs/format.md`).
#[test]
fn pinned_manifest_bytes() {
    let cs = ChunkSize::new(65536).expect("valid");
    let (_, bytes) = encode_manifest(
        &header(2 * 65536 + 100, cs),
        &entries(&[Some(1), None, Some(2)]),
        br#"{"Env":["A=1"]}"#,
        &TenantKey::from_bytes([7; 32]),
        &random(),
    )
    .expect("encode");
    let expected = include_str!("../testdata/manifest-v1.hex").trim();
    assert_eq!(hex::encode(&bytes), expected, "manifest bytes changed");
}

/// The ciphertext and name of a fixed chunk are pinned.
#[test]
fn pinned_chunk_bytes() {
    let salt = Salt::for_root(&RootId::initial());
    let mut data = b"lazyblock chunk format v1\n".repeat(4);
    let (name, key) = seal_chunk(&salt, &mut data).expect("seal");
    let pinned = include_str!("../testdata/chunk-v1.txt");
    let actual = format!(
        "key {}\nname {}\nciphertext {}\n",
        hex::encode(key.as_bytes()),
        name,
        hex::encode(&data)
    );
    assert_eq!(actual, pinned, "chunk format changed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_decode_round_trip(chunks in prop::collection::vec(prop::option::of(any::<u8>()), 1..40)) {
        let (e, bytes) = build(&chunks);
        let m = Manifest::decode(&bytes).expect("decode");
        let keys = m.open_keys(&TenantKey::from_bytes([7; 32])).expect("open");
        for (i, entry) in e.iter().enumerate() {
            match entry {
                ChunkEntry::Zero => prop_assert!(m.chunk(i as u64).is_none()),
                ChunkEntry::Data { name, key } => {
                    prop_assert_eq!(m.chunk(i as u64), Some(*name));
                    prop_assert_eq!(keys.key(i as u64), Some(key));
                }
            }
        }
    }

    #[test]
    fn every_single_byte_change_is_rejected(
        chunks in prop::collection::vec(prop::option::of(any::<u8>()), 1..12),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let (_, mut bytes) = build(&chunks);
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        let rejected = match Manifest::decode(&bytes) {
            Err(_) => true,
            Ok(m) => m.open_keys(&TenantKey::from_bytes([7; 32])).is_err(),
        };
        prop_assert!(rejected, "flip at byte {} was accepted", i);
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Manifest::decode(&bytes);
    }
}

#[test]
fn every_single_byte_change_is_rejected_exhaustively() {
    let (_, bytes) = build(&[Some(1), None, Some(2), Some(3)]);
    for i in 0..bytes.len() {
        for xor in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= xor;
            let rejected = match Manifest::decode(&b) {
                Err(_) => true,
                Ok(m) => m.open_keys(&TenantKey::from_bytes([7; 32])).is_err(),
            };
            assert!(rejected, "flip {xor:#x} at byte {i} accepted");
        }
        // Truncation at every length.
        assert!(Manifest::decode(&bytes[..i]).is_err(), "truncated to {i}");
    }
}

/// The fuzz target's body over seed inputs: a valid manifest, every truncation of it, and
/// a few thousand seeded random mutations.
#[test]
fn fuzz_body_over_seeds() {
    use rand::{Rng, SeedableRng};
    let (_, bytes) = build(&[Some(1), None, Some(2), Some(1)]);
    lazyblock_format::fuzz_manifest_decode(&bytes);
    for i in 0..bytes.len() {
        lazyblock_format::fuzz_manifest_decode(&bytes[..i]);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..b.len());
            b[i] = rng.random();
        }
        lazyblock_format::fuzz_manifest_decode(&b);
        // And the same mutation of the body, re-sealed with a valid trailer.
        lazyblock_format::fuzz_manifest_decode(&b[..b.len() - 32]);
    }
}

/// docs/format.md is checked by an independent reader written from it alone
/// (`scripts/format-reference.py`, Python + `cryptography`): it must decode the pinned manifest,
/// open its key table and find the same names, keys and image configuration as this crate.
#[test]
fn format_matches_independent_python_reader() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var("LAZYBLOCK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".test-tools/venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run scripts/test.sh (it installs Python with `cryptography`) or set LAZYBLOCK_PYTHON",
        python.display()
    );
    let pinned = root.join("crates/lazyblock-format/testdata/manifest-v1.hex");
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts/format-reference.py"))
        .arg(&pinned)
        .arg(hex::encode([7u8; 32]))
        .output()
        .expect("run the reference reader");
    assert!(
        out.status.success(),
        "reference reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let bytes = hex::decode(std::fs::read_to_string(&pinned).expect("read").trim()).expect("hex");
    let m = Manifest::decode(&bytes).expect("decode");
    let keys = m.open_keys(&TenantKey::from_bytes([7; 32])).expect("open");
    assert_eq!(json["manifest_id"], m.id().to_hex());
    assert_eq!(json["tenant"], "acme");
    assert_eq!(json["image_size"], m.header().image_size);
    assert_eq!(json["image_config"], r#"{"Env":["A=1"]}"#);
    let chunks = json["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len() as u64, m.chunk_count());
    for (i, c) in chunks.iter().enumerate() {
        match m.chunk(i as u64) {
            None => assert!(c.is_null(), "chunk {i}"),
            Some(name) => {
                assert_eq!(c["name"], name.to_hex());
                let key = keys.key(i as u64).expect("key");
                assert_eq!(c["key"], hex::encode(key.as_bytes()));
            }
        }
    }
}
