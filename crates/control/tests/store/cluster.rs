//! What only a cluster of etcd members shows: a watch goes on across a restart of the member
//! its client talks to and across the loss of the leader member, with the changes made
//! meanwhile through another member arriving once each, in order; a follower behind a
//! compaction is reset.

use std::time::{Duration, Instant};

use ipshadow_control::{EtcdStore, Store, Txn, TxnOutcome, Watcher};

use super::etcd::EtcdCluster;
use super::{follow, proxy};

const PREFIX: &str = "/ipshadow-test";

/// A put that waits out an election (etcd refuses proposals while it has no leader).
fn put_eventually(store: &impl Store, key: &str, value: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.txn(Txn::new().put(key, value.as_bytes().to_vec())) {
            Ok(TxnOutcome::Committed(revision)) => return revision,
            other => assert!(Instant::now() < deadline, "no write of {key} within 30 s: {other:?}"),
        }
        // Polling a condition: the next try at the write.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The next `n` changes of `watcher` as (key, revision), then checks none follows.
fn next_changes(watcher: &Watcher, n: usize) -> Vec<(String, u64)> {
    let changes: Vec<_> = (0..n)
        .map(|_| watcher.next_timeout(Duration::from_secs(30)).expect("a change made meanwhile"))
        .map(|e| (e.key().to_owned(), e.revision()))
        .collect();
    assert!(watcher.next_timeout(Duration::from_millis(300)).is_none(), "nothing twice");
    changes
}

fn expected(from: u64, to: u64) -> Vec<(String, u64)> {
    (from..=to).map(|i| (format!("/m/{i}"), i)).collect()
}

pub fn a_watch_resumes_across_a_restart_of_its_member(cluster: &mut EtcdCluster) {
    let watched = EtcdStore::connect(&[cluster.member(0).endpoint()], PREFIX).unwrap();
    let other = EtcdStore::connect(&[cluster.member(1).endpoint()], PREFIX).unwrap();
    put_eventually(&other, "/m/1", "a");
    let watcher = watched.watch("/m/", 0).unwrap();
    assert_eq!(next_changes(&watcher, 1), expected(1, 1));

    cluster.kill(0);
    for i in 2..=5 {
        assert_eq!(put_eventually(&other, &format!("/m/{i}"), "meanwhile"), i);
    }
    cluster.restart(0);
    put_eventually(&other, "/m/6", "after");
    assert_eq!(next_changes(&watcher, 5), expected(2, 6));
    assert!(watcher.failure().is_none());
}

pub fn a_watch_goes_on_when_the_leader_member_dies(cluster: &mut EtcdCluster) {
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let on_all = cluster.store(PREFIX);
    let on_leader = EtcdStore::connect(&[cluster.member(leader).endpoint()], PREFIX).unwrap();
    let writer = EtcdStore::connect(&[cluster.member(follower).endpoint()], PREFIX).unwrap();
    put_eventually(&writer, "/m/1", "a");
    let (all, only) = (on_all.watch("/m/", 0).unwrap(), on_leader.watch("/m/", 0).unwrap());
    assert_eq!(next_changes(&all, 1), expected(1, 1));
    assert_eq!(next_changes(&only, 1), expected(1, 1));

    let killed = Instant::now();
    cluster.kill(leader);
    let new_leader = cluster.leader();
    let elected = killed.elapsed();
    assert_ne!(new_leader, leader);
    assert_eq!(put_eventually(&writer, "/m/2", "meanwhile"), 2);
    println!(
        "etcd leader member {leader} killed: member {new_leader} leads after {elected:?}, the first write commits after {:?}",
        killed.elapsed()
    );
    for i in 3..=5 {
        assert_eq!(put_eventually(&writer, &format!("/m/{i}"), "meanwhile"), i);
    }
    // A client of every member goes on through the others.
    assert_eq!(next_changes(&all, 4), expected(2, 5));
    // A client of the dead leader only goes on once it is back.
    cluster.restart(leader);
    assert_eq!(next_changes(&only, 4), expected(2, 5));
    put_eventually(&writer, "/m/6", "after");
    assert_eq!(next_changes(&all, 1), expected(6, 6));
    assert_eq!(next_changes(&only, 1), expected(6, 6));
}

pub fn a_follower_compacted_past_is_reset(cluster: &mut EtcdCluster) {
    let relay = proxy::Proxy::start(cluster.member(0).client_port());
    let watched = EtcdStore::connect(&[relay.endpoint()], PREFIX).unwrap();
    let direct = EtcdStore::connect(&[cluster.member(1).endpoint()], PREFIX).unwrap();
    follow::a_follower_compacted_past_is_reset_then_follows(&direct, watched, || relay.cut(), || relay.restore());
}
