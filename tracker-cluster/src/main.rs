//! `quorrent-tracker`: runs one tracker member, makes certificates, and
//! administers the cluster's membership (and builds snapshots on demand).

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use protocol::{config::TrackerConfig, quic, tls};
use tracker_cluster::{
    network::{management, raft_network_impl::Network},
    Tracker,
};

#[derive(Parser)]
#[command(
    name = "quorrent-tracker",
    version,
    about = "One member of the quorrent tracker cluster (Raft)"
)]
struct Cli {
    /// Configuration file (JSON); every field has a default.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Makes the local CA (if missing) and a certificate for each name;
    /// the name gives the role: tracker-N (member N), proxy-NAME, admin.
    GenCerts {
        /// Folder of the certificates that running processes read.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Folder of the CA's private key, read by this command only.
        #[arg(long, default_value = "ca")]
        ca_dir: PathBuf,
        /// Another address or DNS name the certificates are valid for
        /// (repeatable), e.g. the IP of the machine a member runs on.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Tracker and proxy configuration files of the cluster: every
        /// member and proxy they name gets a certificate valid for the
        /// hosts of its own addresses there (plus `admin`). Repeatable;
        /// takes every file up to the next option.
        #[arg(long = "from-config", num_args = 1.., value_name = "FILE")]
        from_config: Vec<PathBuf>,
        /// Names, e.g. tracker-1 tracker-2 tracker-3 proxy-1 admin.
        names: Vec<String>,
    },
    /// Changes or shows the cluster membership (uses certs/admin.pem).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Adds a running member (started with `"join": true`): learner first, then voter.
    Add { id: u64, api: String, raft: String },
    /// Removes a member.
    Remove { id: u64 },
    /// Prints the cluster status as the leader sees it, as JSON.
    Status,
    /// Asks every configured member for its own view; prints a table.
    Members,
    /// Prints the current leader's id (exit 1 if there is none).
    Leader,
    /// Asks every configured member for its applied index and a digest
    /// of its registry: members at one index must show one digest.
    Digests,
    /// Builds a snapshot now on one member (default: the leader) and
    /// prints, as JSON, the index it covers and how long it took.
    Snapshot {
        /// The member to snapshot (any member, leader or not).
        #[arg(long)]
        member: Option<u64>,
        /// Longest wait for the snapshot to be built, seconds.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<TrackerConfig> {
    match path {
        None => Ok(TrackerConfig::default()),
        Some(p) => {
            let c: TrackerConfig = protocol::config::load(p)?;
            c.validate(p)?;
            Ok(c)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        // One line, whatever the causes say.
        eprintln!("quorrent-tracker: {}", protocol::one_line(&format!("{e:#}")));
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::GenCerts {
            dir,
            ca_dir,
            hosts,
            from_config,
            names,
        }) => {
            let mut certs = protocol::config::cert_specs(&from_config)?;
            if !from_config.is_empty() && !names.iter().any(|n| n == "admin") {
                certs.push(tls::CertSpec {
                    name: "admin".into(),
                    hosts: Vec::new(),
                });
            }
            for n in names {
                if !certs.iter().any(|c| c.name == n) {
                    certs.push(tls::CertSpec {
                        name: n,
                        hosts: Vec::new(),
                    });
                }
            }
            if certs.is_empty() {
                anyhow::bail!("nothing to make: name the certificates or give --from-config FILE...");
            }
            let made = tls::generate_each(&dir, &ca_dir, &certs, &hosts)?;
            for n in made {
                println!("made {}/{n}.pem", dir.display());
            }
            Ok(())
        }
        Some(Command::Admin { action }) => {
            let config = load_config(cli.config.as_ref())?;
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(async {
                let stop = protocol::stop::on_signals().context("signal handlers")?;
                tokio::select! {
                    r = admin(config, action) => r,
                    _ = stop.stopped() => {
                        eprintln!("quorrent-tracker: stopped before the cluster answered");
                        Ok(())
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
            result
        }
        None => {
            let config = load_config(cli.config.as_ref())?;
            let _log = protocol::logging::init(
                &config.log_dir,
                &format!("tracker-{}.log", config.id),
                &config.log_level,
                true,
            )
            .with_context(|| format!("log folder {}", config.log_dir.display()))?;
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(async move {
                // Signals are caught from here on, even while starting.
                let stop = protocol::stop::on_signals().context("signal handlers")?;
                let tracker = tokio::select! {
                    t = Tracker::start(config) => t?,
                    _ = stop.stopped() => return anyhow::Ok(()),
                };
                stop.stopped().await;
                tracker.shutdown().await;
                anyhow::Ok(())
            });
            // Tasks still waiting on the network are dropped; a store
            // commit or an argon2 hash on the blocking pool gets a moment
            // to finish, not more.
            runtime.shutdown_timeout(Duration::from_millis(200));
            result
        }
    }
}

async fn admin(config: TrackerConfig, action: AdminAction) -> anyhow::Result<()> {
    let roots = tls::load_ca(&config.certs_dir)?;
    let identity = tls::load_identity(&config.certs_dir, "admin")
        .context("the admin certificate (make it with `quorrent-tracker gen-certs admin`)")?;
    // A wildcard of the members' address family, so the members may be on
    // other machines (a loopback socket reaches only this one).
    let family = match config.members.first() {
        Some(m) => protocol::net::resolve(&m.raft)
            .await
            .with_context(|| format!("member {} at {}", m.id, m.raft))?,
        None => anyhow::bail!("no members in the configuration"),
    };
    let ep = quic::endpoint(protocol::net::unspecified_for(&family), None)?;
    let client = tracker_cluster::raft_client(roots, &identity, Duration::from_secs(5))?;
    let net = Network::new(ep.clone(), client, config.limits.max_raft_frame_bytes);
    let members: Vec<_> = config.members.iter().map(|m| (m.id, m.raft.clone())).collect();
    let req = match action {
        AdminAction::Add { id, api, raft } => management::AdminRequest::Add { id, api, raft },
        AdminAction::Remove { id } => management::AdminRequest::Remove { id },
        AdminAction::Status => management::AdminRequest::Status,
        AdminAction::Digests => {
            println!("{:<4} {:>12}  digest", "id", "applied");
            for m in &config.members {
                match management::digest_of_member(&net, m.id, &m.raft, Duration::from_millis(1500)).await {
                    Ok((applied, digest)) => println!(
                        "{:<4} {:>12}  {digest}",
                        m.id,
                        applied.map_or("-".into(), |a| a.to_string())
                    ),
                    Err(e) => println!("{:<4} {:>12}  down ({e})", m.id, "-"),
                }
            }
            ep.close(0u32.into(), b"done");
            return Ok(());
        }
        AdminAction::Members => {
            let api_client = tls::quic_client(
                tls::client_crypto(
                    tls::load_ca(&config.certs_dir)?,
                    Some(&identity),
                    protocol::tracker_api::ALPN,
                )?,
                quic::control_transport(Duration::from_secs(5)),
            )?;
            print_members(&config, &api_client, &ep).await;
            ep.close(0u32.into(), b"done");
            return Ok(());
        }
        AdminAction::Leader => {
            let leader = find_leader(&net, &config).await;
            ep.close(0u32.into(), b"done");
            if let Some(l) = leader {
                println!("{l}");
                return Ok(());
            }
            anyhow::bail!("no leader elected");
        }
        AdminAction::Snapshot { member, wait } => {
            let id = match member {
                Some(id) => id,
                None => find_leader(&net, &config).await.context("no leader elected")?,
            };
            let m = config
                .members
                .iter()
                .find(|m| m.id == id)
                .with_context(|| format!("member {id} is not in the configuration's members"))?;
            let (index, millis) = management::snapshot_member(&net, id, &m.raft, Duration::from_secs(wait))
                .await
                .map_err(|e| anyhow::anyhow!("member {id}: {e}"))?;
            println!(
                "{}",
                serde_json::json!({ "member": id, "index": index, "millis": millis })
            );
            ep.close(0u32.into(), b"done");
            return Ok(());
        }
    };
    let status = management::call(&net, &members, req, Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    ep.close(0u32.into(), b"done");
    Ok(())
}

/// The leader, asking everyone and believing the newest term: just after
/// a failover a member may still name the dead leader.
async fn find_leader(net: &Network, config: &TrackerConfig) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for m in &config.members {
        if let Ok(s) = management::status_of_member(net, m.id, &m.raft, Duration::from_millis(1000)).await {
            if let Some(l) = s.leader {
                if best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, l));
                }
            }
        }
    }
    best.map(|(_, l)| l)
}

/// One row per configured member, each from that member's own view.
/// One line per member from its own [`MemberReport`] (`MemberStatus` on
/// the tracker API: the figures `/status` and the dashboard show). The
/// first seven columns are those scripts have always read (id, api, raft,
/// up, role, term, last-applied); commit and lag follow.
async fn print_members(config: &TrackerConfig, client: &quinn::ClientConfig, ep: &quinn::Endpoint) {
    println!(
        "{:<4} {:<22} {:<22} {:<5} {:<9} {:>6} {:>12} {:>12} {:>8}",
        "id", "api", "raft", "up", "role", "term", "last-applied", "commit", "lag"
    );
    let mut rows = Vec::new();
    for m in &config.members {
        rows.push((
            m,
            member_report(ep, client, m.id, &m.api, config.limits.max_frame_bytes).await,
        ));
    }
    // Lag as the leader sees it, from its one report.
    let lag_of = |id: u64| {
        rows.iter().find_map(|(_, r)| match r {
            Ok(r) if r.role == "leader" && r.id == id => Some(0),
            Ok(r) if r.role == "leader" => r.followers.iter().find(|f| f.id == id).map(|f| f.lag),
            _ => None,
        })
    };
    let dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for (m, r) in &rows {
        match r {
            Ok(r) => {
                let lag = lag_of(m.id);
                println!(
                    "{:<4} {:<22} {:<22} {:<5} {:<9} {:>6} {:>12} {:>12} {:>8}",
                    m.id,
                    m.api,
                    m.raft,
                    "up",
                    r.role,
                    r.term,
                    dash(r.applied_index),
                    dash(r.commit_index),
                    dash(lag)
                )
            }
            Err(_) => println!(
                "{:<4} {:<22} {:<22} {:<5} {:<9} {:>6} {:>12} {:>12} {:>8}",
                m.id, m.api, m.raft, "down", "-", "-", "-", "-", "-"
            ),
        }
    }
}

async fn member_report(
    ep: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    id: u64,
    api: &str,
    limit: usize,
) -> anyhow::Result<protocol::tracker_api::MemberReport> {
    use protocol::tracker_api::{Answer, Envelope, Reply, Request};
    let ask = async {
        let addr = protocol::net::resolve(api).await?;
        let conn = ep.connect_with(client.clone(), addr, &format!("tracker-{id}"))?.await?;
        let answer: Answer = protocol::codec::call(&conn, &Envelope::stale(Request::MemberStatus), limit).await?;
        conn.close(0u32.into(), b"done");
        match answer {
            Ok(Reply::Member(r)) => Ok(*r),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    };
    tokio::time::timeout(Duration::from_millis(1500), ask)
        .await
        .map_err(|_| anyhow::anyhow!("no answer"))?
}
