//! Garbage collection through the command line, against a local store: `lazyblock rm`,
//! `lazyblock roots`, `lazyblock gc rotate|migrate|expire|delete|run|resume`, and an agent that
//! keeps serving an image from a retired root through its migration, then raises the alarm (error
//! line, metric, halt marker) when it reads the root after it expired.
//!
//! Needs `qemu-io` and `nbdcopy` (installed by `scripts/test-env.sh`).

mod common;

use std::path::Path;

use rand::{RngCore, SeedableRng};
use serde_json::Value;

use common::*;

const MIB: usize = 1 << 20;

fn random_file(w: &World, name: &str, seed: u64, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    let path = w.path().join(name);
    std::fs::write(&path, &v).expect("write image");
    (path, v)
}

fn build(w: &World, file: &Path, name: &str) {
    w.run(&["build", &format!("raw:{}", file.display()), "--name", name])
        .ok();
}

/// `lazyblock roots --json`, by root id.
fn roots(w: &World) -> std::collections::BTreeMap<String, Value> {
    let v = w.run(&["roots", "--json"]).ok().json();
    v.as_array()
        .expect("a list")
        .iter()
        .map(|r| (r["root"].as_str().expect("root").to_owned(), r.clone()))
        .collect()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

fn exports_exactly(w: &World, image: &str, want: &[u8]) {
    let out = w.path().join("export.out");
    w.run(&["export", image, "-o", out.to_str().expect("utf-8")])
        .ok();
    let got = std::fs::read(&out).expect("read export");
    assert!(got == want, "{image} exports different bytes");
}

#[test]
fn a_cycle_reclaims_unpublished_images_and_keeps_published_ones() {
    let w = World::new("lazyblock-gc-", TOOL_LIMIT);
    let (a, a_bytes) = random_file(&w, "a.img", 1, 3 * MIB);
    let (b, _) = random_file(&w, "b.img", 2, 2 * MIB);
    build(&w, &a, "app:v1");
    build(&w, &b, "old:v1");
    let before = roots(&w);
    assert_eq!(before.len(), 1, "{before:?}");
    let r0 = &before["r0"];
    assert_eq!(r0["state"], "active");
    assert_eq!(num(r0, "chunks"), 10);
    assert_eq!(num(r0, "live_images"), 2);
    assert_eq!(num(r0, "bytes"), num(r0, "live_bytes"));

    // Every gc command has a dry run, and it changes nothing.
    for args in [
        &["gc", "rotate", "--dry-run"][..],
        &["gc", "migrate", "--dry-run"],
        &["gc", "expire", "--after", "0", "--dry-run"],
        &["gc", "delete", "--after", "0", "--dry-run"],
        &["gc", "run", "--rotate-after", "0", "--dry-run"],
    ] {
        let out = w.run(args).ok();
        assert!(!out.stderr.is_empty(), "{}", out.describe());
    }
    let dry = w
        .run(&["gc", "run", "--rotate-after", "0", "--dry-run"])
        .ok();
    assert!(
        dry.stderr
            .contains("would rotate group default: new active root r1, retired r0"),
        "{}",
        dry.describe()
    );
    assert_eq!(roots(&w), before, "a dry run changed the store");

    // Unpublish one image, rotate, migrate: only the published image moves.
    let rm = w.run(&["rm", "old:v1"]).ok();
    assert!(
        rm.stderr.contains("unpublished old:v1"),
        "{}",
        rm.describe()
    );
    w.run(&["rm", "old:v1"])
        .fails_with(&[1], &["old:v1", "not found"]);
    let rot = w.run(&["gc", "rotate"]).ok();
    assert!(
        rot.stderr.contains("new active root r1, retired r0"),
        "{}",
        rot.describe()
    );
    let mig = w.run(&["gc", "migrate"]).ok();
    assert!(
        mig.stderr
            .contains("migrated r0 → r1: 1 live manifests, 6 chunks copied"),
        "{}",
        mig.describe()
    );
    // Idempotent.
    let again = w.run(&["gc", "migrate"]).ok();
    assert!(
        again.stderr.contains("0 chunks copied") && again.stderr.contains("0 catalog entries"),
        "{}",
        again.describe()
    );
    let images = w.run(&["images", "--json"]).ok().json();
    assert_eq!(images[0]["root"], "r1", "{images}");
    exports_exactly(&w, "app:v1", &a_bytes);

    // The default expiry age (1 day) has not passed: nothing expires.
    let early = w.run(&["gc", "expire"]).ok();
    assert!(
        early.stderr.contains("nothing to expire"),
        "{}",
        early.describe()
    );
    w.run(&["gc", "expire", "--after", "0"]).ok();
    let mid = roots(&w);
    assert_eq!(mid["r0"]["state"], "expired");
    assert_eq!(num(&mid["r0"], "live_bytes"), 0);
    let del = w.run(&["gc", "delete", "--after", "0"]).ok();
    assert!(
        del.stderr.contains("deleted r0: 2 manifests, 10 chunks"),
        "{}",
        del.describe()
    );

    let after = roots(&w);
    assert_eq!(after["r0"]["state"], "deleted");
    assert_eq!(num(&after["r0"], "bytes"), 0, "r0 is reclaimed");
    assert_eq!(num(&after["r0"], "chunks"), 0);
    let r1 = &after["r1"];
    assert_eq!(r1["state"], "active");
    assert_eq!((num(r1, "chunks"), num(r1, "live_images")), (6, 1));
    assert_eq!(num(r1, "bytes"), num(r1, "live_bytes"), "r1 is all live");
    // The published image kept its bytes; the unpublished one's are gone.
    assert!(num(r1, "live_bytes") >= 3 * MIB as u64);
    assert!(num(r0, "bytes") > num(r1, "bytes"));
    exports_exactly(&w, "app:v1", &a_bytes);
    w.run(&["export", "old:v1", "-o", "x.out"])
        .fails_with(&[1], &["old:v1", "not in the catalog"]);
    let table = w.run(&["roots"]).ok();
    assert!(table.stdout.starts_with("ROOT "), "{}", table.describe());

    // Bad input: one line, non-zero, nothing changed.
    w.run(&["gc", "resume", "--ack", "r0"])
        .fails_with(&[1], &["no deletion halt for root r0"]);
    w.run(&["gc", "expire", "--after", "soon"])
        .fails_with(&[2], &["invalid duration"]);
    w.run(&["gc", "rotate", "--group", "Bad Group"])
        .fails_with(&[1], &["--group"]);
    assert_eq!(roots(&w), after);
}

#[test]
fn an_agent_on_a_retired_root_serves_through_migration_and_raises_the_alarm_once_expired() {
    let w = World::new("lazyblock-gc-agent-", TOOL_LIMIT);
    let (img, bytes) = random_file(&w, "img", 7, 4 * MIB);
    build(&w, &img, "svc:v1");
    let sock = w.path().join("nbd.sock");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(
        &w,
        "serve",
        &[
            "svc:v1",
            "--read-only",
            "--no-readahead",
            "--nbd",
            &format!("unix:{}", sock.display()),
            "--metrics-addr",
            &addr,
            // Read the root's state on every origin read, so the test need not wait.
            "--root-check-interval",
            "0s",
        ],
    );
    // The first MiB (chunks 0 and 1) while r0 is active.
    qemu_io_ok(&server.uri, true, &["read 0 1M".to_owned()]);
    w.run(&["gc", "rotate"]).ok();
    w.run(&["gc", "migrate"]).ok();
    // The agent still reads r0, now retired: it works and raises nothing.
    qemu_io_ok(&server.uri, true, &["read 1M 1M".to_owned()]);
    let halts = w.store().join("gc/halts");
    assert!(
        !halts.exists() || std::fs::read_dir(&halts).expect("halts").next().is_none(),
        "a read from a retired root raised an alarm"
    );
    w.run(&["gc", "expire", "--after", "0"]).ok();
    // The rest of the image comes from the expired root: correct bytes, and the alarm.
    let copy = nbdcopy_all(&server.uri, &w.path().join("copy.img"));
    assert!(copy == bytes, "the agent served different bytes");
    assert!(halts.join("r0").is_file(), "no halt marker for r0");
    let log = server.stderr();
    assert!(log.contains("ALARM: read from expired root r0"), "{log}");
    let (_, _, body) = http_get(port, "/metrics");
    assert!(
        sample(&body, "lazyblock_expired_root_reads_total{root=\"r0\"}") >= 4.0,
        "{body}"
    );
    assert!(
        sample(&body, "lazyblock_gc_halts_raised_total") >= 1.0,
        "{body}"
    );

    // Deletion is halted: nothing is deleted, the command says why and exits 1.
    let chunks_before = num(&roots(&w)["r0"], "chunks");
    w.run(&["gc", "delete", "--after", "0"]).fails_with(
        &[1],
        &[
            "deletion is halted",
            "root r0",
            "read of chunk",
            "gc resume --ack",
        ],
    );
    let run = w.run(&["gc", "run", "--delete-after", "0"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("error: deletion is halted"),
        "{}",
        run.describe()
    );
    assert_eq!(num(&roots(&w)["r0"], "chunks"), chunks_before);
    assert_eq!(roots(&w)["r0"]["halted"], true);

    // The agent goes away; the operator acknowledges; deletion resumes.
    let (status, _) = server.stop();
    assert!(status.success());
    let ack = w.run(&["gc", "resume", "--ack", "r0"]).ok();
    assert!(
        ack.stderr.contains("deletion is no longer halted"),
        "{}",
        ack.describe()
    );
    let del = w.run(&["gc", "delete", "--after", "0"]).ok();
    assert!(del.stderr.contains("deleted r0"), "{}", del.describe());
    assert_eq!(num(&roots(&w)["r0"], "chunks"), 0);
    exports_exactly(&w, "svc:v1", &bytes);
}

#[test]
fn groups_have_their_own_active_roots_and_the_config_file_sets_the_ages() {
    let w = World::new("lazyblock-gc-groups-", TOOL_LIMIT);
    let (a, a_bytes) = random_file(&w, "a.img", 3, MIB);
    let (g, g_bytes) = random_file(&w, "g.img", 4, MIB);
    build(&w, &a, "app:v1");
    w.run(&[
        "build",
        &format!("raw:{}", g.display()),
        "--name",
        "trainer:v1",
        "--root-group",
        "gpu",
    ])
    .ok();
    let r = roots(&w);
    assert_eq!(
        (&r["r0"]["group"], &r["r0"]["state"]),
        (&"default".into(), &"active".into())
    );
    assert_eq!(
        (&r["r1"]["group"], &r["r1"]["state"]),
        (&"gpu".into(), &"active".into())
    );

    // Rotating one group leaves the other's active root alone.
    let rot = w.run(&["gc", "rotate", "--group", "gpu"]).ok();
    assert!(
        rot.stderr
            .contains("group gpu: new active root r2, retired r1"),
        "{}",
        rot.describe()
    );
    let r = roots(&w);
    assert_eq!(r["r0"]["state"], "active");
    assert_eq!(
        (&r["r2"]["group"], &r["r2"]["state"]),
        (&"gpu".into(), &"active".into())
    );

    // Ages from the config file's [gc] table apply when --after is not given.
    let config = w.path().join("config.toml");
    std::fs::write(
        &config,
        "[gc]\nexpire_after = \"0s\"\ndelete_after = \"0s\"\n",
    )
    .expect("config");
    let cfg = config.to_str().expect("utf-8");
    let mig = w.run(&["--config", cfg, "gc", "migrate"]).ok();
    assert!(
        mig.stderr.contains("migrated r1 → r2"),
        "{}",
        mig.describe()
    );
    let exp = w.run(&["--config", cfg, "gc", "expire"]).ok();
    assert!(exp.stderr.contains("expired r1"), "{}", exp.describe());
    let del = w.run(&["--config", cfg, "gc", "delete"]).ok();
    assert!(del.stderr.contains("deleted r1"), "{}", del.describe());
    std::fs::write(&config, "[gc]\nexpire_after = \"soon\"\n").expect("config");
    w.run(&["--config", cfg, "gc", "expire"])
        .fails_with(&[1], &["[gc] expire_after", "invalid duration"]);

    let images = w.run(&["images", "--json"]).ok().json();
    let roots_of: Vec<&str> = images
        .as_array()
        .expect("list")
        .iter()
        .map(|i| i["root"].as_str().expect("root"))
        .collect();
    assert_eq!(roots_of, vec!["r0", "r2"], "{images}");
    exports_exactly(&w, "app:v1", &a_bytes);
    exports_exactly(&w, "trainer:v1", &g_bytes);
}
