//! Replica processes and a client load, shared by the process-level tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Manifest;
use raft_bft::types::{Index, ReplicaId};
use raft_bft_net::testkit::{write_cluster_files, OpCounter};
use raft_bft_net::{Client, ClientError, ClientOptions, Connections};

/// A directory for a test's files: removed when the test ends, unless `RAFT_BFT_KEEP_TEST_DIRS`
/// is set (then its path is printed, with each replica's log in it).
pub fn test_dir(name: &str) -> TestDir {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    if std::env::var_os("RAFT_BFT_KEEP_TEST_DIRS").is_some() {
        let path = dir.keep();
        eprintln!("{name}: test files kept in {}", path.display());
        TestDir::Kept(path)
    } else {
        TestDir::Temp(dir)
    }
}

/// See [`test_dir`].
pub enum TestDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl TestDir {
    pub fn path(&self) -> &Path {
        match self {
            TestDir::Temp(d) => d.path(),
            TestDir::Kept(p) => p,
        }
    }
}

/// Replica processes of one cluster.
pub struct Processes {
    pub manifest: Manifest,
    pub dir: PathBuf,
    manifest_path: PathBuf,
    key_paths: Vec<PathBuf>,
    /// A command prefix per replica (e.g. `ip netns exec ns0`), empty for none.
    prefixes: Vec<Vec<String>>,
    children: Vec<Option<Child>>,
}

impl Processes {
    pub fn new(
        dir: &Path,
        manifest: Manifest,
        keys: &[KeyPair],
        prefixes: Vec<Vec<String>>,
    ) -> Self {
        let (manifest_path, key_paths) = write_cluster_files(dir, &manifest, keys).unwrap();
        let n = keys.len();
        Processes {
            manifest,
            dir: dir.to_path_buf(),
            manifest_path,
            key_paths,
            prefixes,
            children: (0..n).map(|_| None).collect(),
        }
    }

    pub fn dump_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}.state"))
    }

    /// Starts replica `i` (from its data directory if it ran before).
    pub fn start(&mut self, i: usize) {
        let bin = env!("CARGO_BIN_EXE_raft-bft-testnode");
        let mut argv: Vec<String> = self.prefixes.get(i).cloned().unwrap_or_default();
        argv.push(bin.to_string());
        argv.push("run".to_string());
        let data = self.dir.join(format!("data-{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{i}.log")))
            .unwrap();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .arg("--manifest")
            .arg(&self.manifest_path)
            .arg("--id")
            .arg(i.to_string())
            .arg("--key")
            .arg(&self.key_paths[i])
            .arg("--data")
            .arg(&data)
            .arg("--dump")
            .arg(self.dump_path(i))
            .env(
                "RUST_LOG",
                std::env::var("RAFT_BFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
        self.children[i] = Some(child);
    }

    /// `kill -9`: the replica dies wherever it is.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// A graceful stop (closes its standard input); it writes its state dump.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            drop(child.stdin.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "replica {i} exited with {status}; see {}",
                        self.dir.display()
                    );
                    return;
                }
                if std::time::Instant::now() > deadline {
                    child.kill().unwrap();
                    panic!("replica {i} did not stop within 30 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The state replica `i` dumped when it stopped.
    pub fn state(&self, i: usize) -> OpCounter {
        let bytes = std::fs::read(self.dump_path(i)).unwrap();
        raft_bft::codec::decode(&bytes, 1 << 30).unwrap()
    }

    pub fn log_tail(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("replica-{i}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a client load saw.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Ops that `f + 1` replicas acknowledged as executed.
    pub acknowledged: Vec<Vec<u8>>,
    /// Ops submitted without an accepted result (their outcome is unknown).
    pub unknown: Vec<Vec<u8>>,
    /// Errors by kind.
    pub errors: Vec<String>,
}

/// A closed-loop load: `clients` clients, each submitting ops one after another until `stop`.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<async_std::task::JoinHandle<LoadResult>>,
    pub connections: Connections,
}

impl Load {
    pub fn start(manifest: &Manifest, clients: usize, tag: &str) -> Load {
        let options = ClientOptions {
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let connections = Connections::connect(manifest.clone(), options).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|k| {
                let mut seed = [0u8; 32];
                seed[0] = 0xc1;
                seed[1..9].copy_from_slice(&(k as u64).to_le_bytes());
                seed[9..9 + tag.len().min(20)]
                    .copy_from_slice(&tag.as_bytes()[..tag.len().min(20)]);
                let mut client =
                    Client::new(connections.clone(), KeyPair::from_seed(seed)).unwrap();
                let stop = stop.clone();
                let tag = tag.to_string();
                async_std::task::spawn(async move {
                    let mut result = LoadResult::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let op = format!("{tag}-{k}-{i}").into_bytes();
                        i += 1;
                        match client.submit(op.clone()).await {
                            Ok(c) => {
                                assert_eq!(&c.result[..4], &1u32.to_le_bytes(), "applied once");
                                result.acknowledged.push(op);
                            }
                            Err(e) => {
                                result.errors.push(match e {
                                    ClientError::Timeout { .. } => "timeout".into(),
                                    other => other.to_string(),
                                });
                                result.unknown.push(op);
                            }
                        }
                    }
                    result
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            connections,
        }
    }

    /// Acknowledged ops so far are not counted here; this stops the load and collects.
    pub async fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadResult::default();
        for t in self.tasks {
            let r = t.await;
            all.acknowledged.extend(r.acknowledged);
            all.unknown.extend(r.unknown);
            all.errors.extend(r.errors);
        }
        all
    }
}

/// The leader most replicas report, and the highest commit index any reports.
pub async fn view(connections: &Connections, n: usize) -> (Option<ReplicaId>, Index) {
    let mut leaders = std::collections::BTreeMap::new();
    let mut commit = Index(0);
    for i in 0..n {
        if let Ok(s) = connections
            .status(ReplicaId(i as u32), Duration::from_millis(500))
            .await
        {
            *leaders.entry(s.leader).or_insert(0) += 1;
            commit = commit.max(s.commit_index);
        }
    }
    (
        leaders.into_iter().max_by_key(|(_, c)| *c).map(|(l, _)| l),
        commit,
    )
}

/// Waits until each of `replicas` reports it executed at least `index`.
pub async fn wait_applied(
    connections: &Connections,
    replicas: &[usize],
    index: Index,
    within: Duration,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut behind = Vec::new();
        for &i in replicas {
            match connections
                .status(ReplicaId(i as u32), Duration::from_millis(500))
                .await
            {
                Ok(s) if s.applied_index >= index => {}
                Ok(s) => behind.push(format!("{i}: applied {}", s.applied_index)),
                Err(e) => behind.push(format!("{i}: {e}")),
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all replicas reached {index}: {behind:?}"
        );
        async_std::task::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the load, waits until every replica executed what any committed, stops the replicas
/// gracefully and checks their states against what the load saw acknowledged. Returns the
/// load's result and the final commit index.
pub async fn finish_and_check(load: Load, procs: &mut Processes) -> (LoadResult, Index) {
    let result = load.finish().await;
    let n = procs.manifest.replicas.len();
    let connections = Connections::connect(procs.manifest.clone(), Default::default()).unwrap();
    let (_, end) = view(&connections, n).await;
    let all: Vec<usize> = (0..n).collect();
    wait_applied(&connections, &all, end, Duration::from_secs(60)).await;
    for i in 0..n {
        procs.stop(i);
    }
    let states: Vec<_> = (0..n).map(|i| procs.state(i)).collect();
    check_states(&states, &result);
    (result, end)
}

/// Checks the end states: every acknowledged op exactly once in every state, no op twice, and
/// all states equal.
pub fn check_states(states: &[OpCounter], load: &LoadResult) {
    for (i, state) in states.iter().enumerate() {
        for op in &load.acknowledged {
            assert_eq!(
                state.count(op),
                1,
                "replica {i}: acknowledged op {:?}",
                String::from_utf8_lossy(op)
            );
        }
        for (op, count) in state.counts() {
            assert!(
                *count <= 1,
                "replica {i}: op {:?} applied {count} times",
                String::from_utf8_lossy(op)
            );
        }
        assert_eq!(state, &states[0], "replica {i} disagrees with replica 0");
    }
}
