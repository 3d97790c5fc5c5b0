//! The `ledger` command line against a real local cluster of four replica processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ledger");

/// Four `ledger node` processes; stopped gracefully (standard input closed) on drop.
struct LocalCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Child>,
}

impl LocalCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = ledger(
            &["cluster", "init", "--base-port", "0", "--dir"],
            &[dir.path()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes = (0..4)
            .map(|i| {
                Command::new(BIN)
                    .args(["node", "--stop-on-stdin-close", "--config"])
                    .arg(dir.path().join(format!("node-{i}.json")))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        LocalCluster { dir, nodes }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a client subcommand against this cluster.
    fn run(&self, args: &[&str]) -> Output {
        let manifest = self.path("manifest.json");
        ledger(args, &[Path::new("--manifest"), &manifest])
    }

    fn keygen(&self, name: &str) -> (PathBuf, String) {
        let path = self.path(name);
        let out = ledger(&["keygen", "--out"], &[&path]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let public = text
            .trim()
            .strip_prefix("public key: ")
            .unwrap()
            .to_string();
        (path, public)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            drop(node.stdin.take());
        }
        for node in &mut self.nodes {
            let _ = node.wait();
        }
    }
}

fn ledger(args: &[&str], paths: &[&Path]) -> Output {
    Command::new(BIN).args(args).args(paths).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "expected success: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn refused(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn transfers_refusals_replays_and_forged_signatures_through_the_cli() {
    let c = LocalCluster::start();
    let (alice_key, alice) = c.keygen("alice.key");
    let (bob_key, bob) = c.keygen("bob.key");
    let admin = c.path("admin.key");
    let key = |p: &Path| p.to_str().unwrap().to_string();

    let out = ok(&c.run(&[
        "mint",
        "--to",
        &alice,
        "--amount",
        "100",
        "--key",
        &key(&admin),
    ]));
    assert!(out.starts_with("minted: balance 100"), "{out}");
    let out = ok(&c.run(&[
        "transfer",
        "--to",
        &bob,
        "--amount",
        "30",
        "--key",
        &key(&alice_key),
    ]));
    assert!(
        out.starts_with("transferred: sender balance 70, recipient balance 30"),
        "{out}"
    );

    // An overdraft is refused with its reason and changes nothing.
    let why = refused(&c.run(&[
        "transfer",
        "--to",
        &alice,
        "--amount",
        "31",
        "--key",
        &key(&bob_key),
    ]));
    assert!(
        why.contains("overdraft: the balance is 30, the transfer 31"),
        "{why}"
    );
    // Only an admin key mints.
    let why = refused(&c.run(&[
        "mint",
        "--to",
        &bob,
        "--amount",
        "5",
        "--key",
        &key(&bob_key),
    ]));
    assert!(why.contains("only an admin key may mint"), "{why}");

    let out = ok(&c.run(&["balance", "--account", &alice]));
    assert!(out.starts_with("balance 70"), "{out}");
    let out = ok(&c.run(&["balance", "--account", &bob]));
    assert!(out.starts_with("balance 30"), "{out}");

    // A saved tx sent again is not applied twice: the replicas answer with the same result.
    let saved = c.path("transfer.tx");
    let first = ok(&c.run(&[
        "transfer",
        "--to",
        &bob,
        "--amount",
        "10",
        "--key",
        &key(&alice_key),
        "--save-tx",
        &key(&saved),
    ]));
    assert!(
        first.starts_with("transferred: sender balance 60, recipient balance 40"),
        "{first}"
    );
    let again = ok(&c.run(&["resend", "--key", &key(&alice_key), "--tx", &key(&saved)]));
    let upto_replicas = |s: &str| s.split(", replicas").next().unwrap_or_default().to_string();
    assert_eq!(
        upto_replicas(&again),
        upto_replicas(&first),
        "the replay got another result"
    );
    let out = ok(&c.run(&["balance", "--account", &alice]));
    assert!(
        out.starts_with("balance 60"),
        "the replay moved money again: {out}"
    );

    // The same tx with its signature altered is refused as invalid.
    let mut bytes = std::fs::read(&saved).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let forged = c.path("forged.tx");
    std::fs::write(&forged, bytes).unwrap();
    let why = refused(&c.run(&["resend", "--key", &key(&alice_key), "--tx", &key(&forged)]));
    assert!(why.contains("signature or size invalid"), "{why}");
    let out = ok(&c.run(&["balance", "--account", &bob]));
    assert!(out.starts_with("balance 40"), "{out}");

    let out = ok(&c.run(&["status"]));
    assert_eq!(
        out.lines().filter(|l| l.contains("lag")).count(),
        4,
        "{out}"
    );
}
