//! Byzantine replicas for the simulator: a catalogue of named strategies.
//!
//! A Byzantine replica runs the real [`Replica`](crate::replica::Replica) code with its real key;
//! its [`Adversary`] sits between that replica and the network. It can alter, drop, delay,
//! duplicate and re-sign what the replica sends, filter what it receives, and inject messages of
//! its own (forged, replayed, garbage). Twins go further: two instances of one replica, with one
//! key, each seeing a different part of the cluster.
//!
//! The checkers ignore Byzantine replicas' own logs and outputs: safety is about the correct
//! replicas and the clients.

mod behave;
mod forge;

use std::fmt;

use rand::{RngExt as _, SeedableRng as _};

use crate::types::ReplicaId;

use super::SimRng;

pub(crate) use behave::{Act, Adversary, Ctx};

/// A named Byzantine strategy (`simulate --byzantine NAME`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// As leader, proposes different entries for one index to different followers (and both to
    /// some, which exposes it).
    EquivocatingLeader,
    /// Drops every tx of one client, received directly or forwarded.
    CensoringLeader,
    /// As leader, sends nothing at all.
    MuteLeader,
    /// As leader, delays everything it sends to just under the followers' timeouts.
    SlowLeader,
    /// As leader, proposes entries with an invalid client signature or a broken hash chain.
    InvalidProposals,
    /// Forges certificates (duplicate signers, non-members, too few signatures, wrong phase,
    /// term, index or hash) in what it sends, and injects more.
    ForgedCertificates,
    /// A follower that votes twice, for conflicting subjects, in every phase, and sends two
    /// different TermChanges for each term it seeks.
    DoubleVoting,
    /// Replays its own signed messages from older terms and others' messages it received, and
    /// sends messages signed for another cluster.
    Replay,
    /// Sends random bytes, truncated and bit-flipped messages, oversized frames and absurd
    /// requests to replicas, and garbage to clients.
    Garbage,
    /// Pushes ever higher terms: signed TermChanges for the next few terms and for terms far
    /// ahead.
    TermStorm,
    /// As a new leader, announces a NewTerm whose chosen log or quorum is wrong.
    WrongNewTerm,
    /// Sends clients validly signed replies with wrong results.
    WrongReplies,
    /// Two instances with one key, each seeing a different side of the cluster.
    Twins,
    /// As leader, withholds prepared certificates, sends a commit certificate to one follower
    /// only, falls silent, and from then on votes for anything any leader proposes.
    WithholdPc,
    /// As leader, equivocates quietly (a follower gets the same version of an index every time
    /// it is sent), then sends each committed proposal again to the followers that voted for
    /// the other version: a replica that forgot its vote votes twice.
    RevoteBait,
    /// Serves checkpoints whose state is damaged: bytes flipped, or cut short.
    BadSnapshot,
    /// Serves committed entries that are not the certified ones: a tx altered, an entry
    /// dropped from the run, or another run's certificate.
    BadEntries,
    /// Serves the first checkpoint it ever took, whatever is asked, and offers it unasked.
    StaleCheckpoint,
}

impl Strategy {
    /// Every strategy, in the order of the report.
    pub const ALL: [Strategy; 18] = [
        Strategy::EquivocatingLeader,
        Strategy::CensoringLeader,
        Strategy::MuteLeader,
        Strategy::SlowLeader,
        Strategy::InvalidProposals,
        Strategy::ForgedCertificates,
        Strategy::DoubleVoting,
        Strategy::Replay,
        Strategy::Garbage,
        Strategy::TermStorm,
        Strategy::WrongNewTerm,
        Strategy::WrongReplies,
        Strategy::Twins,
        Strategy::WithholdPc,
        Strategy::RevoteBait,
        Strategy::BadSnapshot,
        Strategy::BadEntries,
        Strategy::StaleCheckpoint,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::EquivocatingLeader => "equivocating-leader",
            Strategy::CensoringLeader => "censoring-leader",
            Strategy::MuteLeader => "mute-leader",
            Strategy::SlowLeader => "slow-leader",
            Strategy::InvalidProposals => "invalid-proposals",
            Strategy::ForgedCertificates => "forged-certificates",
            Strategy::DoubleVoting => "double-voting",
            Strategy::Replay => "replay",
            Strategy::Garbage => "garbage",
            Strategy::TermStorm => "term-storm",
            Strategy::WrongNewTerm => "wrong-new-term",
            Strategy::WrongReplies => "wrong-replies",
            Strategy::Twins => "twins",
            Strategy::WithholdPc => "withhold-pc",
            Strategy::RevoteBait => "revote-bait",
            Strategy::BadSnapshot => "bad-snapshot",
            Strategy::BadEntries => "bad-entries",
            Strategy::StaleCheckpoint => "stale-checkpoint",
        }
    }

    /// The strategy with this command-line name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Which replicas are Byzantine when `count` of `n` are. Strategies that act as leader start
    /// as the leader of term 0 (replica 0, then 1, ...). `wrong-new-term` takes replica 1, the
    /// leader of term 1 (the run isolates replica 0 early, so that term 1 happens). The others
    /// take replicas that depend on the seed, so that they are leaders in some seeds and
    /// followers in others.
    pub fn byzantine_replicas(self, n: usize, count: usize, seed: u64) -> Vec<ReplicaId> {
        let count = count.min(n);
        let first = match self {
            Strategy::EquivocatingLeader
            | Strategy::CensoringLeader
            | Strategy::MuteLeader
            | Strategy::SlowLeader
            | Strategy::InvalidProposals
            | Strategy::Twins
            | Strategy::WithholdPc
            | Strategy::RevoteBait => 0,
            Strategy::WrongNewTerm => 1 % n,
            // A follower: the leader casts no votes to double.
            Strategy::DoubleVoting if n > 1 => {
                let mut rng = SimRng::seed_from_u64(seed ^ 0x0b12_a47e_5eed_0001);
                rng.random_range(1..n)
            }
            _ => {
                let mut rng = SimRng::seed_from_u64(seed ^ 0x0b12_a47e_5eed_0001);
                rng.random_range(0..n)
            }
        };
        (0..count)
            .map(|k| ReplicaId(((first + k) % n) as u32))
            .collect()
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Byzantine replicas of a run and what they do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByzantineConfig {
    /// What they do.
    pub strategy: Strategy,
    /// Who they are.
    pub replicas: Vec<ReplicaId>,
}
