//! What can go wrong with storage, with what the operator needs to act on it.

use std::path::PathBuf;

use raft_bft::types::{Digest, Index};

/// A storage failure. After an I/O failure, the store refuses every later call.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store belongs to another cluster.
    #[error(
        "{path} belongs to cluster {found}, not to this manifest's cluster {expected}: point the \
         replica at its own data directory"
    )]
    WrongCluster {
        /// The file that says so.
        path: PathBuf,
        /// The manifest's cluster id.
        expected: Digest,
        /// The store's.
        found: Digest,
    },
    /// The store was written in a format this build does not read.
    #[error(
        "{path} is in storage format version {found}; this build reads version {supported}: run \
         a build that reads it (the data is not damaged)"
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// `open` found no store in the directory.
    #[error(
        "no store in {path}: create one with FileStore::create for a new replica. If this \
         replica had data there, its disk is not mounted or the data is gone: a replica that \
         starts empty has forgotten its votes, so count it among the f faulty replicas until \
         it has been rebuilt from its peers"
    )]
    NoStore {
        /// The directory.
        path: PathBuf,
    },
    /// `create` found a store in the directory already.
    #[error("{path} already holds a store: open it with FileStore::open")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// An I/O call failed.
    #[error(
        "{what} {path}: {source}. The store has stopped and acknowledged nothing after this; \
         check the disk, and reboot before restarting the replica (the kernel may hold writes \
         it could not persist)"
    )]
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
         the replica will not start from it. Move the data directory aside (keep it for \
         diagnosis) and rebuild this replica from its peers; a replica started on an empty \
         directory has forgotten its votes, so count it among the f faulty replicas until it \
         has caught up"
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
    /// A value could not be encoded for storage (refused; the store goes on).
    #[error("cannot encode {what}: {why}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's complaint.
        why: String,
    },
    /// A batch or snapshot is larger than a record may be (refused; the store goes on).
    #[error("{what} of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A snapshot at or below the newest one saved (refused; the store goes on).
    #[error("snapshot at index {index} is not newer than the saved one at index {newest}")]
    StaleSnapshot {
        /// The snapshot offered.
        index: Index,
        /// The newest saved.
        newest: Index,
    },
    /// `begin_sync` while a sync is in flight (refused; the store goes on).
    #[error("a sync is in flight: finish it with FileStore::finish_sync before starting another")]
    SyncInFlight,
    /// `finish_sync` with another store's sync, or an old one (refused; the store goes on).
    #[error("finish_sync was given a sync this store did not begin, or not the one in flight")]
    ForeignSync,
    /// Options out of range.
    #[error("bad store options: {0}")]
    BadOptions(String),
    /// `finish_sync` with no sync in flight (refused; the store goes on).
    #[error("finish_sync was called with no sync in flight")]
    NoSyncInFlight,
    /// The batch ids handed over are not increasing (refused; the store goes on).
    #[error("batch {got} was appended after batch {last}: batch ids must increase")]
    OutOfOrder {
        /// The last batch id appended.
        last: u64,
        /// The offending one.
        got: u64,
    },
}
