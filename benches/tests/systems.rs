//! Every system of the comparison commits the workload's transfers, and the driver measures
//! them: a short run of each with a few clients.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use raft_bft::manifest::Cluster;
use raft_bft_benches::driver::{self, Load, Timing};
use raft_bft_benches::system::{bench_manifest, ClusterSpec, System};
use raft_bft_benches::workload::Accounts;
use raft_bft_benches::{openraft_baseline, raft_bft_local, raft_bft_quic};

fn spec(nodes: usize, dir: &Path) -> ClusterSpec {
    let addresses: Vec<String> = (0..nodes)
        .map(|_| {
            let port = raft_bft_net::free_udp_port().expect("a free port");
            format!("127.0.0.1:{port}")
        })
        .collect();
    ClusterSpec {
        nodes,
        batch: 64,
        manifest: bench_manifest(&addresses, 64, Duration::from_millis(2)),
        accounts: Arc::new(Accounts::new(8, 16)),
        dir: dir.to_path_buf(),
        batch_delay: Duration::from_millis(2),
    }
}

/// Runs 8 closed-loop clients for a second and checks what was measured.
fn exercise(name: &str, start: impl FnOnce(&ClusterSpec) -> Result<Box<dyn System>, String>) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let spec = spec(4, dir.path());
    let cid = *Cluster::new(spec.manifest.clone())
        .expect("valid manifest")
        .cluster_id();
    let queues = spec.accounts.presign(&cid, 2000);
    let system = start(&spec).unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let timing = Timing {
        warmup: Duration::from_millis(300),
        measure: Duration::from_secs(1),
    };
    let m = driver::run(system.as_ref(), queues, Load::Closed, timing, name);
    system
        .shutdown()
        .unwrap_or_else(|e| panic!("{name} stops: {e}"));
    assert!(m.committed > 20, "{name}: only {} committed", m.committed);
    assert!(!m.exhausted, "{name}: ran out of txs");
    assert_eq!(m.cpu.len(), 4, "{name}: one CPU figure per node");
    let leader = m.leader.unwrap_or_else(|| panic!("{name}: no leader"));
    assert!(m.cpu[leader] > Duration::ZERO, "{name}: {:?}", m.cpu);
    assert_eq!(m.failed, 0, "{name}: {:?}", m.first_error);
    assert_eq!(m.latencies.count(), m.committed);
    assert!(m.latencies.quantile_ms(0.5) > 0.0);
    eprintln!(
        "{name}: {} committed, {} failed, p50 {:.2} ms, cpu {:?}",
        m.committed,
        m.failed,
        m.latencies.quantile_ms(0.5),
        m.cpu
    );
}

#[test]
fn raft_bft_over_an_in_process_transport_commits_the_workload() {
    exercise("raft-bft/local", raft_bft_local::start);
}

#[test]
fn raft_bft_over_quic_with_node_processes_commits_the_workload() {
    let program = Path::new(env!("CARGO_BIN_EXE_compare"));
    exercise("raft-bft/quic", |spec| {
        raft_bft_quic::start_with(spec, program)
    });
}

#[test]
fn openraft_commits_the_workload() {
    exercise("openraft", openraft_baseline::start);
}
