//! Shared pieces of the fuzz targets and of the seed generator: the fixed cluster every
//! verifier checks against, and how a target reads the control bytes at the start of its input.
//!
//! The seed generator (`src/bin/seed_corpus.rs`) uses the same functions, so its seeds are
//! signed by this cluster's keys and carry the control bytes the targets expect.

use std::sync::{Arc, OnceLock};

use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest};
use raft_bft::types::{Digest, ReplicaId};
use raft_bft::verify::Verifier;

/// The 4-replica cluster the targets verify against (`f = 1`, quorum 3), with default params.
pub struct Fixture {
    /// Replica `i`'s key is `KeyPair::from_seed([i + 1; 32])`, as in the crate docs.
    pub keys: Vec<KeyPair>,
    /// The validated cluster.
    pub cluster: Arc<Cluster>,
}

impl Fixture {
    fn build() -> Fixture {
        let keys: Vec<KeyPair> = (1..=4u8).map(|i| KeyPair::from_seed([i; 32])).collect();
        let manifest = Manifest::new(
            "fuzz",
            keys.iter()
                .enumerate()
                .map(|(i, k)| (k.public(), format!("127.0.0.1:{}", 7000 + i))),
            Params::default(),
        );
        let cluster = Arc::new(Cluster::new(manifest).expect("the fuzz cluster is valid"));
        Fixture { keys, cluster }
    }

    /// The cluster's parameters (what the wire decoders are given).
    pub fn params(&self) -> &Params {
        self.cluster.params()
    }

    /// A fresh verifier with a fixed seed, so that every run of an input is the same.
    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.cluster.clone(), [0; 32])
    }
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::build)
}

/// `client_request`: stands for the digest a client signs to subscribe on a connection. The real
/// one is derived from the connection's TLS keying material (`wire::subscription_digest`), which
/// a sans-IO target has not got; the key and signature, the hostile part, come from the input.
pub const SUBSCRIPTION_DIGEST: Digest = Digest([0x5b; 32]);

/// `replica_message`: the first input byte names the sender as the transport authenticated it:
/// replicas 0..=3 for bytes below 252 (`byte % 4`), a non-member (`ReplicaId(byte)`) above.
pub fn sender_of(byte: u8) -> ReplicaId {
    if byte < 252 {
        ReplicaId(u32::from(byte % 4))
    } else {
        ReplicaId(u32::from(byte))
    }
}

/// The control byte that makes [`sender_of`] name `replica` (a member).
pub fn sender_byte(replica: ReplicaId) -> u8 {
    assert!(replica.0 < 4);
    replica.0 as u8
}

/// `frames`: how the input's control bytes choose the decoder's limit and the chunking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameControl<'a> {
    /// The limit given to `FrameDecoder::new`.
    pub limit: usize,
    /// Chunk sizes, used in turn; a 0 pushes an empty slice. Empty (or all zero): one push of
    /// the whole stream.
    pub pattern: &'a [u8],
    /// The stream's bytes.
    pub stream: &'a [u8],
}

/// The limit for the first control byte: its top two bits pick a range, the rest a value in it.
pub fn frame_limit(byte: u8) -> usize {
    let low = usize::from(byte & 0x3f);
    match byte >> 6 {
        0 => low,             // 0..=63: tiny limits, most frames refused
        1 => (low + 1) * 64,  // 64..=4096
        2 => (low + 1) << 18, // 256 KiB..=16 MiB (the replica links' default limit)
        _ => usize::MAX,      // clamped by the decoder to u32::MAX
    }
}

/// Splits an input into its control bytes and stream: byte 0 picks the limit, byte 1's low
/// three bits the pattern's length `p`, the next `p` bytes are the pattern, the rest the stream.
pub fn frame_control(data: &[u8]) -> Option<FrameControl<'_>> {
    let (&limit, rest) = data.split_first()?;
    let (&p, rest) = rest.split_first()?;
    let p = usize::from(p & 7).min(rest.len());
    let (pattern, stream) = rest.split_at(p);
    Some(FrameControl {
        limit: frame_limit(limit),
        pattern,
        stream,
    })
}

/// The control bytes that select `limit_byte` and `pattern` (at most 7 bytes).
pub fn frame_control_bytes(limit_byte: u8, pattern: &[u8]) -> Vec<u8> {
    assert!(pattern.len() <= 7);
    let mut out = vec![limit_byte, pattern.len() as u8];
    out.extend_from_slice(pattern);
    out
}
