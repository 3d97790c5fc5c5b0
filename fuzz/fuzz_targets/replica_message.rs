//! Replica-to-replica messages: `raft_bft_net::wire::decode_replica_message`, then the
//! verifier (`Verifier::verify_message`) of a fixed 4-replica cluster.
//!
//! Input: one byte naming the authenticated sender (`raft_bft_fuzz::sender_of`), then the
//! message bytes as one frame carries them. Nothing may panic; a decoded message must encode
//! and decode back to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_bft::codec;
use raft_bft::message::ReplicaMessage;
use raft_bft_fuzz::{fixture, sender_of};
use raft_bft_net::wire::decode_replica_message;

fuzz_target!(|data: &[u8]| {
    let Some((&sender, bytes)) = data.split_first() else {
        return;
    };
    let fx = fixture();
    let Ok(msg) = decode_replica_message(bytes, fx.params()) else {
        return;
    };
    let encoded = codec::encode(&msg).expect("a decoded message encodes");
    // No size limit here: a re-encoding may be a few bytes longer than the input (variant
    // names instead of indices), which is not what this checks.
    let again: ReplicaMessage = codec::decode(&encoded, usize::MAX).expect("its encoding decodes");
    assert_eq!(again, msg, "encode/decode round trip changed the message");

    let mut verifier = fx.verifier();
    let _ = verifier.verify_message(sender_of(sender), msg);
});
