//! Writes the seed inputs of every fuzz target under `seeds/<target>/` (or under the folder
//! given as the only argument): valid, signed encodings for the fixed fuzz cluster, so that the
//! fuzzers start from real structure. Every replica message and reply is checked to pass the
//! verifier before it is written.
//!
//! Run from `fuzz/`: `cargo run --release --bin seed_corpus` (see README.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft_bft::choice;
use raft_bft::codec;
use raft_bft::merkle::{self, MerkleTree};
use raft_bft::message::{
    entry_hash, pre_append_digest, reply_batch_digest, reply_leaf, Certificate, CheckpointChunk,
    Entry, EntryHeader, EquivocationProof, Heartbeat, NewTerm, Outcome, Phase, PreAppend,
    PreparedEntry, Rejection, ReplicaMessage, Reply, SignedTx, TermChange, Vote, VoteSubject,
};
use raft_bft::types::{ClientId, Digest, Index, ReplicaId, Term};
use raft_bft_fuzz::{fixture, frame_control_bytes, sender_byte, Fixture, SUBSCRIPTION_DIGEST};
use raft_bft_net::frame::encode_frame;
use raft_bft_net::wire::{ClientRequest, ClientResponse, Refusal, StatusReport};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let folder = dir.join(target);
    fs::create_dir_all(&folder).expect("create the seed folder");
    fs::write(folder.join(name), bytes).expect("write a seed");
    println!("{target}/{name}: {} bytes", bytes.len());
}

/// A certificate on `subject` signed by replicas 0, 1 and 2 (a quorum of the 4).
fn certificate(fx: &Fixture, subject: VoteSubject) -> Certificate {
    let cid = fx.cluster.cluster_id();
    Certificate {
        sigs: (0..3u32)
            .map(|r| {
                let key = &fx.keys[r as usize];
                (ReplicaId(r), key.sign(&subject.signing_digest(cid)))
            })
            .collect(),
        subject,
    }
}

fn subject(phase: Phase, index: Index, hash: Digest) -> VoteSubject {
    VoteSubject {
        phase,
        term: Term(1),
        index,
        entry_hash: hash,
        state_digest: (phase == Phase::Commit).then_some(Digest([0x5d; 32])),
    }
}

/// The reply replica `replica` sends for the leaf at `position` of a batch of `count` replies.
fn reply(
    fx: &Fixture,
    replica: u32,
    client: ClientId,
    ts: u64,
    outcome: Outcome,
    count: usize,
) -> Reply {
    let cid = fx.cluster.cluster_id();
    let position = count / 2;
    let mut leaves: Vec<Digest> = (0..count)
        .map(|i| {
            let other = raft_bft::crypto::KeyPair::from_seed([100 + i as u8; 32]).public();
            reply_leaf(cid, &other, 1, &outcome)
        })
        .collect();
    leaves[position] = reply_leaf(cid, &client, ts, &outcome);
    let tree = MerkleTree::new(cid, &leaves);
    let root = tree.root(cid);
    Reply {
        client,
        ts,
        outcome,
        replica: ReplicaId(replica),
        proof: tree.proof(position).expect("a proof of a leaf in range"),
        sig: fx.keys[replica as usize].sign(&reply_batch_digest(cid, ReplicaId(replica), &root)),
    }
}

fn main() {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let fx = fixture();
    let cid = *fx.cluster.cluster_id();
    let params = fx.params();
    let client = raft_bft::crypto::KeyPair::from_seed([9; 32]);

    // One tx, in one entry at index 1 proposed in term 1 (whose leader is replica 1).
    let tx = SignedTx::sign(&cid, &client, 1, b"increment".to_vec());
    let entry = Arc::new(Entry {
        term: Term(1),
        index: Index(1),
        prev_hash: cid,
        txs: vec![tx.clone()],
    });
    let tx_ids = [tx.id(&cid)];
    let hash = entry_hash(&cid, Term(1), Index(1), &cid, &tx_ids);
    let leader = ReplicaId(1);
    let leader_key = &fx.keys[1];
    let pre_append = PreAppend {
        term: Term(1),
        entry: entry.clone(),
        leader_sig: leader_key.sign(&pre_append_digest(&cid, Term(1), Index(1), &hash)),
    };
    let pc = certificate(fx, subject(Phase::PreAppend, Index(1), hash));
    let cc = certificate(fx, subject(Phase::Append, Index(1), hash));
    let ec = certificate(fx, subject(Phase::Commit, Index(1), hash));
    let vote = Vote::sign(
        &cid,
        &fx.keys[2],
        ReplicaId(2),
        subject(Phase::PreAppend, Index(1), hash),
    );
    let header = EntryHeader {
        term: Term(1),
        index: Index(1),
        prev_hash: cid,
        tx_root: merkle::root(&cid, &tx_ids),
    };
    assert_eq!(header.hash(&cid), hash);
    let prepared = PreparedEntry {
        certificate: pc.clone(),
        header,
    };
    // Replicas 0..=2 leave term 1 for term 2 (whose leader is replica 2), each with the PC.
    let term_changes: Vec<TermChange> = (0..3u32)
        .map(|r| {
            TermChange::sign(
                &cid,
                &fx.keys[r as usize],
                ReplicaId(r),
                Term(2),
                None,
                vec![prepared.clone()],
            )
        })
        .collect();
    let chosen = choice::choose(&cid, fx.cluster.quorum(), Term(2), &term_changes)
        .expect("a quorum of term changes chooses a log")
        .list();
    assert_eq!(chosen, vec![(Index(1), hash)]);
    let new_term = NewTerm::sign(&cid, &fx.keys[2], Term(2), term_changes.clone(), chosen);
    let other_hash = Digest([0xee; 32]);
    let equivocation = EquivocationProof {
        term: Term(1),
        index: Index(1),
        first: (hash, pre_append.leader_sig),
        second: (
            other_hash,
            leader_key.sign(&pre_append_digest(&cid, Term(1), Index(1), &other_hash)),
        ),
    };
    // Checkpoints are every 128 entries: an EC at index 128 proves a checkpoint's state.
    let state = b"checkpointed state".to_vec();
    let checkpoint = CheckpointChunk {
        certificate: certificate(fx, subject(Phase::Commit, Index(128), Digest([0x12; 32]))),
        total: state.len() as u64,
        offset: 0,
        data: state,
    };

    let messages: Vec<(&str, ReplicaId, ReplicaMessage)> = vec![
        (
            "pre_append",
            leader,
            ReplicaMessage::PreAppend(pre_append.clone()),
        ),
        ("vote", ReplicaId(2), ReplicaMessage::Vote(vote.clone())),
        ("append", leader, ReplicaMessage::Append(pc.clone())),
        ("commit", leader, ReplicaMessage::Commit(cc.clone())),
        ("executed", leader, ReplicaMessage::Executed(ec.clone())),
        ("forward", ReplicaId(3), ReplicaMessage::Forward(tx.clone())),
        (
            "heartbeat",
            leader,
            ReplicaMessage::Heartbeat(Heartbeat::sign(&cid, leader_key, Term(1), Some(cc.clone()))),
        ),
        (
            "term_change",
            ReplicaId(0),
            ReplicaMessage::TermChange(term_changes[0].clone()),
        ),
        (
            "new_term",
            ReplicaId(3),
            ReplicaMessage::NewTerm(Arc::new(new_term)),
        ),
        (
            "fetch_chosen",
            ReplicaId(2),
            ReplicaMessage::FetchChosen {
                index: Index(1),
                hash,
            },
        ),
        (
            "chosen_entry",
            ReplicaId(0),
            ReplicaMessage::ChosenEntry(entry.clone()),
        ),
        (
            "equivocation",
            ReplicaId(3),
            ReplicaMessage::Equivocation(equivocation),
        ),
        (
            "fetch_entries",
            ReplicaId(3),
            ReplicaMessage::FetchEntries {
                from: Index(1),
                to: Index(1),
            },
        ),
        (
            "entries",
            ReplicaId(0),
            ReplicaMessage::Entries {
                entries: vec![entry.clone()],
                certificate: cc.clone(),
            },
        ),
        (
            "fetch_checkpoint",
            ReplicaId(3),
            ReplicaMessage::FetchCheckpoint {
                above: Index(0),
                index: Index(0),
                offset: 0,
            },
        ),
        (
            "checkpoint_chunk",
            ReplicaId(0),
            ReplicaMessage::CheckpointChunk(checkpoint),
        ),
        ("fetch_status", ReplicaId(3), ReplicaMessage::FetchStatus),
        ("fetch_new_term", ReplicaId(0), ReplicaMessage::FetchNewTerm),
        ("status", ReplicaId(0), ReplicaMessage::Status(cc.clone())),
    ];
    for (name, from, msg) in &messages {
        let bytes = codec::encode(msg).expect("encode a replica message");
        let decoded = raft_bft_net::wire::decode_replica_message(&bytes, params).expect("decodes");
        if let Err(e) = fx.verifier().verify_message(*from, decoded) {
            panic!("seed {name} does not verify: {e}");
        }
        let mut seed = vec![sender_byte(*from)];
        seed.extend_from_slice(&bytes);
        write(&dir, "replica_message", name, &seed);
    }

    let requests = [
        ("submit", ClientRequest::Submit(tx.clone())),
        (
            "submit_empty_op",
            ClientRequest::Submit(SignedTx::sign(&cid, &client, 2, Vec::new())),
        ),
        (
            "subscribe",
            ClientRequest::Subscribe {
                client: client.public(),
                sig: client.sign(&SUBSCRIPTION_DIGEST),
            },
        ),
        ("status", ClientRequest::Status { id: 7 }),
    ];
    for (name, req) in &requests {
        match req {
            ClientRequest::Submit(tx) => {
                fx.verifier()
                    .verify_tx(tx.clone())
                    .expect("the seed tx verifies");
            }
            ClientRequest::Subscribe { client, sig } => {
                raft_bft::crypto::verify(client, &SUBSCRIPTION_DIGEST, sig)
                    .expect("the seed subscription verifies");
            }
            ClientRequest::Status { .. } => {}
        }
        write(
            &dir,
            "client_request",
            name,
            &codec::encode(req).expect("encode a request"),
        );
    }

    let executed = reply(
        fx,
        0,
        client.public(),
        1,
        Outcome::Executed {
            index: Index(1),
            result: 1u64.to_le_bytes().to_vec(),
        },
        3,
    );
    let rejected = reply(
        fx,
        3,
        client.public(),
        1,
        Outcome::Rejected(Rejection::Refused("no such key".into())),
        1,
    );
    let responses = [
        ("reply_executed", ClientResponse::Reply(executed.clone())),
        ("reply_rejected", ClientResponse::Reply(rejected)),
        (
            "status",
            ClientResponse::Status {
                id: 7,
                report: StatusReport {
                    replica: ReplicaId(1),
                    term: Term(1),
                    leader,
                    changing_term: false,
                    commit_index: Index(1),
                    applied_index: Index(1),
                    last_index: Index(1),
                    checkpoint_index: Index(0),
                    rebuilding: false,
                },
            },
        ),
        (
            "refused",
            ClientResponse::Refused {
                client: client.public(),
                ts: 2,
                reason: Refusal::RateLimited,
            },
        ),
    ];
    for (name, resp) in &responses {
        if let ClientResponse::Reply(r) = resp {
            fx.verifier()
                .verify_reply(r)
                .expect("the seed reply verifies");
        }
        write(
            &dir,
            "client_response",
            name,
            &codec::encode(resp).expect("encode a response"),
        );
    }

    // Framed streams: a client connection's requests, a replica link's messages, an empty frame.
    let mut stream = Vec::new();
    for (_, req) in &requests {
        encode_frame(&codec::encode(req).expect("encode"), &mut stream);
    }
    // Limit byte 0x40 | 63: 4096 bytes; chunks of 1, 3 and 7 bytes.
    let mut seed = frame_control_bytes(0x7f, &[1, 3, 7]);
    seed.extend_from_slice(&stream);
    write(&dir, "frames", "client_stream", &seed);

    let mut stream = Vec::new();
    for name in ["vote", "heartbeat", "fetch_status"] {
        let (_, _, msg) = messages
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("a seed message");
        encode_frame(&codec::encode(msg).expect("encode"), &mut stream);
    }
    encode_frame(&[], &mut stream);
    // Limit byte 0x80 | 63: 16 MiB (the replica links' default); the whole stream at once.
    let mut seed = frame_control_bytes(0xbf, &[]);
    seed.extend_from_slice(&stream);
    write(&dir, "frames", "replica_stream", &seed);

    // A header above a 32-byte limit after one small frame, in chunks of 2 and 0 bytes.
    let mut stream = Vec::new();
    encode_frame(b"ok", &mut stream);
    encode_frame(&[0xab; 40], &mut stream);
    let mut seed = frame_control_bytes(32, &[2, 0]);
    seed.extend_from_slice(&stream);
    write(&dir, "frames", "too_large", &seed);
}
