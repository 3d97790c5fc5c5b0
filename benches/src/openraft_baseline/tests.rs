//! Tests of the baseline: a whole cluster under a small workload, openraft's own conformance
//! suite for the storage, and snapshots that survive a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::LedgerResult;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, LogId};
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::state_machine::LedgerStore;
use super::types::{Batch, Entry, StorageError, TypeConfig};
use super::*;
use crate::workload::Accounts;

fn manifest(nodes: usize, checkpoint_interval: u64) -> Manifest {
    let keys: Vec<KeyPair> = (0..nodes)
        .map(|i| KeyPair::from_seed([i as u8 + 1; 32]))
        .collect();
    let params = Params {
        checkpoint_interval,
        ..Params::default()
    };
    Manifest::new(
        "bench",
        keys.iter().map(|k| (k.public(), "127.0.0.1:1".to_string())),
        params,
    )
}

/// The names of this process's live threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|name| name.trim_end().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_cluster_commits_every_valid_tx_and_refuses_a_forged_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let accounts = Accounts::new(8, 16);
    // A short checkpoint interval, so that the run snapshots and purges the log too.
    let manifest = manifest(3, 8);
    let cluster_id = *Cluster::new(manifest.clone()).expect("valid").cluster_id();
    let queues = accounts.presign(&cluster_id, 25);
    let mut forged = accounts.presign(&cluster_id, 26)[0][25].clone();
    forged.sig.0[0] ^= 1;
    let spec = ClusterSpec {
        nodes: 3,
        batch: 4,
        manifest,
        accounts: Arc::new(accounts),
        dir: dir.path().to_path_buf(),
        batch_delay: Duration::from_millis(2),
    };
    let cluster = OpenRaftCluster::start(&spec).expect("starts");
    assert!(cluster.leader().is_some());

    let cluster = Arc::new(cluster);
    let started = Instant::now();
    async_std::task::block_on(async {
        let clients: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(client, queue)| {
                let cluster = cluster.clone();
                async_std::task::spawn(async move {
                    for (n, tx) in queue.into_iter().enumerate() {
                        let bytes = cluster.submit(client, tx).await.expect("commits");
                        match LedgerResult::decode(&bytes).expect("decodes") {
                            // Each transfer applied exactly once, in order.
                            LedgerResult::Transferred { sent, .. } => {
                                assert_eq!(sent, n as u64 + 1)
                            }
                            other => panic!("client {client}: {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            client.await;
        }
        let refused = cluster.submit(0, forged).await;
        assert!(refused.is_err_and(|e| e.contains("invalid tx")));
    });
    eprintln!("200 txs in {:?}", started.elapsed());

    let cpu = cluster.cpu();
    assert_eq!(cpu.len(), 3);
    assert!(cpu.iter().all(|t| !t.is_zero()), "{cpu:?}");
    assert!(cluster.leader().is_some());

    // Every node applies everything (the followers learn the last commit from the next
    // heartbeat), and each built snapshots and purged its log behind them.
    let leader_applied = cluster
        .rafts()
        .filter_map(|r| r.metrics().borrow().last_applied)
        .max();
    let deadline = Instant::now() + Duration::from_secs(5);
    for raft in cluster.rafts() {
        let metrics = raft.metrics();
        while metrics.borrow().last_applied < leader_applied && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let m = metrics.borrow();
        assert_eq!(m.last_applied, leader_applied, "node {}", m.id);
        assert!(
            m.snapshot.is_some() && m.purged.is_some(),
            "node {}: {m:?}",
            m.id
        );
    }

    let Ok(cluster) = Arc::try_unwrap(cluster) else {
        panic!("the clients let go of the cluster");
    };
    Box::new(cluster).shutdown().expect("shuts down");
    // No thread of the cluster is left behind.
    let deadline = Instant::now() + Duration::from_secs(2);
    let leftover = |names: &[String]| {
        names
            .iter()
            .filter(|n| (0..3).any(|i| n.starts_with(&thread_prefix(i))))
            .count()
    };
    while leftover(&thread_names()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(leftover(&thread_names()), 0, "{:?}", thread_names());
    assert!(dir.path().join("node-0").join(log_store::LOG_FILE).exists());
}

#[test]
fn start_refuses_an_empty_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec {
        nodes: 0,
        batch: 4,
        manifest: manifest(1, 8),
        accounts: Arc::new(Accounts::new(2, 0)),
        dir: dir.path().to_path_buf(),
        batch_delay: Duration::from_millis(2),
    };
    assert!(start(&spec).is_err());
}

/// Fresh stores in a temporary directory, for openraft's conformance suite.
struct Stores;

impl StoreBuilder<TypeConfig, LogStore, LedgerStore, TempDir> for Stores {
    async fn build(&self) -> Result<(TempDir, LogStore, LedgerStore), StorageError> {
        let fail = |e: String| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::error(
                e,
            )))
        };
        let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
        // The writer thread ends by itself once the store is dropped.
        let (log, _writer) = LogStore::open(dir.path(), "suite-log".into()).map_err(fail)?;
        let sm = LedgerStore::open(dir.path(), Accounts::new(2, 0).genesis()).map_err(fail)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn the_stores_pass_openraft_s_storage_suite() {
    Suite::test_all(Stores).expect("conforms");
}

fn transfer_entry(accounts: &Accounts, index: u64) -> Entry {
    let cid = raft_bft::types::Digest([3; 32]);
    let txs = accounts.presign(&cid, 1).into_iter().flatten().collect();
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Batch(txs)),
    }
}

#[test]
fn a_snapshot_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let accounts = Accounts::new(3, 4);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut sm = LedgerStore::open(dir.path(), accounts.genesis()).expect("opens");
        let results = sm
            .apply([transfer_entry(&accounts, 1)])
            .await
            .expect("applies");
        assert_eq!(results[0].0.len(), 3);
        for bytes in &results[0].0 {
            let result = LedgerResult::decode(bytes).expect("decodes");
            assert!(
                matches!(result, LedgerResult::Transferred { .. }),
                "{result:?}"
            );
        }
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("builds");

        let mut again = LedgerStore::open(dir.path(), accounts.genesis()).expect("reopens");
        assert_eq!(again.ledger(), sm.ledger());
        assert_eq!(
            again.applied_state().await.expect("state"),
            sm.applied_state().await.expect("state")
        );
        let current = again.get_current_snapshot().await.expect("reads");
        assert_eq!(current.map(|s| s.meta), Some(built.meta));
    });
}
