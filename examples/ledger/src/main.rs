//! `ledger`: set up, run and use a ledger cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use raft_bft::state_machine::StateMachine;

mod demo;
use ledger::files::{self, hex, parse_key};
use ledger::{Ledger, LedgerOp, LedgerResult};
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Manifest;
use raft_bft::types::ReplicaId;
use raft_bft_net::{Client, ClientError, ClientOptions, Connections, Node, NodeConfig};

#[derive(Parser)]
#[command(name = "ledger", about = "A ledger replicated with raft-bft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Makes a key pair: writes its seed to a file and prints its public key.
    Keygen {
        /// The key file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sets up a cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Runs one replica.
    Node {
        /// The node's configuration (written by `cluster init`).
        #[arg(long)]
        config: PathBuf,
        /// Stop gracefully when standard input closes (for supervisors that pipe it).
        #[arg(long)]
        stop_on_stdin_close: bool,
        /// After a graceful stop, write the ledger's state (a snapshot) to this file.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Demo only: this replica forges the signatures it sends (it is Byzantine).
        #[arg(long, hide = true)]
        demo_forge_signatures: bool,
    },
    /// Runs a local 4-replica cluster under load, with a crash and a Byzantine replica, and
    /// checks the result.
    Demo {
        /// Transfers to run in all (half before, half after a replica turns Byzantine).
        #[arg(long, default_value_t = 20_000)]
        txs: u64,
        /// Concurrent clients (each its own account).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Keep the cluster's directory (manifest, keys, data, logs) afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Mints money into an account (needs an admin key of the manifest).
    Mint {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The admin key file.
        #[arg(long)]
        key: PathBuf,
        /// The account (public key, hex).
        #[arg(long)]
        to: String,
        /// How much.
        #[arg(long)]
        amount: u64,
    },
    /// Moves money from the key's account to another.
    Transfer {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The owner's key file.
        #[arg(long)]
        key: PathBuf,
        /// The account credited (public key, hex).
        #[arg(long)]
        to: String,
        /// How much.
        #[arg(long)]
        amount: u64,
        /// Also save the signed tx in this file (`ledger resend` sends it again).
        #[arg(long)]
        save_tx: Option<PathBuf>,
    },
    /// Sends a saved signed tx again (replicas never execute a tx twice).
    Resend {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The key that signed it.
        #[arg(long)]
        key: PathBuf,
        /// The saved tx (from `transfer --save-tx`).
        #[arg(long)]
        tx: PathBuf,
    },
    /// Reads an account's balance (as f + 1 replicas agree).
    Balance {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// The account (public key, hex).
        #[arg(long)]
        account: String,
    },
    /// Shows each replica's term, leader, commit index and lag.
    Status {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Writes a manifest, keys and node configurations for a local cluster.
    Init {
        /// Number of replicas (3f + 1: 4, 7, 10, ...).
        #[arg(long, default_value_t = 4)]
        replicas: usize,
        /// Where to write the files.
        #[arg(long)]
        dir: PathBuf,
        /// The replicas' hosts: one for all (a local cluster), or one per replica, comma
        /// separated (a cluster across machines: copy each node's files to its machine).
        #[arg(long, default_value = "127.0.0.1", value_delimiter = ',')]
        hosts: Vec<String>,
        /// The first replica's UDP port (the others follow); 0 picks free ports.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
    },
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// The cluster's manifest.
    #[arg(long)]
    manifest: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ledger: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Keygen { out } => {
            let key = files::random_key()?;
            files::write_key(&out, &key).map_err(|e| e.to_string())?;
            println!("public key: {}", hex(&key.public().0));
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Init {
                    replicas,
                    dir,
                    hosts,
                    base_port,
                },
        } => {
            if replicas < 4 || (replicas - 1) % 3 != 0 {
                return Err(format!(
                    "--replicas must be 3f + 1 (4, 7, 10, ...), not {replicas}"
                ));
            }
            let manifest =
                files::init_cluster(&dir, replicas, &hosts, base_port, Default::default())
                    .map_err(|e| e.to_string())?;
            println!("cluster {} in {}:", manifest.name, dir.display());
            for r in &manifest.replicas {
                println!(
                    "  replica {} at {}: ledger node --config {}",
                    r.id,
                    r.address,
                    dir.join(format!("node-{}.json", r.id.0)).display()
                );
            }
            println!("  admin key: {}", dir.join("admin.key").display());
            Ok(())
        }
        Command::Node {
            config,
            stop_on_stdin_close,
            dump,
            demo_forge_signatures,
        } => run_node(&config, stop_on_stdin_close, dump, demo_forge_signatures),
        Command::Demo { txs, clients, keep } => demo::run(txs, clients, keep),
        Command::Mint {
            cluster,
            key,
            to,
            amount,
        } => {
            let to = parse_key(&to)?;
            submit(&cluster, &key, LedgerOp::Mint { to, amount })
        }
        Command::Transfer {
            cluster,
            key,
            to,
            amount,
            save_tx,
        } => {
            let to = parse_key(&to)?;
            let op = LedgerOp::Transfer {
                to,
                amount,
                memo: Vec::new(),
            };
            let key = files::read_key(&key).map_err(|e| e.to_string())?;
            let what = match save_tx {
                Some(path) => Outgoing::SignAndSave(op, path),
                None => Outgoing::Op(op),
            };
            execute(&cluster, read_manifest(&cluster)?, key, what)
        }
        Command::Resend { cluster, key, tx } => {
            let key = files::read_key(&key).map_err(|e| e.to_string())?;
            let bytes = std::fs::read(&tx).map_err(|e| format!("{}: {e}", tx.display()))?;
            let tx = raft_bft::codec::decode(&bytes, 1 << 20)
                .map_err(|e| format!("{}: not a saved tx: {e}", tx.display()))?;
            execute(&cluster, read_manifest(&cluster)?, key, Outgoing::Saved(tx))
        }
        Command::Balance { cluster, account } => {
            let account = parse_key(&account)?;
            let key = files::random_key()?;
            let manifest = read_manifest(&cluster)?;
            execute(
                &cluster,
                manifest,
                key,
                Outgoing::Op(LedgerOp::Balance { account }),
            )
        }
        Command::Status { cluster } => status(&cluster),
    }
}

fn read_manifest(args: &ClusterArgs) -> Result<Manifest, String> {
    files::read_manifest(&args.manifest).map_err(|e| e.to_string())
}

fn submit(args: &ClusterArgs, key: &std::path::Path, op: LedgerOp) -> Result<(), String> {
    let key = files::read_key(key).map_err(|e| e.to_string())?;
    let manifest = read_manifest(args)?;
    execute(args, manifest, key, Outgoing::Op(op))
}

/// What to send: a new op, one to sign and save first, or a signed tx saved earlier.
enum Outgoing {
    Op(LedgerOp),
    SignAndSave(LedgerOp, PathBuf),
    Saved(raft_bft::message::SignedTx),
}

/// Sends `what` as the client `key` and prints the result `f + 1` replicas agree on.
fn execute(
    args: &ClusterArgs,
    manifest: Manifest,
    key: KeyPair,
    what: Outgoing,
) -> Result<(), String> {
    let options = ClientOptions {
        timeout: Duration::from_secs(args.timeout),
        ..ClientOptions::default()
    };
    let mut client = Client::connect(manifest, key, options).map_err(|e| e.to_string())?;
    let committed = async_std::task::block_on(async {
        match what {
            Outgoing::Op(op) => client.submit(op.encode()).await,
            Outgoing::SignAndSave(op, path) => {
                let tx = client.sign(op.encode())?;
                let bytes = raft_bft::codec::encode(&tx)
                    .map_err(|e| ClientError::Invalid(e.to_string()))?;
                std::fs::write(&path, bytes)
                    .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))?;
                client.resubmit(tx).await
            }
            Outgoing::Saved(tx) => client.resubmit(tx).await,
        }
    });
    match committed {
        Ok(c) => match LedgerResult::decode(&c.result) {
            Ok(LedgerResult::Rejected(why)) => Err(format!("rejected: {why}")),
            Ok(result) => {
                println!(
                    "{} (index {}, replicas {:?})",
                    describe(&result),
                    c.index,
                    ids(&c.replicas)
                );
                Ok(())
            }
            Err(e) => Err(format!(
                "the replicas agreed on a result that does not decode: {e}"
            )),
        },
        Err(ClientError::Rejected { rejection, .. }) => {
            Err(format!("rejected: {}", refusal(&rejection)))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A protocol-level refusal in words.
fn refusal(rejection: &raft_bft::message::Rejection) -> String {
    use raft_bft::message::Rejection;
    match rejection {
        Rejection::Refused(why) => why.clone(),
        Rejection::Stale { last_executed } => {
            format!("stale: this client already executed a tx with timestamp {last_executed}")
        }
        Rejection::TooLarge { size, limit } => format!("the op is {size} bytes, above {limit}"),
        Rejection::Busy => "the leader is busy".into(),
    }
}

fn ids(replicas: &[ReplicaId]) -> Vec<u32> {
    replicas.iter().map(|r| r.0).collect()
}

fn describe(result: &LedgerResult) -> String {
    match result {
        LedgerResult::Minted { balance } => format!("minted: balance {balance}"),
        LedgerResult::Transferred {
            from_balance,
            to_balance,
            ..
        } => format!("transferred: sender balance {from_balance}, recipient balance {to_balance}"),
        LedgerResult::Balance { balance } => format!("balance {balance}"),
        LedgerResult::Rejected(why) => format!("rejected: {why}"),
    }
}

fn status(args: &ClusterArgs) -> Result<(), String> {
    let manifest = read_manifest(args)?;
    let n = manifest.replicas.len();
    let connections =
        Connections::connect(manifest, ClientOptions::default()).map_err(|e| e.to_string())?;
    let reports: Vec<_> = async_std::task::block_on(async {
        let mut out = Vec::new();
        for i in 0..n {
            out.push(
                connections
                    .status(ReplicaId(i as u32), Duration::from_secs(2))
                    .await,
            );
        }
        out
    });
    let top = reports
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|s| s.commit_index.0))
        .max()
        .unwrap_or(0);
    for (i, report) in reports.iter().enumerate() {
        match report {
            Ok(s) => println!(
                "replica {i}: term {} leader {} commit {} applied {} lag {}{}",
                s.term,
                s.leader,
                s.commit_index,
                s.applied_index,
                top - s.commit_index.0.min(top),
                if s.changing_term {
                    " (changing term)"
                } else {
                    ""
                }
            ),
            Err(e) => println!("replica {i}: unreachable ({e})"),
        }
    }
    Ok(())
}

fn run_node(
    config: &std::path::Path,
    stop_on_stdin_close: bool,
    dump: Option<PathBuf>,
    forge: bool,
) -> Result<(), String> {
    let node = files::read_node(config).map_err(|e| e.to_string())?;
    let manifest = files::read_manifest(&node.manifest).map_err(|e| e.to_string())?;
    let key = files::read_key(&node.key).map_err(|e| e.to_string())?;
    let ledger = Ledger::new(manifest.admin_keys.clone());
    let mut config = NodeConfig::new(manifest, ReplicaId(node.id), key, &node.data);
    if let Some(listen) = &node.listen {
        config.listen = Some(
            listen
                .parse()
                .map_err(|e| format!("listen address {listen:?}: {e}"))?,
        );
    }
    if forge {
        config.byzantine = Some(raft_bft_net::testkit::forged_signatures());
    }
    async_std::task::block_on(async {
        let node = Node::start(config, ledger)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("replica {} listening on {}", node.id(), node.local_addr());
        if !stop_on_stdin_close {
            // Runs until killed: every reply waited for its durable state, so a kill loses
            // nothing a client saw acknowledged.
            return node.wait().await.map_err(|e| e.to_string());
        }
        raft_bft_net::stdin_closed().await;
        let state = node
            .inspect(|r| r.app().snapshot())
            .await
            .map_err(|e| e.to_string())?;
        node.shutdown().await.map_err(|e| e.to_string())?;
        if let Some(path) = dump {
            std::fs::write(&path, state).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    })
}
