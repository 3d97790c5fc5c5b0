//! Limits on what the network may make a replica hold: connections, sizes, rates, queues.

use std::time::{Duration, Instant};

/// Every bound the runtime puts on network input and on its own queues. Nothing grows without
/// one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Client connections a replica serves at once; more are closed after their handshake
    /// (replica links are not counted: clients cannot crowd them out).
    pub max_connections: usize,
    /// Handshakes in progress at once; more are refused. Above a quarter of it, a sender must
    /// first prove its address with a stateless retry.
    pub max_handshakes: usize,
    /// A connection idle for this long is closed (keep-alives are sent at a third of it).
    pub idle_timeout: Duration,
    /// Client requests per second per connection (a token bucket refilled at this rate)...
    pub client_rate: u32,
    /// ... with bursts of up to this many.
    pub client_burst: u32,
    /// Txs a client connection may have submitted and not yet had answered; more are refused
    /// until replies arrive (or they expire after `in_flight_expiry`).
    pub client_in_flight: usize,
    /// A tx counts as in flight for at most this long.
    pub in_flight_expiry: Duration,
    /// Distinct client keys one client connection may submit for.
    pub clients_per_connection: usize,
    /// Frames queued for one peer or one client connection; beyond it, frames are dropped (the
    /// protocol retransmits; clients retry).
    pub send_queue: usize,
    /// Inputs waiting for signature verification; readers wait when it is full (backpressure
    /// into QUIC flow control).
    pub verify_queue: usize,
    /// Verified inputs waiting for the replica's event loop.
    pub event_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_handshakes: 256,
            idle_timeout: Duration::from_secs(15),
            client_rate: 20_000,
            client_burst: 4_096,
            client_in_flight: 1_024,
            in_flight_expiry: Duration::from_secs(30),
            clients_per_connection: 4_096,
            send_queue: 4_096,
            verify_queue: 8_192,
            event_queue: 8_192,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token if one is left.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 5);
        assert_eq!((0..20).filter(|_| b.take(start)).count(), 5);
        assert!(b.take(start + Duration::from_millis(100)));
        assert!(!b.take(start + Duration::from_millis(100)));
    }
}
