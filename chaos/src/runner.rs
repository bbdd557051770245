//! The chaos run: makes the test hosts (`scripts/testnet.sh`), starts the
//! members (each behind its Raft relay), the proxies and the workers in
//! their own namespaces, plays the nemesis schedule, watches every
//! member's view of (term, leader), stops the workload, reads the final
//! state, checks the history and writes the report.
//!
//! Host layout (as testnet.sh makes it): the bridge PREFIX.1 (this
//! process), member i PREFIX.(10+i), proxy i PREFIX.(20+i), client host i
//! PREFIX.(30+i). Member i's API is on :7401, its Raft port on :7411 behind
//! a relay on :7412 (the address everyone else uses).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use protocol::tracker_api::ClusterStatus;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::mpsc,
};
use tracker_cluster::network::{management, raft_network_impl::Network};

use crate::{
    history::Op,
    mono_ns,
    nemesis::{self, Fault, Kind},
    report::{self, FaultRecord, Summary},
    workload,
};

const API_PORT: u16 = 7401;
const RAFT_PORT: u16 = 7411;
const RELAY_PORT: u16 = 7412;
const PROXY_PORT: u16 = 7400;

/// What to run (the `run` command's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Seconds of workload under faults.
    #[arg(long = "time", default_value_t = 120.0)]
    pub secs: f64,
    /// Fault kinds, comma-separated: partition, loss, delay, pause, kill, replace.
    #[arg(
        long = "faults",
        value_delimiter = ',',
        value_parser = Kind::parse,
        default_value = "partition,loss,delay,pause,kill,replace"
    )]
    pub kinds: Vec<Kind>,
    /// Seed of the fault schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Tracker members: 3 or 5.
    #[arg(long, default_value_t = 3)]
    pub trackers: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Test hosts the clients are spread over (at most 9).
    #[arg(long, default_value_t = 4)]
    pub client_hosts: u32,
    /// Files in the key space (fewer: more conflicts; at most 100).
    #[arg(long, default_value_t = 8)]
    pub files: u32,
    /// Shared user names for contended Register and Login.
    #[arg(long, default_value_t = 4)]
    pub users: u32,
    /// Output folder (configs, certificates, data, logs, history, report).
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
    /// Folder holding quorrent-tracker, quorrent-proxy and quorrent-chaos
    /// (default: this binary's folder).
    #[arg(long, default_value_os_t = own_folder())]
    pub bins: PathBuf,
    /// The repository root (for scripts/testnet.sh).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Name prefix of the test hosts (at most 6 characters).
    #[arg(long, default_value = "chaos")]
    pub name: String,
    /// The test hosts' /24 prefix, e.g. 10.78.0.
    #[arg(long, default_value = "10.78.0")]
    pub prefix: String,
    /// Most search steps of the checker per key.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_steps: u64,
    /// Files registered before the workload starts (a replaced member then
    /// catches up from a snapshot this large).
    #[arg(long, default_value_t = 0)]
    pub preload: u64,
    /// Percentage every loss fault drops (default: 5 to 30 from the seed).
    #[arg(long)]
    pub loss_pct: Option<u32>,
    /// Members snapshot (and compact their log) every this many entries:
    /// small, so that a replaced member catches up by snapshot; with a
    /// large --preload use the default policy's 20000.
    #[arg(long, default_value_t = 500)]
    pub snapshot_every: u64,
}

/// The folder of this binary (where cargo puts the others too).
fn own_folder() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Options {
    /// Checks the combinations clap cannot and makes the folders absolute
    /// (processes run with other working folders).
    pub fn checked(mut self) -> anyhow::Result<Options> {
        anyhow::ensure!(self.trackers == 3 || self.trackers == 5, "--trackers must be 3 or 5");
        anyhow::ensure!(self.name.len() <= 6, "--name must be at most 6 characters");
        anyhow::ensure!(
            self.clients >= 1 && self.client_hosts >= 1 && self.files >= 1 && self.users >= 1,
            "--clients, --client-hosts, --files and --users must be at least 1"
        );
        // File names have two digits: with more, one name's search text
        // would match another's.
        anyhow::ensure!(self.files <= 100, "--files must be at most 100");
        anyhow::ensure!(self.client_hosts <= 9, "--client-hosts must be at most 9");
        anyhow::ensure!(self.snapshot_every >= 10, "--snapshot-every must be at least 10");
        anyhow::ensure!(self.loss_pct.is_none_or(|p| p <= 100), "--loss-pct must be at most 100");
        self.out = std::path::absolute(&self.out)?;
        self.bins = std::path::absolute(&self.bins)?;
        Ok(self)
    }
}

/// The test hosts; torn down when dropped.
struct Testnet {
    script: PathBuf,
    name: String,
}

impl Testnet {
    fn up(o: &Options) -> anyhow::Result<Testnet> {
        let script = o.root.join("scripts/testnet.sh");
        let net = Testnet {
            script: script.clone(),
            name: o.name.clone(),
        };
        let status = std::process::Command::new(&script)
            .args(["up", "--name", &o.name, "--prefix", &o.prefix])
            .args(["--trackers", &o.trackers.to_string(), "--proxies", "2"])
            .args(["--clients", &o.client_hosts.to_string()])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!(
                "scripts/testnet.sh up failed ({status}); if a run that was killed left its hosts, \
                 `scripts/testnet.sh down --name {}` removes them",
                o.name
            );
        }
        Ok(net)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.name)
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.script)
            .args(["down", "--name", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

/// A member process and where it lives.
struct Member {
    id: u64,
    host: String,
    ip: String,
    config: PathBuf,
    child: Option<Child>,
}

/// A relay in front of a member's Raft port, driven through its stdin.
struct Relay {
    _child: Child,
    stdin: ChildStdin,
    acks: mpsc::UnboundedReceiver<String>,
}

impl Relay {
    async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let ack = tokio::time::timeout(Duration::from_secs(5), self.acks.recv())
            .await
            .context("relay did not acknowledge")?;
        match ack {
            Some(a) if a.starts_with("ok") => Ok(()),
            other => bail!("relay answered {other:?} to {line:?}"),
        }
    }
}

/// Everything the poller saw.
#[derive(Default)]
struct Views {
    /// Each member's last answer (None: no answer).
    last: BTreeMap<u64, Option<ClusterStatus>>,
    /// Leaders named per term by any member.
    leaders: BTreeMap<u64, BTreeSet<u64>>,
}

impl Views {
    /// The leader that names itself in the newest term.
    fn leader(&self) -> Option<(u64, ClusterStatus)> {
        self.last
            .iter()
            .filter_map(|(id, s)| s.as_ref().filter(|s| s.leader == Some(*id)).map(|s| (*id, s.clone())))
            .max_by_key(|(_, s)| s.term)
    }
}

struct Cluster {
    o: Options,
    net: Testnet,
    members: Vec<Member>,
    relays: Vec<Relay>,
    proxies: Vec<Child>,
    admin: Network,
    views: Arc<Mutex<Views>>,
    rng: StdRng,
    /// The member a LeaderReturns fault cut off.
    returning: Option<usize>,
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(v)?).with_context(|| format!("writing {}", path.display()))
}

fn ip_of(prefix: &str, base: u32, i: u32) -> String {
    format!("{prefix}.{}", base + i)
}

impl Cluster {
    /// `program` run in test host `host`'s namespace, killed when dropped.
    fn command_in(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.net.ns(host)])
            .arg(program)
            .kill_on_drop(true);
        c
    }

    /// A new file in the run's log folder.
    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.o.out.join("logs").join(name);
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    fn spawn_in(&self, host: &str, bin: &str, args: &[&str], log: &str) -> anyhow::Result<Child> {
        let err = self.log_file(log)?;
        self.command_in(host, self.o.bins.join(bin))
            .args(args)
            .stdin(Stdio::null())
            .stdout(err.try_clone()?)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {bin} on {host}"))
    }

    fn member_config(&self, id: u64, join: bool) -> serde_json::Value {
        let o = &self.o;
        let members: Vec<_> = (1..=o.trackers)
            .map(|i| {
                let ip = ip_of(&o.prefix, 10, i);
                serde_json::json!({"id": i, "api": format!("{ip}:{API_PORT}"), "raft": format!("{ip}:{RELAY_PORT}")})
            })
            .collect();
        let ip = ip_of(&o.prefix, 10, id as u32);
        let out = o.out.display().to_string();
        let mut c = serde_json::json!({
            "id": id,
            "members": members,
            "data_dir": format!("{out}/data/tracker-{id}"),
            "log_dir": format!("{out}/logs"),
            "certs_dir": format!("{out}/certs"),
            "listen_raft": format!("{ip}:{RAFT_PORT}"),
            "owner_ttl_secs": 3600,
            "raft": {"snapshot_every": o.snapshot_every, "keep_after_snapshot": (o.snapshot_every / 5).max(1)},
            "register": {"per_source_per_minute": 1000000, "per_source_burst": 100000, "hashes_per_sec": 1000, "hash_burst": 1000},
        });
        if join {
            c["join"] = true.into();
            c["api_addr"] = format!("{ip}:{API_PORT}").into();
            c["raft_addr"] = format!("{ip}:{RELAY_PORT}").into();
        }
        c
    }

    fn start_member(&mut self, idx: usize) -> anyhow::Result<()> {
        let m = &self.members[idx];
        let (host, config, id) = (m.host.clone(), m.config.display().to_string(), m.id);
        let child = self.spawn_in(
            &host,
            "quorrent-tracker",
            &["--config", &config],
            &format!("tracker-{id}.stderr"),
        )?;
        self.members[idx].child = Some(child);
        Ok(())
    }

    fn signal(&self, idx: usize, sig: rustix::process::Signal) {
        if let Some(pid) = self.members[idx].child.as_ref().and_then(|c| c.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    }

    async fn kill(&mut self, idx: usize) {
        if let Some(mut c) = self.members[idx].child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    fn member_addrs(&self) -> Vec<(u64, String)> {
        self.members
            .iter()
            .map(|m| (m.id, format!("{}:{RELAY_PORT}", m.ip)))
            .collect()
    }

    fn leader_idx(&self) -> Option<usize> {
        let l = self.views.lock().expect("views").leader()?.0;
        self.members.iter().position(|m| m.id == l)
    }

    /// Waits until a member leads and every member has applied at least
    /// what that leader had applied when the wait began. None: not
    /// within `limit`.
    async fn caught_up(&self, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut target = None;
        while t0.elapsed() < limit {
            {
                let v = self.views.lock().expect("views");
                if let Some((lid, ls)) = v.leader() {
                    let goal = *target.get_or_insert(ls.last_applied.unwrap_or(0));
                    let all = self.members.iter().all(|m| {
                        v.last
                            .get(&m.id)
                            .and_then(|s| s.as_ref())
                            .is_some_and(|s| s.leader == Some(lid) && s.last_applied.unwrap_or(0) >= goal && !s.removed)
                    });
                    if all {
                        return Some(t0.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn nft_all(&self, hosts: &[String], script: &str) -> anyhow::Result<()> {
        for h in hosts {
            self.nft(h, script).await?;
        }
        Ok(())
    }

    async fn nft(&self, host: &str, script: &str) -> anyhow::Result<()> {
        let mut child = self
            .command_in(host, "nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).await?;
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!("nft on {host}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn all_hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self.members.iter().map(|m| m.host.clone()).collect();
        h.extend(["p1".to_string(), "p2".to_string()]);
        h.extend((1..=self.o.client_hosts).map(|i| format!("c{i}")));
        h
    }

    /// Host `a` drops everything from the IPs of `from`.
    fn drop_from(a: &str, from: &[String]) -> (String, String) {
        (
            a.to_string(),
            format!("add rule inet chaos input ip saddr {{ {} }} drop\n", from.join(", ")),
        )
    }

    /// Cuts the two groups of hosts apart (both directions).
    async fn cut(&self, a: &[(String, String)], b: &[(String, String)]) -> anyhow::Result<()> {
        let ips = |g: &[(String, String)]| g.iter().map(|(_, ip)| ip.clone()).collect::<Vec<_>>();
        for (host, _) in a {
            let (h, s) = Self::drop_from(host, &ips(b));
            self.nft(&h, &s).await?;
        }
        for (host, _) in b {
            let (h, s) = Self::drop_from(host, &ips(a));
            self.nft(&h, &s).await?;
        }
        Ok(())
    }

    fn proxy_host(&self, i: u32) -> (String, String) {
        (format!("p{i}"), ip_of(&self.o.prefix, 20, i))
    }

    fn member_host(&self, idx: usize) -> (String, String) {
        (self.members[idx].host.clone(), self.members[idx].ip.clone())
    }

    /// Injects a fault; returns what it hit, for the report.
    async fn inject(&mut self, fault: &Fault) -> anyhow::Result<String> {
        let n = self.members.len();
        let leader = self.leader_idx();
        let pick_leader = |rng: &mut StdRng| leader.unwrap_or_else(|| rng.gen_range(0..n));
        match fault {
            Fault::IsolateLeader | Fault::LeaderReturns => {
                let l = pick_leader(&mut self.rng);
                self.returning = Some(l);
                let mut rest: Vec<_> = (0..n).filter(|&i| i != l).map(|i| self.member_host(i)).collect();
                rest.extend([self.proxy_host(1), self.proxy_host(2)]);
                self.cut(&[self.member_host(l)], &rest).await?;
                Ok(format!("member {} isolated", self.members[l].id))
            }
            Fault::Split => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                let minority = &order[..(n - 1) / 2];
                let mut a: Vec<_> = minority.iter().map(|&i| self.member_host(i)).collect();
                a.push(self.proxy_host(2));
                let mut b: Vec<_> = order[(n - 1) / 2..].iter().map(|&i| self.member_host(i)).collect();
                b.push(self.proxy_host(1));
                self.cut(&a, &b).await?;
                let ids: Vec<_> = minority.iter().map(|&i| self.members[i].id).collect();
                Ok(format!("minority {ids:?} with proxy-2"))
            }
            Fault::Ring => {
                // Member i keeps i-1 and i+1 (n = 3: one random link cut).
                let cut_pairs: Vec<(usize, usize)> = if n == 3 {
                    let a = self.rng.gen_range(0..3);
                    vec![(a, (a + 1) % 3)]
                } else {
                    (0..n)
                        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                        .filter(|&(i, j)| (j - i) % n != 1 && (i + n - j) % n != 1)
                        .collect()
                };
                for &(i, j) in &cut_pairs {
                    self.cut(&[self.member_host(i)], &[self.member_host(j)]).await?;
                }
                let ids: Vec<_> = cut_pairs
                    .iter()
                    .map(|&(i, j)| (self.members[i].id, self.members[j].id))
                    .collect();
                Ok(format!("links cut {ids:?}"))
            }
            Fault::OneWay => {
                let l = pick_leader(&mut self.rng);
                let ip = self.members[l].ip.clone();
                let mut hosts: Vec<String> = (0..n)
                    .filter(|&i| i != l)
                    .map(|i| self.members[i].host.clone())
                    .collect();
                hosts.extend(["p1".to_string(), "p2".to_string()]);
                for host in hosts {
                    let (h, s) = Self::drop_from(&host, std::slice::from_ref(&ip));
                    self.nft(&h, &s).await?;
                }
                Ok(format!("member {} not heard", self.members[l].id))
            }
            Fault::ProxyCut => {
                let l = pick_leader(&mut self.rng);
                let p = self.rng.gen_range(1..=2);
                self.cut(&[self.member_host(l)], &[self.proxy_host(p)]).await?;
                Ok(format!("proxy-{p} cut from member {}", self.members[l].id))
            }
            Fault::Loss { pct } => {
                let s = format!(
                    "add rule inet chaos input iifname != \"lo\" meta l4proto udp numgen random mod 100 < {pct} drop\n"
                );
                self.nft_all(&self.all_hosts(), &s).await?;
                Ok("every host".into())
            }
            Fault::Delay { ms, jitter_ms, dup_pct } => {
                let line = format!("set delay_ms={ms} jitter_ms={jitter_ms} dup_pct={dup_pct}");
                for r in &mut self.relays {
                    r.send(&line).await?;
                }
                Ok("every member's Raft port".into())
            }
            Fault::PauseLeader | Fault::PauseRandom => {
                let i = if *fault == Fault::PauseLeader {
                    pick_leader(&mut self.rng)
                } else {
                    self.rng.gen_range(0..n)
                };
                self.signal(i, rustix::process::Signal::STOP);
                Ok(format!("member {} stopped", self.members[i].id))
            }
            Fault::KillLeader | Fault::KillRandom => {
                let i = if *fault == Fault::KillLeader {
                    pick_leader(&mut self.rng)
                } else {
                    self.rng.gen_range(0..n)
                };
                self.kill(i).await;
                Ok(format!("member {} killed", self.members[i].id))
            }
            Fault::KillAll => {
                for i in 0..n {
                    self.kill(i).await;
                }
                Ok("every member killed".into())
            }
            Fault::Replace => {
                let i = self.rng.gen_range(0..n);
                self.replace(i).await
            }
        }
    }

    /// Removes member `idx`, wipes its data, starts it empty and adds it
    /// back; returns how long the add (catch-up included) took.
    async fn replace(&mut self, idx: usize) -> anyhow::Result<String> {
        let id = self.members[idx].id;
        let t_kill = Instant::now();
        self.kill(idx).await;
        let killed = t_kill.elapsed();
        let addrs = self.member_addrs();
        let others: Vec<_> = addrs.iter().filter(|(i, _)| *i != id).cloned().collect();
        management::call(
            &self.admin,
            &others,
            management::AdminRequest::Remove { id },
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| anyhow::anyhow!("removing member {id}: {e}"))?;
        let removed = t_kill.elapsed() - killed;
        let data = self.o.out.join(format!("data/tracker-{id}"));
        let _ = std::fs::remove_dir_all(&data);
        let join = self.o.out.join(format!("tracker-{id}-join.json"));
        write_json(&join, &self.member_config(id, true))?;
        self.members[idx].config = join;
        self.start_member(idx)?;
        let t0 = Instant::now();
        let ip = self.members[idx].ip.clone();
        management::call(
            &self.admin,
            &others,
            management::AdminRequest::Add {
                id,
                api: format!("{ip}:{API_PORT}"),
                raft: format!("{ip}:{RELAY_PORT}"),
            },
            Duration::from_secs(120),
        )
        .await
        .map_err(|e| anyhow::anyhow!("adding member {id} back: {e}"))?;
        Ok(format!(
            "member {id} killed in {:.1} s, removed in {:.1} s, wiped; voter again {:.1} s after it was started empty",
            killed.as_secs_f64(),
            removed.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        ))
    }

    /// Undoes `fault`.
    async fn heal(&mut self, fault: &Fault) -> anyhow::Result<String> {
        if *fault == Fault::LeaderReturns {
            self.nft_all(&self.all_hosts(), "flush chain inet chaos input\n")
                .await?;
            let idx = self.returning.take().expect("the isolated member");
            return self.make_lead(idx).await;
        }
        match fault {
            Fault::IsolateLeader
            | Fault::Split
            | Fault::Ring
            | Fault::OneWay
            | Fault::ProxyCut
            | Fault::LeaderReturns
            | Fault::Loss { .. } => {
                self.nft_all(&self.all_hosts(), "flush chain inet chaos input\n")
                    .await?;
                Ok(String::new())
            }
            Fault::Delay { .. } => {
                for r in &mut self.relays {
                    r.send("clear").await?;
                }
                Ok(String::new())
            }
            Fault::PauseLeader | Fault::PauseRandom => {
                for i in 0..self.members.len() {
                    self.signal(i, rustix::process::Signal::CONT);
                }
                Ok(String::new())
            }
            Fault::KillLeader | Fault::KillRandom | Fault::KillAll => {
                self.restart_missing()?;
                Ok(String::new())
            }
            Fault::Replace => Ok(String::new()),
        }
    }

    /// Starts every member that has no running process.
    fn restart_missing(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            let gone = match self.members[i].child.as_mut() {
                None => true,
                Some(c) => !matches!(c.try_wait(), Ok(None)),
            };
            if gone {
                self.start_member(i)?;
            }
        }
        Ok(())
    }

    /// Undoes whatever a fault that failed half-way may have left: rules,
    /// paused or missing processes, relay impairments.
    async fn heal_all(&mut self) {
        let _ = self.nft_all(&self.all_hosts(), "flush chain inet chaos input\n").await;
        for i in 0..self.members.len() {
            self.signal(i, rustix::process::Signal::CONT);
        }
        for r in &mut self.relays {
            let _ = r.send("clear").await;
        }
        let _ = self.restart_missing();
    }

    /// Pauses whoever leads, in turn, until member `idx` leads (at most
    /// 10 rounds); says how it went.
    async fn make_lead(&mut self, idx: usize) -> anyhow::Result<String> {
        for round in 1..=10 {
            if self.caught_up(Duration::from_secs(30)).await.is_none() {
                bail!("no leader after the heal");
            }
            match self.leader_idx() {
                Some(l) if l == idx => return Ok(format!("; leads again after {} pause(s)", round - 1)),
                Some(l) => {
                    self.signal(l, rustix::process::Signal::STOP);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    self.signal(l, rustix::process::Signal::CONT);
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Ok("; did not lead again in 10 rounds".into())
    }

    /// Every member's (applied, digest); None for a member that did not
    /// answer. A member that knows it was removed (a replace whose admin
    /// call gave up while the change went through) is left out.
    async fn digests(&self) -> Vec<report::MemberDigest> {
        let mut out = Vec::new();
        let removed: BTreeSet<u64> = {
            let v = self.views.lock().expect("views");
            v.last
                .iter()
                .filter(|(_, s)| s.as_ref().is_some_and(|s| s.removed))
                .map(|(id, _)| *id)
                .collect()
        };
        for (id, addr) in self.member_addrs() {
            if removed.contains(&id) {
                continue;
            }
            let d = management::digest_of_member(&self.admin, id, &addr, Duration::from_secs(1))
                .await
                .ok();
            out.push((id, d));
        }
        out
    }
}

/// Polls every member's own status every 100 ms.
fn spawn_poller(admin: Network, members: Vec<(u64, String)>, views: Arc<Mutex<Views>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let polls = members.iter().map(|(id, addr)| {
                let admin = &admin;
                async move {
                    (
                        *id,
                        management::status_of_member(admin, *id, addr, Duration::from_millis(500))
                            .await
                            .ok(),
                    )
                }
            });
            let answers = futures::future::join_all(polls).await;
            {
                let mut v = views.lock().expect("views");
                for (id, s) in answers {
                    if let Some(s) = &s {
                        if let Some(l) = s.leader {
                            v.leaders.entry(s.term).or_default().insert(l);
                        }
                    }
                    v.last.insert(id, s);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A worker process on a client host, read line by line.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

fn spawn_worker(
    cluster: &Cluster,
    host: u32,
    clients: &[u32],
    ops: mpsc::UnboundedSender<Op>,
    ready: mpsc::UnboundedSender<Result<u32, String>>,
) -> anyhow::Result<Worker> {
    let o = &cluster.o;
    let proxies = format!(
        "{}:{PROXY_PORT},{}:{PROXY_PORT}",
        ip_of(&o.prefix, 20, 1),
        ip_of(&o.prefix, 20, 2)
    );
    let list: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
    let err = cluster.log_file(&format!("worker-c{host}.stderr"))?;
    let mut child = cluster
        .command_in(&format!("c{host}"), o.bins.join("quorrent-chaos"))
        .args(["worker", "--ca", &o.out.join("certs/ca.pem").display().to_string()])
        .args(["--proxies", &proxies, "--clients", &list.join(",")])
        .args(["--files", &o.files.to_string(), "--users", &o.users.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .context("starting a worker")?;
    let stdout = child.stdout.take().expect("stdout");
    let stdin = child.stdin.take();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("R ") {
                let _ = ready.send(rest.trim().parse::<u32>().map_err(|e| e.to_string()));
            } else if let Some(rest) = line.strip_prefix("E ") {
                let _ = ready.send(Err(rest.to_string()));
            } else if let Ok(op) = serde_json::from_str::<Op>(&line) {
                let _ = ops.send(op);
            }
        }
    });
    Ok(Worker { child, stdin })
}

/// Runs the whole test; returns the summary (its `passed` says whether
/// every check held).
pub async fn run(o: Options) -> anyhow::Result<Summary> {
    if o.out.join("data").exists() {
        bail!(
            "{} holds a previous run's data (members would start from it): remove it or choose another --out",
            o.out.display()
        );
    }
    for d in ["logs", "data", "certs"] {
        std::fs::create_dir_all(o.out.join(d))?;
    }
    let mut plan = nemesis::schedule(o.seed, o.secs, &o.kinds);
    if let Some(pct) = o.loss_pct {
        for p in &mut plan {
            if let Fault::Loss { pct: x } = &mut p.fault {
                *x = pct;
            }
        }
    }
    std::fs::write(o.out.join("schedule.json"), serde_json::to_vec_pretty(&plan)?)?;
    eprintln!(
        "chaos: {} faults planned over {:.0} s (seed {})",
        plan.len(),
        o.secs,
        o.seed
    );

    let net = Testnet::up(&o)?;
    // Certificates for every member, proxy and the admin, valid for every
    // test host's address.
    let mut names: Vec<String> = (1..=o.trackers).map(|i| format!("tracker-{i}")).collect();
    names.extend(["proxy-1".into(), "proxy-2".into(), "admin".into()]);
    let mut gen = std::process::Command::new(o.bins.join("quorrent-tracker"));
    gen.args(["gen-certs", "--dir"])
        .arg(o.out.join("certs"))
        .arg("--ca-dir")
        .arg(o.out.join("ca"));
    for i in 1..=o.trackers {
        gen.args(["--host", &ip_of(&o.prefix, 10, i)]);
    }
    for i in 1..=2 {
        gen.args(["--host", &ip_of(&o.prefix, 20, i)]);
    }
    let st = gen.args(&names).stdout(Stdio::null()).status()?;
    if !st.success() {
        bail!("gen-certs failed");
    }

    let roots = protocol::tls::load_ca(&o.out.join("certs"))?;
    let identity = protocol::tls::load_identity(&o.out.join("certs"), "admin")?;
    let ep = protocol::quic::endpoint((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), None)?;
    let client = tracker_cluster::raft_client(roots, &identity, Duration::from_secs(5))?;
    let admin = Network::new(ep, client, 64 << 20);

    let mut cluster = Cluster {
        members: (1..=o.trackers)
            .map(|i| Member {
                id: u64::from(i),
                host: format!("t{i}"),
                ip: ip_of(&o.prefix, 10, i),
                config: o.out.join(format!("tracker-{i}.json")),
                child: None,
            })
            .collect(),
        o: o.clone(),
        net,
        relays: Vec::new(),
        proxies: Vec::new(),
        admin,
        views: Default::default(),
        rng: StdRng::seed_from_u64(o.seed ^ 0x6e656d65),
        returning: None,
    };
    for h in cluster.all_hosts() {
        cluster
            .nft(
                &h,
                "add table inet chaos\nadd chain inet chaos input { type filter hook input priority 0; policy accept; }\n",
            )
            .await?;
    }
    // Relays first, so members find their peers from the start.
    for i in 0..cluster.members.len() {
        let (ip, host) = (cluster.members[i].ip.clone(), cluster.members[i].host.clone());
        let err = cluster.log_file(&format!("relay-{}.stderr", i + 1))?;
        let mut child = cluster
            .command_in(&host, o.bins.join("quorrent-chaos"))
            .args(["relay", "--listen", &format!("{ip}:{RELAY_PORT}")])
            .args(["--upstream", &format!("{ip}:{RAFT_PORT}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting the relay on {host}"))?;
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("relay did not start")??;
        if !first.as_deref().unwrap_or("").starts_with("relay ready") {
            bail!("relay on {host} said {first:?}");
        }
        let (tx, acks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        cluster.relays.push(Relay {
            _child: child,
            stdin,
            acks,
        });
    }
    for i in 0..cluster.members.len() {
        let c = cluster.member_config(cluster.members[i].id, false);
        write_json(&cluster.members[i].config, &c)?;
        cluster.start_member(i)?;
    }
    let trackers: Vec<_> = (1..=o.trackers)
        .map(|i| serde_json::json!({"id": i, "api": format!("{}:{API_PORT}", ip_of(&o.prefix, 10, i)), "raft": format!("{}:{RELAY_PORT}", ip_of(&o.prefix, 10, i))}))
        .collect();
    for p in 1..=2u32 {
        let path = o.out.join(format!("proxy-{p}.json"));
        let out = o.out.display().to_string();
        write_json(
            &path,
            &serde_json::json!({"name": format!("proxy-{p}"), "listen": format!("{}:{PROXY_PORT}", ip_of(&o.prefix, 20, p)),
                "trackers": trackers, "log_dir": format!("{out}/logs"), "certs_dir": format!("{out}/certs")}),
        )?;
        let child = cluster.spawn_in(
            &format!("p{p}"),
            "quorrent-proxy",
            &["--config", &path.display().to_string()],
            &format!("proxy-{p}.stderr"),
        )?;
        cluster.proxies.push(child);
    }
    let poller = spawn_poller(cluster.admin.clone(), cluster.member_addrs(), cluster.views.clone());
    if cluster.caught_up(Duration::from_secs(30)).await.is_none() {
        bail!("no leader within 30 s (see {}/logs)", o.out.display());
    }
    eprintln!("chaos: cluster up, leader {:?}", cluster.leader_idx().map(|i| i + 1));

    // Workers: client i runs on host i mod H.
    let (op_tx, mut op_rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for h in 1..=o.client_hosts {
        let mine: Vec<u32> = (0..o.clients).filter(|c| c % o.client_hosts == h - 1).collect();
        if !mine.is_empty() {
            workers.push(spawn_worker(&cluster, h, &mine, op_tx.clone(), ready_tx.clone())?);
        }
    }
    drop(ready_tx);
    // The final reader is one more client, in this process.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let proxy1: SocketAddr = format!("{}:{PROXY_PORT}", ip_of(&o.prefix, 20, 1)).parse()?;
    let cfg = workload::client_config(&o.out.join("certs/ca.pem"))?;
    let ep = protocol::quic::endpoint((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), None)?;
    let mut reader = workload::Client::new(o.clients, proxy1, ep, cfg, stop_rx);
    reader
        .set_up()
        .await
        .map_err(|e| anyhow::anyhow!("final reader: {e}"))?;
    if o.preload > 0 {
        preload(&o, proxy1).await?;
    }
    let mut ready = 0;
    while ready < o.clients {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(Ok(_))) => ready += 1,
            Ok(Some(Err(e))) => bail!("a client could not set up: {e}"),
            Ok(None) | Err(_) => bail!("only {ready} of {} clients set up", o.clients),
        }
    }
    eprintln!("chaos: {} clients ready; workload and nemesis start", o.clients);
    for w in &mut workers {
        if let Some(s) = w.stdin.as_mut() {
            s.write_all(b"start\n").await?;
            s.flush().await?;
        }
    }
    let t0 = Instant::now();
    let t0_ns = mono_ns();
    let mut faults = Vec::new();
    for p in &plan {
        let at = Duration::from_secs_f64(p.at_s);
        tokio::time::sleep(at.saturating_sub(t0.elapsed())).await;
        let start_ns = mono_ns();
        eprintln!("chaos: {:6.1} s  {}", t0.elapsed().as_secs_f64(), p.fault.describe());
        let target = match cluster.inject(&p.fault).await {
            Ok(t) => t,
            Err(e) => {
                cluster.heal_all().await;
                faults.push(FaultRecord::failed(p, start_ns, format!("{e:#}")));
                continue;
            }
        };
        if p.fault != Fault::Replace {
            tokio::time::sleep(Duration::from_secs_f64(p.hold_s)).await;
        }
        let target = match cluster.heal(&p.fault).await {
            Ok(more) => target + &more,
            Err(e) => {
                cluster.heal_all().await;
                faults.push(FaultRecord::failed(p, start_ns, format!("healing: {e:#}")));
                continue;
            }
        };
        let heal_ns = mono_ns();
        let recovered = cluster.caught_up(Duration::from_secs(30)).await;
        faults.push(FaultRecord::new(p, start_ns, heal_ns, target, recovered));
    }
    tokio::time::sleep(Duration::from_secs_f64(o.secs).saturating_sub(t0.elapsed())).await;

    // Stop the workload: closing stdin ends each worker's clients.
    for w in &mut workers {
        w.stdin = None;
    }
    for w in &mut workers {
        if tokio::time::timeout(Duration::from_secs(30), w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.start_kill();
        }
    }
    drop(op_tx);
    let mut history = Vec::new();
    while let Some(op) = op_rx.recv().await {
        history.push(op);
    }
    // Final reads, recorded like every other operation.
    let shape = workload::Shape {
        files: o.files,
        users: o.users,
    };
    // Bounded: a cluster that never recovers leaves them unknown (and the
    // report fails the run), it does not hang it.
    let stopper = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(90)).await;
            let _ = stop_tx.send(true);
        })
    };
    history.extend(reader.final_reads(&shape).await);
    stopper.abort();
    let _ = stop_tx.send(true);

    // Every member equal: same applied index and digest.
    let d0 = Instant::now();
    let mut converged = None;
    let mut last = Vec::new();
    while d0.elapsed() < Duration::from_secs(30) {
        last = cluster.digests().await;
        let set: BTreeSet<_> = last.iter().map(|(_, d)| d.clone()).collect();
        if set.len() == 1 && set.iter().next().is_some_and(|d| d.is_some()) {
            converged = Some(d0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    poller.abort();
    let split_terms: Vec<(u64, BTreeSet<u64>)> = cluster
        .views
        .lock()
        .expect("views")
        .leaders
        .iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(t, l)| (*t, l.clone()))
        .collect();

    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(o.out.join("history.jsonl"))?);
        for op in &history {
            writeln!(f, "{}", serde_json::to_string(op)?)?;
        }
    }
    let summary = report::summarise(report::Inputs {
        options: &o,
        t0_ns,
        history: &history,
        faults: &faults,
        split_terms,
        converged,
        digests: last,
    });
    std::fs::write(o.out.join("report.txt"), summary.text.as_bytes())?;
    for m in 0..cluster.members.len() {
        cluster.signal(m, rustix::process::Signal::CONT);
    }
    drop(cluster);
    Ok(summary)
}

/// Registers `o.preload` files through the proxy from 64 clients of
/// their own, one write at a time each (the leader batches them; each
/// user's quota is 100,000 files).
async fn preload(o: &Options, proxy: SocketAddr) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let cfg = workload::client_config(&o.out.join("certs/ca.pem"))?;
    let ep = protocol::quic::endpoint((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), None)?;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loaders: u64 = 64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for l in 0..loaders {
        // Client indexes past the workload's and the final reader's.
        let mut c = workload::Client::new(
            o.clients + 1 + l as u32,
            proxy,
            ep.clone(),
            cfg.clone(),
            stop_rx.clone(),
        );
        let (next, total) = (next.clone(), o.preload);
        tasks.spawn(async move {
            c.set_up().await.map_err(anyhow::Error::msg)?;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    break;
                }
                c.own_file(workload::preload_meta(n))
                    .await
                    .map_err(|e| anyhow::anyhow!("preloading file {n}: {e}"))?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    eprintln!(
        "chaos: {} files preloaded in {:.0} s",
        o.preload,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
