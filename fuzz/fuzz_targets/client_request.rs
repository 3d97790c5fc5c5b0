//! What a replica reads from a client: `raft_bft_net::wire::decode_client_request`, then for a
//! submitted tx the verifier's `verify_txs`, and for a subscription the check of the client's
//! signature (`raft_bft::crypto::verify` with the key from the request, over a fixed digest
//! standing for the connection's: see `raft_bft_fuzz::SUBSCRIPTION_DIGEST`).
//!
//! Input: the request bytes as one frame carries them. Nothing may panic; a decoded request
//! must round-trip; the verifier gives one verdict, and a verified tx is the tx with its id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_bft::codec;
use raft_bft_fuzz::{fixture, SUBSCRIPTION_DIGEST};
use raft_bft_net::wire::{decode_client_request, ClientRequest};

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Ok(req) = decode_client_request(data, fx.params()) else {
        return;
    };
    let encoded = codec::encode(&req).expect("a decoded request encodes");
    let again: ClientRequest = codec::decode(&encoded, usize::MAX).expect("its encoding decodes");
    assert_eq!(again, req, "encode/decode round trip changed the request");

    match req {
        ClientRequest::Submit(tx) => {
            let mut verifier = fx.verifier();
            let mut verdicts = verifier.verify_txs(vec![tx.clone()]);
            assert_eq!(verdicts.len(), 1, "one verdict per tx");
            if let Ok(checked) = verdicts.pop().unwrap() {
                assert_eq!(checked.tx, tx);
                assert_eq!(checked.id, tx.id(fx.cluster.cluster_id()));
            }
        }
        ClientRequest::Subscribe { client, sig } => {
            let _ = raft_bft::crypto::verify(&client, &SUBSCRIPTION_DIGEST, &sig);
        }
        ClientRequest::Status { .. } => {}
    }
});
