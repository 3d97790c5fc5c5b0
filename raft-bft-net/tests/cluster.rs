//! A 4-replica cluster over QUIC on 127.0.0.1, in one process: commits, crashes of a follower
//! and of the leader, restarts from disk, and hostile connections.

use std::time::Duration;

use async_std::task::block_on;
use raft_bft::crypto::KeyPair;
use raft_bft::manifest::Manifest;
use raft_bft::types::{Index, ReplicaId};
use raft_bft_net::testkit::{local_manifest, test_params, OpCounter};
use raft_bft_net::tls::{client_config, TlsIdentity};
use raft_bft_net::{close_code, Client, ClientOptions, Limits, NetStats, Node, NodeConfig};

struct TestCluster {
    manifest: Manifest,
    keys: Vec<KeyPair>,
    /// Held for the whole test, so that a restarted node gets its port back.
    sockets: Vec<std::sync::Arc<std::net::UdpSocket>>,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Node<OpCounter>>>,
}

impl TestCluster {
    async fn start(name: &str) -> TestCluster {
        let (manifest, keys, sockets) = local_manifest(name, 4, test_params()).unwrap();
        let mut c = TestCluster {
            manifest,
            keys,
            sockets,
            dir: tempfile::tempdir().unwrap(),
            nodes: (0..4).map(|_| None).collect(),
        };
        for i in 0..4 {
            c.start_node(i).await;
        }
        c
    }

    async fn start_node(&mut self, i: usize) {
        let mut config = NodeConfig::new(
            self.manifest.clone(),
            ReplicaId(i as u32),
            self.keys[i].clone(),
            self.dir.path().join(format!("replica-{i}")),
        );
        config.socket = Some(self.sockets[i].clone());
        self.nodes[i] = Some(Node::start(config, OpCounter::default()).await.unwrap());
    }

    async fn stop_node(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await.unwrap();
        }
    }

    fn node(&self, i: usize) -> &Node<OpCounter> {
        self.nodes[i].as_ref().expect("node running")
    }

    /// The leader as the running replicas see it (the most common answer).
    async fn leader(&self) -> ReplicaId {
        let mut votes = std::collections::BTreeMap::new();
        for node in self.nodes.iter().flatten() {
            let s = node.status().await.unwrap();
            *votes.entry(s.leader).or_insert(0) += 1;
        }
        votes.into_iter().max_by_key(|(_, n)| *n).unwrap().0
    }

    /// Waits until every running replica has executed at least `index`.
    async fn wait_applied(&self, index: Index) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut behind = Vec::new();
            for node in self.nodes.iter().flatten() {
                let s = node.status().await.unwrap();
                if s.applied_index < index {
                    behind.push((s.replica, s.applied_index));
                }
            }
            if behind.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replicas behind {index}: {behind:?}"
            );
            async_std::task::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running replica's state, at the same executed index.
    async fn states(&self) -> Vec<OpCounter> {
        let mut out = Vec::new();
        for node in self.nodes.iter().flatten() {
            out.push(node.inspect(|r| r.app().clone()).await.unwrap());
        }
        out
    }
}

async fn submit_many(client: &mut Client, prefix: &str, n: usize) -> Index {
    let mut last = Index(0);
    for i in 0..n {
        let op = format!("{prefix}-{i}").into_bytes();
        let committed = client
            .submit(op)
            .await
            .unwrap_or_else(|e| panic!("{prefix}-{i}: {e}"));
        assert_eq!(&committed.result[..4], &1u32.to_le_bytes(), "applied once");
        last = last.max(committed.index);
    }
    last
}

#[test]
fn a_cluster_commits_survives_a_follower_and_the_leader_stopping_and_catches_up_from_disk() {
    block_on(async {
        let mut c = TestCluster::start("crashes").await;
        let mut client = Client::connect(
            c.manifest.clone(),
            KeyPair::from_seed([200; 32]),
            ClientOptions::default(),
        )
        .unwrap();

        let first = submit_many(&mut client, "all-up", 40).await;
        c.wait_applied(first).await;

        // A follower stops; the other three go on.
        let leader = c.leader().await;
        let follower = (leader.as_usize() + 1) % 4;
        c.stop_node(follower).await;
        let second = submit_many(&mut client, "follower-down", 40).await;
        assert!(second > first);

        // It restarts from its disk and catches up.
        c.start_node(follower).await;
        c.wait_applied(second).await;

        // The leader stops; the others change term and go on.
        let leader = c.leader().await;
        c.stop_node(leader.as_usize()).await;
        let third = submit_many(&mut client, "leader-down", 40).await;
        assert!(third > second);
        let new_leader = c.leader().await;
        assert_ne!(new_leader, leader, "a new leader took over");

        c.start_node(leader.as_usize()).await;
        let fourth = submit_many(&mut client, "all-back", 10).await;
        c.wait_applied(fourth).await;

        // Every replica holds every acknowledged op exactly once, and they agree.
        let states = c.states().await;
        for state in &states {
            for prefix in ["all-up", "follower-down", "leader-down"] {
                for i in 0..40 {
                    assert_eq!(state.count(format!("{prefix}-{i}").as_bytes()), 1);
                }
            }
            assert_eq!(state.applied(), states[0].applied());
            assert_eq!(state, &states[0]);
        }
        for i in 0..4 {
            c.stop_node(i).await;
        }
    });
}

/// Dials replica `to` of `manifest` with a QUIC endpoint of our own.
async fn dial(
    manifest: &Manifest,
    to: usize,
    identity: Option<&TlsIdentity>,
) -> Result<quinn::Connection, String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let info = &manifest.replicas[to];
    let config = client_config(info.public_key, identity, &Limits::default()).unwrap();
    let addr = info.address.parse().unwrap();
    let conn = endpoint
        .connect_with(config, addr, "raft-bft")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Waits for the connection to close and returns the application code the replica closed it
/// with.
async fn closed_with(conn: &quinn::Connection) -> Option<u64> {
    match async_std::future::timeout(Duration::from_secs(10), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        Ok(other) => panic!("closed otherwise: {other}"),
        Err(_) => None,
    }
}

#[test]
fn unknown_keys_oversized_frames_and_garbage_close_their_connection_and_the_cluster_serves_on() {
    block_on(async {
        let c = TestCluster::start("hostile").await;
        let mut client = Client::connect(
            c.manifest.clone(),
            KeyPair::from_seed([201; 32]),
            ClientOptions::default(),
        )
        .unwrap();
        submit_many(&mut client, "before", 5).await;

        // A replica link from a key the manifest does not list: the handshake fails.
        let stranger = TlsIdentity::new(&KeyPair::from_seed([99; 32])).unwrap();
        let refused = match dial(&c.manifest, 0, Some(&stranger)).await {
            Err(_) => true,
            Ok(conn) => {
                // TLS 1.3 lets the client finish before the server checks its certificate.
                matches!(
                    async_std::future::timeout(Duration::from_secs(10), conn.closed()).await,
                    Ok(quinn::ConnectionError::ConnectionClosed(_))
                        | Ok(quinn::ConnectionError::TransportError(_))
                )
            }
        };
        assert!(refused, "a stranger's replica link was accepted");
        assert!(NetStats::get(&c.node(0).stats().failed_handshakes) >= 1);

        // A client that announces a frame far above the limit.
        let conn = dial(&c.manifest, 1, None).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        assert_eq!(
            closed_with(&conn).await,
            Some(u64::from(close_code::FRAME_TOO_LARGE))
        );
        assert_eq!(NetStats::get(&c.node(1).stats().oversized_frames), 1);

        // A client that sends a well-framed body of garbage.
        let conn = dial(&c.manifest, 2, None).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&raft_bft_net::frame::frame(&[0xc1; 40]))
            .await
            .unwrap();
        assert_eq!(
            closed_with(&conn).await,
            Some(u64::from(close_code::UNDECODABLE))
        );

        // A subscription signed for another connection (here: over a made-up digest) would
        // divert that client's replies: it closes the connection.
        let conn = dial(&c.manifest, 2, None).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let victim = KeyPair::from_seed([201; 32]);
        let replayed = raft_bft_net::wire::ClientRequest::Subscribe {
            client: victim.public(),
            sig: victim.sign(&raft_bft::types::Digest([7; 32])),
        };
        let bytes = raft_bft::codec::encode(&replayed).unwrap();
        send.write_all(&raft_bft_net::frame::frame(&bytes))
            .await
            .unwrap();
        assert_eq!(
            closed_with(&conn).await,
            Some(u64::from(close_code::PROTOCOL))
        );

        // A member (replica 3's key, in a test that plays it) sending garbage on a replica link.
        let member = TlsIdentity::new(&c.keys[3]).unwrap();
        let conn = dial(&c.manifest, 0, Some(&member)).await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(&raft_bft_net::frame::frame(b"not a protocol message"))
            .await
            .unwrap();
        assert_eq!(
            closed_with(&conn).await,
            Some(u64::from(close_code::UNDECODABLE))
        );
        assert!(NetStats::get(&c.node(0).stats().undecodable_frames) >= 1);

        // Anyone who saw a client's signed tx can send it again on a connection of its own
        // (a Byzantine replica sees them all). That must not take the client's replies away
        // from it: here a replay reaches every replica but the leader, and the client still
        // gets f + 1 replies at once, without a retry.
        let mut replays = Vec::new();
        let stale = raft_bft::message::SignedTx::sign(
            &raft_bft::manifest::Cluster::new(c.manifest.clone())
                .unwrap()
                .cluster_id()
                .clone(),
            &victim,
            1,
            b"before-0".to_vec(),
        );
        let leader = c.leader().await.as_usize();
        for r in (0..4).filter(|r| *r != leader) {
            let conn = dial(&c.manifest, r, None).await.unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let bytes =
                raft_bft::codec::encode(&raft_bft_net::wire::ClientRequest::Submit(stale.clone()))
                    .unwrap();
            send.write_all(&raft_bft_net::frame::frame(&bytes))
                .await
                .unwrap();
            replays.push((conn, send, recv));
        }
        async_std::task::sleep(Duration::from_millis(300)).await;
        let retries = client.stats().retries;

        // The cluster serves on.
        let last = submit_many(&mut client, "after", 5).await;
        assert_eq!(
            client.stats().retries,
            retries,
            "a replayed tx diverted the client's replies"
        );
        drop(replays);
        c.wait_applied(last).await;
        for node in c.nodes.into_iter().flatten() {
            node.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_leader_that_forges_signatures_is_replaced_and_the_cluster_goes_on() {
    block_on(async {
        let (manifest, keys, sockets) = local_manifest("forger", 4, test_params()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..4 {
            let mut config = NodeConfig::new(
                manifest.clone(),
                ReplicaId(i as u32),
                keys[i].clone(),
                dir.path().join(i.to_string()),
            );
            config.socket = Some(sockets[i].clone());
            if i == 0 {
                // Replica 0 leads term 0.
                config.byzantine = Some(raft_bft_net::testkit::forged_signatures());
            }
            nodes.push(Node::start(config, OpCounter::default()).await.unwrap());
        }
        let mut client = Client::connect(
            manifest,
            KeyPair::from_seed([202; 32]),
            ClientOptions::default(),
        )
        .unwrap();
        submit_many(&mut client, "forged", 10).await;
        let status = nodes[1].status().await.unwrap();
        assert_ne!(
            status.leader,
            ReplicaId(0),
            "the forging leader still leads"
        );
        assert!(NetStats::get(&nodes[1].stats().invalid_peer_messages) >= 1);
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    });
}
