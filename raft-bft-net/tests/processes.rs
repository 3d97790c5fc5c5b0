//! End to end with real processes: four replica processes on loopback under a steady client
//! load; the leader is killed with SIGKILL mid-load and restarted. Every tx a client saw
//! acknowledged must be in the state of every replica, exactly once.

mod support;

use std::time::Duration;

use async_std::task::block_on;
use raft_bft_net::testkit::{local_manifest, test_params};
use support::{view, Load, Processes};

#[test]
fn kill_9_of_the_leader_under_load_loses_no_acknowledged_tx() {
    let dir = support::test_dir("e2e-kill");
    let (manifest, keys, sockets) = local_manifest("e2e-kill", 4, test_params()).unwrap();
    drop(sockets); // the replica processes bind the ports themselves
    let mut procs = Processes::new(dir.path(), manifest.clone(), &keys, vec![]);
    for i in 0..4 {
        procs.start(i);
    }
    block_on(async {
        let load = Load::start(&manifest, 16, "kill");
        async_std::task::sleep(Duration::from_secs(3)).await;
        let (leader, before) = view(&load.connections, 4).await;
        let leader = leader.expect("a leader").as_usize();
        assert!(
            before.0 > 0,
            "the cluster committed nothing before the kill"
        );

        procs.kill9(leader);
        async_std::task::sleep(Duration::from_secs(4)).await;
        let (new_leader, during) = view(&load.connections, 4).await;
        assert_ne!(
            new_leader.map(|l| l.as_usize()),
            Some(leader),
            "the killed leader is still reported"
        );
        assert!(
            during > before,
            "no progress after the leader was killed ({before} -> {during})"
        );

        procs.start(leader);
        async_std::task::sleep(Duration::from_secs(3)).await;
        let (result, end) = support::finish_and_check(load, &mut procs).await;
        println!(
            "e2e: acknowledged={} unknown={} commit_index={} killed_leader={leader}",
            result.acknowledged.len(),
            result.unknown.len(),
            end
        );
        assert!(
            result.acknowledged.len() > 100,
            "too little load: {}",
            result.acknowledged.len()
        );
    });
}
