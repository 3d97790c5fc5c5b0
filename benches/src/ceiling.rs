//! The machine's crypto ceiling: how many client txs per second its cores can verify if
//! verification were the only work. Every raft-bft replica verifies every client signature
//! (a Byzantine leader could forge one), plain Raft only its leader, so the ceiling of a system
//! is `cores / (verifying replicas x batch-verify time per signature)`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raft_bft::manifest::Cluster;
use raft_bft::verify::Verifier;

use crate::system::bench_manifest;
use crate::workload::Accounts;

/// The measured cost of verifying client txs the way replicas do.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Cores of this machine.
    pub cores: usize,
    /// Median time per tx of `Verifier::verify_txs` on batches of `batch` txs (the size check,
    /// the tx id hash and the batched ed25519 verification), on one core.
    pub per_signature: Duration,
    /// The batch size it was measured with.
    pub batch: usize,
    /// The same median with every core verifying at once (one thread per core): what each
    /// core really achieves when all are busy (shared caches, memory, frequency, and on a
    /// virtual machine the host's scheduling).
    pub per_signature_all_busy: Duration,
}

impl Ceiling {
    /// Measures on batches of `batch` transfers of `memo_bytes` memos, for about `budget`: on
    /// one core alone, then on every core at once.
    pub fn measure(batch: usize, memo_bytes: usize, budget: Duration) -> Result<Self, String> {
        let accounts = Accounts::new(batch, memo_bytes);
        let manifest = bench_manifest(&["127.0.0.1:1".to_string()], 1024, Duration::from_millis(2));
        let cluster = Arc::new(Cluster::new(manifest).map_err(|e| e.to_string())?);
        let txs: Vec<_> = accounts
            .presign(cluster.cluster_id(), 1)
            .into_iter()
            .flatten()
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let alone = median_batch_time(&cluster, &txs, budget)?;
        let busy = std::thread::scope(|s| {
            let workers: Vec<_> = (0..cores)
                .map(|_| s.spawn(|| median_batch_time(&cluster, &txs, budget)))
                .collect();
            let mut medians = Vec::new();
            for w in workers {
                medians.push(
                    w.join()
                        .map_err(|_| "a verifying thread panicked".to_string())??,
                );
            }
            medians.sort();
            Ok::<_, String>(medians[medians.len() / 2])
        })?;
        Ok(Ceiling {
            cores,
            per_signature: alone / batch as u32,
            batch,
            per_signature_all_busy: busy / batch as u32,
        })
    }

    /// The ceiling in tx/s, from the one-core time (the definition), when `verifying` replicas verify every tx.
    pub fn tps(&self, verifying: usize) -> f64 {
        self.cores as f64 / (verifying.max(1) as f64 * self.per_signature.as_secs_f64())
    }
}

/// The median time of `Verifier::verify_txs` over `txs`, sampled for about `budget`.
fn median_batch_time(
    cluster: &Arc<Cluster>,
    txs: &[raft_bft::message::SignedTx],
    budget: Duration,
) -> Result<Duration, String> {
    let mut verifier = Verifier::new(cluster.clone(), [3; 32]);
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 1000) {
        let batch = txs.to_vec();
        let t = Instant::now();
        let results = verifier.verify_txs(batch);
        samples.push(t.elapsed());
        if results.iter().any(Result::is_err) {
            return Err("a valid tx failed verification".into());
        }
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}
