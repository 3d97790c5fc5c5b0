//! The raft-bft benchmarks: criterion microbenchmarks (`benches/micro.rs`) and the `compare`
//! binary, which runs one workload of pre-signed ledger transfers on raft-bft and on plain Raft
//! (openraft) side by side. See `BENCHMARKS.md` at the repository root for the method.

pub mod ceiling;
pub mod driver;
pub mod measure;
pub mod openraft_baseline;
pub mod raft_bft_local;
pub mod raft_bft_quic;
pub mod report;
pub mod results;
pub mod system;
pub mod workload;
