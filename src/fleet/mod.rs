//! What several replicas of one gateway share, and how each is told apart.
//!
//! Replicas are identical and keep no shared state in memory: shared quotas live in Redis
//! ([`quota_store`], one atomic GCRA script per checked call), each replica writes its own audit
//! chain under its replica name, and legacy sessions stay on the replica that created them (the
//! load balancer learns the session id). HAProxy and Redis are the engines; there is no
//! consensus, gossip or membership code here. A request whose held state lives on another replica
//! is forwarded there over an authenticated [`hop`], in TLS to an `https://` replica
//! ([`connector`]).

pub mod connector;
pub mod hop;
pub mod quota_store;
pub mod replica;

pub use quota_store::{Full, RedisQuotas, Step, StoreError};
