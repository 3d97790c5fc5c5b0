//! Property tests of the wire codec on the protocol's untrusted inputs.
//!
//! - Decoding arbitrary bytes, and mutations and truncations of valid encodings, as
//!   `ReplicaMessage`, `SignedTx`, `Reply` or `Manifest` never panics; a truncated encoding is
//!   always refused, and whatever does decode re-encodes to an equal value.
//! - `decode(encode(x)) == x` for arbitrary well-formed values of each type.
//! - Any trailing bytes after a valid encoding are refused with `TrailingBytes(count)`.
//! - Inputs above the limit are refused with `TooLarge` before decoding (even garbage that
//!   would otherwise be `Malformed`), and inputs at the limit decode.

use std::fmt::Debug;
use std::time::Duration;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index as Pick;
use raft_bft::codec::{self, CodecError};
use raft_bft::config::Params;
use raft_bft::manifest::{Manifest, ReplicaInfo};
use raft_bft::merkle::MerkleProof;
use raft_bft::message::{
    Certificate, CheckpointChunk, Entry, EntryHeader, EquivocationProof, Heartbeat, NewTerm,
    Outcome, Phase, PreAppend, PreparedEntry, Rejection, ReplicaMessage, Reply, SignedTx,
    TermChange, Vote, VoteSubject,
};
use raft_bft::types::{Digest, Index, PublicKey, ReplicaId, Signature, Term};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The limit replicas use by default (`max_message_bytes`, 16 MiB).
const LIMIT: usize = 16 << 20;

// ---- Strategies for well-formed values ----

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn public_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Signature(s)
    })
}

fn term() -> impl Strategy<Value = Term> {
    any::<u64>().prop_map(Term)
}

fn index() -> impl Strategy<Value = Index> {
    any::<u64>().prop_map(Index)
}

fn replica_id() -> impl Strategy<Value = ReplicaId> {
    any::<u32>().prop_map(ReplicaId)
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn signed_tx() -> impl Strategy<Value = SignedTx> {
    (public_key(), any::<u64>(), bytes(48), signature()).prop_map(|(client, ts, op, sig)| {
        SignedTx {
            client,
            ts,
            op,
            sig,
        }
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    (term(), index(), digest(), vec(signed_tx(), 0..4)).prop_map(|(term, index, prev_hash, txs)| {
        Entry {
            term,
            index,
            prev_hash,
            txs,
        }
    })
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::PreAppend),
        Just(Phase::Append),
        Just(Phase::Commit)
    ]
}

/// Any subject, including ones whose state digest does not fit the phase: the codec must carry
/// them faithfully (refusing them is the verifier's job).
fn subject() -> impl Strategy<Value = VoteSubject> {
    (phase(), term(), index(), digest(), option::of(digest())).prop_map(
        |(phase, term, index, entry_hash, state_digest)| VoteSubject {
            phase,
            term,
            index,
            entry_hash,
            state_digest,
        },
    )
}

fn vote() -> impl Strategy<Value = Vote> {
    (subject(), replica_id(), signature()).prop_map(|(subject, replica, sig)| Vote {
        subject,
        replica,
        sig,
    })
}

fn certificate() -> impl Strategy<Value = Certificate> {
    (subject(), vec((replica_id(), signature()), 0..8))
        .prop_map(|(subject, sigs)| Certificate { subject, sigs })
}

fn header() -> impl Strategy<Value = EntryHeader> {
    (term(), index(), digest(), digest()).prop_map(|(term, index, prev_hash, tx_root)| {
        EntryHeader {
            term,
            index,
            prev_hash,
            tx_root,
        }
    })
}

fn term_change() -> impl Strategy<Value = TermChange> {
    (
        term(),
        proptest::option::of(certificate()),
        vec((certificate(), header()), 0..3),
        replica_id(),
        signature(),
    )
        .prop_map(|(new_term, stable, prepared, replica, sig)| TermChange {
            new_term,
            stable,
            prepared: prepared
                .into_iter()
                .map(|(certificate, header)| PreparedEntry {
                    certificate,
                    header,
                })
                .collect(),
            replica,
            sig,
        })
}

/// The term-change messages (kept apart so `prop_oneof!` stays within its arity).
fn term_change_message() -> impl Strategy<Value = ReplicaMessage> {
    prop_oneof![
        term_change().prop_map(ReplicaMessage::TermChange),
        (
            term(),
            vec(term_change(), 0..3),
            vec((index(), digest()), 0..3),
            signature()
        )
            .prop_map(|(new_term, term_changes, chosen, leader_sig)| {
                ReplicaMessage::NewTerm(
                    NewTerm {
                        new_term,
                        term_changes,
                        chosen,
                        leader_sig,
                    }
                    .into(),
                )
            }),
        (index(), digest()).prop_map(|(index, hash)| ReplicaMessage::FetchChosen { index, hash }),
        entry().prop_map(|e| ReplicaMessage::ChosenEntry(e.into())),
        (
            term(),
            index(),
            digest(),
            signature(),
            digest(),
            signature()
        )
            .prop_map(
                |(term, index, h1, s1, h2, s2)| ReplicaMessage::Equivocation(EquivocationProof {
                    term,
                    index,
                    first: (h1, s1),
                    second: (h2, s2),
                })
            ),
    ]
}

fn replica_message() -> impl Strategy<Value = ReplicaMessage> {
    prop_oneof![
        term_change_message(),
        (term(), entry(), signature()).prop_map(|(term, entry, leader_sig)| {
            ReplicaMessage::PreAppend(PreAppend {
                term,
                entry: entry.into(),
                leader_sig,
            })
        }),
        vote().prop_map(ReplicaMessage::Vote),
        certificate().prop_map(ReplicaMessage::Append),
        certificate().prop_map(ReplicaMessage::Commit),
        certificate().prop_map(ReplicaMessage::Executed),
        signed_tx().prop_map(ReplicaMessage::Forward),
        (term(), proptest::option::of(certificate()), signature()).prop_map(
            |(term, commit, leader_sig)| ReplicaMessage::Heartbeat(Heartbeat {
                term,
                commit,
                leader_sig
            })
        ),
        (index(), index()).prop_map(|(from, to)| ReplicaMessage::FetchEntries { from, to }),
        (vec(entry(), 0..3), certificate()).prop_map(|(entries, certificate)| {
            ReplicaMessage::Entries {
                entries: entries.into_iter().map(Into::into).collect(),
                certificate,
            }
        }),
        state_transfer_message(),
    ]
}

/// The checkpoint and status messages (kept apart so `prop_oneof!` stays within its arity).
fn state_transfer_message() -> impl Strategy<Value = ReplicaMessage> {
    prop_oneof![
        (index(), index(), any::<u64>()).prop_map(|(above, index, offset)| {
            ReplicaMessage::FetchCheckpoint {
                above,
                index,
                offset,
            }
        }),
        (certificate(), any::<u64>(), any::<u64>(), bytes(64)).prop_map(
            |(certificate, total, offset, data)| {
                ReplicaMessage::CheckpointChunk(CheckpointChunk {
                    certificate,
                    total,
                    offset,
                    data,
                })
            }
        ),
        Just(ReplicaMessage::FetchStatus),
        certificate().prop_map(ReplicaMessage::Status),
    ]
}

fn rejection() -> impl Strategy<Value = Rejection> {
    prop_oneof![
        any::<u64>().prop_map(|last_executed| Rejection::Stale { last_executed }),
        (any::<u32>(), any::<u32>()).prop_map(|(size, limit)| Rejection::TooLarge { size, limit }),
        any::<String>().prop_map(Rejection::Refused),
        Just(Rejection::Busy),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (index(), bytes(48)).prop_map(|(index, result)| Outcome::Executed { index, result }),
        rejection().prop_map(Outcome::Rejected),
    ]
}

fn merkle_proof() -> impl Strategy<Value = MerkleProof> {
    (any::<u32>(), any::<u32>(), vec(digest(), 0..6)).prop_map(
        |(position, leaf_count, siblings)| MerkleProof {
            position,
            leaf_count,
            siblings,
        },
    )
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        public_key(),
        any::<u64>(),
        outcome(),
        replica_id(),
        merkle_proof(),
        signature(),
    )
        .prop_map(|(client, ts, outcome, replica, proof, sig)| Reply {
            client,
            ts,
            outcome,
            replica,
            proof,
            sig,
        })
}

fn duration() -> impl Strategy<Value = Duration> {
    (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
}

fn params() -> impl Strategy<Value = Params> {
    (
        (
            any::<u32>(),
            any::<u64>(),
            duration(),
            any::<u32>(),
            duration(),
            duration(),
        ),
        (
            duration(),
            duration(),
            duration(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
    )
        .prop_map(|(a, b, c)| Params {
            max_batch_txs: a.0,
            max_batch_bytes: a.1,
            max_batch_delay: a.2,
            pipeline_depth: a.3,
            heartbeat_interval: a.4,
            election_timeout: a.5,
            request_timeout: b.0,
            commit_timeout: b.1,
            term_change_timeout: b.2,
            checkpoint_interval: b.3,
            max_message_bytes: b.4,
            max_op_bytes: b.5,
            max_pending_txs: b.6,
            max_pending_txs_per_client: c.0,
            max_pending_bytes: c.1,
            max_checkpoint_bytes: c.2,
            checkpoint_chunk_bytes: c.3,
        })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let replica =
        (replica_id(), public_key(), any::<String>()).prop_map(|(id, public_key, address)| {
            ReplicaInfo {
                id,
                public_key,
                address,
            }
        });
    (
        any::<String>(),
        vec(replica, 0..5),
        vec(public_key(), 0..3),
        params(),
    )
        .prop_map(|(name, replicas, admin_keys, params)| Manifest {
            name,
            replicas,
            admin_keys,
            params,
        })
}

// ---- Mutations of valid encodings ----

#[derive(Clone, Debug)]
enum Mutation {
    Set(Pick, u8),
    FlipBit(Pick, u8),
    Insert(Pick, u8),
    Remove(Pick),
    Truncate(Pick),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Pick>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Pick>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Pick>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Pick>().prop_map(Mutation::Remove),
        any::<Pick>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            bytes.push(0);
        }
        match m {
            Mutation::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Mutation::FlipBit(i, bit) => {
                let i = i.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Mutation::Remove(i) => {
                let i = i.index(bytes.len());
                bytes.remove(i);
            }
            Mutation::Truncate(i) => {
                let i = i.index(bytes.len());
                bytes.truncate(i);
            }
        }
    }
    bytes
}

// ---- Checks ----

/// Decodes `bytes` as `T`; if it decodes, the value must survive a round trip of its own.
fn decode_consistently<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(v) = codec::decode::<T>(bytes, LIMIT) {
        let again = codec::encode(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(codec::decode::<T>(&again, LIMIT).ok(), Some(v));
    }
    Ok(())
}

/// Decodes `bytes` as every untrusted type (none may panic).
fn decode_as_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    decode_consistently::<ReplicaMessage>(bytes)?;
    decode_consistently::<SignedTx>(bytes)?;
    decode_consistently::<Reply>(bytes)?;
    decode_consistently::<Manifest>(bytes)?;
    Ok(())
}

/// Round trip, trailing bytes, size limit and truncation for one valid value.
fn check_value<T>(value: &T, suffix: &[u8], mutations: &[Mutation]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::encode(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let len = bytes.len();

    // Round trip.
    let decoded = codec::decode::<T>(&bytes, LIMIT).ok();
    prop_assert_eq!(decoded.as_ref(), Some(value));
    // Exactly at the limit is fine; one byte above it is refused before decoding.
    prop_assert!(codec::decode::<T>(&bytes, len).is_ok());
    let below = len - 1;
    let got = codec::decode::<T>(&bytes, below);
    let refused =
        matches!(got, Err(CodecError::TooLarge { len: l, limit }) if l == len && limit == below);
    prop_assert!(refused, "{:?}", got);
    // Trailing bytes, however many and whatever they are, are refused and counted.
    if !suffix.is_empty() {
        let mut with_suffix = bytes.clone();
        with_suffix.extend_from_slice(suffix);
        let got = codec::decode::<T>(&with_suffix, LIMIT);
        let refused = matches!(got, Err(CodecError::TrailingBytes(n)) if n == suffix.len());
        prop_assert!(refused, "{:?}", got);
    }
    // Every strict prefix is refused (the encoding is self-delimiting).
    for cut in [0, 1, len / 2, len - 1] {
        if cut < len {
            prop_assert!(codec::decode::<T>(&bytes[..cut], LIMIT).is_err());
        }
    }
    // Mutations never panic, as any type.
    decode_as_everything(&mutate(bytes, mutations))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096)) {
        decode_as_everything(&bytes)?;
    }

    /// Arbitrary bytes that start like a msgpack map or array (as every encoded message does)
    /// get further into the decoders than uniformly random bytes.
    #[test]
    fn structured_prefixes_never_panic(
        head in prop::sample::select(vec![0x81u8, 0x82, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0xdc, 0xde]),
        rest in vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![head];
        bytes.extend(rest);
        decode_as_everything(&bytes)?;
    }

    #[test]
    fn oversized_input_is_refused_before_decoding(bytes in vec(any::<u8>(), 1..2048), pick in any::<Pick>()) {
        let limit = pick.index(bytes.len());
        let len = bytes.len();
        // Garbage or not, the only answer above the limit is TooLarge.
        let got = codec::decode::<ReplicaMessage>(&bytes, limit);
        let refused = matches!(got, Err(CodecError::TooLarge { len: l, limit: m }) if l == len && m == limit);
        prop_assert!(refused, "{:?}", got);
        let got = codec::decode::<Manifest>(&bytes, limit);
        let refused = matches!(got, Err(CodecError::TooLarge { .. }));
        prop_assert!(refused, "{:?}", got);
    }
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn replica_messages(
        msg in replica_message(),
        suffix in vec(any::<u8>(), 0..16),
        mutations in vec(mutation(), 1..6),
    ) {
        check_value(&msg, &suffix, &mutations)?;
    }

    #[test]
    fn signed_txs(tx in signed_tx(), suffix in vec(any::<u8>(), 0..16), mutations in vec(mutation(), 1..6)) {
        check_value(&tx, &suffix, &mutations)?;
    }

    #[test]
    fn replies(reply in reply(), suffix in vec(any::<u8>(), 0..16), mutations in vec(mutation(), 1..6)) {
        check_value(&reply, &suffix, &mutations)?;
    }

    #[test]
    fn manifests(m in manifest(), suffix in vec(any::<u8>(), 0..16), mutations in vec(mutation(), 1..6)) {
        check_value(&m, &suffix, &mutations)?;
    }
}

#[test]
fn a_truncated_bin_length_does_not_allocate_or_panic() {
    // A Forward whose op claims 4 GiB: refused without trying to allocate it.
    let tx = SignedTx {
        client: PublicKey([1; 32]),
        ts: 1,
        op: vec![7; 4],
        sig: Signature([2; 64]),
    };
    let mut bytes = codec::encode(&ReplicaMessage::Forward(tx)).unwrap();
    let pos = bytes
        .windows(5)
        .position(|w| w == [0xc4, 4, 7, 7, 7])
        .expect("op is encoded as bin8");
    bytes.splice(pos..pos + 2, [0xc6, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        codec::decode::<ReplicaMessage>(&bytes, LIMIT),
        Err(CodecError::Malformed(_))
    ));
}
