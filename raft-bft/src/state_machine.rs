//! The application interface: what a replicated log replicates into.

use crate::types::{ClientId, Digest};

/// A deterministic application driven by the committed log.
///
/// Every correct replica applies the same ops in the same order and must reach the same results
/// and the same [`StateMachine::digest`]. Anything nondeterministic (clocks, randomness, hash-map
/// iteration order, floating point differences) makes replicas diverge, which the protocol
/// detects and reports.
///
/// ```
/// use raft_bft::state_machine::StateMachine;
/// use raft_bft::types::{ClientId, Digest};
///
/// /// Counts ops; the result is the count after the op.
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl StateMachine for Counter {
///     fn apply(&mut self, _client: &ClientId, _op: &[u8]) -> Vec<u8> {
///         self.0 += 1;
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
/// ```
pub trait StateMachine {
    /// A cheap, state-independent check run when a tx arrives (before it is ordered): for example
    /// that `op` decodes. A refusal is sent to the client with this reason and nothing is
    /// ordered. Must be deterministic: every correct replica must give the same verdict.
    fn admit(&self, client: &ClientId, op: &[u8]) -> Result<(), String> {
        let _ = (client, op);
        Ok(())
    }

    /// Applies one committed op from `client` and returns its result. A refused op (an
    /// overdraft, say) returns a result that says so and leaves the state unchanged.
    fn apply(&mut self, client: &ClientId, op: &[u8]) -> Vec<u8>;

    /// A digest of the whole state. Called once per executed entry, so it must be cheap
    /// (maintain it incrementally).
    fn digest(&self) -> Digest;

    /// The whole state, encoded: what a checkpoint stores and a replica that fell behind
    /// restores from. Restoring it must give a state with the same [`StateMachine::digest`].
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with one that [`StateMachine::snapshot`] produced. The bytes
    /// come from a peer (their digest is checked against a certificate first, but a peer may
    /// still lie): decode them without panicking, and refuse what does not decode.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}
