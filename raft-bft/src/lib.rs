//! # raft-bft
//!
//! A replicated log that keeps working when up to `f` of `3f + 1` replicas are Byzantine.
pub mod client;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod manifest;
pub mod merkle;
pub mod message;
pub mod persist;
pub mod replica;
#[cfg(feature = "simulator")]
pub mod sim;
pub mod state_machine;
pub mod types;
pub mod verify;
