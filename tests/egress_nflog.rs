//! NFLOG groups (issue #19): a group another socket holds is skipped, and instances start
//! apart, so two gateways in one network namespace never read each other's denials.
//! Root only (binding a group needs CAP_NET_ADMIN); runs in a network namespace of its own.

use nix::sched::CloneFlags;
use portcullis::egress::nflog::{base_group, Listener};

#[test]
fn a_taken_group_is_skipped_and_each_instance_starts_apart() {
    if !nix::unistd::geteuid().is_root() {
        let msg = "binding an NFLOG group needs root";
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{msg}");
        eprintln!("\n!!!!!!!! SKIPPING: {msg} !!!!!!!!\n");
        return;
    }
    let groups = std::thread::spawn(|| {
        // This thread only: a fresh namespace with no group bound yet.
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
        let first = Listener::open("default").expect("first listener");
        let second = Listener::open("default").expect("second listener, same instance");
        let other = Listener::open("team-a").expect("another instance");
        (first.group, second.group, other.group)
    })
    .join()
    .expect("namespace thread");
    assert_eq!(
        groups.0,
        base_group("default"),
        "the derived group when free"
    );
    assert_eq!(groups.1, groups.0 + 1, "the next one when it is taken");
    assert_eq!(groups.2, base_group("team-a"));
    assert_ne!(groups.2, groups.0, "another instance starts elsewhere");
}
