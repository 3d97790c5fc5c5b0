//! A deterministic simulator of a whole cluster: replicas, their disks, a faulty network and
//! closed-loop clients, all in virtual time and driven by one seed.
//!
//! Every replica is the real sans-IO [`Replica`](crate::replica::Replica) with its own
//! [`Verifier`](crate::verify::Verifier); every message travels as bytes through the real codec
//! and verifier; every client is the real [`Client`](crate::client::Client). During a fault
//! phase the network drops, duplicates, corrupts, delays and partitions messages, and up to `f`
//! replicas crash (losing what their disk had not yet made durable) and restart from their
//! durable state. After [`SimConfig::heal_at`] the network is reliable and every replica is up.
//!
//! Checked along the way and at the end:
//!
//! - **persist before speak**: a vote leaves a replica only once it is durable, a PreAppend once
//!   its entry is, a reply once a commit certificate covering it is;
//! - **agreement**: committed logs are prefixes of one another (also checked periodically, which
//!   catches transient forks);
//! - **state digests**: replicas that executed an index agree on the state digest after it, and
//!   no replica reports a divergence from an execution certificate;
//! - **validity**: every committed tx verifies and was submitted by a simulated client; no op is
//!   executed twice on any replica ([`TestKv`] detects it; other workloads can report their own
//!   violations through [`Workload::app_violations`]);
//! - **linearizability**: every result a client accepted equals the result of replaying the
//!   committed log through a fresh state machine, and real-time order is respected;
//! - **liveness**: after the fault phase, every tx is accepted within
//!   [`SimConfig::liveness_bound`].
//!
//! The same [`SimConfig`] always gives the same [`SimReport`]: all randomness comes from a
//! ChaCha8 generator seeded with [`SimConfig::seed`], time is virtual, and events at the same
//! time run in the order they were scheduled.
//!
//! ```
//! let mut config = raft_bft::sim::SimConfig::new(7, 4);
//! config.clients = 2;
//! config.txs_per_client = 5;
//! let report = raft_bft::sim::run(config);
//! assert!(report.is_ok(), "{report}");
//! assert_eq!(report.accepted_txs, 10);
//! ```

mod adversary;
mod check;
mod config;
mod driver;
mod history;
mod kv;
mod network;
mod node;
mod queue;
mod report;
mod shadow;
mod workload;
mod world;

pub use adversary::{ByzantineConfig, Strategy};
pub use check::{check_agreement, check_linearizability, check_validity, Executed, Replay};
pub use config::{CrashConfig, FaultConfig, Isolation, SimConfig};
pub use history::{History, OpRecord};
pub use kv::{KvOp, KvResult, KvWorkload, TestKv, KV_OP_BYTES};
pub use report::{Counters, SimReport};
pub use shadow::{OpenShadowStore, ShadowStore};
pub use workload::Workload;

/// The simulator's random number generator (seeded from [`SimConfig::seed`]).
pub type SimRng = chacha20::ChaCha8Rng;

/// Runs one simulation of [`TestKv`] under the default [`KvWorkload`].
pub fn run(config: SimConfig) -> SimReport {
    run_with(config, KvWorkload::default())
}

/// Runs one simulation of the workload's state machine.
///
/// An invalid configuration yields a report whose only violation says why.
pub fn run_with<W: Workload>(config: SimConfig, workload: W) -> SimReport {
    run_on(config, workload, None)
}

/// Runs one simulation with every replica's durable state also kept in a real store (see
/// [`ShadowStore`]): restarted replicas start from what the store loads, and a store that
/// loads anything else than what was made durable is a violation.
pub fn run_with_stores<W: Workload>(
    config: SimConfig,
    workload: W,
    open: &OpenShadowStore<'_>,
) -> SimReport {
    run_on(config, workload, Some(open))
}

fn run_on<W: Workload>(
    config: SimConfig,
    workload: W,
    open: Option<&OpenShadowStore<'_>>,
) -> SimReport {
    let seed = config.seed;
    let replicas = config.replicas;
    let sim = world::Simulation::new(config, workload).and_then(|sim| match open {
        Some(open) => sim.with_shadow_stores(open),
        None => Ok(sim),
    });
    match sim {
        Ok(sim) => sim.run(),
        Err(why) => SimReport {
            seed,
            replicas,
            violations: vec![format!("invalid simulator configuration: {why}")],
            violation_count: 1,
            ..SimReport::default()
        },
    }
}
