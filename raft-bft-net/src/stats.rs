//! Counters of what the runtime did and refused, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a node's network activity. Every refusal is counted by reason.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Replica connections accepted (authenticated as a member).
    pub peer_connections: AtomicU64,
    /// Client connections accepted.
    pub client_connections: AtomicU64,
    /// Connections refused: over the connection limit.
    pub refused_connections: AtomicU64,
    /// Handshakes that failed (unknown key, wrong ALPN, timeout).
    pub failed_handshakes: AtomicU64,
    /// Connections closed because a frame was above the limit.
    pub oversized_frames: AtomicU64,
    /// Connections closed because a frame did not decode.
    pub undecodable_frames: AtomicU64,
    /// Peer messages that failed verification.
    pub invalid_peer_messages: AtomicU64,
    /// Client txs that failed verification.
    pub invalid_client_txs: AtomicU64,
    /// Client txs refused by a connection's rate limit.
    pub rate_limited: AtomicU64,
    /// Client txs refused by a connection's in-flight or client-key limit.
    pub in_flight_refused: AtomicU64,
    /// Frames dropped because a peer's or a client's send queue was full.
    pub dropped_frames: AtomicU64,
    /// Messages received from peers (verified or not).
    pub peer_messages: AtomicU64,
    /// Client txs received.
    pub client_txs: AtomicU64,
    /// Group commits (syncs) completed.
    pub syncs: AtomicU64,
}

impl NetStats {
    pub(crate) fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
