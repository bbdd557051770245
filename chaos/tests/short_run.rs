//! The short chaos run that CI makes (about 2 minutes): every fault kind
//! at least once against 3 members on their own test hosts, the history
//! checked for linearizability, nothing lost or doubled, one leader per
//! term, members equal at the end. Needs root (network namespaces); as
//! another user it says why and passes without running.

use std::{path::Path, process::Command};

#[test]
fn every_fault_kind_once_and_the_history_is_linearizable() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: the chaos run needs root for network namespaces");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    let chaos = Path::new(env!("CARGO_BIN_EXE_quorrent-chaos"));
    let bins = chaos.parent().expect("binary folder");
    // The members and proxies are other packages' binaries: build them
    // (a no-op after `cargo test --workspace`).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "--quiet", "-p", "tracker-cluster", "-p", "proxy", "--bins"])
        .current_dir(root)
        .status()
        .expect("cargo build");
    assert!(st.success(), "building the tracker and proxy binaries");
    let out = tempfile::Builder::new()
        .prefix("chaos-run-")
        .tempdir()
        .expect("temp dir");
    // A name and subnet of this process's own, so runs can go side by side.
    let pid = std::process::id();
    let name = format!("c{}", pid % 100_000);
    let prefix = format!("10.{}.{}", 200 + pid % 50, (pid / 50) % 250);
    let seed = std::env::var("CHAOS_SEED").unwrap_or_else(|_| "42".into());
    let run = Command::new(chaos)
        .args(["run", "--time", "100", "--clients", "16", "--client-hosts", "2"])
        .args(["--seed", &seed, "--name", &name, "--prefix", &prefix])
        .arg("--out")
        .arg(out.path())
        .arg("--bins")
        .arg(bins)
        .arg("--root")
        .arg(root)
        .output()
        .expect("quorrent-chaos runs");
    let report = String::from_utf8_lossy(&run.stdout);
    let log = String::from_utf8_lossy(&run.stderr);
    eprintln!("{log}\n{report}");
    if !run.status.success() {
        // Keep the logs, configs and history of a failed run.
        let kept = out.keep();
        eprintln!("the run's files are kept in {}", kept.display());
    }
    assert!(run.status.success(), "the chaos run failed ({}):\n{report}", run.status);
    for kind in ["partition:", "loss:", "delay:", "pause:", "kill:", "replace:"] {
        assert!(report.contains(kind), "no {kind} fault in the report:\n{report}");
    }
    assert!(report.contains("linearizable: yes"), "{report}");
    assert!(report.contains("lost acknowledged writes: 0"), "{report}");
    // Nothing of the test hosts is left.
    let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&format!("{name}-")),
        "test hosts left behind"
    );
}
