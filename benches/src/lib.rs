//! The raft-bft benchmarks: criterion microbenchmarks (`benches/micro.rs`) and the `compare`
//! binary, which runs one workload of pre-signed ledger transfers on raft-bft and on plain Raft
//! (openraft) side by side. See `BENCHMARKS.md` at the repository root for the method.

pub mod measure;
pub mod results;
pub mod system;
pub mod workload;
