//! How long the dashboard takes to show a new leader after the leader is
//! SIGKILLed, as a person would see it: headless Chromium keeps the page
//! open; each round reads the leader from the page, SIGKILLs that member's
//! process (its pid from `DIR/tracker-ID.pid`), waits until the page's
//! leader badge names another member, and restarts the killed member
//! (`BIN --config DIR/tracker-ID.json`) and waits for the cluster to
//! settle (all up, one leader for 2 s) before the next round. Used by
//! `scripts/bench-observe.sh`; prints one JSON line per round and a
//! summary.
//!
//! Usage: dashboard_failover URL DIR TRACKER_BIN ROUNDS

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const T: Duration = Duration::from_secs(30);

/// The leader the page shows once the cluster has settled: every member
/// up and the same leader and term on the page for `SETTLE` (a restarted
/// member may still stir an election; the kill is of a settled leader).
fn leader_on_page(b: &mut webtest::Browser) -> webtest::Result<u64> {
    const SETTLE: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + T;
    let mut since: Option<(String, Instant)> = None;
    loop {
        let v = b.wait_for(
            "(() => { const b = document.querySelector('#leader'); \
             return document.querySelectorAll('tr.member[data-up=\"true\"]').length >= 3 && b.dataset.leader !== '' \
             ? b.dataset.leader + '/' + b.dataset.term : false; })()",
            T,
        )?;
        let now = v.as_str().unwrap_or_default().to_string();
        match &since {
            Some((seen, t)) if *seen == now => {
                if t.elapsed() >= SETTLE {
                    let leader = now.split('/').next().and_then(|l| l.parse().ok());
                    return Ok(leader.expect("a member id"));
                }
            }
            _ => since = Some((now, Instant::now())),
        }
        assert!(Instant::now() < deadline, "the cluster never settled");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid_of(dir: &Path, id: u64) -> i32 {
    let p = dir.join(format!("tracker-{id}.pid"));
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .expect("a pid")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, dir, bin, rounds] = &args[..] else {
        return Err("usage: dashboard_failover URL DIR TRACKER_BIN ROUNDS".into());
    };
    let (dir, rounds): (PathBuf, usize) = (dir.into(), rounds.parse()?);
    let mut b = webtest::Browser::launch()?;
    b.goto(url)?;
    let mut times = Vec::new();
    for round in 1..=rounds {
        let old = leader_on_page(&mut b)?;
        let pid = pid_of(&dir, old);
        let killed = Instant::now();
        let status = Command::new("kill").args(["-9", &pid.to_string()]).status()?;
        if !status.success() {
            return Err(format!("kill -9 {pid} failed").into());
        }
        let new = b.wait_for(
            &format!(
                "(() => {{ const l = document.querySelector('#leader').dataset.leader; \
                 return l !== '' && l !== '{old}' ? l : false; }})()"
            ),
            T,
        )?;
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        times.push(ms);
        println!(
            "{}",
            serde_json::json!({ "round": round, "killed": old, "new_leader": new, "ms": ms.round() })
        );
        // Restart the killed member and wait until the page shows it up.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("tracker-{old}.out")))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(dir.join(format!("tracker-{old}.json")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        std::fs::write(dir.join(format!("tracker-{old}.pid")), child.id().to_string())?;
        b.wait_for(
            &format!("document.querySelector('tr.member[data-id=\"{old}\"]').dataset.up === 'true'"),
            T,
        )?;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "rounds": times.len(),
            "median_ms": median.round(),
            "max_ms": times.last().map(|m| m.round()),
            "min_ms": times.first().map(|m| m.round()),
        })
    );
    Ok(())
}
