//! Proof under real faults: the tracker cluster on separate hosts (network
//! namespaces), a nemesis that partitions, drops, delays, pauses, kills and
//! replaces members, a workload that records every operation, and a
//! linearizability checker for that history.
//!
//! - [`history`]: the recorded operations (the workers' output).
//! - [`model`] and [`check`]: the sequential model of the registry and the
//!   Wing-Gong/Lowe search, split by key.
//! - [`relay`]: the UDP relay that delays, reorders, duplicates and drops
//!   packets in front of a member's port (the kernel has no netem).
//! - [`workload`]: the clients that make the history.
//! - [`nemesis`]: the fault schedule, a function of the seed.
//! - [`runner`]: the test hosts, processes, faults and final checks.
//! - [`report`]: the verdicts and the printed report.

pub mod check;
pub mod history;
pub mod model;
pub mod nemesis;
pub mod relay;
pub mod report;
pub mod runner;
pub mod workload;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on this
/// machine, whatever network namespace it runs in.
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
