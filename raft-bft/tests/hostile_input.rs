//! Bad input from the network or a client is refused with a typed error, never a panic.

use std::sync::Arc;

use raft_bft::codec::{self, CodecError};
use raft_bft::config::Params;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::{Cluster, Manifest, ReplicaInfo};
use raft_bft::message::{
    entry_hash, pre_append_digest, Certificate, Entry, Phase, PreAppend, ReplicaMessage, SignedTx,
    Vote, VoteSubject,
};
use raft_bft::types::{Digest, Index, ReplicaId, Signature, Term};
use raft_bft::verify::{CertificateError, Verifier, VerifyError};

fn cluster(name: &str) -> (Arc<Cluster>, Vec<KeyPair>) {
    let keys: Vec<KeyPair> = (0..4).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
    let manifest = Manifest {
        name: name.into(),
        replicas: keys
            .iter()
            .enumerate()
            .map(|(i, k)| ReplicaInfo {
                id: ReplicaId(i as u32),
                public_key: k.public(),
                address: String::new(),
            })
            .collect(),
        admin_keys: vec![],
        params: Params {
            max_batch_txs: 8,
            max_op_bytes: 1024,
            max_batch_bytes: 64 * 1024,
            max_message_bytes: 1 << 20,
            ..Params::default()
        },
    };
    (Arc::new(Cluster::new(manifest).unwrap()), keys)
}

fn client() -> KeyPair {
    KeyPair::from_seed([77; 32])
}

fn proposal(cluster: &Cluster, leader: &KeyPair, txs: Vec<SignedTx>) -> PreAppend {
    let cid = cluster.cluster_id();
    let entry = Entry {
        term: Term(0),
        index: Index(1),
        prev_hash: *cid,
        txs,
    };
    let ids: Vec<Digest> = entry.txs.iter().map(|t| t.id(cid)).collect();
    let hash = entry_hash(cid, Term(0), Index(1), cid, &ids);
    PreAppend {
        term: Term(0),
        leader_sig: leader.sign(&pre_append_digest(cid, Term(0), Index(1), &hash)),
        entry: entry.into(),
    }
}

fn vote(cluster: &Cluster, key: &KeyPair, id: u32, phase: Phase) -> Vote {
    let subject = VoteSubject {
        phase,
        term: Term(0),
        index: Index(1),
        entry_hash: Digest([3; 32]),
        state_digest: (phase == Phase::Commit).then_some(Digest([4; 32])),
    };
    Vote::sign(cluster.cluster_id(), key, ReplicaId(id), subject)
}

#[test]
fn forged_tx_signature() {
    let (c, _) = cluster("a");
    let mut v = Verifier::new(c.clone(), [0; 32]);
    let mut tx = SignedTx::sign(c.cluster_id(), &client(), 1, b"op".to_vec());
    tx.op = b"other".to_vec();
    let err = v.verify_tx(tx).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signature { what: "tx", .. }),
        "{err}"
    );
    assert_eq!(err.kind(), "bad-signature");
}

#[test]
fn replay_from_another_cluster_is_refused() {
    // Same keys, another manifest: every signature binds the cluster id.
    let (a, keys) = cluster("a");
    let (b, _) = cluster("b");
    let mut vb = Verifier::new(b.clone(), [0; 32]);
    let tx = SignedTx::sign(a.cluster_id(), &client(), 1, b"op".to_vec());
    assert!(matches!(
        vb.verify_tx(tx.clone()),
        Err(VerifyError::Signature { .. })
    ));
    let v = vote(&a, &keys[1], 1, Phase::PreAppend);
    assert!(matches!(
        vb.verify_message(ReplicaId(1), ReplicaMessage::Vote(v)),
        Err(VerifyError::Signature { what: "vote", .. })
    ));
    let p = proposal(&a, &keys[0], vec![tx]);
    let err = vb
        .verify_message(ReplicaId(0), ReplicaMessage::PreAppend(p))
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::EntryTx { .. } | VerifyError::Signature { .. }
        ),
        "{err}"
    );
}

#[test]
fn non_members_are_refused() {
    let (c, keys) = cluster("a");
    let mut v = Verifier::new(c.clone(), [0; 32]);
    let fetch = ReplicaMessage::FetchEntries {
        from: Index(1),
        to: Index(2),
    };
    assert_eq!(
        v.verify_message(ReplicaId(9), fetch).unwrap_err(),
        VerifyError::NonMember(ReplicaId(9))
    );
    // A vote claiming a non-member voter, sent by a member.
    let mut vt = vote(&c, &keys[1], 1, Phase::Append);
    vt.replica = ReplicaId(4);
    assert_eq!(
        v.verify_message(ReplicaId(1), ReplicaMessage::Vote(vt))
            .unwrap_err(),
        VerifyError::NonMember(ReplicaId(4))
    );
    // A member relaying another member's vote as its own is refused too.
    let vt = vote(&c, &keys[2], 2, Phase::Append);
    assert!(matches!(
        v.verify_message(ReplicaId(1), ReplicaMessage::Vote(vt)),
        Err(VerifyError::WrongSender { .. })
    ));
}

#[test]
fn short_or_forged_certificates_are_refused() {
    let (c, keys) = cluster("a");
    let mut v = Verifier::new(c.clone(), [0; 32]);
    let votes: Vec<Vote> = (0..3)
        .map(|i| vote(&c, &keys[i], i as u32, Phase::PreAppend))
        .collect();
    let cert = |sigs: Vec<(ReplicaId, Signature)>| Certificate {
        subject: votes[0].subject,
        sigs,
    };
    let short = cert(votes[..2].iter().map(|v| (v.replica, v.sig)).collect());
    let err = v
        .verify_message(ReplicaId(0), ReplicaMessage::Append(short))
        .unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Certificate(CertificateError::TooFewSignatures { got: 2, quorum: 3 })
    ));
    let mut dup: Vec<_> = votes.iter().map(|v| (v.replica, v.sig)).collect();
    dup.push(dup[0]);
    let err = v
        .verify_message(ReplicaId(0), ReplicaMessage::Append(cert(dup)))
        .unwrap_err();
    assert_eq!(err.kind(), "bad-certificate");
    // A PC passed off as a CC.
    let pc = cert(votes.iter().map(|v| (v.replica, v.sig)).collect());
    let err = v
        .verify_message(ReplicaId(0), ReplicaMessage::Commit(pc))
        .unwrap_err();
    assert!(matches!(
        err,
        VerifyError::Certificate(CertificateError::WrongPhase { .. })
    ));
}

#[test]
fn oversized_input_is_refused_before_work() {
    let (c, keys) = cluster("a");
    let mut v = Verifier::new(c.clone(), [0; 32]);
    // An op above max_op_bytes.
    let tx = SignedTx::sign(c.cluster_id(), &client(), 1, vec![0; 2000]);
    assert!(matches!(
        v.verify_tx(tx),
        Err(VerifyError::TooLarge { what: "op", .. })
    ));
    // More txs than max_batch_txs in one entry.
    let txs = (1..=9)
        .map(|ts| SignedTx::sign(c.cluster_id(), &client(), ts, vec![1]))
        .collect();
    let p = proposal(&c, &keys[0], txs);
    assert!(matches!(
        v.verify_message(ReplicaId(0), ReplicaMessage::PreAppend(p)),
        Err(VerifyError::TooLarge {
            what: "batch tx count",
            ..
        })
    ));
    // A message above max_message_bytes is not decoded at all.
    let huge = vec![0u8; (c.params().max_message_bytes + 1) as usize];
    let err =
        codec::decode::<ReplicaMessage>(&huge, c.params().max_message_bytes as usize).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge { .. }));
}

#[test]
fn malformed_messages_are_refused() {
    let (c, keys) = cluster("a");
    let mut v = Verifier::new(c.clone(), [0; 32]);
    for bytes in [&b""[..], b"\xc1", b"\x92\x01", b"\xff\xff\xff"] {
        assert!(codec::decode::<ReplicaMessage>(bytes, 1024).is_err());
    }
    // A proposal from a replica that does not lead the term.
    let tx = SignedTx::sign(c.cluster_id(), &client(), 1, b"x".to_vec());
    let p = proposal(&c, &keys[0], vec![tx.clone()]);
    assert!(matches!(
        v.verify_message(ReplicaId(2), ReplicaMessage::PreAppend(p.clone())),
        Err(VerifyError::WrongSender { .. })
    ));
    // A leader signature over another entry.
    let mut q = p.clone();
    std::sync::Arc::make_mut(&mut q.entry).prev_hash = Digest([1; 32]);
    assert!(matches!(
        v.verify_message(ReplicaId(0), ReplicaMessage::PreAppend(q)),
        Err(VerifyError::Signature {
            what: "leader signature",
            ..
        })
    ));
    // The same tx twice in one entry.
    let p = proposal(&c, &keys[0], vec![tx.clone(), tx]);
    assert!(matches!(
        v.verify_message(ReplicaId(0), ReplicaMessage::PreAppend(p)),
        Err(VerifyError::Malformed { .. })
    ));
    // An empty fetch range.
    let err = v
        .verify_message(
            ReplicaId(1),
            ReplicaMessage::FetchEntries {
                from: Index(5),
                to: Index(2),
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), "malformed");
    // A vote whose state digest does not fit its phase.
    let mut vt = vote(&c, &keys[1], 1, Phase::Append);
    vt.subject.state_digest = Some(Digest::ZERO);
    assert!(matches!(
        v.verify_message(ReplicaId(1), ReplicaMessage::Vote(vt)),
        Err(VerifyError::Malformed { .. })
    ));
}
