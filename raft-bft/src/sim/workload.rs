//! How a user plugs a state machine into the simulator.

use crate::state_machine::StateMachine;

use super::SimRng;

/// A state machine under test and the ops the simulated clients submit to it.
///
/// The simulator checks any deterministic state machine for agreement, validity, state digests
/// and linearizability (every result a client accepted must equal the result of a fresh instance
/// replaying the committed log). Make results depend on the order of ops (for example return
/// the previous value) so that the linearizability check has something to catch.
///
/// ```
/// use raft_bft::sim::{self, SimConfig, SimRng, Workload};
/// use raft_bft::state_machine::StateMachine;
/// use raft_bft::types::{ClientId, Digest};
///
/// /// A counter: each op adds its value; the result is the new total.
/// #[derive(Default)]
/// struct Sum(u64);
///
/// impl StateMachine for Sum {
///     fn apply(&mut self, _client: &ClientId, op: &[u8]) -> Vec<u8> {
///         self.0 += op.first().copied().unwrap_or(0) as u64;
///         self.0.to_le_bytes().to_vec()
///     }
///     fn digest(&self) -> Digest {
///         Digest(*blake3::hash(&self.0.to_le_bytes()).as_bytes())
///     }
///     fn snapshot(&self) -> Vec<u8> {
///         self.0.to_le_bytes().to_vec()
///     }
///     fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
///         let bytes: [u8; 8] = snapshot.try_into().map_err(|_| "expected 8 bytes".to_string())?;
///         self.0 = u64::from_le_bytes(bytes);
///         Ok(())
///     }
/// }
///
/// struct SumWorkload;
///
/// impl Workload for SumWorkload {
///     type App = Sum;
///     fn new_app(&self) -> Sum {
///         Sum::default()
///     }
///     fn next_op(&mut self, rng: &mut SimRng, _client: usize, _op_id: u64) -> Vec<u8> {
///         use rand::RngExt as _;
///         vec![rng.random_range(1..10u8)]
///     }
/// }
///
/// let mut config = SimConfig::new(1, 4).without_faults();
/// config.clients = 2;
/// config.txs_per_client = 3;
/// let report = sim::run_with(config, SumWorkload);
/// assert!(report.is_ok(), "{report}");
/// ```
pub trait Workload {
    /// The application replicated by the cluster.
    type App: StateMachine;

    /// A fresh application (for each replica at start and restart, and for the reference
    /// replay of the checker).
    fn new_app(&self) -> Self::App;

    /// For the `nondeterministic` mutant: an application that departs from the deterministic one
    /// in a way that depends on `salt` (`None`: the workload has no such variant, and the
    /// mutant leaves it alone).
    fn nondeterministic_app(&self, salt: u64) -> Option<Self::App> {
        let _ = salt;
        None
    }

    /// The op that client `client` submits next. `op_id` is unique in the run.
    fn next_op(&mut self, rng: &mut SimRng, client: usize, op_id: u64) -> Vec<u8>;

    /// Violations the application itself detected (for example an op applied twice). Called
    /// for each replica instance before it is dropped (at a crash) and at the end of the run.
    fn app_violations(&self, app: &Self::App) -> Vec<String> {
        let _ = app;
        Vec::new()
    }
}
