//! End-to-end tests of the AZ cache tier on the command line, against memcached processes the
//! tests start (`LocalFleet`, five nodes on loopback, killed when the test ends):
//! - `lazyblock build --prime-l2` writes every chunk's stripes, so the first cold `serve` of the
//!   image fetches nothing from the origin;
//! - without priming, a cold `serve` fetches from the origin and fills the AZ tier in the
//!   background, so the next cold agent (fresh worker cache) is served by it;
//! - with every node down the agent still serves, from the origin;
//! - cold-start admission: beyond `--max-cold-starts` a cold start is refused with exit status
//!   75 and one line; a warm start is admitted; a freed slot admits the next cold start.
//!
//! Needs `memcached` and `nbdcopy` (libnbd-bin).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lazyblock_cache::l2::{FleetOptions, LocalFleet};
use rand::{RngCore, SeedableRng};

mod common;
use common::*;

const LIMIT: Duration = Duration::from_secs(300);
const MIB: usize = 1 << 20;

/// A 12 MiB raw image: seeded random data with a zero gap (24 chunks, 4 of them zero).
fn image(w: &World, name: &str, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; 12 * MIB];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rng.fill_bytes(&mut data[..6 * MIB]);
    rng.fill_bytes(&mut data[8 * MIB..]);
    let path = w.path().join(format!("{name}.raw"));
    std::fs::write(&path, &data).expect("write image");
    data
}

fn build(w: &World, name: &str, extra: &[&str]) -> Out {
    let src = format!(
        "raw:{}",
        w.path()
            .join(format!("{}.raw", name.split(':').next().unwrap_or(name)))
            .display()
    );
    let mut args = vec!["build", src.as_str(), "--name", name];
    args.extend_from_slice(extra);
    w.run(&args).ok()
}

fn nbdcopy(uri: &str, out: &Path) -> Vec<u8> {
    let mut cmd = Command::new("nbdcopy");
    cmd.args([uri, out.to_str().expect("utf-8")]);
    let res = run_bounded(cmd, LIMIT);
    assert!(res.status.success(), "{}", describe("nbdcopy", &res));
    std::fs::read(out).expect("read nbdcopy output")
}

fn fleet() -> (LocalFleet, String) {
    let fleet = LocalFleet::start(5, FleetOptions::default()).expect("start 5 memcached nodes");
    let nodes = fleet.addrs().join(",");
    (fleet, nodes)
}

/// The AZ flags of every run: the nodes, and a request timeout generous enough for a debug
/// build on a loaded two-core machine (the default, 50 ms, is for production builds).
fn l2_flags(nodes: &str) -> [&str; 4] {
    ["--l2", nodes, "--l2-timeout", "5s"]
}

/// Serves `image` read-only with a fresh worker cache, copies the whole export, stops; returns
/// the summary and the whole stderr.
fn serve_and_copy(
    w: &World,
    image: &str,
    tag: &str,
    extra: &[&str],
    want: &[u8],
) -> (Summary, String) {
    let sock = w.path().join(format!("{tag}.sock"));
    let cache = w.path().join(format!("cache-{tag}"));
    let sock_arg = format!("unix:{}", sock.display());
    let cache_arg = cache.to_str().expect("utf-8").to_owned();
    let mut args = vec![
        image,
        "--read-only",
        "--nbd",
        &sock_arg,
        "--cache-dir",
        &cache_arg,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(w, tag, &args);
    let got = nbdcopy(&server.uri, &w.path().join(format!("{tag}.copy")));
    assert!(got == want, "{tag}: the export differs from the image");
    let (status, stderr) = server.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "{tag}: serve exits 0 on SIGTERM:\n{stderr}"
    );
    (parse_summary(&stderr, image), stderr)
}

/// `az N` of the summary line: chunk lookups the AZ tier answered (a chunk read by two guest
/// reads counts twice).
fn az_hits(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("chunk hits memory"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    let t: Vec<&str> = line.split_whitespace().collect();
    t.windows(2)
        .find(|p| p[0] == "az")
        .and_then(|p| p[1].trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no `az N` in {line:?}"))
}

#[test]
fn primed_image_starts_cold_without_the_origin() {
    let w = World::new("lazyblock-l2-", LIMIT);
    let (_fleet, nodes) = fleet();
    let data = image(&w, "app", 1);
    let out = build(
        &w,
        "app:v1",
        &["--prime-l2", "--l2", &nodes, "--l2-timeout", "5s"],
    );
    assert!(
        out.stderr
            .contains("primed the AZ cache with 20 chunks (0 not taken)"),
        "{}",
        out.describe()
    );
    let (s, stderr) = serve_and_copy(&w, "app:v1", "primed", &l2_flags(&nodes), &data);
    assert_eq!(
        s.origin_chunks, 0,
        "a primed image needs no origin fetch:\n{stderr}"
    );
    assert!(az_hits(&stderr) >= 20, "{stderr}");
    assert!(
        stderr.contains("az cache hits 20 ") && stderr.contains("misses 0, corrupt 0"),
        "every distinct chunk from the AZ tier, once:\n{stderr}"
    );

    // --prime-l2 without nodes: one line, exit 1, nothing published.
    let out = w.run(&[
        "build",
        &format!("raw:{}", w.path().join("app.raw").display()),
        "--name",
        "app:v2",
        "--prime-l2",
    ]);
    out.fails_with(&[1], &["--prime-l2", "--l2"]);
    let out = w.run(&["inspect", "app:v2"]);
    assert!(!out.status.success(), "a refused build published its image");
}

#[test]
fn origin_fetches_fill_the_az_tier_for_the_next_cold_start() {
    let w = World::new("lazyblock-l2-", LIMIT);
    let (_fleet, nodes) = fleet();
    let data = image(&w, "app", 2);
    build(&w, "app:v1", &[]);
    let (first, stderr) = serve_and_copy(&w, "app:v1", "first", &l2_flags(&nodes), &data);
    assert_eq!(
        first.origin_chunks, 20,
        "nothing primed: every chunk from the origin:\n{stderr}"
    );
    assert_eq!(az_hits(&stderr), 0, "{stderr}");
    assert!(
        stderr.contains("fills 20 (0 dropped, 0 stripe errors)"),
        "{stderr}"
    );
    // The fills ran in the background of the first agent, which waited for them on exit: the
    // next cold agent (a fresh worker cache) is served by the AZ tier alone.
    let (second, stderr) = serve_and_copy(&w, "app:v1", "second", &l2_flags(&nodes), &data);
    assert_eq!(second.origin_chunks, 0, "{stderr}");
    assert!(az_hits(&stderr) >= 20, "{stderr}");
    assert!(stderr.contains("az cache hits 20 "), "{stderr}");
}

#[test]
fn all_nodes_down_still_serves_from_the_origin() {
    let w = World::new("lazyblock-l2-", LIMIT);
    let (mut fleet, nodes) = fleet();
    let data = image(&w, "app", 3);
    build(
        &w,
        "app:v1",
        &["--prime-l2", "--l2", &nodes, "--l2-timeout", "5s"],
    );
    for i in 0..5 {
        fleet.kill(i).expect("kill node");
    }
    let (s, stderr) = serve_and_copy(&w, "app:v1", "down", &l2_flags(&nodes), &data);
    assert_eq!(s.origin_chunks, 20, "{stderr}");
    assert_eq!(s.origin_errors, 0, "{stderr}");
    assert_eq!(az_hits(&stderr), 0, "{stderr}");
}

#[test]
fn cold_starts_beyond_the_limit_are_refused_with_a_retryable_error() {
    let w = World::new("lazyblock-l2-", LIMIT);
    let a = image(&w, "a", 4);
    image(&w, "b", 5);
    build(&w, "a:v1", &[]);
    build(&w, "b:v1", &[]);
    let cache = w.cache();
    let cache_arg = cache.to_str().expect("utf-8");
    let limit = [
        "--max-cold-starts",
        "1",
        "--profile-idle",
        "600s",
        "--cache-dir",
        cache_arg,
    ];

    // A cold start of a takes the only slot and keeps it (its start-up phase lasts).
    let sock_a = format!("unix:{}", w.path().join("a.sock").display());
    let mut args = vec!["a:v1", "--read-only", "--nbd", &sock_a];
    args.extend_from_slice(&limit);
    let server_a = Server::start(&w, "a", &args);
    let got = nbdcopy(&server_a.uri, &w.path().join("a.copy"));
    assert!(got == a, "the export of a differs");

    // A cold start of b is refused: exit 75, one line that says why and what to do.
    let sock_b = format!("unix:{}", w.path().join("b.sock").display());
    let mut args_b = vec!["serve", "b:v1", "--read-only", "--nbd", &sock_b];
    args_b.extend_from_slice(&limit);
    let out = w.run(&args_b);
    out.fails_with(&[75], &["cold starts", "retry"]);

    // A warm start of a (its chunks are in the worker cache) is admitted meanwhile.
    let sock_a2 = format!("unix:{}", w.path().join("a2.sock").display());
    let mut args = vec!["a:v1", "--read-only", "--nbd", &sock_a2];
    args.extend_from_slice(&limit);
    let server_a2 = Server::start(&w, "a2", &args);
    drop(server_a2);

    // Once a is gone, its slot is free and b starts.
    let (status, _) = server_a.stop();
    assert_eq!(status.code(), Some(0));
    let mut args = vec!["b:v1", "--read-only", "--nbd", &sock_b];
    args.extend_from_slice(&limit);
    let server_b = Server::start(&w, "b", &args);
    drop(server_b);
}
