//! What travels on the wire, and the decoders of untrusted bytes.
//!
//! Replica links carry [`ReplicaMessage`]s, one per frame. Client connections carry one
//! bidirectional stream: [`ClientRequest`]s up, [`ClientResponse`]s down, one per frame. Every
//! decoder goes through the core's bounded codec (size checked first, depth bounded, no
//! allocation beyond the input, no trailing bytes).

use raft_bft::codec::{self, CodecError};
use raft_bft::config::Params;
use raft_bft::message::{ReplicaMessage, Reply, SignedTx};
use raft_bft::types::{ClientId, Digest, Index, ReplicaId, Signature, Term};
use serde::{Deserialize, Serialize};

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// A signed tx to order and execute. Reads of the application's state are txs too (a
    /// read-only op): they are ordered, so the `f + 1` matching answers are linearizable.
    Submit(SignedTx),
    /// Asks the replica to send this connection the replies to `client`'s txs, including txs
    /// that reach it through other replicas. Signed by the client over
    /// [`subscription_digest`] of this connection, so it cannot be replayed on another one
    /// to divert someone else's replies.
    Subscribe {
        /// The client key.
        client: ClientId,
        /// The client's signature over the connection's subscription digest.
        sig: Signature,
    },
    /// The replica's view of the cluster (unsigned: a hint, not evidence).
    Status {
        /// Echoed in the answer.
        id: u64,
    },
}

/// An answer to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// A replica's signed reply to a tx.
    Reply(Reply),
    /// The answer to [`ClientRequest::Status`].
    Status {
        /// The request's id.
        id: u64,
        /// What the replica reports.
        report: StatusReport,
    },
    /// The connection's limits refused a tx before it reached the protocol. Unsigned, so only
    /// a hint: the client retries later.
    Refused {
        /// The tx's client.
        client: ClientId,
        /// The tx's `ts`.
        ts: u64,
        /// Why.
        reason: Refusal,
    },
}

/// Why a connection refused a tx before it reached the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Above the connection's request rate.
    RateLimited,
    /// Too many txs of this connection are still unanswered.
    TooManyInFlight,
    /// Too many distinct client keys on this connection.
    TooManyClients,
    /// The replica's input queue is full.
    Overloaded,
    /// The tx's signature or size is invalid.
    Invalid,
}

/// A replica's view of the cluster, as it answers a status request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The replica.
    pub replica: ReplicaId,
    /// Its current term.
    pub term: Term,
    /// The leader of that term.
    pub leader: ReplicaId,
    /// True while it is between terms.
    pub changing_term: bool,
    /// Its highest committed index.
    pub commit_index: Index,
    /// Its highest executed index.
    pub applied_index: Index,
    /// Its last log index.
    pub last_index: Index,
    /// Its stable checkpoint.
    pub checkpoint_index: Index,
    /// True while it rebuilds from its peers after losing its disk.
    pub rebuilding: bool,
}

/// What a client signs to subscribe on one connection: a digest of keying material exported
/// from that connection's TLS session (RFC 5705), which only its two ends know.
pub fn subscription_digest(conn: &quinn::Connection, client: &ClientId) -> Option<Digest> {
    let mut material = [0u8; 32];
    conn.export_keying_material(&mut material, b"raft-bft v1 client subscription", &client.0)
        .ok()?;
    Some(Digest(blake3::derive_key(
        "raft-bft v1 client subscription digest",
        &material,
    )))
}

/// The largest client request frame: a tx of `max_op_bytes` and its envelope.
pub fn max_request_bytes(params: &Params) -> usize {
    params.max_op_bytes as usize + 1024
}

/// The largest client response frame: a reply carries a result and a Merkle proof.
pub fn max_response_bytes(params: &Params) -> usize {
    (params.max_message_bytes as usize).min(4 << 20)
}

/// Decodes a replica message from a peer.
pub fn decode_replica_message(bytes: &[u8], params: &Params) -> Result<ReplicaMessage, CodecError> {
    codec::decode(bytes, params.max_message_bytes as usize)
}

/// Decodes a client request.
pub fn decode_client_request(bytes: &[u8], params: &Params) -> Result<ClientRequest, CodecError> {
    codec::decode(bytes, max_request_bytes(params))
}

/// Decodes a client response (on the client side: replicas are not trusted either).
pub fn decode_client_response(bytes: &[u8], params: &Params) -> Result<ClientResponse, CodecError> {
    codec::decode(bytes, max_response_bytes(params))
}
