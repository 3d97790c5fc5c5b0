//! Appends of 1 KiB entries to the file store: group commit, one sync per entry, and a raw
//! baseline (the same bytes written sequentially with one `fdatasync` per group), measured side
//! by side in one run, rounds interleaved so that noise from the shared machine hits all three.
//!
//! Group commit runs two ways: on one thread (encode a group, then write and sync it, in
//! turn), and pipelined, as a runtime drives it: the write and `fdatasync` of one group run on
//! an I/O thread ([`FileStore::begin_sync`], `SyncJob::run`, [`FileStore::finish_sync`])
//! while the caller encodes the next.
//!
//! `cargo bench -p raft-bft-storage` (options after `--`: `--rounds N`, `--dir PATH` to
//! measure another disk).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_bft::message::{Entry, SignedTx};
use raft_bft::persist::{PersistBatch, PersistOp};
use raft_bft::types::{Digest, Index, PublicKey, Signature, Term};
use raft_bft_storage::{FileStore, Store};

const CLUSTER: Digest = Digest([0xbe; 32]);
const ENTRY_DATA: usize = 1024;
const GROUPS: [usize; 3] = [16, 64, 256];
/// Entries per round when every entry is synced on its own (each sync is milliseconds).
const PER_ENTRY_ROUND: usize = 400;
/// Entries per round with group commit.
const GROUP_ROUND: usize = 16_384;

fn batch(id: u64) -> PersistBatch {
    let entry = Entry {
        term: Term(1),
        index: Index(id),
        prev_hash: Digest([id as u8; 32]),
        txs: vec![SignedTx {
            client: PublicKey([7; 32]),
            ts: id,
            op: (0..ENTRY_DATA)
                .map(|i| (i as u64 * 13 + id) as u8)
                .collect(),
            sig: Signature([9; 64]),
        }],
    };
    PersistBatch {
        id,
        ops: vec![PersistOp::Entry(Arc::new(entry))],
    }
}

struct Round {
    entries: usize,
    bytes: u64,
    elapsed: Duration,
}

/// Everything the store wrote to its log segments (for the raw baseline to write again).
fn wal_bytes(dir: &Path) -> Vec<u8> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).expect("read"))
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The file store, `entries` batches in syncs of `group`.
fn store_round(base: &Path, entries: usize, group: usize) -> (Round, Vec<u8>) {
    let dir = tempfile::TempDir::new_in(base).expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    let batches: Vec<PersistBatch> = (1..=entries as u64).map(batch).collect();
    let before = dir_bytes(dir.path());
    let start = Instant::now();
    for chunk in batches.chunks(group) {
        for b in chunk {
            store.append(b).expect("append");
        }
        store.sync().expect("sync");
    }
    let elapsed = start.elapsed();
    let round = Round {
        entries,
        bytes: dir_bytes(dir.path()) - before,
        elapsed,
    };
    (round, wal_bytes(dir.path()))
}

/// The file store, pipelined: the I/O thread writes and syncs group N while this thread
/// encodes group N + 1.
fn pipelined_round(base: &Path, entries: usize, group: usize) -> (Round, Vec<u8>) {
    let dir = tempfile::TempDir::new_in(base).expect("temporary directory");
    let mut store = FileStore::create(dir.path(), CLUSTER).expect("create");
    let batches: Vec<PersistBatch> = (1..=entries as u64).map(batch).collect();
    let before = dir_bytes(dir.path());
    let (jobs, job_rx) = std::sync::mpsc::channel::<raft_bft_storage::SyncJob>();
    let (done_tx, dones) = std::sync::mpsc::channel();
    let io = std::thread::spawn(move || {
        for job in job_rx {
            if done_tx.send(job.run()).is_err() {
                return;
            }
        }
    });
    let start = Instant::now();
    let mut in_flight = false;
    for chunk in batches.chunks(group) {
        for b in chunk {
            store.append(b).expect("append");
        }
        if in_flight {
            store
                .finish_sync(dones.recv().expect("done"))
                .expect("sync");
        }
        let job = store.begin_sync().expect("begin").expect("a job");
        jobs.send(job).expect("the I/O thread");
        in_flight = true;
    }
    if in_flight {
        store
            .finish_sync(dones.recv().expect("done"))
            .expect("sync");
    }
    let elapsed = start.elapsed();
    drop(jobs);
    io.join().expect("the I/O thread");
    let round = Round {
        entries,
        bytes: dir_bytes(dir.path()) - before,
        elapsed,
    };
    (round, wal_bytes(dir.path()))
}

/// The raw baseline: the bytes the store wrote, written again to a plain file sequentially,
/// in as many writes as the store's syncs, each followed by `fdatasync`.
fn raw_round(base: &Path, entries: usize, group: usize, bytes: &[u8]) -> Round {
    let dir = tempfile::TempDir::new_in(base).expect("temporary directory");
    let path: PathBuf = dir.path().join("raw.log");
    let mut file: File = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    let syncs = entries.div_ceil(group);
    let chunk = bytes.len().div_ceil(syncs);
    let start = Instant::now();
    for part in bytes.chunks(chunk) {
        file.write_all(part).expect("write");
        file.sync_data().expect("fdatasync");
    }
    Round {
        entries,
        bytes: bytes.len() as u64,
        elapsed: start.elapsed(),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

struct Rates {
    entries_per_s: Vec<f64>,
    mb_per_s: Vec<f64>,
}

impl Rates {
    fn new() -> Self {
        Rates {
            entries_per_s: Vec::new(),
            mb_per_s: Vec::new(),
        }
    }
    fn add(&mut self, r: &Round) {
        let s = r.elapsed.as_secs_f64();
        self.entries_per_s.push(r.entries as f64 / s);
        self.mb_per_s.push(r.bytes as f64 / s / 1e6);
    }
    fn eps(&self) -> f64 {
        median(self.entries_per_s.clone())
    }
    fn mbps(&self) -> f64 {
        median(self.mb_per_s.clone())
    }
}

fn main() {
    let mut rounds = 5usize;
    let mut base = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--dir" => base = PathBuf::from(args.next().expect("--dir PATH")),
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    println!(
        "wal: 1 KiB entries into {} ({rounds} rounds, medians; rounds interleaved)",
        base.display()
    );
    let mut per_entry = Rates::new();
    let mut raw_per_entry = Rates::new();
    let mut grouped: Vec<(Rates, Rates)> = GROUPS
        .iter()
        .map(|_| (Rates::new(), Rates::new()))
        .collect();
    let mut pipelined: Vec<(Rates, Rates)> = GROUPS
        .iter()
        .map(|_| (Rates::new(), Rates::new()))
        .collect();
    for round in 0..rounds {
        let (r, written) = store_round(&base, PER_ENTRY_ROUND, 1);
        per_entry.add(&r);
        raw_per_entry.add(&raw_round(&base, PER_ENTRY_ROUND, 1, &written));
        for (g, (store, raw)) in GROUPS.iter().zip(grouped.iter_mut()) {
            let (r, written) = store_round(&base, GROUP_ROUND, *g);
            store.add(&r);
            raw.add(&raw_round(&base, GROUP_ROUND, *g, &written));
        }
        for (g, (store, raw)) in GROUPS.iter().zip(pipelined.iter_mut()) {
            let (r, written) = pipelined_round(&base, GROUP_ROUND, *g);
            store.add(&r);
            raw.add(&raw_round(&base, GROUP_ROUND, *g, &written));
        }
        eprintln!("wal: round {}/{rounds} done", round + 1);
    }
    println!(
        "{:<28} {:>12} {:>10} {:>12} {:>10}",
        "mode", "entries/s", "MB/s", "raw MB/s", "of raw"
    );
    let row = |name: &str, store: &Rates, raw: &Rates| {
        println!(
            "{:<28} {:>12.0} {:>10.1} {:>12.1} {:>9.0}%",
            name,
            store.eps(),
            store.mbps(),
            raw.mbps(),
            100.0 * store.mbps() / raw.mbps()
        );
    };
    row("one sync per entry", &per_entry, &raw_per_entry);
    for (g, (store, raw)) in GROUPS.iter().zip(&grouped) {
        row(&format!("one thread, {g} per sync"), store, raw);
    }
    for (g, (store, raw)) in GROUPS.iter().zip(&pipelined) {
        row(&format!("pipelined, {g} per sync"), store, raw);
    }
    let (best, best_raw) = grouped.last().expect("groups");
    let (piped, _) = pipelined.last().expect("groups");
    println!(
        "wal: group_commit_eps={:.0} per_entry_eps={:.0} speedup={:.1}x group_mbps={:.1} raw_mbps={:.1} raw_fraction={:.2} pipelined_eps={:.0}",
        best.eps(),
        per_entry.eps(),
        best.eps() / per_entry.eps(),
        best.mbps(),
        best_raw.mbps(),
        best.mbps() / best_raw.mbps(),
        piped.eps(),
    );
}
