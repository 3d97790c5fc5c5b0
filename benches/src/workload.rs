//! The workload every system runs: ledger transfers between client accounts, signed before the
//! measurement starts (the clients' signing is not what is measured).
//!
//! Client `i` owns account `i` and sends 1 unit to account `i + 1` (mod the number of clients)
//! in every tx, with a memo that pads the op to the configured size. A genesis ledger funds
//! every account, so every transfer succeeds and the state machine does real work.

use std::collections::VecDeque;

use ledger::{Ledger, LedgerOp};
use raft_bft::crypto::KeyPair;
use raft_bft::message::SignedTx;
use raft_bft::types::{Digest, PublicKey};

/// Each account's balance at genesis: far more than any run can spend.
pub const INITIAL_BALANCE: u64 = 1 << 40;

/// The client keys of a run, and what they sign.
#[derive(Clone, Debug)]
pub struct Accounts {
    keys: Vec<KeyPair>,
    memo_bytes: usize,
}

impl Accounts {
    /// `clients` accounts (keys derived from their index, so that every process of a run
    /// derives the same ones), whose transfers carry `memo_bytes` of memo.
    pub fn new(clients: usize, memo_bytes: usize) -> Self {
        let keys = (0..clients).map(|i| key(i as u64, 0xc1)).collect();
        Accounts { keys, memo_bytes }
    }

    /// The key that funds every account at genesis.
    pub fn admin() -> KeyPair {
        key(0, 0xad)
    }

    /// How many client accounts.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Client `client`'s key.
    pub fn key(&self, client: usize) -> &KeyPair {
        &self.keys[client]
    }

    /// The memo length of every transfer.
    pub fn memo_bytes(&self) -> usize {
        self.memo_bytes
    }

    /// The ledger every replica starts from: each account holds [`INITIAL_BALANCE`].
    pub fn genesis(&self) -> Ledger {
        let admin = Self::admin().public();
        let mut ledger = Ledger::new(vec![admin]);
        for k in &self.keys {
            ledger.execute(
                &admin,
                &LedgerOp::Mint {
                    to: k.public(),
                    amount: INITIAL_BALANCE,
                },
            );
        }
        ledger
    }

    /// The op of client `client`'s transfer number `seq`.
    pub fn transfer(&self, client: usize, seq: u64) -> LedgerOp {
        let to: PublicKey = self.keys[(client + 1) % self.keys.len()].public();
        let mut memo = vec![0u8; self.memo_bytes];
        for (i, b) in memo.iter_mut().enumerate().take(8) {
            *b = (seq >> (8 * i)) as u8;
        }
        LedgerOp::Transfer {
            to,
            amount: 1,
            memo,
        }
    }

    /// The size of one transfer's op in bytes.
    pub fn op_bytes(&self) -> usize {
        self.transfer(0, 0).encode().len()
    }

    /// Signs `per_client` transfers for every client, timestamps `1..=per_client`, on all
    /// cores. Returns one queue per client, in timestamp order.
    pub fn presign(&self, cluster_id: &Digest, per_client: usize) -> Vec<VecDeque<SignedTx>> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut out: Vec<VecDeque<SignedTx>> = vec![VecDeque::new(); self.keys.len()];
        let chunk = self.keys.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (c, part) in out.chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    for (j, queue) in part.iter_mut().enumerate() {
                        let client = c * chunk + j;
                        for ts in 1..=per_client as u64 {
                            let op = self.transfer(client, ts).encode();
                            queue.push_back(SignedTx::sign(cluster_id, &self.keys[client], ts, op));
                        }
                    }
                });
            }
        });
        out
    }
}

fn key(index: u64, tag: u8) -> KeyPair {
    let mut seed = [tag; 32];
    seed[..8].copy_from_slice(&index.to_le_bytes());
    KeyPair::from_seed(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::LedgerResult;

    #[test]
    fn every_transfer_of_the_workload_succeeds_on_the_genesis_ledger() {
        let accounts = Accounts::new(5, 100);
        let mut ledger = accounts.genesis();
        let cid = Digest([7; 32]);
        let queues = accounts.presign(&cid, 3);
        for (client, queue) in queues.iter().enumerate() {
            assert_eq!(queue.len(), 3);
            for tx in queue {
                assert_eq!(tx.client, accounts.key(client).public());
                let op = LedgerOp::decode(&tx.op).expect("decodes");
                let result = ledger.execute(&tx.client, &op);
                assert!(
                    matches!(result, LedgerResult::Transferred { .. }),
                    "{result:?}"
                );
            }
        }
        assert_eq!(ledger.supply(), 5 * INITIAL_BALANCE);
        assert!(accounts.op_bytes() > 100);
    }
}
