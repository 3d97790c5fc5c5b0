//! Deliberately broken variants of the protocol, available only with the `simulator` feature.
//!
//! Each mutant removes one safety mechanism. They exist to show that the simulator's checkers
//! have teeth: `simulate --mutant NAME` must report safety violations, and tests assert that it
//! does within a bounded number of seeds. Only the simulator switches a mutant on, for a whole
//! simulated cluster ([`SimConfig::with_mutant`](crate::sim::SimConfig::with_mutant)); no
//! public API builds a mutated `Cluster`.

use std::fmt;

/// One deliberately broken protocol variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// `quorum-2f`: every quorum (votes, certificates, term changes) is one short.
    QuorumOneShort,
    /// `skip-pc-check`: a replica casts its Append vote without holding a valid prepared
    /// certificate (right after its own PreAppend vote).
    SkipPcCheck,
    /// `forget-votes`: the votes a replica made durable are lost when it restarts (a storage
    /// layer that does not keep them).
    ForgetVotes,
    /// `nondeterministic`: one correct replica's state machine is not deterministic (the test
    /// state machine mixes a per-instance value into some of its writes). The replica must
    /// detect that its state diverged from the execution certificates, stop executing, and
    /// recover by state transfer; the checkers report the divergent digests.
    Nondeterministic,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 4] = [
        Mutant::QuorumOneShort,
        Mutant::SkipPcCheck,
        Mutant::ForgetVotes,
        Mutant::Nondeterministic,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::QuorumOneShort => "quorum-2f",
            Mutant::SkipPcCheck => "skip-pc-check",
            Mutant::ForgetVotes => "forget-votes",
            Mutant::Nondeterministic => "nondeterministic",
        }
    }

    /// The mutant with this command-line name.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
