//! `lazyblock bench l2`: the AZ cache tier end to end, against memcached nodes on loopback.
//!
//! In one run:
//! 1. the stripe codec: encode and rebuild GB/s of one core for the chunk size, on the SIMD
//!    path in use and on the scalar path, and a check that the fast path is the one in use
//!    (exit status 1 if it is not: Lambda's lesson, a refactor that silently fell back to
//!    byte-at-a-time code);
//! 2. L2-hit chunk fetches, one at a time: p50 / p99 / p99.9 with every stripe request,
//!    the rebuild and the SHA-256 verification included; with all nodes up, then with one node
//!    killed (so a parity stripe stands in);
//! 3. one node slowed by `--slow` (a delay line in front of it): `k`-of-`n` against a single
//!    copy of each chunk on one node chosen by the same rendezvous placement, the same chunks,
//!    measured side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use futures::stream::{self, StreamExt};
use lazyblock_cache::l2::stripe::{simd_engine, Codec};
use lazyblock_cache::l2::{FleetOptions, LocalFleet};
use lazyblock_cache::{L2Config, L2Get, L2Tier};
use lazyblock_format::chunk_name_of;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::settings::parse_duration;

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchL2Args {
    /// Chunks written to the AZ tier and read back
    #[arg(long, default_value_t = 2000)]
    chunks: usize,
    /// Chunk size
    #[arg(long, default_value = "512KiB", value_parser = crate::settings::parse_size)]
    chunk_size: u64,
    /// memcached nodes to start on loopback (when no --l2 is given)
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Delay added in front of one node for the slow-node comparison
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    slow: Duration,
    /// Seed of the random chunks
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the results as JSON on stdout
    #[arg(long)]
    json: bool,
}

/// Latency percentiles of one series, exact (from sorted samples).
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    n: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1]
    };
    Percentiles {
        n: samples.len(),
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: samples.last().copied().unwrap_or_default(),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One core's encode and rebuild throughput in GB/s: the best of `batches` batches of `rounds`
/// calls, after two warm-up batches. (On a cold heap each call's fresh stripe buffers fault in
/// page by page, which hides the codec's own speed; the read and fill paths run warm.)
fn codec_speed(codec: &Codec, chunk: &[u8], rounds: usize, batches: usize) -> Result<(f64, f64)> {
    let id = *chunk_name_of(chunk).as_bytes();
    let stripes = codec.encode(&id, chunk)?;
    // Rebuild without data stripe 0: the parity path.
    let k = codec.k();
    let header = lazyblock_cache::l2::stripe::HEADER_LEN;
    let pick: Vec<(usize, &[u8])> = (1..codec.n())
        .take(k)
        .map(|i| (i, &stripes[i][header..]))
        .collect();
    let (mut best_encode, mut best_rebuild) = (Duration::MAX, Duration::MAX);
    for batch in 0..batches + 2 {
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(codec.encode(&id, std::hint::black_box(chunk))?);
        }
        let encode = t.elapsed();
        let t = Instant::now();
        for _ in 0..rounds {
            let rebuilt = codec.rebuild(&id, chunk.len(), std::hint::black_box(&pick))?;
            if rebuilt.data.len() != chunk.len() {
                bail!(
                    "codec rebuilt {} bytes, expected {}",
                    rebuilt.data.len(),
                    chunk.len()
                );
            }
        }
        let rebuild = t.elapsed();
        if batch >= 2 {
            best_encode = best_encode.min(encode);
            best_rebuild = best_rebuild.min(rebuild);
        }
    }
    let gbps = |d: Duration| chunk.len() as f64 * rounds as f64 / d.as_secs_f64().max(1e-9) / 1e9;
    Ok((gbps(best_encode), gbps(best_rebuild)))
}

/// A delay line in front of `upstream`: every byte the node sends back reaches the client
/// `delay` later. Returns the address to use instead of the node's.
async fn slow_proxy(upstream: String, delay: Duration) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                let writer = tokio::spawn(async move {
                    while let Some((due, data)) = rx.recv().await {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                        if cw.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                });
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx
                                .send((Instant::now() + delay, buf[..n].to_vec()))
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                drop(tx);
                let _ = writer.await;
                up.abort();
            });
        }
    });
    Ok(addr)
}

async fn prime(tier: &L2Tier, chunks: &[(Vec<u8>, [u8; 32])]) -> Result<()> {
    let failed = stream::iter(chunks)
        .map(|(data, id)| async move { tier.put(id, data).await.is_err() })
        .buffer_unordered(16)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    if failed > 0 {
        bail!("{failed} chunks could not be written to the AZ tier");
    }
    Ok(())
}

/// Reads every chunk once, one at a time; every answer must be a verified hit.
async fn read_all(tier: &Arc<L2Tier>, chunks: &[(Vec<u8>, [u8; 32])]) -> Result<Percentiles> {
    let mut samples = Vec::with_capacity(chunks.len());
    for (data, id) in chunks {
        let t = Instant::now();
        let got = tier.get(id, data.len()).await;
        samples.push(t.elapsed());
        match got {
            L2Get::Hit { data: bytes, .. } if bytes.len() == data.len() => {}
            other => bail!("AZ tier read of a primed chunk gave {:?}", short(&other)),
        }
    }
    Ok(percentiles(samples))
}

fn short(g: &L2Get) -> &'static str {
    match g {
        L2Get::Hit { .. } => "a hit of the wrong length",
        L2Get::Miss => "a miss",
        L2Get::Corrupt => "corrupt stripes",
    }
}

pub(crate) async fn run(args: &BenchL2Args, l2: Option<L2Config>) -> Result<()> {
    let len = usize::try_from(args.chunk_size).context("chunk size")?;
    if len == 0 || len > lazyblock_cache::l2::stripe::MAX_CHUNK_LEN {
        bail!("--chunk-size must be between 1 byte and 4 MiB");
    }
    let base = l2.unwrap_or_default();
    let (k, n) = (base.k, base.n);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);

    // 1. The codec.
    let mut sample = vec![0u8; len];
    rng.fill_bytes(&mut sample);
    let rounds = ((32usize << 20) / len).max(4);
    let fast = Codec::new(k, n)?;
    let scalar = Codec::new_scalar(k, n)?;
    let (enc, dec) = codec_speed(&fast, &sample, rounds, 8)?;
    let (enc_s, dec_s) = codec_speed(&scalar, &sample, rounds, 3)?;
    let engine = simd_engine();
    println!(
        "codec {k}-of-{n}, {} KiB chunks, one core: encode {enc:.2} GB/s, rebuild (one data stripe lost) {dec:.2} GB/s on the {engine} path (target ≥ 4 GB/s); scalar path {enc_s:.2} / {dec_s:.2} GB/s ({:.1}× / {:.1}×)",
        len >> 10,
        enc / enc_s.max(1e-9),
        dec / dec_s.max(1e-9),
    );
    // The verification every hit pays (SHA-256 of the whole chunk), for reading the latencies.
    let mut hash = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(chunk_name_of(std::hint::black_box(&sample)));
        }
        hash = hash.min(t.elapsed() / rounds as u32);
    }
    println!(
        "verification (SHA-256 of one {} KiB chunk): {:.0} µs ({:.2} GB/s), part of every L2-hit time below",
        len >> 10,
        us(hash),
        len as f64 / hash.as_secs_f64().max(1e-9) / 1e9
    );
    let simd = engine != "scalar";
    if simd && (enc < 3.0 * enc_s || dec < 3.0 * dec_s) {
        bail!("the codec's fast path ({engine}) is not in use: it is less than 3× the scalar path");
    }

    // The nodes.
    let fleet;
    let nodes = if base.nodes.is_empty() {
        fleet = Some(
            LocalFleet::start(
                args.nodes,
                FleetOptions {
                    mem_mib: 1024,
                    ..FleetOptions::default()
                },
            )
            .context("cannot start memcached nodes")?,
        );
        fleet.as_ref().map(LocalFleet::addrs).unwrap_or_default()
    } else {
        fleet = None;
        base.nodes.clone()
    };
    if nodes.len() < n {
        bail!(
            "{} nodes for {n} stripes per chunk: need at least {n}",
            nodes.len()
        );
    }
    let config = L2Config {
        nodes: nodes.clone(),
        timeout: Duration::from_secs(2),
        ..base.clone()
    };
    let tier = Arc::new(L2Tier::new(config.clone())?);
    eprintln!(
        "bench l2: {} nodes, {} chunks of {} KiB ({} MiB), k={k} n={n}",
        nodes.len(),
        args.chunks,
        len >> 10,
        (args.chunks * len) >> 20
    );
    let chunks: Vec<(Vec<u8>, [u8; 32])> = (0..args.chunks)
        .map(|_| {
            let mut d = vec![0u8; len];
            rng.fill_bytes(&mut d);
            let id = *chunk_name_of(&d).as_bytes();
            (d, id)
        })
        .collect();
    let t = Instant::now();
    prime(&tier, &chunks).await?;
    let put_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "bench l2: wrote {} stripes in {put_secs:.2} s",
        args.chunks * n
    );

    // 2. L2 hits, one at a time.
    let _ = read_all(&tier, &chunks[..chunks.len().min(100)]).await?; // warm the connections
    let all_up = read_all(&tier, &chunks).await?;
    let rebuilds_before = tier
        .stats()
        .rebuilds
        .load(std::sync::atomic::Ordering::Relaxed);

    // 3. One node slowed: k-of-n against a single copy, same chunks, same placement rule.
    let slow_node = nodes[0].clone();
    let proxied = slow_proxy(slow_node.clone(), args.slow).await?;
    let with_proxy: Vec<String> = nodes
        .iter()
        .map(|a| {
            if *a == slow_node {
                proxied.clone()
            } else {
                a.clone()
            }
        })
        .collect();
    // Both layouts place by the same node list (the proxy stands in for the slow node), and are
    // primed afresh under their own keys.
    let ec_slow = Arc::new(L2Tier::new(L2Config {
        nodes: with_proxy.clone(),
        ..config.clone()
    })?);
    let single = L2Config {
        nodes: with_proxy.clone(),
        k: 1,
        n: 1,
        ..config.clone()
    };
    let single_slow = Arc::new(L2Tier::new(single)?);
    prime(&ec_slow, &chunks).await?;
    prime(&single_slow, &chunks).await?;
    let _ = read_all(&ec_slow, &chunks[..chunks.len().min(50)]).await?;
    let _ = read_all(&single_slow, &chunks[..chunks.len().min(50)]).await?;
    // Interleave the two layouts chunk by chunk, so both see the same machine noise.
    let mut ec_samples = Vec::with_capacity(chunks.len());
    let mut single_samples = Vec::with_capacity(chunks.len());
    let mut on_slow = 0usize;
    for (data, id) in &chunks {
        for (tier, samples) in [
            (&ec_slow, &mut ec_samples),
            (&single_slow, &mut single_samples),
        ] {
            let t = Instant::now();
            let got = tier.get(id, data.len()).await;
            samples.push(t.elapsed());
            if !matches!(got, L2Get::Hit { .. }) {
                bail!("slow-node read gave {}", short(&got));
            }
        }
        if single_slow.placement_of(id).first().copied() == Some(proxied.as_str()) {
            on_slow += 1;
        }
    }
    let ec = percentiles(ec_samples);
    let one = percentiles(single_samples);

    // 2b. One node killed: every chunk with a data stripe there is rebuilt from parity.
    let mut killed = None;
    if let Some(mut fleet) = fleet {
        fleet.kill(0)?;
        let p = read_all(&tier, &chunks).await?;
        killed = Some(p);
        drop(fleet);
    }
    let rebuilt = tier
        .stats()
        .rebuilds
        .load(std::sync::atomic::Ordering::Relaxed)
        - rebuilds_before;

    let row = |label: &str, p: &Percentiles| {
        println!(
            "  {label:<44} n {:>6}  p50 {:>8.0} µs  p99 {:>8.0} µs  p99.9 {:>8.0} µs  max {:>8.0} µs",
            p.n,
            us(p.p50),
            us(p.p99),
            us(p.p999),
            us(p.max)
        );
    };
    println!(
        "\nL2-hit chunk fetch, one at a time (all {n} requests, rebuild and SHA-256 included):"
    );
    row(&format!("{k}-of-{n}, all nodes up"), &all_up);
    if let Some(p) = &killed {
        row(
            &format!("{k}-of-{n}, one node killed ({rebuilt} rebuilt)"),
            p,
        );
    }
    println!(
        "  targets: p50 ≤ 550 µs: {:.0} µs ({}); p99.9 ≤ 3.7 ms: {:.2} ms ({})",
        us(all_up.p50),
        if all_up.p50 <= Duration::from_micros(550) {
            "met"
        } else {
            "missed"
        },
        us(all_up.p999) / 1e3,
        if all_up.p999 <= Duration::from_micros(3700) {
            "met"
        } else {
            "missed"
        },
    );
    println!(
        "\none node slowed by {:?} ({} of {} single copies live on it), same chunks, interleaved:",
        args.slow,
        on_slow,
        chunks.len()
    );
    row(&format!("{k}-of-{n} erasure-coded"), &ec);
    row("single copy (rendezvous, 1 node)", &one);
    println!(
        "  p99.9: {k}-of-{n} {:.2} ms vs single copy {:.2} ms ({:.1}× lower)",
        us(ec.p999) / 1e3,
        us(one.p999) / 1e3,
        us(one.p999) / us(ec.p999).max(1e-9)
    );
    if args.json {
        let p = |p: &Percentiles| serde_json::json!({"n": p.n, "p50_us": us(p.p50), "p99_us": us(p.p99), "p999_us": us(p.p999), "max_us": us(p.max)});
        println!(
            "{}",
            serde_json::json!({
                "k": k, "n": n, "chunk_bytes": len, "chunks": args.chunks, "nodes": nodes.len(),
                "verify_us": us(hash),
                "codec": {"engine": engine, "encode_gbps": enc, "rebuild_gbps": dec, "scalar_encode_gbps": enc_s, "scalar_rebuild_gbps": dec_s},
                "hit_all_up": p(&all_up),
                "hit_one_killed": killed.as_ref().map(p),
                "slow_node": {"delay_ms": args.slow.as_secs_f64() * 1e3, "erasure_coded": p(&ec), "single_copy": p(&one), "single_copies_on_slow_node": on_slow},
            })
        );
    }
    Ok(())
}
