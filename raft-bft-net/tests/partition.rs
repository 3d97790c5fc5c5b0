//! A partition with Linux network namespaces: one namespace per replica process, each joined by
//! a veth link to a bridge (the test's clients sit on the bridge). Cutting a replica's link
//! isolates it; healing restores it.
//!
//! Needs root and iproute2 (`ip`); `.ci/run` installs iproute2 if it is missing. Without them
//! the test fails with a message saying so: it never skips silently.

mod support;

use std::process::Command;
use std::time::Duration;

use async_std::task::block_on;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Manifest;
use raft_bft::types::Index;
use raft_bft_net::testkit::test_params;
use support::{view, Load, Processes};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("this test needs iproute2's `ip` (apt-get install iproute2): {e}")
    });
    assert!(
        out.status.success(),
        "`ip {}` failed (this test needs root and network namespaces): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bridge(args: &[&str]) {
    let out = Command::new("bridge")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs iproute2's `bridge` (apt-get install iproute2): {e}")
        });
    assert!(
        out.status.success(),
        "`bridge {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces, veth links and bridge of one test; removed on drop.
struct Net {
    tag: String,
    n: usize,
    subnet: String,
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }
    fn link(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }
    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }
    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    fn new(n: usize) -> Net {
        let pid = std::process::id();
        let net = Net {
            tag: format!("rb{}", pid % 100_000),
            n,
            subnet: format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250),
        };
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.254/24", net.subnet), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 0..n {
            let (ns, link) = (net.ns(i), net.link(i));
            let inner = format!("{}p", link);
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &link, "master", &br]);
            ip(&["link", "set", &link, "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &inner,
            ]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inner, "up"]);
        }
        net
    }

    /// Cuts replica `i` off from everyone: the bridge stops forwarding to and from its link.
    /// The link keeps its carrier, as behind a failed switch: the replica's packets leave and
    /// are lost (taking the link down instead would make its sends block locally).
    fn cut(&self, i: usize) {
        bridge(&["link", "set", "dev", &self.link(i), "state", "0"]);
    }

    fn heal(&self, i: usize) {
        bridge(&["link", "set", "dev", &self.link(i), "state", "3"]);
    }

    /// The command prefix that runs a program in replica `i`'s namespace.
    fn prefix(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.ns(i)])
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status();
        };
        for i in 0..self.n {
            quiet(&["netns", "del", &self.ns(i)]);
            quiet(&["link", "del", &self.link(i)]);
        }
        quiet(&["link", "del", &self.bridge()]);
    }
}

/// Replica `i`'s commit index, asked from inside its own namespace (reachable while cut off).
fn commit_from_inside(net: &Net, procs: &Processes, i: usize) -> Index {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.ns(i)])
        .arg(env!("CARGO_BIN_EXE_raft-bft-testnode"))
        .args(["status", "--replica", &i.to_string(), "--manifest"])
        .arg(procs.dir.join("manifest.mpk"))
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status of {i}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("commit="))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no commit index in {text:?}"));
    Index(commit)
}

#[test]
fn a_minority_partition_makes_no_progress_loses_nothing_and_converges_after_healing() {
    let net = Net::new(4);
    let keys: Vec<KeyPair> = (0..4u8)
        .map(|i| KeyPair::from_seed([0x70 + i; 32]))
        .collect();
    let manifest = Manifest::new(
        "partition",
        keys.iter()
            .enumerate()
            .map(|(i, k)| (k.public(), format!("{}:7000", net.addr(i)))),
        test_params(),
    );
    let dir = support::test_dir("partition");
    let prefixes = (0..4).map(|i| net.prefix(i)).collect();
    let mut procs = Processes::new(dir.path(), manifest.clone(), &keys, prefixes);
    for i in 0..4 {
        procs.start(i);
    }
    block_on(async {
        let load = Load::start(&manifest, 8, "partition");
        async_std::task::sleep(Duration::from_secs(3)).await;
        let (leader, before) = view(&load.connections, 4).await;
        assert!(before.0 > 0, "nothing committed before the partition");
        // Cut off the leader: the minority holds the replica that led.
        let isolated = leader.expect("a leader").as_usize();
        net.cut(isolated);
        async_std::task::sleep(Duration::from_secs(1)).await;
        let minority_at_cut = commit_from_inside(&net, &procs, isolated);
        let (_, majority_at_cut) = view(&load.connections, 4).await;
        async_std::task::sleep(Duration::from_secs(4)).await;
        let minority_later = commit_from_inside(&net, &procs, isolated);
        let (new_leader, majority_later) = view(&load.connections, 4).await;
        assert_eq!(
            minority_later, minority_at_cut,
            "the isolated replica committed on its own"
        );
        assert!(
            majority_later > majority_at_cut,
            "the majority made no progress ({majority_at_cut} -> {majority_later})"
        );
        assert_ne!(new_leader.map(|l| l.as_usize()), Some(isolated));

        net.heal(isolated);
        async_std::task::sleep(Duration::from_secs(2)).await;
        let (result, end) = support::finish_and_check(load, &mut procs).await;
        println!(
            "partition: isolated={isolated} minority_commit={minority_at_cut}->{minority_later} majority_commit={majority_at_cut}->{majority_later} acknowledged={} final_commit={end} converged=true",
            result.acknowledged.len()
        );
    });
}
