//! Helpers shared by the file store's test binaries.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use raft_bft::persist::{DurableState, PersistBatch, PersistOp};
use raft_bft::types::Digest;
use raft_bft_storage::conformance::sample_batch;
use raft_bft_storage::{FileOptions, FileStore, Store};
use tempfile::TempDir;

pub const CLUSTER: Digest = Digest([0x5a; 32]);

pub fn reference(batches: &[PersistBatch]) -> DurableState {
    let mut state = DurableState::default();
    for b in batches {
        state.apply_batch(b.clone());
    }
    state
}

pub fn options(segment_bytes: u64) -> FileOptions {
    FileOptions { segment_bytes }
}

/// Every file of a directory, by name.
pub fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8 name");
            (name, fs::read(e.path()).expect("read"))
        })
        .collect()
}

pub fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).expect("write");
    }
}

pub fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = files(dir)
        .into_keys()
        .filter(|n| n.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

/// Where each record of a segment starts and ends (`len: u32 LE | 36 bytes of checks | payload | marker`).
pub fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push((at, at + 41 + len));
        at += 41 + len;
    }
    out
}

/// `batch` with `bytes` of tx data in its entry (the first op).
pub fn with_tx_bytes(mut batch: PersistBatch, bytes: usize) -> PersistBatch {
    if let PersistOp::Entry(e) = &mut batch.ops[0] {
        let mut entry = (**e).clone();
        entry.txs = vec![raft_bft::message::SignedTx {
            client: raft_bft::types::PublicKey([1; 32]),
            ts: batch.id,
            op: vec![batch.id as u8; bytes],
            sig: raft_bft::types::Signature([0; 64]),
        }];
        *e = std::sync::Arc::new(entry);
    }
    batch
}

/// A store in a fresh directory holding sample batches `1..=count`, each synced on its own, in
/// segments of `segment_bytes`; closed again.
pub fn synced_store(segment_bytes: u64, count: u64) -> TempDir {
    let dir = TempDir::new().expect("temporary directory");
    let mut store =
        FileStore::create_with(dir.path(), CLUSTER, options(segment_bytes)).expect("create");
    for id in 1..=count {
        store.append(&sample_batch(id)).expect("append");
        store.sync().expect("sync");
    }
    dir
}
