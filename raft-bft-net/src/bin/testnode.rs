//! `raft-bft-testnode`: one replica in a process of its own, running the [`OpCounter`] state
//! machine. The end-to-end and partition tests start it; it is not an application.
//!
//! It runs until its standard input closes (a graceful stop: everything handed to storage is
//! made durable), then writes its state to `--dump` if given. `kill -9` is a crash.

use std::path::PathBuf;

use clap::Parser;
use raft_bft::types::ReplicaId;
use raft_bft_net::testkit::{read_key, read_manifest, OpCounter};
use raft_bft_net::{Node, NodeConfig, StartMode};

#[derive(Parser, Debug)]
#[command(about = "A raft-bft replica running the OpCounter test state machine")]
enum Command {
    /// Runs a replica until its standard input closes.
    Run(Args),
    /// Asks one replica for its status and prints it on one line.
    Status {
        /// The manifest.
        #[arg(long)]
        manifest: PathBuf,
        /// Which replica.
        #[arg(long)]
        replica: u32,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// The manifest (MessagePack, as testkit::write_cluster_files writes it).
    #[arg(long)]
    manifest: PathBuf,
    /// This replica's id.
    #[arg(long)]
    id: u32,
    /// This replica's key file (hex seed).
    #[arg(long)]
    key: PathBuf,
    /// The data directory.
    #[arg(long)]
    data: PathBuf,
    /// The replica lost its disk: rebuild from the peers.
    #[arg(long)]
    rebuild: bool,
    /// Where to write the state (MessagePack) after a graceful stop.
    #[arg(long)]
    dump: Option<PathBuf>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Command::parse() {
        Command::Run(args) => run(args),
        Command::Status { manifest, replica } => status(&manifest, ReplicaId(replica)),
    };
    if let Err(e) = result {
        eprintln!("raft-bft-testnode: {e}");
        std::process::exit(1);
    }
}

fn status(manifest: &std::path::Path, replica: ReplicaId) -> Result<(), String> {
    let manifest = read_manifest(manifest)?;
    let connections = raft_bft_net::Connections::connect(manifest, Default::default())
        .map_err(|e| e.to_string())?;
    let s =
        async_std::task::block_on(connections.status(replica, std::time::Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
    println!(
        "status replica={} term={} leader={} changing_term={} commit={} applied={} checkpoint={} rebuilding={}",
        s.replica, s.term, s.leader, s.changing_term, s.commit_index, s.applied_index,
        s.checkpoint_index, s.rebuilding
    );
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    let manifest = read_manifest(&args.manifest)?;
    let key = read_key(&args.key)?;
    let mut config = NodeConfig::new(manifest, ReplicaId(args.id), key, &args.data);
    if args.rebuild {
        config.start = StartMode::Rebuild;
    }
    async_std::task::block_on(async {
        let node = Node::start(config, OpCounter::default())
            .await
            .map_err(|e| e.to_string())?;
        println!("listening {}", node.local_addr());
        raft_bft_net::stdin_closed().await;
        let state = node
            .inspect(|r| r.app().clone())
            .await
            .map_err(|e| e.to_string())?;
        node.shutdown().await.map_err(|e| e.to_string())?;
        if let Some(path) = args.dump {
            let bytes = raft_bft::codec::encode(&state).map_err(|e| e.to_string())?;
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    })
}
