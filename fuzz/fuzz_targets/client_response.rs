//! What a client reads from a replica (clients trust no replica):
//! `raft_bft_net::wire::decode_client_response`, then for a reply the verifier's
//! `verify_reply`.
//!
//! Input: the response bytes as one frame carries them. Nothing may panic; a decoded response
//! must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use raft_bft::codec;
use raft_bft_fuzz::fixture;
use raft_bft_net::wire::{decode_client_response, ClientResponse};

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Ok(resp) = decode_client_response(data, fx.params()) else {
        return;
    };
    let encoded = codec::encode(&resp).expect("a decoded response encodes");
    let again: ClientResponse = codec::decode(&encoded, usize::MAX).expect("its encoding decodes");
    assert_eq!(again, resp, "encode/decode round trip changed the response");

    if let ClientResponse::Reply(reply) = &resp {
        let verifier = fx.verifier();
        let _ = verifier.verify_reply(reply);
    }
});
