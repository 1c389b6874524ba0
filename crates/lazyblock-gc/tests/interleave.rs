//! The GC safety test: seeded random interleavings of builds, publish/unpublish, agent reads,
//! rotate, migrate (crashed at every write, then resumed), expire, delete and resume, against a
//! real store (a local directory, and the S3-compatible test server), with the invariants
//! checked after every step:
//! - every published image exports bit for bit;
//! - no chunk referenced by a manifest in a non-deleted root is missing;
//! - no catalog entry names an expired or deleted root;
//! - a halted collector deletes nothing;
//! - root states only move forward, and state records are never lost;
//! - an agent reading an image opened before its root retired reads correct bytes while the root
//!   is retired, and raises the alarm (a halt marker) once it is expired.
//!
//! A failure prints its seed; `LAZYBLOCK_GC_SEED=<n>` replays exactly that run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use lazyblock_format::{
    open_chunk, ChunkSize, ImageRef, KeyTable, Lifecycle, Manifest, RootId, RootState, TenantId,
};
use lazyblock_gc::{
    Clock, Collector, ExpiryAlarm, GcErrorKind, ManualClock, NoGcProgress, RunSettings,
};
use lazyblock_image::{build, export, open_image, BuildOptions, Context, NoProgress};
use lazyblock_keys::{KeyAccess, KeyProvider, LocalKeyring};
use lazyblock_store::testing::CountingStore;
use lazyblock_store::{
    ChunkStore, HookedStore, MetaKey, ObjectChunkStore, StoreConfig, StoreLocation,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const CHUNK: usize = 64 << 10;
const GROUP: &str = "default";

/// An agent: an image opened at some point, reading from the root its catalog entry named then.
struct Session {
    image: (TenantId, ImageRef),
    root: RootId,
    manifest: Manifest,
    keys: KeyTable,
    content: Vec<u8>,
}

struct World {
    seed: u64,
    rng: StdRng,
    /// The store every writer uses; it can crash after n writes.
    store: Arc<CountingStore>,
    /// What agents read through: the raw store wrapped in the expiry alarm.
    alarm: Arc<HookedStore<ExpiryAlarm>>,
    keys: Arc<LocalKeyring>,
    clock: Arc<ManualClock>,
    gc: Collector,
    tenants: Vec<TenantId>,
    /// The model: every published image and its exact content.
    published: BTreeMap<(TenantId, ImageRef), Vec<u8>>,
    sessions: Vec<Session>,
    /// The last state seen of every root.
    states: BTreeMap<RootId, Lifecycle>,
    /// Blocks images are made of, so images share chunks.
    blocks: Vec<Vec<u8>>,
    build_random: Arc<Mutex<StdRng>>,
    tmp: tempfile::TempDir,
    step: usize,
    crashes: u64,
    alarms: u64,
    deleted: u64,
}

/// Prints the seed if the run panics.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "GC interleaving FAILED with seed {}: replay with LAZYBLOCK_GC_SEED={} cargo test -p lazyblock-gc --test interleave",
                self.0, self.0
            );
        }
    }
}

impl World {
    fn new(seed: u64, inner: Arc<dyn ChunkStore>) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut rng = StdRng::seed_from_u64(seed);
        let key_rng = Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed));
        let keys = Arc::new(LocalKeyring::with_random(
            tmp.path().join("keys"),
            Box::new(move |buf| key_rng.lock().expect("rng").fill(buf)),
        ));
        let clock = Arc::new(ManualClock::new(1_700_000_000));
        let store = Arc::new(CountingStore::new(Arc::clone(&inner)));
        let alarm = Arc::new(ExpiryAlarm::wrap(
            inner,
            clock.clone(),
            0,
            "interleave-test".into(),
        ));
        let gc = Collector::new(store.clone(), clock.clone(), 1);
        let blocks = (0..6)
            .map(|_| {
                let mut b = vec![0u8; CHUNK];
                rng.fill(&mut b[..]);
                b
            })
            .collect();
        Self {
            seed,
            build_random: Arc::new(Mutex::new(StdRng::seed_from_u64(seed ^ 0xb1d))),
            rng,
            store,
            alarm,
            keys,
            clock,
            gc,
            tenants: vec![
                TenantId::new("t1").expect("valid"),
                TenantId::new("t2").expect("valid"),
            ],
            published: BTreeMap::new(),
            sessions: Vec::new(),
            states: BTreeMap::new(),
            blocks,
            tmp,
            step: 0,
            crashes: 0,
            alarms: 0,
            deleted: 0,
        }
    }

    fn ctx(&self, tenant: &TenantId, store: Arc<dyn ChunkStore>, root: RootId) -> Context {
        Context {
            store,
            keys: self.keys.clone(),
            tenant: tenant.clone(),
            root,
        }
    }

    fn note(&self, what: &str) {
        eprintln!("seed {} step {:3}: {what}", self.seed, self.step);
    }

    /// Arms a crash after a random number of writes, one time in `one_in`.
    fn maybe_crash(&mut self, one_in: u32) {
        let n = if self.rng.random_ratio(1, one_in) {
            Some(self.rng.random_range(0..6))
        } else {
            None
        };
        self.store.crash_after_writes(n);
    }

    fn crashed(&mut self, e: &dyn std::fmt::Display) {
        let text = e.to_string();
        assert!(
            text.contains("injected crash"),
            "unexpected failure: {text}"
        );
        self.crashes += 1;
    }

    async fn op_build(&mut self) {
        let tenant = self.tenants[self.rng.random_range(0..self.tenants.len())].clone();
        let name = ["app", "db", "web", "ml"][self.rng.random_range(0..4)];
        let image = ImageRef::new(name, "v1").expect("valid");
        let n = self.rng.random_range(1..=4);
        let mut content = Vec::with_capacity(n * CHUNK);
        for _ in 0..n {
            match self.rng.random_range(0..8) {
                0 => content.extend(std::iter::repeat_n(0u8, CHUNK)),
                1 => {
                    let mut b = vec![0u8; CHUNK];
                    self.rng.fill(&mut b[..]);
                    content.extend(b);
                }
                _ => content.extend(&self.blocks[self.rng.random_range(0..self.blocks.len())]),
            }
        }
        // A short tail, so the last chunk is partial sometimes.
        let tail = self.rng.random_range(0..3) * 4096;
        content.truncate(content.len() - tail);
        self.maybe_crash(4);
        let root = match self
            .gc
            .build_root(&RootId::new(GROUP).expect("valid"))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.store.crash_after_writes(None);
                self.crashed(&e);
                return;
            }
        };
        let ctx = self.ctx(&tenant, self.store.clone(), root.clone());
        let mut opts = BuildOptions::new(image.clone(), "test".into(), self.clock.now_unix_secs());
        opts.chunk_size = ChunkSize::new(CHUNK as u64).expect("valid");
        opts.seal_parallelism = 1;
        opts.upload_concurrency = 1;
        let random = self.build_random.clone();
        let fill = move |buf: &mut [u8]| random.lock().expect("rng").fill(buf);
        let size = content.len() as u64;
        let reader = Box::new(std::io::Cursor::new(content.clone()));
        let r = build(&ctx, reader, size, &opts, Arc::new(NoProgress), &fill).await;
        self.store.crash_after_writes(None);
        match r {
            Ok(_) => {
                self.note(&format!("built {tenant}/{image} ({size} bytes) in {root}"));
                self.published.insert((tenant, image), content);
            }
            Err(e) => self.crashed(&e),
        }
    }

    async fn op_unpublish(&mut self) {
        let Some(key) = self.pick_published() else {
            return;
        };
        self.store
            .delete_catalog(&key.0, &key.1)
            .await
            .expect("unpublish");
        self.note(&format!("unpublished {}/{}", key.0, key.1));
        self.published.remove(&key);
    }

    fn pick_published(&mut self) -> Option<(TenantId, ImageRef)> {
        if self.published.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.published.len());
        self.published.keys().nth(i).cloned()
    }

    async fn op_open(&mut self) {
        let Some(key) = self.pick_published() else {
            return;
        };
        let ctx = self.ctx(&key.0, self.alarm.clone(), RootId::initial());
        let opened = open_image(&ctx, &key.1)
            .await
            .expect("open a published image");
        let tenant_key = self
            .keys
            .tenant_key(&key.0, KeyAccess::Existing)
            .expect("key");
        let keys = opened.manifest.open_keys(&tenant_key).expect("keys");
        self.note(&format!(
            "agent opened {}/{} in {}",
            key.0, key.1, opened.entry.root
        ));
        self.sessions.push(Session {
            content: self.published[&key].clone(),
            image: key,
            root: opened.entry.root,
            manifest: opened.manifest,
            keys,
        });
        if self.sessions.len() > 4 {
            self.sessions.remove(0);
        }
    }

    async fn op_read(&mut self) {
        if self.sessions.is_empty() {
            return;
        }
        let i = self.rng.random_range(0..self.sessions.len());
        let root = self.sessions[i].root.clone();
        let state = self.state_of(&root).await;
        if state == Some(Lifecycle::Deleted) {
            // Its root expired and was deleted with nobody reading it: the agent has been
            // replaced (agents re-open images; the expiry window is there for that).
            self.note(&format!("agent on deleted root {root} retired"));
            self.sessions.remove(i);
            return;
        }
        let s = &self.sessions[i];
        let geometry = s.manifest.geometry();
        for (index, name) in s.manifest.data_chunks() {
            let mut data = self
                .alarm
                .get_chunk(&s.root, &name)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "agent on {}/{} in root {} ({state:?}): chunk {index}: {e}",
                        s.image.0, s.image.1, s.root
                    )
                })
                .to_vec();
            let key = s.keys.key(index).expect("key");
            open_chunk(&name, key, &mut data).expect("chunk opens");
            let range = geometry.chunk_range(index);
            assert_eq!(
                &data[..],
                &s.content[range.start as usize..range.end as usize],
                "agent read wrong bytes"
            );
        }
        self.note(&format!(
            "agent read {}/{} from {root} ({state:?})",
            s.image.0, s.image.1
        ));
        if state == Some(Lifecycle::Expired) && s.manifest.data_chunk_count() > 0 {
            let halts = self.store.list_halts().await.expect("halts");
            assert!(
                halts.contains(&root),
                "a read from expired root {root} raised no halt: {halts:?}"
            );
            self.alarms += 1;
        }
    }

    async fn state_of(&self, root: &RootId) -> Option<Lifecycle> {
        match self.store.get_meta(&MetaKey::RootState(root.clone())).await {
            Ok(raw) => Some(RootState::decode(&raw).expect("state decodes").state),
            Err(_) => None,
        }
    }

    async fn op_rotate(&mut self) {
        self.maybe_crash(3);
        let r = self
            .gc
            .rotate(&RootId::new(GROUP).expect("valid"), false)
            .await;
        self.store.crash_after_writes(None);
        match r {
            Ok(r) => self.note(&format!("rotated: {}, retired {:?}", r.created, r.retired)),
            Err(e) => self.crashed(&e),
        }
    }

    /// Migrates with a crash before write 0, then 1, then 2, … until a run completes; the
    /// invariants are checked after every crash.
    async fn op_migrate(&mut self) {
        for n in 0.. {
            self.store.crash_after_writes(Some(n));
            let r = self.gc.migrate(false, &NoGcProgress).await;
            let writes = self.store.writes();
            self.store.crash_after_writes(None);
            match r {
                Ok(report) => {
                    assert!(writes <= n, "a completed run wrote past its crash point");
                    let done: Vec<String> = report
                        .roots
                        .iter()
                        .map(|m| {
                            format!(
                                "{}: {} manifests, {} chunks copied, {} re-pointed, done {}",
                                m.root, m.manifests, m.chunks_copied, m.entries_repointed, m.done
                            )
                        })
                        .collect();
                    self.note(&format!("migrated after {n} crashes: {done:?}"));
                    // Idempotent: a second run copies, re-points and writes nothing.
                    self.store.crash_after_writes(Some(0));
                    let again = self.gc.migrate(false, &NoGcProgress).await.expect("re-run");
                    self.store.crash_after_writes(None);
                    for m in &again.roots {
                        assert_eq!(
                            (m.chunks_copied, m.entries_repointed),
                            (0, 0),
                            "second migration did work: {m:?}"
                        );
                        assert!(m.done, "{m:?}");
                    }
                    break;
                }
                Err(e) => {
                    self.crashed(&e);
                    self.check().await;
                }
            }
        }
    }

    async fn op_expire(&mut self) {
        let after = self.rng.random_range(0..100);
        self.maybe_crash(4);
        let r = self.gc.expire(after, false).await;
        self.store.crash_after_writes(None);
        match r {
            Ok(roots) => self.note(&format!("expire --after {after}: {roots:?}")),
            Err(e) => self.crashed(&e),
        }
    }

    async fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for root in self.store.list_roots().await.expect("roots") {
            for (m, size) in self.store.list_manifests(&root).await.expect("manifests") {
                out.insert(format!("{root}/m/{m}"), size);
            }
            let chunks: Vec<_> = self
                .store
                .list_chunks(&root)
                .try_collect()
                .await
                .expect("chunks");
            for (c, size) in chunks {
                out.insert(format!("{root}/c/{c}"), size);
            }
            if let Some(s) = self.state_of(&root).await {
                out.insert(format!("{root}/state/{s:?}"), 0);
            }
        }
        out
    }

    async fn op_delete(&mut self, run: bool) {
        let halted = !self.store.list_halts().await.expect("halts").is_empty();
        let before = if halted {
            Some(self.snapshot().await)
        } else {
            None
        };
        let after = self.rng.random_range(0..100);
        self.maybe_crash(4);
        let deleted_before = self.count_deleted().await;
        let what = if run {
            let settings = RunSettings {
                rotate_after: self.rng.random_range(50..400),
                expire_after: after,
                delete_after: after,
            };
            self.gc
                .run(&settings, false, &NoGcProgress)
                .await
                .map(|r| format!("gc run: {r:?}"))
        } else {
            self.gc
                .delete(after, false, &NoGcProgress)
                .await
                .map(|r| format!("delete --after {after}: {r:?}"))
        };
        self.store.crash_after_writes(None);
        self.deleted += self.count_deleted().await - deleted_before;
        if run && what.is_ok() {
            // A completed cycle leaves one active root per group, also after a rotation that
            // crashed between creating the new root and retiring the old one.
            let active = self
                .gc
                .roots()
                .await
                .expect("roots")
                .iter()
                .filter(|r| {
                    r.state
                        .as_ref()
                        .is_some_and(|s| s.state == Lifecycle::Active)
                })
                .count();
            assert_eq!(active, 1, "active roots after a completed gc run");
        }
        match what {
            Ok(text) => self.note(&text),
            Err(e) if e.kind() == GcErrorKind::Halted => {
                assert!(halted, "halted without a halt marker: {e}");
                self.note(&format!("delete refused: {e}"));
            }
            Err(e) => self.crashed(&e),
        }
        if let Some(before) = before {
            if !run {
                assert_eq!(
                    self.snapshot().await,
                    before,
                    "a halted collector deleted something"
                );
            } else {
                // A run may rotate and migrate while halted, but it deletes nothing.
                let after = self.snapshot().await;
                for key in before.keys().filter(|k| !k.contains("/state/")) {
                    assert!(after.contains_key(key), "a halted gc run deleted {key}");
                }
            }
        }
    }

    async fn count_deleted(&self) -> u64 {
        let roots = self.gc.roots().await.expect("roots");
        roots
            .iter()
            .filter(|r| {
                r.state
                    .as_ref()
                    .is_some_and(|s| s.state == Lifecycle::Deleted)
            })
            .count() as u64
    }

    async fn op_resume(&mut self) {
        for root in self.store.list_halts().await.expect("halts") {
            self.gc.resume(&root, false).await.expect("resume");
            self.note(&format!("resumed deletion: acknowledged {root}"));
        }
    }

    /// Every invariant, against the store as it is now.
    async fn check(&mut self) {
        // Root states only move forward and are never lost.
        let roots = self.gc.roots().await.expect("roots");
        let mut now_states = BTreeMap::new();
        for r in &roots {
            if let Some(s) = &r.state {
                now_states.insert(r.id.clone(), s.state);
            }
        }
        for (id, old) in &self.states {
            let new = now_states
                .get(id)
                .unwrap_or_else(|| panic!("the state record of root {id} was lost"));
            assert!(new >= old, "root {id} went back from {old:?} to {new:?}");
        }
        self.states = now_states;
        // No chunk referenced by a manifest in a non-deleted root is missing.
        for r in &roots {
            if self.states.get(&r.id) == Some(&Lifecycle::Deleted) {
                continue;
            }
            let chunks: BTreeSet<_> = self
                .store
                .list_chunks(&r.id)
                .map_ok(|(c, _)| c)
                .try_collect()
                .await
                .expect("chunks");
            for (m, _) in self.store.list_manifests(&r.id).await.expect("manifests") {
                let bytes = self.store.get_manifest(&r.id, &m).await.expect("manifest");
                let manifest = Manifest::decode(&bytes).expect("manifest decodes");
                for c in manifest.distinct_chunks() {
                    assert!(
                        chunks.contains(&c),
                        "root {} ({:?}): manifest {m} references missing chunk {c}",
                        r.id,
                        self.states.get(&r.id)
                    );
                }
            }
        }
        // Every published image exports bit for bit, from a root that is not expired.
        let catalog = self.gc.live().await.expect("catalog");
        let listed: BTreeSet<_> = catalog
            .iter()
            .map(|e| (e.tenant.clone(), e.image.clone()))
            .collect();
        let model: BTreeSet<_> = self.published.keys().cloned().collect();
        assert_eq!(listed, model, "the catalog is not the published set");
        for e in &catalog {
            let state = self.states.get(&e.entry.root).copied();
            assert!(
                matches!(state, Some(Lifecycle::Active | Lifecycle::Retired)),
                "{}/{} is published in root {} which is {state:?}",
                e.tenant,
                e.image,
                e.entry.root
            );
            let ctx = self.ctx(&e.tenant, self.store.clone(), RootId::initial());
            let out = self.tmp.path().join("export.img");
            export(&ctx, &e.image, &out, 4, Arc::new(NoProgress))
                .await
                .unwrap_or_else(|err| panic!("{}/{} does not export: {err}", e.tenant, e.image));
            let got = std::fs::read(&out).expect("read export");
            let want = &self.published[&(e.tenant.clone(), e.image.clone())];
            assert!(
                Sha256::digest(&got) == Sha256::digest(want),
                "{}/{} exports different bytes",
                e.tenant,
                e.image
            );
        }
    }

    async fn run(&mut self, steps: usize) {
        self.check().await;
        for step in 0..steps {
            self.step = step;
            match self.rng.random_range(0..100) {
                0..=21 => self.op_build().await,
                22..=29 => self.op_unpublish().await,
                30..=39 => self.op_open().await,
                40..=54 => self.op_read().await,
                55..=62 => self.op_rotate().await,
                63..=72 => self.op_migrate().await,
                73..=79 => self.op_expire().await,
                80..=86 => self.op_delete(false).await,
                87..=89 => self.op_delete(true).await,
                90..=91 => self.op_resume().await,
                _ => {
                    let secs = self.rng.random_range(1..200);
                    self.clock.advance(secs);
                    self.note(&format!("clock +{secs}s"));
                }
            }
            self.check().await;
        }
    }
}

fn local_store(dir: &std::path::Path) -> Arc<dyn ChunkStore> {
    let mut cfg = StoreConfig::new(StoreLocation::Local(dir.to_path_buf()));
    cfg.create_if_missing = true;
    Arc::new(ObjectChunkStore::open(&cfg).expect("open local store"))
}

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("LAZYBLOCK_GC_SEED") {
        Ok(s) => vec![s
            .trim()
            .parse()
            .expect("LAZYBLOCK_GC_SEED must be a number")],
        Err(_) => default.to_vec(),
    }
}

/// What a run exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    crashes: u64,
    alarms: u64,
    roots: u64,
    deleted: u64,
}

async fn run_seed(seed: u64, store: Arc<dyn ChunkStore>, steps: usize) -> Tally {
    let _guard = SeedGuard(seed);
    eprintln!(
        "GC interleaving: seed {seed}, {steps} steps, store {}",
        store.url()
    );
    let mut w = World::new(seed, store);
    w.run(steps).await;
    let t = Tally {
        crashes: w.crashes,
        alarms: w.alarms,
        roots: w.gc.roots().await.expect("roots").len() as u64,
        deleted: w.deleted,
    };
    eprintln!("GC interleaving: seed {seed}: {t:?}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_keep_the_invariants_on_a_local_store() {
    let seeds = seeds(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut total = Tally::default();
    for &seed in &seeds {
        let dir = tempfile::tempdir().expect("tmp");
        let t = run_seed(seed, local_store(dir.path()), 120).await;
        total.crashes += t.crashes;
        total.alarms += t.alarms;
        total.roots += t.roots;
        total.deleted += t.deleted;
    }
    eprintln!("GC interleaving, all seeds: {total:?}");
    // The test must exercise what it claims to (checked on the default seeds; one replayed seed
    // may legitimately do less).
    if seeds.len() > 1 {
        assert!(total.crashes > 0, "no crash was injected");
        assert!(total.roots > seeds.len() as u64, "no root was ever rotated");
        assert!(total.deleted > 0, "no root was ever deleted");
        assert!(total.alarms > 0, "no agent ever read an expired root");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_keep_the_invariants_on_s3() {
    let unique = lazyblock_store::testing::unique_name("gc-interleave");
    let Some(config) = lazyblock_store::testing::s3_test_config(&unique) else {
        eprintln!("LAZYBLOCK_SKIP_S3_TESTS=1: skipping");
        return;
    };
    let store: Arc<dyn ChunkStore> =
        Arc::new(ObjectChunkStore::open(&config).expect("open S3 store"));
    let replay = std::env::var("LAZYBLOCK_GC_SEED").is_ok();
    let t = run_seed(seeds(&[11])[0], store, 60).await;
    assert!(
        replay || (t.crashes > 0 && t.roots > 1 && t.deleted > 0),
        "the S3 run exercised too little: {t:?}"
    );
}

#[tokio::test]
async fn gc_run_finishes_a_rotation_cut_short() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(CountingStore::new(local_store(dir.path())));
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let gc = Collector::new(store.clone(), clock.clone(), 4);
    let group = RootId::new(GROUP).expect("valid");
    let r0 = gc.build_root(&group).await.expect("first root");
    clock.advance(10);
    // The new root's record is written, then the crash comes before r0 is retired.
    store.crash_after_writes(Some(1));
    let e = gc.rotate(&group, false).await.expect_err("crash");
    assert!(e.to_string().contains("injected crash"), "{e}");
    store.crash_after_writes(None);
    let active = |roots: &[lazyblock_gc::RootInfo]| -> Vec<RootId> {
        roots
            .iter()
            .filter(|r| {
                r.state
                    .as_ref()
                    .is_some_and(|s| s.state == Lifecycle::Active)
            })
            .map(|r| r.id.clone())
            .collect()
    };
    let r1 = RootId::new("r1").expect("valid");
    assert_eq!(
        active(&gc.roots().await.expect("roots")),
        vec![r0.clone(), r1.clone()]
    );
    // Builds already pick the new root.
    assert_eq!(gc.build_root(&group).await.expect("build root"), r1);
    // A cycle with no rotation due retires the old one.
    let settings = RunSettings {
        rotate_after: 1_000_000,
        expire_after: 1_000_000,
        delete_after: 1_000_000,
    };
    let report = gc.run(&settings, false, &NoGcProgress).await.expect("run");
    assert_eq!(report.rotated.len(), 1, "{report:?}");
    assert_eq!(report.rotated[0].retired, vec![r0]);
    assert_eq!(active(&gc.roots().await.expect("roots")), vec![r1]);
}
