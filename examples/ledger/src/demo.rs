//! `ledger demo`: a local 4-replica cluster, as separate processes with durable storage, under
//! signed transfers from concurrent clients. Midway one replica is killed (SIGKILL) and later
//! restarted; in the second half another replica forges the signatures it sends. At the end
//! every correct replica's state is checked against what the clients saw acknowledged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::files;
use ledger::{Ledger, LedgerOp, LedgerResult};
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Manifest;
use raft_bft::state_machine::StateMachine;
use raft_bft::types::{Index, PublicKey, ReplicaId};
use raft_bft_net::{Client, ClientError, ClientOptions, Connections};

const N: usize = 4;
const FUNDS: u64 = 1_000_000;

/// The replica processes.
struct Replicas {
    dir: PathBuf,
    children: Vec<Option<Child>>,
}

impl Replicas {
    fn start(&mut self, i: usize, byzantine: bool) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{i}.log")))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(["node", "--stop-on-stdin-close", "--config"])
            .arg(self.dir.join(format!("node-{i}.json")))
            .arg("--dump")
            .arg(self.dump(i))
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        if byzantine {
            cmd.arg("--demo-forge-signatures");
        }
        self.children[i] = Some(
            cmd.spawn()
                .map_err(|e| format!("cannot start replica {i}: {e}"))?,
        );
        Ok(())
    }

    fn dump(&self, i: usize) -> PathBuf {
        self.dir.join(format!("state-{i}.snapshot"))
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A graceful stop: the replica writes its state to its dump file.
    fn stop(&mut self, i: usize) -> Result<(), String> {
        if let Some(mut child) = self.children[i].take() {
            drop(child.stdin.take());
            let status = child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("replica {i} exited with {status}"));
            }
        }
        Ok(())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged transfers per sender: (amount, recipient).
    acked: HashMap<PublicKey, Vec<(u64, PublicKey)>>,
    /// Transfers without an accepted outcome (timeouts) per sender.
    unknown: HashMap<PublicKey, u64>,
    latencies: Vec<Duration>,
    refused: u64,
}

pub fn run(txs: u64, clients: usize, keep: bool) -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!("ledger-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let manifest = files::init_cluster(&tmp, N, &["127.0.0.1".to_string()], 0, Default::default())
        .map_err(|e| e.to_string())?;
    println!("demo: a 4-replica cluster in {}", tmp.display());
    let mut replicas = Replicas {
        dir: tmp.clone(),
        children: (0..N).map(|_| None).collect(),
    };
    for i in 0..N {
        replicas.start(i, false)?;
    }
    let result =
        async_std::task::block_on(drive(&manifest, &tmp, &mut replicas, txs, clients.max(1)));
    drop(replicas);
    if keep {
        println!("demo: files kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

async fn drive(
    manifest: &Manifest,
    dir: &Path,
    replicas: &mut Replicas,
    txs: u64,
    clients: usize,
) -> Result<(), String> {
    let options = ClientOptions {
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    let conns = Connections::connect(manifest.clone(), options).map_err(|e| e.to_string())?;
    // Fund one account per client.
    let admin = files::read_key(&dir.join("admin.key")).map_err(|e| e.to_string())?;
    let mut minter = Client::new(conns.clone(), admin).map_err(|e| e.to_string())?;
    let keys: Vec<KeyPair> = (0..clients)
        .map(|_| files::random_key())
        .collect::<Result<_, _>>()?;
    for k in &keys {
        let op = LedgerOp::Mint {
            to: k.public(),
            amount: FUNDS,
        };
        minter
            .submit(op.encode())
            .await
            .map_err(|e| format!("funding: {e}"))?;
    }
    println!("demo: funded {clients} accounts with {FUNDS} each");
    let accounts: Arc<Vec<PublicKey>> = Arc::new(keys.iter().map(|k| k.public()).collect());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let start = Instant::now();

    // Phase 1: half the transfers; a replica is killed at a quarter and restarted at 40%.
    let victim = view(&conns).await.0.unwrap_or(ReplicaId(0)).as_usize();
    let events = vec![
        (txs / 4, Action::Kill(victim)),
        (txs * 2 / 5, Action::Restart(victim)),
    ];
    load(
        &conns,
        &keys,
        &accounts,
        &seen,
        txs / 2,
        events,
        replicas,
        "phase 1",
    )
    .await?;
    wait_caught_up(&conns, &(0..N).collect::<Vec<_>>()).await?;

    // Phase 2: the current leader turns Byzantine (it forges the signatures it sends).
    let byzantine = view(&conns).await.0.unwrap_or(ReplicaId(1)).as_usize();
    replicas.stop(byzantine)?;
    replicas.start(byzantine, true)?;
    println!("demo: replica {byzantine} restarted Byzantine: it forges every signature it sends");
    load(
        &conns,
        &keys,
        &accounts,
        &seen,
        txs - txs / 2,
        Vec::new(),
        replicas,
        "phase 2",
    )
    .await?;
    let elapsed = start.elapsed();

    let correct: Vec<usize> = (0..N).filter(|i| *i != byzantine).collect();
    let end = wait_caught_up(&conns, &correct).await?;
    let terms = view(&conns).await.2;
    for i in 0..N {
        replicas.stop(i)?;
    }
    let states: Vec<(usize, Ledger)> = correct
        .iter()
        .map(|&i| {
            let bytes = std::fs::read(replicas.dump(i)).map_err(|e| e.to_string())?;
            let mut l = Ledger::new(manifest.admin_keys.clone());
            l.restore(&bytes)?;
            Ok((i, l))
        })
        .collect::<Result<_, String>>()?;
    let seen = seen.lock().map_err(|_| "a client task panicked")?;
    report(&seen, &states, &accounts, elapsed, end, terms)
}

enum Action {
    Kill(usize),
    Restart(usize),
}

/// Runs `count` transfers from all clients, with a progress line; performs `events` when the
/// count of finished transfers passes their mark.
#[allow(clippy::too_many_arguments)]
async fn load(
    conns: &Connections,
    keys: &[KeyPair],
    accounts: &Arc<Vec<PublicKey>>,
    seen: &Arc<Mutex<Seen>>,
    count: u64,
    mut events: Vec<(u64, Action)>,
    replicas: &mut Replicas,
    phase: &str,
) -> Result<(), String> {
    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        let mut client = Client::new(conns.clone(), key.clone()).map_err(|e| e.to_string())?;
        let (issued, done, seen, accounts) =
            (issued.clone(), done.clone(), seen.clone(), accounts.clone());
        let me = key.public();
        tasks.push(async_std::task::spawn(async move {
            let mut rng =
                0x9e37_79b9_7f4a_7c15u64 ^ (k as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            while issued.fetch_add(1, Ordering::Relaxed) < count {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let mut to = accounts[(rng % accounts.len() as u64) as usize];
                if to == me {
                    to = accounts[(k + 1) % accounts.len()];
                }
                let amount = 1 + (rng >> 32) % 100;
                let outcome = client
                    .submit(
                        LedgerOp::Transfer {
                            to,
                            amount,
                            memo: Vec::new(),
                        }
                        .encode(),
                    )
                    .await;
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(c) => match LedgerResult::decode(&c.result) {
                        Ok(LedgerResult::Transferred { .. }) => {
                            s.acked.entry(me).or_default().push((amount, to));
                            s.latencies.push(c.latency);
                        }
                        _ => s.refused += 1,
                    },
                    Err(ClientError::Rejected { .. }) => s.refused += 1,
                    Err(_) => *s.unknown.entry(me).or_default() += 1,
                }
                drop(s);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    loop {
        async_std::task::sleep(Duration::from_millis(500)).await;
        let finished = done.load(Ordering::Relaxed);
        while events.first().is_some_and(|(mark, _)| finished >= *mark) {
            let (_, action) = events.remove(0);
            match action {
                Action::Kill(i) => {
                    replicas.kill(i);
                    eprintln!("\ndemo: killed replica {i} (SIGKILL)");
                }
                Action::Restart(i) => {
                    replicas.start(i, false)?;
                    eprintln!("\ndemo: restarted replica {i} from its disk");
                }
            }
        }
        if last.0.elapsed() >= Duration::from_secs(1) || finished >= count {
            let rate = (finished - last.1) as f64 / last.0.elapsed().as_secs_f64();
            let (leader, commit, _) = view(conns).await;
            eprint!(
                "\r{phase}: {finished}/{count} transfers, {rate:.0} tx/s, commit index {commit}, leader {}   ",
                leader.map_or("?".to_string(), |l| l.to_string())
            );
            last = (Instant::now(), finished);
        }
        if finished >= count {
            break;
        }
    }
    for t in tasks {
        t.await;
    }
    eprintln!(
        "\n{phase}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The leader most replicas report, the highest commit index, and the highest term.
async fn view(conns: &Connections) -> (Option<ReplicaId>, Index, u64) {
    let mut leaders = HashMap::new();
    let (mut commit, mut term) = (Index(0), 0);
    for i in 0..N {
        if let Ok(s) = conns
            .status(ReplicaId(i as u32), Duration::from_millis(300))
            .await
        {
            *leaders.entry(s.leader).or_insert(0) += 1;
            commit = commit.max(s.commit_index);
            term = term.max(s.term.0);
        }
    }
    let leader = leaders.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l);
    (leader, commit, term)
}

/// Waits until each of `replicas` executed everything any of them committed; returns that index.
async fn wait_caught_up(conns: &Connections, replicas: &[usize]) -> Result<Index, String> {
    let target = view(conns).await.1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut behind = Vec::new();
        for &i in replicas {
            match conns
                .status(ReplicaId(i as u32), Duration::from_millis(500))
                .await
            {
                Ok(s) if s.applied_index >= target => {}
                Ok(s) => behind.push(format!("replica {i} at {}", s.applied_index)),
                Err(_) => behind.push(format!("replica {i} unreachable")),
            }
        }
        if behind.is_empty() {
            return Ok(target);
        }
        if Instant::now() > deadline {
            return Err(format!("replicas did not catch up to {target}: {behind:?}"));
        }
        async_std::task::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(
    seen: &Seen,
    states: &[(usize, Ledger)],
    accounts: &[PublicKey],
    elapsed: Duration,
    end: Index,
    terms: u64,
) -> Result<(), String> {
    let acknowledged: u64 = seen.acked.values().map(|v| v.len() as u64).sum();
    let unknown: u64 = seen.unknown.values().sum();
    let mut latencies = seen.latencies.clone();
    latencies.sort();
    println!(
        "demo: {acknowledged} transfers acknowledged in {:.1} s ({:.0} tx/s), latency p50 {:.1} ms p99 {:.1} ms, {terms} term changes, final commit index {end}, {unknown} without an outcome, {} refused",
        elapsed.as_secs_f64(),
        acknowledged as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        seen.refused,
    );
    // Each account's count of sent transfers, on every correct replica, against what its
    // client saw acknowledged (plus those whose outcome it never learnt).
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (_, state) in states {
        for account in accounts {
            let acked = seen.acked.get(account).map_or(0, |v| v.len() as u64);
            let maybe = seen.unknown.get(account).copied().unwrap_or(0);
            let sent = state.sent(account);
            lost += acked.saturating_sub(sent);
            duplicated += sent.saturating_sub(acked + maybe);
        }
    }
    let applied_once = if lost == 0 && duplicated == 0 {
        acknowledged
    } else {
        0
    };
    let supply = FUNDS * accounts.len() as u64;
    let supply_conserved = states
        .iter()
        .all(|(_, s)| s.supply() == supply && s.balances().values().sum::<u64>() == supply);
    let replicas_agree = states.windows(2).all(|w| w[0].1 == w[1].1);
    // With every outcome known, the balances are exactly what the acknowledged transfers make.
    if unknown == 0 {
        let mut expected: HashMap<PublicKey, i128> =
            accounts.iter().map(|a| (*a, FUNDS as i128)).collect();
        for (from, list) in &seen.acked {
            for (amount, to) in list {
                *expected.entry(*from).or_default() -= *amount as i128;
                *expected.entry(*to).or_default() += *amount as i128;
            }
        }
        for (i, state) in states {
            for (account, balance) in &expected {
                if state.balance(account) as i128 != *balance {
                    return Err(format!(
                        "replica {i}: an account's balance differs from the acknowledged transfers"
                    ));
                }
            }
        }
    }
    println!(
        "demo: acknowledged={acknowledged} applied_once={applied_once} lost={lost} duplicated={duplicated} supply_conserved={supply_conserved} replicas_agree={replicas_agree}"
    );
    if lost == 0 && duplicated == 0 && supply_conserved && replicas_agree {
        Ok(())
    } else {
        Err("the checks failed".into())
    }
}
