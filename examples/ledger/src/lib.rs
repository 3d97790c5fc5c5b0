//! A ledger on raft-bft: accounts keyed by ed25519 public keys, minted by admin keys and
//! moved by their owners, with balances that every correct replica agrees on.
//!
//! The ledger is a [`StateMachine`](raft_bft::state_machine::StateMachine); the protocol authenticates every op (a tx is signed by
//! its client key), so a transfer's owner is simply the key that signed it.
//!
//! ```
//! use ledger::{Ledger, LedgerOp, LedgerResult};
//! use raft_bft::state_machine::StateMachine;
//! use raft_bft::types::PublicKey;
//!
//! let admin = PublicKey([1; 32]);
//! let (alice, bob) = (PublicKey([2; 32]), PublicKey([3; 32]));
//! let mut ledger = Ledger::new(vec![admin]);
//! ledger.execute(&admin, &LedgerOp::Mint { to: alice, amount: 100 });
//! let moved = ledger.execute(&alice, &LedgerOp::Transfer { to: bob, amount: 30, memo: vec![] });
//! assert_eq!(moved, LedgerResult::Transferred { from_balance: 70, sent: 1, to_balance: 30 });
//! assert!(matches!(
//!     ledger.execute(&bob, &LedgerOp::Transfer { to: alice, amount: 31, memo: vec![] }),
//!     LedgerResult::Rejected(_)
//! ));
//! assert_eq!((ledger.balance(&alice), ledger.balance(&bob), ledger.supply()), (70, 30, 100));
//! ```

pub mod files;
mod state;

pub use state::{
    Ledger, LedgerOp, LedgerRejection, LedgerResult, MAX_MEMO_BYTES, MAX_SNAPSHOT_BYTES,
};
