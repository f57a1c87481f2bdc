//! Load generator for the tracker's announce endpoint: registers PEERS peers spread over
//! SWARMS swarms, then runs THREADS threads of heartbeat announces for SECONDS seconds over
//! keep-alive connections and prints throughput and latency percentiles.
//!
//!     cargo run --release --example tracker_load -- http://127.0.0.1:7070 [SWARMS PEERS THREADS SECONDS]
//!
//! `bench/tracker.sh` starts a tracker and runs this against it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use swarmcache::api::AnnounceRequest;
use swarmcache::manifest::{MIN_CHUNK_SIZE, Manifest, sha256};
use swarmcache::tracker_client::TrackerClient;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(url) = args.first() else {
        bail!("usage: tracker_load URL [SWARMS PEERS THREADS SECONDS]");
    };
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().with_context(|| format!("{s:?} is not a number"))
        })
    };
    let (swarms, peers, threads, seconds) = (
        number(1, 1000)?,
        number(2, 100_000)?,
        number(3, 4)?,
        number(4, 5)?,
    );
    let per_swarm = peers.div_ceil(swarms);

    // One tiny asset per swarm.
    let tracker = TrackerClient::new(url)?;
    let assets: Vec<String> = (0..swarms)
        .map(|i| {
            let digest = sha256(format!("load-{i}").as_bytes());
            let manifest = Manifest::new(
                format!("load-{i}"),
                1,
                MIN_CHUNK_SIZE,
                Some(digest),
                vec![digest],
            )
            .map_err(anyhow::Error::msg)?;
            Ok(tracker.publish(&manifest)?.id)
        })
        .collect::<Result<_>>()?;

    let announce = |agent: &ureq::Agent, asset: &str, peer: usize| -> Result<Duration> {
        let request = AnnounceRequest {
            peer_id: format!("load-peer-{peer}"),
            addr: Some(format!(
                "10.{}.{}.{}:7001",
                peer >> 16 & 255,
                peer >> 8 & 255,
                peer & 255
            )),
            complete: true,
            ..AnnounceRequest::default()
        };
        let started = Instant::now();
        let response = agent
            .post(&format!("{url}/assets/{asset}/announce"))
            .send_json(&request)?;
        // The answer is read whole and checked to be JSON, as any client must, but not
        // built into structures: on two shared cores, the generator's own decoding would
        // otherwise take CPU from the tracker it measures (it used more than the tracker).
        let answer: serde::de::IgnoredAny = response.into_json()?;
        std::hint::black_box(answer);
        Ok(started.elapsed())
    };

    // Register every peer (not timed), spread over the threads.
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (assets, announce) = (&assets, &announce);
                scope.spawn(move || -> Result<()> {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(5))
                        .build();
                    for peer in (t..swarms * per_swarm).step_by(threads) {
                        announce(&agent, &assets[peer / per_swarm], peer)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("setup thread panicked"))
    })?;
    println!(
        "registered {} peers in {swarms} swarms in {:.1} s",
        swarms * per_swarm,
        started.elapsed().as_secs_f64()
    );

    // Heartbeats from random registered peers, for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| -> Result<Vec<Duration>> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (assets, announce) = (&assets, &announce);
                scope.spawn(move || -> Result<Vec<Duration>> {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(5))
                        .build();
                    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                    let mut out = Vec::new();
                    while Instant::now() < deadline {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let peer = (state % (swarms * per_swarm) as u64) as usize;
                        out.push(announce(&agent, &assets[peer / per_swarm], peer)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("load thread panicked")?);
        }
        Ok(all)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{} announces in {elapsed:.1} s from {threads} threads: {:.0} announces/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
    Ok(())
}
