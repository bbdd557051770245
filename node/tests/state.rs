//! The state file of one home under commands running at once, with real
//! processes (the lock is an `flock` between processes, so threads of one
//! process would not show it): two children of this test binary each
//! record their own files in one home through `Home::update_state`, the
//! path every command takes, interleaved; afterwards every update of both
//! is in the file, and no temporary file is left behind.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use node::{home::Home, state::FileRecord};
use tracker_cluster::testing::procs::ChildGuard;

/// Set in a child: `HOME|TAG|COUNT`.
const CHILD: &str = "QUORRENT_STATE_TEST_CHILD";
/// What a child prints once it is ready to start.
const READY: &str = "child-ready";
const UPDATES: usize = 150;
const LIMIT: Duration = Duration::from_secs(120);

/// The body of the child processes of
/// `two_processes_updating_one_home_lose_nothing`; does nothing unless
/// that test started this process.
#[test]
fn child_records_its_files() {
    let Ok(spec) = std::env::var(CHILD) else { return };
    let [dir, tag, count]: [&str; 3] = spec.splitn(3, '|').collect::<Vec<_>>().try_into().unwrap();
    let home = Home::open(Some(PathBuf::from(dir)), None).unwrap();
    // Ready; then wait for the parent's go, so that both run at once.
    println!("{READY}");
    std::io::stdout().flush().unwrap();
    std::io::stdin().lock().read_line(&mut String::new()).unwrap();
    for i in 0..count.parse::<usize>().unwrap() {
        home.update_state(|s| {
            s.files.insert(format!("{tag}-{i:04}"), record(tag, i));
        })
        .unwrap();
    }
}

fn record(tag: &str, i: usize) -> FileRecord {
    FileRecord {
        name: format!("{tag}-{i}"),
        size: i as u64,
        path: PathBuf::from("/data").join(tag).join(i.to_string()),
        partial_in: None,
    }
}

/// Starts a child recording `count` files tagged `tag`, and waits until
/// it is ready.
fn spawn_child(home: &Path, tag: &str, count: usize) -> (ChildGuard, std::process::ChildStdin) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_records_its_files", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{}|{tag}|{count}", home.display()))
        .env_remove("QUORRENT_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        // (After libtest's "test NAME ... " on the same line.)
        lines.any(|l| l.unwrap().ends_with(READY)),
        "child {tag} ended before it was ready"
    );
    // The rest of its output (libtest's report) must not meet a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (ChildGuard(child), stdin)
}

fn wait_success(child: &mut ChildGuard, tag: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "child {tag}: {status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "child {tag} still running after {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two processes each make `UPDATES` read-modify-writes of one home's
/// state at the same time: the lock and the re-read under it keep every
/// one of them (without them, each write drops what the other process
/// wrote since its read).
#[test]
fn two_processes_updating_one_home_lose_nothing() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("home");
    // The key pair is made once, before the children open the home.
    let home = Home::open(Some(dir.clone()), None).unwrap();
    let (mut a, mut a_in) = spawn_child(&dir, "a", UPDATES);
    let (mut b, mut b_in) = spawn_child(&dir, "b", UPDATES);
    a_in.write_all(b"go\n").unwrap();
    b_in.write_all(b"go\n").unwrap();
    wait_success(&mut a, "a");
    wait_success(&mut b, "b");

    let files = home.state().unwrap().files;
    for tag in ["a", "b"] {
        for i in 0..UPDATES {
            let key = format!("{tag}-{i:04}");
            assert_eq!(files.get(&key), Some(&record(tag, i)), "{key} was lost");
        }
    }
    assert_eq!(files.len(), 2 * UPDATES);
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("state"))
        .collect();
    left.sort();
    assert_eq!(left, ["state.json", "state.lock"], "no temporary file is left");
}
