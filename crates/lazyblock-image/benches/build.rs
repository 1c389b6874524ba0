//! End-to-end `build` into a local directory store: 64 MiB of random data (every chunk new),
//! then the same image again (every chunk deduplicated). Both cores seal in parallel.
//! The 1 GiB figure and its same-run baselines come from `lazyblock bench build`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lazyblock_format::{ImageRef, RootId, TenantId};
use lazyblock_image::{build, BuildOptions, Context, NoProgress};
use lazyblock_keys::LocalKeyring;
use lazyblock_store::{ObjectChunkStore, StoreConfig, StoreLocation};
use rand::{RngCore, SeedableRng};

const SIZE: usize = 64 << 20;

fn context(dir: &std::path::Path, tenant: &str) -> Context {
    let store = ObjectChunkStore::open(&StoreConfig::new(StoreLocation::Local(dir.join("store"))))
        .expect("store");
    Context {
        store: Arc::new(store),
        keys: Arc::new(LocalKeyring::with_random(
            dir.join("keys"),
            Box::new(|b| b.fill(9)),
        )),
        tenant: TenantId::new(tenant).expect("valid"),
        root: RootId::initial(),
    }
}

fn run_build(rt: &tokio::runtime::Runtime, ctx: &Context, data: &Arc<Vec<u8>>) -> Duration {
    let opts = BuildOptions::new(
        ImageRef::parse("bench/img:v1").expect("valid"),
        "raw:memory".into(),
        1_700_000_000,
    );
    let reader = std::io::Cursor::new(data.clone().as_ref().clone());
    let started = Instant::now();
    rt.block_on(build(
        ctx,
        Box::new(reader),
        data.len() as u64,
        &opts,
        Arc::new(NoProgress),
        &|b: &mut [u8]| b.fill(7),
    ))
    .expect("build");
    started.elapsed()
}

fn build_bench(c: &mut Criterion) {
    let mut data = vec![0u8; SIZE];
    rand::rngs::StdRng::seed_from_u64(3).fill_bytes(&mut data);
    let data = Arc::new(data);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("build-64MiB-local");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("new-chunks", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                total += run_build(&rt, &context(dir.path(), "a"), &data);
            }
            total
        })
    });
    let dir = tempfile::tempdir().expect("tempdir");
    run_build(&rt, &context(dir.path(), "a"), &data);
    g.bench_function("all-deduplicated", |b| {
        b.iter_custom(|iters| {
            let ctx = context(dir.path(), "b");
            (0..iters).map(|_| run_build(&rt, &ctx, &data)).sum()
        })
    });
    g.finish();
}

criterion_group!(benches, build_bench);
criterion_main!(benches);
