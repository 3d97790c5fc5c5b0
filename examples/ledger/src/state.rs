//! The ledger's state machine: ops, results, and a digest maintained incrementally.

use std::collections::BTreeMap;

use raft_bft::codec;
use raft_bft::state_machine::StateMachine;
use raft_bft::types::{ClientId, Digest, PublicKey};
use serde::{Deserialize, Serialize};

/// What a client asks the ledger to do. Encoded with the protocol's codec as a tx's op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOp {
    /// Creates `amount` in account `to`. Only an admin key (listed in the manifest) may mint.
    Mint {
        /// The account credited.
        to: PublicKey,
        /// How much.
        amount: u64,
    },
    /// Moves `amount` from the signer's account to `to`.
    Transfer {
        /// The account credited.
        to: PublicKey,
        /// How much.
        amount: u64,
        /// Opaque bytes recorded with the transfer (a reference, an invoice number), at most
        /// [`MAX_MEMO_BYTES`]. The ledger does not interpret them.
        #[serde(default, with = "serde_bytes")]
        memo: Vec<u8>,
    },
    /// Reads an account's balance (ordered like any op, so the answer is linearizable).
    Balance {
        /// The account.
        account: PublicKey,
    },
}

impl LedgerOp {
    /// The op's bytes, as a tx carries them.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes an op from a tx (untrusted bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_OP_BYTES)
    }
}

/// The longest memo a transfer may carry.
pub const MAX_MEMO_BYTES: usize = 1024;

/// The largest encoded op (a key, an amount, a memo and the framing).
const MAX_OP_BYTES: usize = 128 + MAX_MEMO_BYTES;

/// What the ledger answers; the replicas sign it, and a client trusts it once `f + 1` agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerResult {
    /// Minted; the credited account's new balance.
    Minted {
        /// The new balance.
        balance: u64,
    },
    /// Transferred; both accounts' new balances.
    Transferred {
        /// The signer's new balance.
        from_balance: u64,
        /// How many transfers the signer's account has sent, this one included.
        sent: u64,
        /// The credited account's new balance.
        to_balance: u64,
    },
    /// The balance asked for.
    Balance {
        /// The balance.
        balance: u64,
    },
    /// Refused: nothing changed.
    Rejected(LedgerRejection),
}

impl LedgerResult {
    /// The result's bytes, as a reply carries them.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes a result from a reply.
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, 1024)
    }
}

/// Why the ledger refused an op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LedgerRejection {
    /// Only the manifest's admin keys may mint.
    #[error("only an admin key may mint")]
    NotAdmin,
    /// The op is not a ledger op (admission refuses these; only a faulty leader orders one).
    #[error("not a ledger op")]
    Malformed,
    /// The signer's balance does not cover the transfer.
    #[error("overdraft: the balance is {balance}, the transfer {amount}")]
    Overdraft {
        /// The signer's balance.
        balance: u64,
        /// The amount asked for.
        amount: u64,
    },
    /// Amounts must be positive.
    #[error("the amount must be above zero")]
    ZeroAmount,
    /// The credit would overflow the account or the total supply.
    #[error("the amount would overflow a balance or the supply")]
    Overflow,
    /// A transfer to the signer's own account.
    #[error("a transfer to the sender's own account")]
    SelfTransfer,
}

const BALANCE: &str = "raft-bft ledger v1 balance leaf";
const SENT: &str = "raft-bft ledger v1 sent-count leaf";

/// Most bytes a ledger snapshot is decoded from (a peer may send anything).
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// The ledger. See the crate docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    admins: Vec<PublicKey>,
    balances: BTreeMap<PublicKey, u64>,
    /// How many transfers each account sent: a client can check that each of its transfers
    /// was applied exactly once.
    sent: BTreeMap<PublicKey, u64>,
    supply: u64,
    /// The wrapping sum of every account's leaf hash: updated per change, so the digest costs
    /// O(1) per executed entry.
    leaves: [u64; 4],
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    balances: Vec<(PublicKey, u64)>,
    sent: Vec<(PublicKey, u64)>,
}

fn leaf(context: &str, account: &PublicKey, value: u64) -> [u64; 4] {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(&account.0);
    h.update(&value.to_le_bytes());
    let bytes = h.finalize();
    let mut out = [0u64; 4];
    for (i, chunk) in bytes.as_bytes().chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(word);
    }
    out
}

impl Ledger {
    /// An empty ledger whose mints must be signed by one of `admins`.
    pub fn new(admins: Vec<PublicKey>) -> Self {
        Ledger {
            admins,
            ..Ledger::default()
        }
    }

    /// An account's balance (0 if it never held anything).
    pub fn balance(&self, account: &PublicKey) -> u64 {
        self.balances.get(account).copied().unwrap_or(0)
    }

    /// The total of all balances.
    pub fn supply(&self) -> u64 {
        self.supply
    }

    /// Every account with a balance.
    pub fn balances(&self) -> &BTreeMap<PublicKey, u64> {
        &self.balances
    }

    /// How many transfers `account` has sent.
    pub fn sent(&self, account: &PublicKey) -> u64 {
        self.sent.get(account).copied().unwrap_or(0)
    }

    fn update_leaves(&mut self, remove: [u64; 4], add: [u64; 4]) {
        for i in 0..4 {
            self.leaves[i] = self.leaves[i].wrapping_sub(remove[i]).wrapping_add(add[i]);
        }
    }

    fn set(&mut self, account: PublicKey, balance: u64) {
        let old = self.balance(&account);
        self.update_leaves(
            leaf(BALANCE, &account, old),
            leaf(BALANCE, &account, balance),
        );
        self.balances.insert(account, balance);
    }

    fn set_sent(&mut self, account: PublicKey, sent: u64) {
        let old = self.sent(&account);
        self.update_leaves(leaf(SENT, &account, old), leaf(SENT, &account, sent));
        self.sent.insert(account, sent);
    }

    /// Applies `op` signed by `signer`; a refused op changes nothing.
    pub fn execute(&mut self, signer: &PublicKey, op: &LedgerOp) -> LedgerResult {
        match self.try_execute(signer, op) {
            Ok(result) => result,
            Err(rejection) => LedgerResult::Rejected(rejection),
        }
    }

    fn try_execute(
        &mut self,
        signer: &PublicKey,
        op: &LedgerOp,
    ) -> Result<LedgerResult, LedgerRejection> {
        match *op {
            LedgerOp::Mint { to, amount } => {
                // `admit` already refused non-admins; checked again so that `execute` alone
                // is safe too.
                if !self.admins.contains(signer) {
                    return Err(LedgerRejection::NotAdmin);
                }
                if amount == 0 {
                    return Err(LedgerRejection::ZeroAmount);
                }
                let supply = self
                    .supply
                    .checked_add(amount)
                    .ok_or(LedgerRejection::Overflow)?;
                let balance = self
                    .balance(&to)
                    .checked_add(amount)
                    .ok_or(LedgerRejection::Overflow)?;
                self.supply = supply;
                self.set(to, balance);
                Ok(LedgerResult::Minted { balance })
            }
            LedgerOp::Transfer { ref memo, .. } if memo.len() > MAX_MEMO_BYTES => {
                Err(LedgerRejection::Malformed)
            }
            LedgerOp::Transfer { to, amount, .. } => {
                if amount == 0 {
                    return Err(LedgerRejection::ZeroAmount);
                }
                if to == *signer {
                    return Err(LedgerRejection::SelfTransfer);
                }
                let from_balance = self.balance(signer);
                let remaining =
                    from_balance
                        .checked_sub(amount)
                        .ok_or(LedgerRejection::Overdraft {
                            balance: from_balance,
                            amount,
                        })?;
                // Cannot overflow while the supply fits in a u64, but stay checked.
                let to_balance = self
                    .balance(&to)
                    .checked_add(amount)
                    .ok_or(LedgerRejection::Overflow)?;
                let sent = self
                    .sent(signer)
                    .checked_add(1)
                    .ok_or(LedgerRejection::Overflow)?;
                self.set(*signer, remaining);
                self.set(to, to_balance);
                self.set_sent(*signer, sent);
                Ok(LedgerResult::Transferred {
                    from_balance: remaining,
                    sent,
                    to_balance,
                })
            }
            LedgerOp::Balance { account } => Ok(LedgerResult::Balance {
                balance: self.balance(&account),
            }),
        }
    }
}

impl StateMachine for Ledger {
    fn admit(&self, client: &ClientId, op: &[u8]) -> Result<(), String> {
        // State-independent checks only (every correct replica must agree): the op decodes,
        // and a mint comes from an admin key.
        match LedgerOp::decode(op).map_err(|e| format!("not a ledger op: {e}"))? {
            LedgerOp::Mint { .. } if !self.admins.contains(client) => {
                Err(LedgerRejection::NotAdmin.to_string())
            }
            LedgerOp::Transfer { memo, .. } if memo.len() > MAX_MEMO_BYTES => {
                Err(LedgerRejection::Malformed.to_string())
            }
            _ => Ok(()),
        }
    }

    fn apply(&mut self, client: &ClientId, op: &[u8]) -> Vec<u8> {
        let result = match LedgerOp::decode(op) {
            Ok(op) => self.execute(client, &op),
            // Admission refuses these; a leader that orders one anyway gets it refused here.
            Err(_) => LedgerResult::Rejected(LedgerRejection::Malformed),
        };
        result.encode()
    }

    fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new_derive_key("raft-bft ledger v1 state digest");
        for word in self.leaves {
            h.update(&word.to_le_bytes());
        }
        h.update(&self.supply.to_le_bytes());
        h.update(&(self.balances.len() as u64).to_le_bytes());
        Digest(*h.finalize().as_bytes())
    }

    fn snapshot(&self) -> Vec<u8> {
        let snapshot = Snapshot {
            balances: self.balances.iter().map(|(k, v)| (*k, *v)).collect(),
            sent: self.sent.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        codec::encode(&snapshot).unwrap_or_default()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let snapshot: Snapshot = codec::decode(bytes, MAX_SNAPSHOT_BYTES)
            .map_err(|e| format!("ledger snapshot: {e}"))?;
        let mut restored = Ledger::new(self.admins.clone());
        for (account, balance) in snapshot.balances {
            if restored.balances.contains_key(&account) {
                return Err("ledger snapshot: an account appears twice".into());
            }
            restored.supply = restored
                .supply
                .checked_add(balance)
                .ok_or("ledger snapshot: the supply overflows")?;
            restored.set(account, balance);
        }
        for (account, sent) in snapshot.sent {
            if restored.sent.contains_key(&account) {
                return Err("ledger snapshot: an account's count appears twice".into());
            }
            restored.set_sent(account, sent);
        }
        *self = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    #[test]
    fn refusals_change_nothing_and_say_why() {
        let admin = key(1);
        let mut l = Ledger::new(vec![admin]);
        l.execute(
            &admin,
            &LedgerOp::Mint {
                to: key(2),
                amount: 10,
            },
        );
        let before = (l.clone(), l.digest());
        let cases = [
            (
                key(2),
                LedgerOp::Transfer {
                    to: key(3),
                    amount: 11,
                    memo: Vec::new(),
                },
                LedgerRejection::Overdraft {
                    balance: 10,
                    amount: 11,
                },
            ),
            (
                key(2),
                LedgerOp::Transfer {
                    to: key(3),
                    amount: 0,
                    memo: Vec::new(),
                },
                LedgerRejection::ZeroAmount,
            ),
            (
                key(2),
                LedgerOp::Transfer {
                    to: key(2),
                    amount: 1,
                    memo: Vec::new(),
                },
                LedgerRejection::SelfTransfer,
            ),
            (
                key(2),
                LedgerOp::Mint {
                    to: key(2),
                    amount: 1,
                },
                LedgerRejection::NotAdmin,
            ),
            (
                admin,
                LedgerOp::Mint {
                    to: key(3),
                    amount: u64::MAX,
                },
                LedgerRejection::Overflow,
            ),
        ];
        for (signer, op, why) in cases {
            assert_eq!(l.execute(&signer, &op), LedgerResult::Rejected(why));
            assert_eq!((l.clone(), l.digest()), before);
        }
        assert!(l
            .admit(
                &key(2),
                &LedgerOp::Mint {
                    to: key(2),
                    amount: 1
                }
                .encode()
            )
            .is_err());
        assert!(l.admit(&key(2), b"garbage").is_err());
    }

    #[test]
    fn garbage_snapshots_are_refused_without_panic() {
        let mut l = Ledger::new(vec![]);
        for bytes in [&b""[..], b"\xff\xff", &[0x91, 0x92][..]] {
            assert!(l.restore(bytes).is_err());
        }
        let dup = codec::encode(&Snapshot {
            balances: vec![(key(1), 1), (key(1), 2)],
            sent: vec![],
        })
        .unwrap();
        assert!(l.restore(&dup).is_err());
        let overflow = codec::encode(&Snapshot {
            balances: vec![(key(1), u64::MAX), (key(2), 1)],
            sent: vec![],
        })
        .unwrap();
        assert!(l.restore(&overflow).is_err());
    }

    proptest! {
        /// Any sequence of ops keeps the supply equal to the sum of balances, and a restored
        /// snapshot has the same digest as the state it was taken from.
        #[test]
        fn supply_is_conserved_and_snapshots_restore_the_digest(
            ops in proptest::collection::vec((0u8..4, 0u8..3, 0u8..4, 0u64..50), 1..200)
        ) {
            let admin = key(0);
            let mut l = Ledger::new(vec![admin]);
            let mut minted = 0u64;
            let mut transfers = 0u64;
            for (signer, kind, to, amount) in ops {
                let op = match kind {
                    0 => LedgerOp::Mint { to: key(to), amount },
                    1 => LedgerOp::Transfer {
                        to: key(to),
                        amount,
                        memo: Vec::new(),
                    },
                    _ => LedgerOp::Balance { account: key(to) },
                };
                match l.execute(&key(signer), &op) {
                    LedgerResult::Minted { .. } => minted += amount,
                    LedgerResult::Transferred { .. } => transfers += 1,
                    _ => {}
                }
                prop_assert_eq!((0..4).map(|k| l.sent(&key(k))).sum::<u64>(), transfers);
                prop_assert_eq!(l.balances().values().sum::<u64>(), l.supply());
                prop_assert_eq!(l.supply(), minted);
            }
            let mut restored = Ledger::new(vec![admin]);
            restored.restore(&l.snapshot()).unwrap();
            prop_assert_eq!(restored.digest(), l.digest());
            prop_assert_eq!(restored, l);
        }
    }
}
