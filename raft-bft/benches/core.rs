//! Throughput of the protocol core alone: an n = 4 cluster in one thread, in memory, with every
//! message encoded, decoded and verified as the network runtime would, and instant persistence.
//!
//! Reports tx/s and where the time goes: signature verification (the verifier's work minus the
//! hashing of tx ids it also does) against everything else (codec, hashing, the replica state
//! machine, execution, signing). Run with `cargo bench -p raft-bft`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_bft::codec;
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest};
use raft_bft::message::{ReplicaMessage, SignedTx};
use raft_bft::persist::DurableState;
use raft_bft::replica::{Replica, Target};
use raft_bft::state_machine::StateMachine;
use raft_bft::types::{ClientId, Digest, ReplicaId, Time};
use raft_bft::verify::Verifier;

/// A trivial application: counts ops, result is the op's first byte.
#[derive(Default)]
struct Count(u64);

impl StateMachine for Count {
    fn apply(&mut self, _client: &ClientId, op: &[u8]) -> Vec<u8> {
        self.0 += 1;
        op.get(..1).unwrap_or_default().to_vec()
    }
    fn digest(&self) -> Digest {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&self.0.to_le_bytes());
        Digest(d)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = snapshot
            .try_into()
            .map_err(|_| "expected 8 bytes".to_string())?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

struct Timings {
    total: Duration,
    verify: Duration,
    id_hashing: Duration,
    codec: Duration,
}

fn cluster(batch: u32) -> (Arc<Cluster>, Vec<KeyPair>) {
    let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
    let params = Params {
        max_batch_txs: batch,
        ..Params::default()
    };
    let manifest = Manifest::new(
        "bench",
        keys.iter().map(|k| (k.public(), String::new())),
        params,
    );
    (
        Arc::new(Cluster::new(manifest).expect("valid manifest")),
        keys,
    )
}

fn run(batch: u32, txs: usize) -> (usize, Timings) {
    let (cluster, keys) = cluster(batch);
    let cid = *cluster.cluster_id();
    let clients: Vec<KeyPair> = (0..4096u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            seed[31] = 0xcc;
            KeyPair::from_seed(seed)
        })
        .collect();
    let signed: Vec<SignedTx> = (0..txs)
        .map(|i| {
            let client = &clients[i % clients.len()];
            let ts = (i / clients.len()) as u64 + 1;
            SignedTx::sign(&cid, client, ts, vec![i as u8; 64])
        })
        .collect();

    let mut replicas: Vec<Replica<Count>> = (0..4u32)
        .map(|i| {
            Replica::new(
                cluster.clone(),
                ReplicaId(i),
                keys[i as usize].clone(),
                Count::default(),
                DurableState::default(),
                Time(0),
            )
            .expect("replica starts")
        })
        .collect();
    let mut verifiers: Vec<Verifier> = (0..4u8)
        .map(|i| Verifier::new(cluster.clone(), [i; 32]))
        .collect();
    let limit = cluster.params().max_message_bytes as usize;

    // The verifier also hashes: every replica computes each tx id, and each follower the Merkle
    // root of each entry. That is not signature work: measure it alone, to subtract it.
    let hash_start = Instant::now();
    let ids: Vec<Digest> = signed.iter().map(|tx| tx.id(&cid)).collect();
    let ids_pass = hash_start.elapsed();
    let root_start = Instant::now();
    for chunk in ids.chunks(batch as usize) {
        std::hint::black_box(raft_bft::merkle::root(&cid, chunk));
    }
    let roots_pass = root_start.elapsed();

    // Clients' txs reach the leader in chunks (owned, as a runtime would receive them).
    let arrivals: Vec<Vec<SignedTx>> = signed.chunks(1024).map(<[SignedTx]>::to_vec).collect();
    let mut verify = Duration::ZERO;
    let mut codec_time = Duration::ZERO;
    let start = Instant::now();
    let mut now = 0u64;
    // The leader batch-verifies each chunk on arrival.
    for chunk in arrivals {
        let t = Instant::now();
        let checked = verifiers[0].verify_txs(chunk);
        verify += t.elapsed();
        for tx in checked.into_iter().flatten() {
            replicas[0].on_client_tx(Time(now), tx);
        }
    }
    let mut executed = 0;
    while executed < txs {
        now += 500; // 0.5 ms of virtual time per round: batch delays expire.
        let mut outgoing = Vec::new();
        for (i, r) in replicas.iter_mut().enumerate() {
            r.on_tick(Time(now));
            loop {
                let ready = r.ready();
                let persisted = ready.persist.as_ref().map(|b| b.id);
                let done = ready.is_empty();
                for m in ready.messages {
                    outgoing.push((i as u32, m));
                }
                // Replies would be sent to clients: encode them as the runtime would.
                let t = Instant::now();
                for reply in &ready.replies {
                    std::hint::black_box(codec::encode(reply).expect("encodes"));
                }
                codec_time += t.elapsed();
                match persisted {
                    Some(id) => r.on_persisted(Time(now), id),
                    None if done => break,
                    None => {}
                }
            }
        }
        for (from, m) in outgoing {
            let t = Instant::now();
            let bytes = codec::encode(&m.message).expect("encodes");
            codec_time += t.elapsed();
            let targets: Vec<u32> = match m.to {
                Target::Replica(r) => vec![r.0],
                Target::AllOthers => (0..4).filter(|r| *r != from).collect(),
            };
            for to in targets {
                let t = Instant::now();
                let msg: ReplicaMessage = codec::decode(&bytes, limit).expect("decodes");
                codec_time += t.elapsed();
                let t = Instant::now();
                let verified = verifiers[to as usize]
                    .verify_message(ReplicaId(from), msg)
                    .expect("verifies");
                verify += t.elapsed();
                replicas[to as usize].on_message(Time(now), ReplicaId(from), verified);
            }
        }
        executed = replicas
            .iter()
            .map(|r| r.metrics().executed_txs as usize)
            .min()
            .unwrap_or(0);
    }
    let total = start.elapsed();
    // Four replicas hash every tx id; three followers compute every entry's root.
    let id_hashing = ids_pass * 4 + roots_pass * 3;
    (
        executed,
        Timings {
            total,
            verify,
            id_hashing,
            codec: codec_time,
        },
    )
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore harness flags.
    let quick = std::env::args().any(|a| a == "--quick");
    let txs = if quick { 4096 } else { 32768 };
    println!("raft-bft core, n=4 in memory, one thread, {txs} signed txs of 64 B per run");
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "batch",
        "tx/s",
        "us/tx total",
        "us/tx sigver",
        "us/tx other",
        "other %",
        "us/tx codec",
        "us/tx core"
    );
    // BATCHES=1024,128 picks the batch sizes to run.
    let batches: Vec<u32> = std::env::var("BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1024, 128, 16]);
    for batch in batches {
        let mut rows = Vec::new();
        for _ in 0..3 {
            let (n, t) = run(batch, txs);
            let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
            let sig = per(t.verify) - per(t.id_hashing);
            let total = per(t.total);
            let codec = per(t.codec);
            let core = total - per(t.verify) - codec;
            rows.push((
                n as f64 / t.total.as_secs_f64(),
                total,
                sig,
                total - sig,
                codec,
                core,
            ));
        }
        rows.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (tps, total, sig, other, codec, core) = rows[rows.len() / 2];
        println!(
            "{batch:>6} {tps:>10.0} {total:>12.2} {sig:>12.2} {other:>12.2} {:>9.1}% {codec:>12.2} {core:>12.2}",
            100.0 * other / total
        );
    }
    println!("(median of 3 runs; 'sigver': signature verification on all 4 replicas, i.e. the");
    println!(" verifier's time less its hashing; 'other': everything else; 'core': the replica");
    println!(" state machine, execution and signing; 'codec': encoding and decoding)");
}
