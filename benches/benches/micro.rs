//! Criterion microbenchmarks of raft-bft's hot paths.
//!
//! Every tx is a ledger transfer of the shared workload ([`Accounts`]: each of 1024 distinct
//! clients signs one transfer with a 16-byte memo, signed before any measurement), in a cluster
//! of n = 4 replicas with the default parameters (`max_batch_txs` = 1024).
//!
//! | group | ids | what one iteration is |
//! | --- | --- | --- |
//! | `sign` | `sign/ed25519` | `KeyPair::sign` of a 32-byte digest (a tx id) |
//! | `verify` | `verify/ed25519` | `crypto::verify` of one signature (ZIP-215, cofactored) |
//! | `batch_verify` | `batch_verify/verify_txs/{16,64,256,1024}` | `Verifier::verify_txs` of N txs: N tx-id hashes and one batch verification (per element: per tx) |
//! | | `batch_verify/batch_verifier/{16,64,256,1024}` | `BatchVerifier::verify` of N queued (key, digest, signature) items, nothing else (per element: per signature) |
//! | | `batch_verify/verify_message_pre_append/1024` | a follower's `Verifier::verify_message` of the leader's real PreAppend of 1024 txs (shape, ids, Merkle root, leader signature, batch of 1024) |
//! | | `batch_verify/verify_message_pre_append_resent/1024` | the same PreAppend again, as a retransmission: its signatures are remembered as verified (`VerifiedEntries`), so the batch is skipped |
//! | `codec` | `codec/signed_tx/{encode,decode}` | one `SignedTx` (decode with the message size limit) |
//! | | `codec/pre_append_1024/{encode,decode}` | the leader's real `ReplicaMessage::PreAppend` carrying 1024 txs (per element: per tx) |
//! | `hashing` | `hashing/tx_id` | `SignedTx::id` (keyed blake3 of client, ts, op) |
//! | | `hashing/merkle_root/{16,128,1024}` | `merkle::root` over N tx ids (per element: per leaf) |
//! | | `hashing/entry_hash/1024` | `message::entry_hash`: Merkle root of 1024 tx ids and the header hash |
//! | `wal_append` | `wal_append/append_sync/1024` | `FileStore`: `Store::append` of the leader's real persist batch (its entry of 1024 txs and its vote), then `Store::sync` (one write and one `fdatasync`: a durable group commit of that batch) |
//! | | `wal_append/append_only/1024` | `Store::append` alone: encoding the batch into the next group's buffer (the sync, timed apart, seals the checksum, writes and syncs) |
//! | `core_step` | `core_step/cluster_commit/1024` | the in-memory n = 4 cluster of `raft-bft/benches/core.rs` (every message encoded, decoded and verified; instant persistence; replies encoded) from 1024 txs reaching the leader to every replica having executed them: the leader's `verify_txs` and 1024 `on_client_tx`, then rounds of ticks, `ready()`, `on_persisted` and deliveries |
//! | | `core_step/warmup_residual` | the same run with no txs: what finishing the warm-up entry (see below) adds to `cluster_commit` |
//! | | `core_step/leader_intake/1024` | the leader alone: 1024 `on_client_tx` of verified txs, then the `ready()` whose persist batch holds the entry the 1024th tx closed |
//!
//! The state machine is the example ledger (`examples/ledger`). Setup (signing, replica and
//! store creation, cloning inputs) is never timed: `iter_batched` or `iter_custom` keep it out.
//!
//! An idle leader (nothing in its pipeline) proposes its first tx at once, alone; a burst of
//! 1024 txs would then make two entries (1 + 1023). So that both `core_step` benchmarks
//! measure one entry of 1024 txs, their setup first has the leader propose one warm-up tx: for
//! `leader_intake` it stays in flight; for `cluster_commit` it is run through its PreAppend
//! and Append phases with the Append votes held back from the leader, which receives them in
//! the timed run. The timed run thus also finishes the warm-up entry (its commit certificate,
//! execution of its one tx): a small fixed cost next to 1024 txs, measured on its own by
//! `core_step/warmup_residual`.
//!
//! The WAL lives in a temporary directory under cargo's `CARGO_TARGET_TMPDIR` (on the target
//! directory's disk: `/tmp` may be a tmpfs, where `fdatasync` costs nothing), or under
//! `$RAFT_BFT_BENCH_WAL_DIR` if set. A fresh store replaces it every 128 batches (about 23 MiB,
//! within one segment), outside the timed part, so files do not grow across the run.
//!
//! Run (from the workspace root):
//!
//! ```text
//! cargo bench -p raft-bft-benches --bench micro                  # everything, under 3 minutes
//! cargo bench -p raft-bft-benches --bench micro -- --quick       # quick pass, under a minute
//! cargo bench -p raft-bft-benches --bench micro -- batch_verify  # one group (a regex on ids)
//! cargo test -p raft-bft-benches --benches                       # each benchmark once, as a test
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use ledger::Ledger;
use raft_bft::codec;
use raft_bft::config::Params;
use raft_bft::crypto::{self, BatchVerifier, KeyPair};
use raft_bft::manifest::{Cluster, Manifest};
use raft_bft::merkle;
use raft_bft::message::{entry_hash, Entry, Phase, ReplicaMessage, SignedTx};
use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::replica::{OutMessage, Ready, Replica, Target};
use raft_bft::types::{Digest, Index, ReplicaId, Term, Time};
use raft_bft::verify::{CheckedTx, Verified, VerifiedEntries, Verifier};
use raft_bft_benches::workload::Accounts;
use raft_bft_storage::{FileStore, Store};
use std::hint::black_box;

/// Replicas in the cluster (f = 1).
const REPLICAS: u32 = 4;
/// Txs in the batch the core benchmarks commit (the default `max_batch_txs`).
const BATCH: usize = 1024;
/// Memo bytes of every transfer.
const MEMO_BYTES: usize = 16;
/// Virtual time per round of the cluster driver, in microseconds (as in `core.rs`).
const ROUND_MICROS: u64 = 500;
/// A cluster run that has not finished after this many rounds is stuck.
const MAX_ROUNDS: usize = 200;
/// A fresh WAL replaces the old one after this many batches.
const WAL_RESET_BATCHES: u64 = 128;
/// In `wal_append/append_only`, the batches appended between two (untimed) syncs.
const WAL_APPEND_ONLY_GROUP: u64 = 16;

/// Everything signed and built once, before any measurement.
struct Fixture {
    cluster: Arc<Cluster>,
    replica_keys: Vec<KeyPair>,
    genesis: Ledger,
    /// A tx of a client outside `txs`, that takes the leader out of idleness.
    warmup: SignedTx,
    /// `BATCH` transfers, one per client.
    txs: Vec<SignedTx>,
    /// `txs`, verified (the leader's input).
    checked: Vec<Verified<CheckedTx>>,
    /// The leader's PreAppend of the entry of `txs`, as it left the leader.
    pre_append: ReplicaMessage,
    /// The leader's persist batch for that entry (the entry and its own vote).
    persist: PersistBatch,
}

impl Fixture {
    fn new() -> Self {
        let replica_keys: Vec<KeyPair> = (0..REPLICAS as u8)
            .map(|i| KeyPair::from_seed([i + 1; 32]))
            .collect();
        let manifest = Manifest::new(
            "raft-bft micro",
            replica_keys.iter().map(|k| (k.public(), String::new())),
            Params::default(),
        );
        let cluster = Arc::new(Cluster::new(manifest).expect("default parameters are valid"));
        assert_eq!(
            cluster.params().max_batch_txs as usize,
            BATCH,
            "the benchmarks assume batches of {BATCH} txs"
        );
        let accounts = Accounts::new(BATCH + 1, MEMO_BYTES);
        let mut queues = accounts.presign(cluster.cluster_id(), 1);
        let warmup = queues
            .pop()
            .and_then(|mut q| q.pop_front())
            .expect("the warm-up client signed one tx");
        let txs: Vec<SignedTx> = queues
            .into_iter()
            .map(|mut q| q.pop_front().expect("every client signed one tx"))
            .collect();
        let mut fixture = Fixture {
            cluster,
            replica_keys,
            genesis: accounts.genesis(),
            warmup,
            txs,
            checked: Vec::new(),
            pre_append: ReplicaMessage::FetchStatus,
            persist: PersistBatch {
                id: 0,
                ops: Vec::new(),
            },
        };
        let mut verifier = fixture.verifier(0);
        fixture.checked = verifier
            .verify_txs(fixture.txs.clone())
            .into_iter()
            .map(|r| r.expect("every workload tx verifies"))
            .collect();

        // Capture the leader's real proposal of the batch: its persist batch, then (once that
        // is durable) its PreAppend.
        let (mut leader, ready) = leader_intake(fixture.busy_leader(), fixture.checked.clone());
        let persist = ready
            .persist
            .expect("the full batch is proposed and persisted");
        let entry = proposed_entry(&persist).expect("the persist batch holds the entry");
        assert_eq!(entry.txs.len(), BATCH, "one entry holds the whole batch");
        leader.on_persisted(Time(3), persist.id);
        let messages = drain(&mut leader, Time(3));
        fixture.pre_append = messages
            .into_iter()
            .map(|m| m.message)
            .find(|m| matches!(m, ReplicaMessage::PreAppend(p) if p.entry.txs.len() == BATCH))
            .expect("the PreAppend of the batch is released once the entry is durable");
        fixture.persist = persist;
        fixture
    }

    fn cluster_id(&self) -> Digest {
        *self.cluster.cluster_id()
    }

    fn replica(&self, id: u32) -> Replica<Ledger> {
        Replica::new(
            self.cluster.clone(),
            ReplicaId(id),
            self.replica_keys[id as usize].clone(),
            self.genesis.clone(),
            DurableState::default(),
            Time(0),
        )
        .expect("a replica of the fixture's cluster starts")
    }

    fn verifier(&self, id: u32) -> Verifier {
        Verifier::new(self.cluster.clone(), [id as u8; 32])
    }

    /// A fresh leader with the warm-up tx's entry in flight (proposed, persisted, its
    /// PreAppend sent to nobody): it is not idle, so its next batch closes when full.
    fn busy_leader(&self) -> Replica<Ledger> {
        let mut leader = self.replica(0);
        assert!(leader.is_leader(), "replica 0 leads the first term");
        let warmup = self
            .verifier(0)
            .verify_tx(self.warmup.clone())
            .expect("the warm-up tx verifies");
        leader.on_client_tx(Time(1), warmup);
        drain(&mut leader, Time(1));
        assert_eq!(leader.metrics().proposed_entries, 1, "the warm-up entry");
        leader
    }
}

/// The entry a persist batch stores, if any.
fn proposed_entry(batch: &PersistBatch) -> Option<&Arc<Entry>> {
    batch.ops.iter().find_map(|op| match op {
        PersistOp::Entry(e) => Some(e),
        _ => None,
    })
}

/// Takes a replica's work until there is none, persisting everything at once; returns the
/// messages it released.
fn drain(replica: &mut Replica<Ledger>, now: Time) -> Vec<OutMessage> {
    let mut messages = Vec::new();
    loop {
        let ready = replica.ready();
        let done = ready.is_empty();
        messages.extend(ready.messages);
        match ready.persist {
            Some(batch) => replica.on_persisted(now, batch.id),
            None if done => return messages,
            None => {}
        }
    }
}

/// What `core_step/leader_intake` times: the txs reach the leader, the last one closes the
/// batch, and `ready()` hands out its persist batch.
fn leader_intake(
    mut leader: Replica<Ledger>,
    txs: Vec<Verified<CheckedTx>>,
) -> (Replica<Ledger>, Ready) {
    for tx in txs {
        leader.on_client_tx(Time(2), tx);
    }
    let ready = leader.ready();
    (leader, ready)
}

/// The n = 4 cluster of `raft-bft/benches/core.rs`, in one thread, in memory: every message
/// is encoded once, decoded by each receiver and verified; persistence is instant; replies are
/// encoded as a runtime would send them.
struct Sim {
    replicas: Vec<Replica<Ledger>>,
    verifiers: Vec<Verifier>,
    limit: usize,
    now: u64,
    /// Encoded messages held back: (from, to, bytes).
    held: Vec<(u32, u32, Vec<u8>)>,
}

impl Sim {
    /// A cluster whose leader has the warm-up entry in flight: prepared everywhere, with the
    /// Append votes that would commit it held back from the leader.
    fn with_entry_in_flight(fixture: &Fixture) -> Self {
        let mut sim = Sim {
            replicas: (0..REPLICAS).map(|i| fixture.replica(i)).collect(),
            verifiers: (0..REPLICAS).map(|i| fixture.verifier(i)).collect(),
            limit: fixture.cluster.params().max_message_bytes as usize,
            now: 0,
            held: Vec::new(),
        };
        let warmup = sim.verifiers[0]
            .verify_tx(fixture.warmup.clone())
            .expect("the warm-up tx verifies");
        sim.replicas[0].on_client_tx(Time(sim.now), warmup);
        let mut rounds = 0;
        while sim.round(true) > 0 {
            rounds += 1;
            assert!(rounds < MAX_ROUNDS, "the warm-up never settled");
        }
        assert!(
            sim.held.len() == REPLICAS as usize - 1 && sim.replicas[0].commit_index() == Index(0),
            "the warm-up entry is prepared, not committed, with its Append votes held"
        );
        sim
    }

    /// One round: every replica ticks and hands out its work (persisted at once), then every
    /// message goes out. With `hold_append_votes`, Append-phase votes are kept in `held`.
    /// Returns how many messages were delivered.
    fn round(&mut self, hold_append_votes: bool) -> usize {
        self.now += ROUND_MICROS;
        let now = Time(self.now);
        let mut outgoing = Vec::new();
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            replica.on_tick(now);
            loop {
                let ready = replica.ready();
                let persisted = ready.persist.as_ref().map(|b| b.id);
                let done = ready.is_empty();
                outgoing.extend(ready.messages.into_iter().map(|m| (i as u32, m)));
                for reply in &ready.replies {
                    black_box(codec::encode(reply).expect("a reply encodes"));
                }
                match persisted {
                    Some(id) => replica.on_persisted(now, id),
                    None if done => break,
                    None => {}
                }
            }
        }
        let mut delivered = 0;
        for (from, m) in outgoing {
            let bytes = codec::encode(&m.message).expect("a replica's message encodes");
            let hold = hold_append_votes
                && matches!(&m.message, ReplicaMessage::Vote(v) if v.subject.phase == Phase::Append);
            for to in (0..REPLICAS).filter(|to| match m.to {
                Target::Replica(r) => r.0 == *to,
                Target::AllOthers => *to != from,
            }) {
                if hold {
                    self.held.push((from, to, bytes.clone()));
                } else {
                    self.deliver(now, from, to, &bytes);
                    delivered += 1;
                }
            }
        }
        delivered
    }

    fn deliver(&mut self, now: Time, from: u32, to: u32, bytes: &[u8]) {
        let msg: ReplicaMessage = codec::decode(bytes, self.limit).expect("a message decodes");
        let verified = self.verifiers[to as usize]
            .verify_message(ReplicaId(from), msg)
            .expect("a correct replica's message verifies");
        self.replicas[to as usize].on_message(now, ReplicaId(from), verified);
    }

    fn release_held(&mut self) {
        let now = Time(self.now);
        for (from, to, bytes) in std::mem::take(&mut self.held) {
            self.deliver(now, from, to, &bytes);
        }
    }

    fn min_executed_txs(&self) -> u64 {
        self.replicas
            .iter()
            .map(|r| r.metrics().executed_txs)
            .min()
            .unwrap_or(0)
    }

    /// What `core_step/cluster_commit` times: `txs` reach the leader, which verifies them as
    /// one batch; rounds run until every replica executed them.
    fn commit(mut self, txs: Vec<SignedTx>) -> Self {
        let target = self.min_executed_txs() + 1 + txs.len() as u64; // the warm-up tx too
        let now = Time(self.now);
        for tx in self.verifiers[0].verify_txs(txs) {
            self.replicas[0].on_client_tx(now, tx.expect("a workload tx verifies"));
        }
        self.release_held();
        let mut rounds = 0;
        while self.min_executed_txs() < target {
            self.round(false);
            rounds += 1;
            assert!(rounds < MAX_ROUNDS, "the cluster did not execute the batch");
        }
        self
    }
}

fn bench_sign(c: &mut Criterion, fx: &Fixture) {
    let key = &fx.replica_keys[0];
    let digest = fx.txs[0].id(&fx.cluster_id());
    let mut group = c.benchmark_group("sign");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    group.bench_function("ed25519", |b| b.iter(|| key.sign(black_box(&digest))));
    group.finish();
}

fn bench_verify(c: &mut Criterion, fx: &Fixture) {
    let tx = &fx.txs[0];
    let digest = tx.id(&fx.cluster_id());
    crypto::verify(&tx.client, &digest, &tx.sig).expect("a workload signature verifies");
    let mut group = c.benchmark_group("verify");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    group.bench_function("ed25519", |b| {
        b.iter(|| {
            crypto::verify(
                black_box(&tx.client),
                black_box(&digest),
                black_box(&tx.sig),
            )
        })
    });
    group.finish();
}

fn bench_batch_verify(c: &mut Criterion, fx: &Fixture) {
    let cid = fx.cluster_id();
    let ids: Vec<Digest> = fx.txs.iter().map(|tx| tx.id(&cid)).collect();
    let mut verifier = fx.verifier(1);
    let mut rng = crypto::coefficient_rng([7; 32]);
    let mut group = c.benchmark_group("batch_verify");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30);
    for n in [16usize, 64, 256, 1024] {
        let txs = &fx.txs[..n];
        assert!(verifier.verify_txs(txs.to_vec()).iter().all(Result::is_ok));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("verify_txs", n), &n, |b, _| {
            b.iter_batched(
                || txs.to_vec(),
                |txs| verifier.verify_txs(txs),
                BatchSize::LargeInput,
            )
        });
        let queue = || {
            let mut batch = BatchVerifier::with_capacity(n);
            for (tx, id) in txs.iter().zip(&ids) {
                batch.push(tx.client, *id, tx.sig);
            }
            batch
        };
        assert!(queue().verify_all(&mut rng));
        group.bench_with_input(BenchmarkId::new("batch_verifier", n), &n, |b, _| {
            b.iter_batched(
                &queue,
                |batch| batch.verify(&mut rng),
                BatchSize::LargeInput,
            )
        });
    }
    let leader = ReplicaId(0);
    verifier
        .verify_message(leader, fx.pre_append.clone())
        .expect("the leader's PreAppend verifies");
    group.throughput(Throughput::Elements(BATCH as u64));
    // A fresh memory of verified entries each time: a first copy of the proposal.
    group.bench_with_input(
        BenchmarkId::new("verify_message_pre_append", BATCH),
        &BATCH,
        |b, _| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    verifier.share_verified_entries(VerifiedEntries::default());
                    let msg = fx.pre_append.clone();
                    let start = std::time::Instant::now();
                    let verified = verifier.verify_message(leader, msg);
                    total += start.elapsed();
                    black_box(verified).expect("the leader's PreAppend verifies");
                }
                total
            })
        },
    );
    // The same proposal again (a leader's retransmission): its signatures are remembered.
    let resent = VerifiedEntries::default();
    verifier.share_verified_entries(resent.clone());
    verifier
        .verify_message(leader, fx.pre_append.clone())
        .expect("the leader's PreAppend verifies");
    group.bench_with_input(
        BenchmarkId::new("verify_message_pre_append_resent", BATCH),
        &BATCH,
        |b, _| {
            b.iter_batched(
                || fx.pre_append.clone(),
                |msg| verifier.verify_message(leader, msg),
                BatchSize::LargeInput,
            )
        },
    );
    group.finish();
}

fn bench_codec(c: &mut Criterion, fx: &Fixture) {
    let limit = fx.cluster.params().max_message_bytes as usize;
    let tx = &fx.txs[0];
    let tx_bytes = codec::encode(tx).expect("a tx encodes");
    let back: SignedTx = codec::decode(&tx_bytes, limit).expect("a tx decodes");
    assert_eq!(&back, tx);
    let msg = &fx.pre_append;
    let msg_bytes = codec::encode(msg).expect("a PreAppend encodes");
    let back: ReplicaMessage = codec::decode(&msg_bytes, limit).expect("a PreAppend decodes");
    assert_eq!(&back, msg);

    let mut group = c.benchmark_group("codec");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500));
    group.throughput(Throughput::Elements(1));
    group.bench_function("signed_tx/encode", |b| {
        b.iter(|| codec::encode(black_box(tx)))
    });
    group.bench_function("signed_tx/decode", |b| {
        b.iter(|| codec::decode::<SignedTx>(black_box(&tx_bytes), limit))
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("pre_append_1024/encode", |b| {
        b.iter(|| codec::encode(black_box(msg)))
    });
    group.bench_function("pre_append_1024/decode", |b| {
        b.iter(|| codec::decode::<ReplicaMessage>(black_box(&msg_bytes), limit))
    });
    group.finish();
}

fn bench_hashing(c: &mut Criterion, fx: &Fixture) {
    let cid = fx.cluster_id();
    let tx = &fx.txs[0];
    let ids: Vec<Digest> = fx.txs.iter().map(|tx| tx.id(&cid)).collect();
    let mut group = c.benchmark_group("hashing");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500));
    group.throughput(Throughput::Elements(1));
    group.bench_function("tx_id", |b| b.iter(|| black_box(tx).id(black_box(&cid))));
    for n in [16usize, 128, 1024] {
        let leaves = &ids[..n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("merkle_root", n), &n, |b, _| {
            b.iter(|| merkle::root(black_box(&cid), black_box(leaves)))
        });
    }
    let prev = Digest([3; 32]);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_with_input(BenchmarkId::new("entry_hash", BATCH), &BATCH, |b, _| {
        b.iter(|| entry_hash(black_box(&cid), Term(1), Index(2), &prev, black_box(&ids)))
    });
    group.finish();
}

/// A WAL in a temporary directory, replaced by a fresh one every [`WAL_RESET_BATCHES`].
struct Wal {
    parent: PathBuf,
    cluster_id: Digest,
    /// The store first: it holds a lock file in the directory.
    store: Option<(FileStore, tempfile::TempDir)>,
    next_id: u64,
}

impl Wal {
    fn new(cluster_id: Digest) -> Self {
        let parent = std::env::var_os("RAFT_BFT_BENCH_WAL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
        std::fs::create_dir_all(&parent).expect("the WAL's parent directory exists");
        Wal {
            parent,
            cluster_id,
            store: None,
            next_id: 0,
        }
    }

    /// The store to append the next batch to (untimed: may replace the store).
    fn store(&mut self) -> &mut FileStore {
        if self.next_id >= WAL_RESET_BATCHES {
            if let Some((store, dir)) = self.store.take() {
                drop(store);
                dir.close().expect("the old WAL directory is removed");
            }
        }
        if self.store.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("raft-bft-micro-wal-")
                .tempdir_in(&self.parent)
                .expect("a temporary directory for the WAL");
            let store =
                FileStore::create(dir.path().join("wal"), self.cluster_id).expect("a new WAL");
            self.store = Some((store, dir));
            self.next_id = 0;
        }
        &mut self.store.as_mut().expect("just opened").0
    }

    /// Times `iters` appends of `template` (renumbered), each with its sync if `sync`; without,
    /// the batches are synced (untimed) every [`WAL_APPEND_ONLY_GROUP`] appends, so that the
    /// group buffer is reused as in a running replica.
    fn run(&mut self, iters: u64, template: &PersistBatch, sync: bool) -> Duration {
        let mut timed = Duration::ZERO;
        for _ in 0..iters {
            let id = self.next_id + 1;
            let batch = PersistBatch {
                id,
                ops: template.ops.clone(),
            };
            let store = self.store();
            let start = Instant::now();
            store.append(&batch).expect("the WAL takes the batch");
            if sync {
                let durable = store.sync().expect("the WAL syncs");
                timed += start.elapsed();
                assert_eq!(durable, Some(id));
            } else {
                timed += start.elapsed();
                if id.is_multiple_of(WAL_APPEND_ONLY_GROUP) {
                    store.sync().expect("the WAL syncs");
                }
            }
            self.next_id = id;
        }
        timed
    }
}

fn bench_wal(c: &mut Criterion, fx: &Fixture) {
    let mut wal = Wal::new(fx.cluster_id());
    let mut group = c.benchmark_group("wal_append");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(BATCH as u64));
    group.bench_with_input(BenchmarkId::new("append_sync", BATCH), &BATCH, |b, _| {
        b.iter_custom(|iters| wal.run(iters, &fx.persist, true))
    });
    group.bench_with_input(BenchmarkId::new("append_only", BATCH), &BATCH, |b, _| {
        b.iter_custom(|iters| wal.run(iters, &fx.persist, false))
    });
    group.finish();
}

fn bench_core(c: &mut Criterion, fx: &Fixture) {
    // Check once that each timed routine does what it claims.
    let sim = Sim::with_entry_in_flight(fx).commit(fx.txs.clone());
    for r in &sim.replicas {
        assert_eq!(
            r.commit_index(),
            Index(2),
            "the warm-up entry and the batch"
        );
        assert_eq!(r.metrics().executed_txs, BATCH as u64 + 1);
    }
    drop(sim);

    let mut group = c.benchmark_group("core_step");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(BATCH as u64));
    group.bench_with_input(BenchmarkId::new("cluster_commit", BATCH), &BATCH, |b, _| {
        b.iter_batched(
            || (Sim::with_entry_in_flight(fx), fx.txs.clone()),
            |(sim, txs)| sim.commit(txs),
            BatchSize::PerIteration,
        )
    });
    // The part of `cluster_commit` that finishes the warm-up entry (no new txs).
    group
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
    group.bench_function("warmup_residual", |b| {
        b.iter_batched(
            || Sim::with_entry_in_flight(fx),
            |sim| sim.commit(Vec::new()),
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_with_input(BenchmarkId::new("leader_intake", BATCH), &BATCH, |b, _| {
        b.iter_batched(
            || (fx.busy_leader(), fx.checked.clone()),
            |(leader, txs)| leader_intake(leader, txs),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn main() {
    let fixture = Fixture::new();
    let mut c = Criterion::default().configure_from_args();
    bench_sign(&mut c, &fixture);
    bench_verify(&mut c, &fixture);
    bench_batch_verify(&mut c, &fixture);
    bench_codec(&mut c, &fixture);
    bench_hashing(&mut c, &fixture);
    bench_wal(&mut c, &fixture);
    bench_core(&mut c, &fixture);
    c.final_summary();
}
