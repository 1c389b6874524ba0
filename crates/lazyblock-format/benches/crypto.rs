//! Kernels of the chunk pipeline: seal (hash + encrypt + hash), open (hash + decrypt), and the
//! manifest codec. Throughput is reported per byte of chunk, one core.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lazyblock_format::{
    encode_manifest, open_chunk, seal_chunk, ChunkEntry, ChunkSize, Manifest, ManifestHeader,
    ManifestRandom, RootId, Salt, TenantId, TenantKey,
};
use rand::{RngCore, SeedableRng};

fn random_chunk(len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn chunk_crypto(c: &mut Criterion) {
    let salt = Salt::for_root(&RootId::initial());
    let mut g = c.benchmark_group("chunk");
    for len in [64 * 1024usize, 512 * 1024] {
        let plain = random_chunk(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("seal/{}KiB", len / 1024), |b| {
            b.iter_batched_ref(
                || plain.clone(),
                |buf| seal_chunk(&salt, buf).expect("seal"),
                BatchSize::LargeInput,
            )
        });
        let mut sealed = plain.clone();
        let (name, key) = seal_chunk(&salt, &mut sealed).expect("seal");
        g.bench_function(format!("open/{}KiB", len / 1024), |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| open_chunk(&name, &key, buf).expect("open"),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn manifest_codec(c: &mut Criterion) {
    // A 1 GiB image of random data: 2048 chunks of 512 KiB, all stored.
    let salt = Salt::for_root(&RootId::initial());
    let chunks: Vec<ChunkEntry> = (0..2048u32)
        .map(|i| {
            let mut data = i.to_le_bytes().repeat(8);
            let (name, key) = seal_chunk(&salt, &mut data).expect("seal");
            ChunkEntry::Data { name, key }
        })
        .collect();
    let header = ManifestHeader {
        tenant: TenantId::new("bench").expect("valid"),
        root: RootId::initial(),
        image_size: 1 << 30,
        chunk_size: ChunkSize::DEFAULT,
        created_unix_secs: 1_700_000_000,
        source: "raw:bench.img".into(),
    };
    let tenant_key = TenantKey::from_bytes([3; 32]);
    let random = ManifestRandom {
        data_key: [1; 32],
        wrap_nonce: [2; 12],
        table_nonce: [4; 12],
    };
    let (_, bytes) = encode_manifest(&header, &chunks, b"", &tenant_key, &random).expect("encode");
    let mut g = c.benchmark_group("manifest-1GiB");
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("encode", |b| {
        b.iter(|| encode_manifest(&header, &chunks, b"", &tenant_key, &random).expect("encode"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| Manifest::decode(&bytes).expect("decode"))
    });
    let m = Manifest::decode(&bytes).expect("decode");
    g.bench_function("open-keys", |b| {
        b.iter(|| m.open_keys(&tenant_key).expect("open"))
    });
    g.finish();
}

criterion_group!(benches, chunk_crypto, manifest_codec);
criterion_main!(benches);
