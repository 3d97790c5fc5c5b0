//! What can go wrong with storage, with what the operator needs to act on it.

use std::path::PathBuf;

use raft_bft::types::Digest;

/// A storage failure. After one, the store refuses every later call.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store belongs to another cluster.
    #[error(
        "the store belongs to cluster {found}, not to this manifest's cluster {expected}: \
         point the replica at its own data directory"
    )]
    WrongCluster {
        /// The manifest's cluster id.
        expected: Digest,
        /// The store's.
        found: Digest,
    },
    /// An I/O call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Durable data failed its checks somewhere a torn write cannot explain.
    #[error(
        "corrupt store: {path} at byte {offset}: {why}. Acknowledged data may be damaged, so \
         the replica will not start from it; move the data directory aside and rebuild this \
         replica from its peers"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What check failed.
        why: String,
    },
    /// An earlier failure stopped the store.
    #[error("the store stopped after an earlier failure: {0}")]
    Stopped(String),
    /// Another store has this data directory open.
    #[error(
        "{path} is locked: another replica process has this data directory open; each replica \
         needs a directory of its own"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode for {path}: {why}")]
    Encode {
        /// The file it was meant for.
        path: PathBuf,
        /// The encoder's complaint.
        why: String,
    },
    /// A batch or file is larger than a record may be.
    #[error("{what} of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A snapshot at or below the newest one saved.
    #[error("snapshot at index {index} is not newer than the saved one at index {newest}")]
    StaleSnapshot {
        /// The snapshot offered.
        index: raft_bft::types::Index,
        /// The newest saved.
        newest: raft_bft::types::Index,
    },
    /// The batch ids handed over are not increasing.
    #[error("batch {got} was appended after batch {last}: batch ids must increase")]
    OutOfOrder {
        /// The last batch id appended.
        last: u64,
        /// The offending one.
        got: u64,
    },
}
