//! Unit tests of checkpoints, state transfer and rebuilding, driving replicas by hand.

use super::tests::{persist_all, subject, votes_in, Fixture};
use super::*;
use crate::checkpoint::Checkpoint;
use crate::config::Params;
use crate::message::CheckpointChunk;
use crate::testing::Recorder;

/// Checkpoints every 2 entries; chunks of `chunk` bytes.
fn fixture(chunk: u64) -> Fixture {
    Fixture::with_params(
        4,
        Params {
            checkpoint_interval: 2,
            pipeline_depth: 1,
            checkpoint_chunk_bytes: chunk,
            ..Params::default()
        },
    )
}

/// Replica 1 accepts and commits `count` entries of leader 0 (one tx each); returns it, its disk
/// and the entry hashes.
fn committed_follower(
    fx: &mut Fixture,
    count: u64,
) -> (Replica<Recorder>, DurableState, Vec<Digest>) {
    let mut r = fx.replica(1, DurableState::default());
    let mut disk = DurableState::default();
    let mut prev = fx.cid();
    let mut hashes = Vec::new();
    for i in 1..=count {
        let p = fx.pre_append(Term(0), i, prev, vec![fx.signed(1, i, b"op")]);
        let ids: Vec<Digest> = p.entry.txs.iter().map(|t| t.id(&fx.cid())).collect();
        let hash = crate::message::entry_hash(&fx.cid(), Term(0), Index(i), &prev, &ids);
        let cc = fx.certificate(subject(Phase::Append, i, hash, None), &[0, 2, 3]);
        for m in [ReplicaMessage::PreAppend(p), ReplicaMessage::Commit(cc)] {
            let m = fx.wire(0, &m);
            r.on_message(Time(1), ReplicaId(0), m);
            let ready = r.ready();
            persist_all(&mut r, &ready, &mut disk);
        }
        hashes.push(hash);
        prev = hash;
    }
    (r, disk, hashes)
}

/// The execution certificate at `index` for the digest `r` reached there.
fn ec_of(fx: &Fixture, r: &Replica<Recorder>, index: u64, hash: Digest) -> Certificate {
    let digest = r.state_digest_at(Index(index)).expect("executed");
    fx.certificate(
        subject(Phase::Commit, index, hash, Some(digest)),
        &[0, 2, 3],
    )
}

/// A replica with a stable checkpoint at index 2 (and entries 3 and 4 above it).
fn source(fx: &mut Fixture) -> (Replica<Recorder>, DurableState, Arc<Checkpoint>) {
    let (mut r, mut disk, hashes) = committed_follower(fx, 4);
    let ec = ec_of(fx, &r, 2, hashes[1]);
    let m = fx.wire(0, &ReplicaMessage::Executed(ec));
    r.on_message(Time(2), ReplicaId(0), m);
    let ready = r.ready();
    persist_all(&mut r, &ready, &mut disk);
    let cp = r
        .stable_checkpoint()
        .cloned()
        .expect("checkpoint 2 is stable");
    (r, disk, cp)
}

fn chunks(fx: &Fixture, cp: &Checkpoint) -> Vec<ReplicaMessage> {
    let size = fx.cluster.params().checkpoint_chunk() as usize;
    cp.state
        .chunks(size)
        .enumerate()
        .map(|(i, data)| {
            ReplicaMessage::CheckpointChunk(CheckpointChunk {
                certificate: cp.certificate.clone(),
                total: cp.state.len() as u64,
                offset: (i * size) as u64,
                data: data.to_vec(),
            })
        })
        .collect()
}

fn commit_certificate(fx: &Fixture, src: &Replica<Recorder>, index: u64) -> Certificate {
    let hash = src.entry_hash(Index(index)).expect("held");
    fx.certificate(subject(Phase::Append, index, hash, None), &[0, 1, 2])
}

fn refused(r: &Replica<Recorder>, reason: &str) -> u64 {
    r.metrics().refused.get(reason).copied().unwrap_or(0)
}

#[test]
fn a_stable_checkpoint_compacts_the_log_and_the_disk() {
    let mut fx = fixture(1 << 20);
    let (r, disk, cp) = source(&mut fx);
    assert_eq!(r.checkpoint_index(), Index(2));
    assert_eq!(r.log_len(), 2, "entries 3 and 4 remain");
    assert_eq!(
        r.entry_hash(Index(2)),
        Some(cp.entry_hash()),
        "the base keeps its hash"
    );
    assert!(r.entry(Index(1)).is_none() && r.entry(Index(2)).is_none());
    assert!(r.votes_len() > 0 && r.votes_len() <= 2 * 3);
    assert_eq!(disk.checkpoint.as_deref(), Some(&*cp));
    assert_eq!(disk.compacted_below, Index(3));
    assert_eq!(
        disk.entries.keys().copied().collect::<Vec<_>>(),
        [Index(3), Index(4)]
    );
    assert!(disk.votes.keys().all(|(_, _, i)| *i > Index(2)));
    assert!(disk.certificates.keys().all(|(_, i)| *i > Index(2)));
}

#[test]
fn a_replica_restarts_from_its_checkpoint_and_the_log_above_it() {
    let mut fx = fixture(1 << 20);
    let (r, disk, _) = source(&mut fx);
    let restarted = fx.replica(1, disk.clone());
    assert_eq!(restarted.checkpoint_index(), Index(2));
    assert_eq!(
        restarted.applied_index(),
        Index(4),
        "entries 3 and 4 replayed"
    );
    assert_eq!(restarted.state_digest(), r.state_digest());
    assert_eq!(restarted.app().0, r.app().0);
    // A checkpoint whose state does not hash to its certificate's digest is refused.
    let mut bad = disk.clone();
    let cp = bad.checkpoint.take().expect("a checkpoint");
    let mut damaged = (*cp).clone();
    let last = damaged.state.len() - 1;
    damaged.state[last] ^= 1;
    bad.checkpoint = Some(Arc::new(damaged));
    let err = Replica::new(
        fx.cluster.clone(),
        ReplicaId(1),
        fx.keys[1].clone(),
        Recorder::default(),
        bad,
        Time(0),
    )
    .err()
    .expect("refused");
    assert!(matches!(err, ReplicaError::BadCheckpoint { .. }), "{err}");
    // A compacted log without its checkpoint is refused too.
    let mut lost = disk;
    lost.checkpoint = None;
    assert!(Replica::new(
        fx.cluster.clone(),
        ReplicaId(1),
        fx.keys[1].clone(),
        Recorder::default(),
        lost,
        Time(0),
    )
    .is_err());
}

/// A peer's checkpoint is taken only if the restored state hashes to the digest its execution
/// certificate proves; a peer that served a bad one is left for another, whose good one installs.
#[test]
fn a_transferred_checkpoint_installs_only_if_its_digest_matches() {
    let mut fx = fixture(1 << 20);
    let (src, _, cp) = source(&mut fx);
    let mut behind = fx.replica(3, DurableState::default());
    let mut disk = DurableState::default();
    // Told that entry 4 committed, it asks the leader (replica 0) for the entries.
    let cc4 = commit_certificate(&fx, &src, 4);
    let m = fx.wire(0, &ReplicaMessage::Commit(cc4.clone()));
    behind.on_message(Time(4), ReplicaId(0), m);
    let ready = behind.ready();
    assert!(ready
        .messages
        .iter()
        .any(|m| m.to == Target::Replica(ReplicaId(0))
            && matches!(m.message, ReplicaMessage::FetchEntries { .. })));
    persist_all(&mut behind, &ready, &mut disk);
    // A peer that was not asked cannot start a transfer.
    for m in chunks(&fx, &cp) {
        let m = fx.wire(2, &m);
        behind.on_message(Time(5), ReplicaId(2), m);
    }
    assert_eq!(refused(&behind, "checkpoint chunk out of turn"), 1);
    // Replica 0 compacted them, and answers with its checkpoint, one byte of the application
    // state changed.
    let mut damaged = (*cp).clone();
    let last = damaged.state.len() - 1;
    damaged.state[last] ^= 0x20;
    for m in chunks(&fx, &damaged) {
        let m = fx.wire(0, &m);
        behind.on_message(Time(5), ReplicaId(0), m);
    }
    assert_eq!(
        refused(&behind, "a peer's checkpoint failed verification"),
        1
    );
    assert_eq!(behind.metrics().state_transfers, 0);
    assert!(
        behind.app().0.is_empty(),
        "the refused state was taken back"
    );
    assert_eq!(behind.applied_index(), Index(0));
    assert_eq!(behind.checkpoint_index(), Index(0));
    let ready = behind.ready();
    assert!(
        ready.persist.as_ref().is_none_or(|b| !b
            .ops
            .iter()
            .any(|op| matches!(op, PersistOp::Checkpoint(_)))),
        "nothing of the bad checkpoint is persisted"
    );
    let asked: Vec<ReplicaId> = ready
        .messages
        .iter()
        .filter(|m| matches!(m.message, ReplicaMessage::FetchCheckpoint { .. }))
        .filter_map(|m| match m.to {
            Target::Replica(r) => Some(r),
            Target::AllOthers => None,
        })
        .collect();
    assert_eq!(asked, [ReplicaId(1)], "the next peer is asked");
    persist_all(&mut behind, &ready, &mut disk);
    // The genuine checkpoint, from replica 1.
    for m in chunks(&fx, &cp) {
        let m = fx.wire(1, &m);
        behind.on_message(Time(6), ReplicaId(1), m);
    }
    assert_eq!(behind.metrics().state_transfers, 1);
    assert_eq!(behind.checkpoint_index(), Index(2));
    assert_eq!(behind.applied_index(), Index(2));
    assert_eq!(
        Some(behind.state_digest()),
        cp.certificate.subject.state_digest
    );
    assert_eq!(behind.app().0, vec![b"op".to_vec(); 2]);
    let ready = behind.ready();
    persist_all(&mut behind, &ready, &mut disk);
    assert_eq!(disk.checkpoint.as_deref(), Some(&*cp), "persisted");
    // It then fetches the entries above the checkpoint.
    behind.on_tick(Time(1_000_000));
    let ready = behind.ready();
    assert!(
        ready.messages.iter().any(|m| matches!(
            m.message,
            ReplicaMessage::FetchEntries {
                from: Index(3),
                to: Index(4)
            }
        )),
        "{:?}",
        ready.messages
    );
}

/// Chunks are taken in order from the peer that started the transfer; a chunk out of turn, or
/// from another peer, is refused and changes nothing.
#[test]
fn chunks_are_taken_in_order_from_one_peer() {
    let mut fx = fixture(64);
    let (_, _, cp) = source(&mut fx);
    let parts = chunks(&fx, &cp);
    assert!(
        parts.len() >= 3,
        "a multi-chunk checkpoint ({} chunks)",
        parts.len()
    );
    let (src, _, _) = source(&mut fx);
    let mut behind = fx.replica(3, DurableState::default());
    let cc4 = commit_certificate(&fx, &src, 4);
    let m = fx.wire(0, &ReplicaMessage::Commit(cc4));
    behind.on_message(Time(4), ReplicaId(0), m); // it asks replica 0 for the entries
    let deliver =
        |fx: &mut Fixture, behind: &mut Replica<Recorder>, from: u32, m: &ReplicaMessage| {
            let m = fx.wire(from, m);
            behind.on_message(Time(5), ReplicaId(from), m);
        };
    deliver(&mut fx, &mut behind, 0, &parts[1]); // not the first chunk
    deliver(&mut fx, &mut behind, 0, &parts[0]);
    deliver(&mut fx, &mut behind, 2, &parts[1]); // another peer
    deliver(&mut fx, &mut behind, 0, &parts[2]); // a gap
    assert_eq!(refused(&behind, "checkpoint chunk out of turn"), 3);
    for m in &parts[1..] {
        deliver(&mut fx, &mut behind, 0, m);
    }
    assert_eq!(behind.checkpoint_index(), Index(2));
    assert_eq!(behind.metrics().state_transfers, 1);
    // Once installed, the same checkpoint is no news.
    deliver(&mut fx, &mut behind, 2, &parts[0]);
    assert_eq!(
        refused(&behind, "stale checkpoint, at or below the log's base"),
        1
    );
}

/// A replica that lost its disk votes for nothing until its stable checkpoint passes the highest
/// commit index that a quorum of its peers proved, plus the most a replica holds above its
/// checkpoint; the floor is persisted before anything else.
#[test]
fn a_rebuilt_replica_does_not_vote_below_its_floor() {
    let mut fx = fixture(1 << 20);
    let (src, _, _) = source(&mut fx);
    let mut r = Replica::rebuild(
        fx.cluster.clone(),
        ReplicaId(3),
        fx.keys[3].clone(),
        Recorder::default(),
        Time(0),
    )
    .unwrap();
    assert!(r.is_rebuilding());
    let mut disk = DurableState::default();
    r.on_tick(Time(100_000));
    let ready = r.ready();
    let first = ready.persist.as_ref().expect("the floor is persisted");
    assert_eq!(first.ops[0], PersistOp::VoteFloor(Index(u64::MAX)));
    assert!(ready
        .messages
        .iter()
        .all(|m| matches!(m.message, ReplicaMessage::FetchStatus)));
    persist_all(&mut r, &ready, &mut disk);
    // A proposal for index 1 gets no vote.
    let p = fx.pre_append(Term(0), 1, fx.cid(), vec![fx.signed(9, 1, b"x")]);
    let m = fx.wire(0, &ReplicaMessage::PreAppend(p));
    r.on_message(Time(100_001), ReplicaId(0), m);
    let ready = r.ready();
    assert!(votes_in(&ready).is_empty());
    persist_all(&mut r, &ready, &mut disk);
    // Three peers prove how far they committed (4 is the highest).
    let cc4 = commit_certificate(&fx, &src, 4);
    for peer in [0u32, 1, 2] {
        let m = fx.wire(peer, &ReplicaMessage::Status(cc4.clone()));
        r.on_message(Time(100_002), ReplicaId(peer), m);
    }
    let ready = r.ready();
    let floor = 4 + fx.cluster.params().max_log_entries();
    assert!(ready
        .persist
        .as_ref()
        .expect("the known floor is persisted")
        .ops
        .contains(&PersistOp::VoteFloor(Index(floor))));
    assert!(r.is_rebuilding());
    assert!(votes_in(&ready).is_empty());
    persist_all(&mut r, &ready, &mut disk);
    // A restart keeps the floor.
    let restarted = fx.replica(3, disk);
    assert!(restarted.is_rebuilding());
}

/// A checkpoint whose EC disagrees with the state this replica reached there never becomes
/// stable: nothing is compacted or persisted, and the replica reports the divergence.
#[test]
fn a_checkpoint_whose_certificate_disagrees_is_not_made_stable() {
    let mut fx = fixture(1 << 20);
    let (mut r, mut disk, hashes) = committed_follower(&mut fx, 2);
    let wrong = fx.certificate(
        subject(Phase::Commit, 2, hashes[1], Some(Digest([9; 32]))),
        &[0, 2, 3],
    );
    let m = fx.wire(0, &ReplicaMessage::Executed(wrong));
    r.on_message(Time(2), ReplicaId(0), m);
    let ready = r.ready();
    let persisted_checkpoint = ready.persist.as_ref().is_some_and(|b| {
        b.ops
            .iter()
            .any(|op| matches!(op, PersistOp::Checkpoint(_)))
    });
    persist_all(&mut r, &ready, &mut disk);
    assert!(!persisted_checkpoint);
    assert_eq!(r.checkpoint_index(), Index(0));
    assert_eq!(r.log_len(), 2);
    assert!(disk.checkpoint.is_none());
    assert!(r.divergence().is_some());
    assert_eq!(r.metrics().divergences, 1);
}

/// The client table is part of what an execution certificate proves at a checkpoint: a peer
/// that serves the right application state with a forged table (a lower `ts`, which would let a
/// replayed tx execute twice) is refused.
#[test]
fn a_checkpoint_with_a_forged_client_table_is_refused() {
    let mut fx = fixture(1 << 20);
    let (src, _, cp) = source(&mut fx);
    let mut state: crate::checkpoint::CheckpointState =
        crate::codec::decode(&cp.state, cp.state.len()).unwrap();
    assert!(!state.clients.is_empty());
    state.clients[0].last_ts -= 1;
    let forged = Checkpoint {
        certificate: cp.certificate.clone(),
        state: crate::codec::encode(&state).unwrap(),
    };
    let mut behind = fx.replica(3, DurableState::default());
    let cc4 = commit_certificate(&fx, &src, 4);
    let m = fx.wire(0, &ReplicaMessage::Commit(cc4));
    behind.on_message(Time(4), ReplicaId(0), m); // it asks replica 0 for the entries
    for m in chunks(&fx, &forged) {
        let m = fx.wire(0, &m);
        behind.on_message(Time(5), ReplicaId(0), m);
    }
    assert_eq!(
        refused(&behind, "a peer's checkpoint failed verification"),
        1
    );
    assert_eq!(behind.checkpoint_index(), Index(0));
}

/// A chunk's certificate must be a valid execution certificate: too few signers, signatures
/// over another digest, or another phase are refused by the verifier.
#[test]
fn a_chunk_needs_a_valid_execution_certificate() {
    let mut fx = fixture(1 << 20);
    let (_, _, cp) = source(&mut fx);
    let chunk = |certificate: Certificate| {
        ReplicaMessage::CheckpointChunk(CheckpointChunk {
            certificate,
            total: cp.state.len() as u64,
            offset: 0,
            data: cp.state.clone(),
        })
    };
    assert!(fx.verify(0, &chunk(cp.certificate.clone())).is_ok());
    let mut short = cp.certificate.clone();
    short.sigs.truncate(2);
    let mut other_digest = cp.certificate.clone();
    other_digest.subject.state_digest = Some(Digest([4; 32]));
    let prepared = fx.certificate(
        subject(Phase::PreAppend, 2, cp.entry_hash(), None),
        &[0, 2, 3],
    );
    for bad in [short, other_digest, prepared] {
        assert!(
            matches!(
                fx.verify(0, &chunk(bad)),
                Err(crate::verify::VerifyError::Certificate(_))
            ),
            "refused as a bad certificate"
        );
    }
}

/// A peer cannot stretch a transfer: a chunk short of the chunk size (and not the last) is
/// refused, and a peer that stops sending is left for the next one after the transfer timeout.
#[test]
fn a_peer_cannot_trickle_or_stall_a_transfer() {
    let mut fx = fixture(64);
    let (src, _, cp) = source(&mut fx);
    let parts = chunks(&fx, &cp);
    let mut behind = fx.replica(3, DurableState::default());
    let cc4 = commit_certificate(&fx, &src, 4);
    let m = fx.wire(0, &ReplicaMessage::Commit(cc4));
    behind.on_message(Time(4), ReplicaId(0), m); // it asks replica 0 for the entries
    let ReplicaMessage::CheckpointChunk(mut short) = parts[0].clone() else {
        unreachable!()
    };
    short.data.truncate(1);
    let m = fx.wire(0, &ReplicaMessage::CheckpointChunk(short));
    behind.on_message(Time(5), ReplicaId(0), m);
    assert_eq!(refused(&behind, "checkpoint chunk out of turn"), 1);
    // The first chunk, then silence: the transfer is left and the next peer asked.
    let m = fx.wire(0, &parts[0]);
    behind.on_message(Time(6), ReplicaId(0), m);
    let _ = behind.ready();
    let timeout = fx.cluster.params().heartbeat_interval * 4;
    behind.on_tick(Time(6).after(timeout));
    let ready = behind.ready();
    let asked: Vec<Target> = ready
        .messages
        .iter()
        .filter(|m| {
            matches!(
                m.message,
                ReplicaMessage::FetchCheckpoint {
                    index: Index(0),
                    offset: 0,
                    ..
                }
            )
        })
        .map(|m| m.to)
        .collect();
    assert_eq!(asked, [Target::Replica(ReplicaId(1))]);
}

/// A server answers at once only the exact continuation of what it last sent a peer; any other
/// request from that peer waits a heartbeat interval.
#[test]
fn chunks_are_served_at_once_only_as_the_exact_continuation() {
    let mut fx = fixture(64);
    let (mut server, _, cp) = source(&mut fx);
    let mut ask = |fx: &mut Fixture, offset: u64, at: u64| {
        let m = fx.wire(
            3,
            &ReplicaMessage::FetchCheckpoint {
                above: Index(0),
                index: cp.index(),
                offset,
            },
        );
        server.on_message(Time(at), ReplicaId(3), m);
        server
            .ready()
            .messages
            .iter()
            .filter(|m| matches!(m.message, ReplicaMessage::CheckpointChunk(_)))
            .count()
    };
    assert_eq!(ask(&mut fx, 0, 10), 1);
    assert_eq!(ask(&mut fx, 1, 11), 0, "not the continuation");
    assert_eq!(ask(&mut fx, 64, 12), 1, "the exact continuation");
    assert_eq!(ask(&mut fx, 64, 13), 0, "the same chunk again");
}
