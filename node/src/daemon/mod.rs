//! The node daemon, `quorrent seed` (or `daemon`): the long-running node.
//! It serves every file owned or partly downloaded to other nodes and
//! heartbeats (as `seed` always did), and it runs the HTTP API and the
//! web page (`api.rs`) on `http_addr`, with downloads, shares, pause,
//! resume and remove done here, in this process, over one peer server,
//! one tracker client and one [`Store`].
//!
//! This module owns the daemon's state: the downloads it runs ([`Job`]s:
//! downloading, paused, failed, done), the rates it measures (sampled
//! from the byte counters of `metrics.rs` every half second), and the two
//! files other commands of the home read: `HOME/daemon.json` (pid and HTTP
//! address; written when the HTTP server is up, removed on a clean stop)
//! and `HOME/http-token` (the API token, mode 0600, made once). `client.rs`
//! is the other side: how `get` and `share` find a running daemon and hand
//! their work to it.
//!
//! Folders: the daemon writes only in its storage folder (downloads) and
//! the home, and reads for sharing only in the storage folder and the
//! configuration's `share_roots` and `watch_dir`. A path from a request is
//! used only after `canonicalize` and a check that it lies inside one of
//! those.

pub mod api;
pub mod client;
pub mod metrics;
pub mod watch;

use std::{
    collections::{HashMap, VecDeque},
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use protocol::{
    ids::{FileId, PeerId},
    tls::NodeIdentity,
    tracker_api::{ApiError, Request},
};
use serde::Serialize;
use serde_json::json;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use crate::{
    commands::{self, CommandError},
    download::{self, DownloadPlan, Live},
    home::{Home, HomeError},
    peer_server::PeerServer,
    rate::Limits,
    state::FileRecord,
    store::Store,
    tracker::{TrackerClient, TrackerError},
};
use metrics::NodeMetrics;

/// How often rates are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Rates are measured over this much of the recent past.
const RATE_WINDOW: Duration = Duration::from_secs(3);
/// Cells of a chunk map at most.
pub const MAP_CELLS: u32 = 512;

/// Where a download stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Downloading,
    Paused,
    Failed,
    Done,
}

/// A download this daemon started.
struct Job {
    name: String,
    size: u64,
    state: JobState,
    /// The error of a failed download: code and message.
    error: Option<(&'static str, String)>,
    task: Option<AbortHandle>,
    live: Arc<Live>,
    /// What `get` prints once done: JSON and text.
    result: Option<(serde_json::Value, String)>,
    /// Chunks in order (kept for a resume).
    sequential: bool,
}

/// Bytes counted at instants, for a rate over [`RATE_WINDOW`].
#[derive(Debug, Default)]
struct Meter {
    samples: VecDeque<(Instant, u64)>,
}

impl Meter {
    fn push(&mut self, now: Instant, total: u64) {
        self.samples.push_back((now, total));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window.
    fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// The rates of one file and of the peers of its download.
#[derive(Debug, Default)]
struct Rates {
    down: Meter,
    up: Meter,
    peers: HashMap<PeerId, Meter>,
}

/// A running daemon; the HTTP handler holds it.
pub struct Daemon {
    pub home: Home,
    pub client: Arc<TrackerClient>,
    pub store: Arc<Store>,
    pub metrics: Arc<NodeMetrics>,
    pub registry: Registry,
    /// The peer server's address, and what is announced to the tracker.
    pub peer_addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    /// The HTTP server's address, once bound.
    pub http_addr: OnceLock<SocketAddr>,
    /// Decided from the configured address before the server accepts
    /// anything (so it can never fail open).
    token_required: bool,
    /// The API token (`HOME/http-token`).
    pub token: String,
    jobs: Mutex<HashMap<FileId, Job>>,
    rates: Mutex<HashMap<FileId, Rates>>,
    /// The process's rate limits (the peer server's upload, every
    /// download's), changed live by `PUT /api/limits`.
    pub limits: Limits,
}

/// What went wrong with a request, as the API answers it.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<CommandError> for Refusal {
    fn from(e: CommandError) -> Self {
        let code = e.code();
        let status = match code {
            "not_found" => 404,
            "bad_input" | "invalid" | "ambiguous" => 400,
            "no_owner" | "quota" | "file_conflict" => 409,
            "not_logged_in" | "unreachable" | "unavailable" | "overloaded" | "throttled" | "stopped" => 503,
            _ => 500,
        };
        Refusal::new(status, code, e.to_string())
    }
}

impl From<HomeError> for Refusal {
    fn from(e: HomeError) -> Self {
        CommandError::from(e).into()
    }
}

/// One file as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub id: String,
    pub name: String,
    pub size: u64,
    /// 0 for a file; a folder's file count (0 until its manifest is here).
    pub files: u32,
    /// `seeding` (complete, served), `downloading`, `paused`, `failed`,
    /// or `partial` (an unfinished download no one is running).
    pub state: &'static str,
    /// 0..1.
    pub progress: f64,
    pub have: u32,
    pub chunks: u32,
    /// Bytes per second, over the last seconds.
    pub down_rate: f64,
    pub up_rate: f64,
    /// Seconds left at the current rate; null when not downloading.
    pub eta: Option<f64>,
    /// Peers connected to its download.
    pub peers: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
    /// What `quorrent get` prints for it (once it is here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_text: Option<String>,
}

/// Starts the daemon and runs it until SIGINT/SIGTERM.
pub async fn run(home: &Home, limits: Limits) -> Result<(), CommandError> {
    let (client, _) = commands::logged_in(home)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(NodeMetrics::new(&mut registry));
    let store = Store::with_metrics(metrics.clone());
    commands::load_owned(home, &store)?;
    let server = PeerServer::start_limited(
        &home.identity,
        commands::listen_addr(home)?,
        store.clone(),
        Some(limits.up.clone()),
    )?;
    let peer_addr = server.local_addr();
    info!(files = store.len(), addr = %peer_addr, "seeding");
    let token = ensure_token(&home.dir)?;
    let bind = home
        .config
        .http_bind()
        .map_err(|m| CommandError::Http(std::io::Error::other(m)))?;
    let daemon = Arc::new(Daemon {
        home: Home {
            dir: home.dir.clone(),
            config: home.config.clone(),
            // The same key pair, loaded again: the daemon's tasks outlive
            // the borrow of the command's home.
            identity: NodeIdentity::load_or_create(&home.dir).map_err(HomeError::from)?,
            stop: home.stop.clone(),
        },
        client: client.clone(),
        store: store.clone(),
        metrics,
        registry,
        peer_addr,
        addrs: commands::advertised(home, Some(peer_addr)).await,
        http_addr: OnceLock::new(),
        token_required: !bind.is_loopback(),
        token,
        jobs: Mutex::new(HashMap::new()),
        rates: Mutex::new(HashMap::new()),
        limits,
    });
    let options = protocol::http::Options::default();
    let http = match protocol::http::serve(bind, options, api::handler(daemon.clone()), &home.stop).await {
        Ok(h) => h,
        Err(e) => {
            server.shutdown().await;
            return Err(CommandError::Http(e));
        }
    };
    let info_path = home.dir.join("daemon.json");
    let info = http
        .as_ref()
        .map(|h| json!({ "pid": std::process::id(), "http": h.addr.to_string() }).to_string());
    if let (Some(h), Some(info)) = (&http, &info) {
        let _ = daemon.http_addr.set(h.addr);
        if let Err(e) = protocol::durable::write(&info_path, info.as_bytes(), 0o600) {
            server.shutdown().await;
            if let Some(h) = http {
                h.shutdown().await;
            }
            return Err(crate::home::io(&info_path)(e).into());
        }
        info!(addr = %h.addr, "node daemon: web page at http://{}/", h.addr);
    }
    let sampler = tokio::spawn(sample_loop(daemon.clone()));
    let watcher = home.config.watch_dir.clone().map(|dir| {
        let settle = Duration::from_millis(home.config.watch_settle_ms);
        tokio::spawn(watch::watch_loop(daemon.clone(), dir, settle))
    });
    let result = commands::serve_until_stopped(home, &client, server, &store).await;
    sampler.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    // The HTTP server first, so no request starts a job after the jobs
    // are stopped.
    if let Some(h) = http {
        h.shutdown().await;
        // Only ours: a second daemon of the home may have replaced it.
        if std::fs::read_to_string(&info_path).ok() == info {
            let _ = std::fs::remove_file(&info_path);
        }
    }
    daemon.stop_jobs();
    result
}

/// The API token of the home: read, or made once (32 random bytes, hex,
/// mode 0600).
pub fn ensure_token(dir: &Path) -> Result<String, HomeError> {
    let path = dir.join("http-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    if path.exists() {
        // Empty (a crash while it was made): made again.
        protocol::tls::write_private(&path, token.as_bytes())?;
        return Ok(token);
    }
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(token.as_bytes())?;
            f.sync_all()
        });
    match made {
        Ok(()) => Ok(token),
        // Another daemon of the home made it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let t = std::fs::read_to_string(&path).map_err(crate::home::io(&path))?;
            Ok(t.trim().to_owned())
        }
        Err(e) => Err(crate::home::io(&path)(e)),
    }
}

/// Samples every file's byte counters (and its download's peers') for
/// the rates the API shows. Runs until aborted.
async fn sample_loop(d: Arc<Daemon>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let now = Instant::now();
        // Peers only of downloads under way: a finished one's stay as they were.
        let lives: Vec<(FileId, Arc<Live>)> = d
            .lock_jobs()
            .iter()
            .filter(|(_, j)| j.state == JobState::Downloading)
            .map(|(id, j)| (*id, j.live.clone()))
            .collect();
        let mut rates = d.rates.lock().unwrap_or_else(|e| e.into_inner());
        for (id, traffic) in d.store.each_traffic() {
            let r = rates.entry(id).or_default();
            r.down.push(now, traffic.down.get());
            r.up.push(now, traffic.up.get());
        }
        for (id, live) in lives {
            let r = rates.entry(id).or_default();
            for p in live.peers() {
                r.peers.entry(p.peer_id).or_default().push(now, p.bytes.get());
            }
        }
    }
}

impl Daemon {
    fn lock_jobs(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the API needs the token: the HTTP server is reachable from
    /// other hosts.
    pub fn token_required(&self) -> bool {
        self.token_required
    }

    /// The folders requests may name: the storage folder, the
    /// configuration's `share_roots` and its `watch_dir`, canonical (those
    /// that exist).
    pub fn roots(&self) -> Vec<PathBuf> {
        let storage = self.home.storage_dir();
        let _ = std::fs::create_dir_all(&storage);
        std::iter::once(storage)
            .chain(self.home.config.share_roots.iter().cloned())
            .chain(self.home.config.watch_dir.iter().cloned())
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .collect()
    }

    /// `path` made canonical, if it lies inside one of [`Daemon::roots`].
    pub fn inside_roots(&self, path: &Path) -> Result<PathBuf, Refusal> {
        inside(&self.roots(), path)
    }

    /// Every file owned, downloading, paused or partial.
    pub fn files(&self) -> Result<Vec<FileEntry>, Refusal> {
        let state = self.home.state()?;
        let jobs = self.lock_jobs();
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<FileId> = state.files.keys().filter_map(|h| h.parse().ok()).collect();
        ids.extend(jobs.keys().filter(|id| !state.files.contains_key(&id.to_hex())));
        let mut out: Vec<FileEntry> = ids
            .iter()
            .filter_map(|id| self.entry(id, state.files.get(&id.to_hex()), jobs.get(id), rates.get(id)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// One file, or None if the daemon knows nothing of it.
    pub fn file(&self, id: &FileId) -> Result<Option<FileEntry>, Refusal> {
        let state = self.home.state()?;
        let jobs = self.lock_jobs();
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.entry(id, state.files.get(&id.to_hex()), jobs.get(id), rates.get(id)))
    }

    fn entry(
        &self,
        id: &FileId,
        rec: Option<&FileRecord>,
        job: Option<&Job>,
        rates: Option<&Rates>,
    ) -> Option<FileEntry> {
        let (name, size) = match (job, rec) {
            (Some(j), _) => (j.name.clone(), j.size),
            (None, Some(r)) => (r.name.clone(), r.size),
            (None, None) => return None,
        };
        let complete = rec.is_some_and(|r| r.partial_in.is_none());
        let state = match job.map(|j| j.state) {
            Some(JobState::Downloading) => "downloading",
            Some(JobState::Paused) => "paused",
            Some(JobState::Failed) => "failed",
            Some(JobState::Done) | None if complete => "seeding",
            _ => "partial",
        };
        let (have, chunks, files) = match self.store.get(id) {
            Some(f) => (
                f.have.count(),
                f.have.len(),
                f.manifest.tree.as_ref().map_or(0, |t| t.files() as u32),
            ),
            None => (0, 0, 0),
        };
        let progress = if complete {
            1.0
        } else if chunks > 0 {
            have as f64 / chunks as f64
        } else {
            0.0
        };
        let down_rate = rates.map_or(0.0, |r| r.down.rate());
        let up_rate = rates.map_or(0.0, |r| r.up.rate());
        let eta = (state == "downloading" && down_rate > 0.0).then(|| size as f64 * (1.0 - progress) / down_rate);
        let peers = job.map_or(0, |j| {
            j.live
                .peers()
                .iter()
                .filter(|p| p.connected.load(std::sync::atomic::Ordering::Relaxed))
                .count()
        });
        let result = job.and_then(|j| j.result.clone()).or_else(|| {
            let r = rec.filter(|_| complete)?;
            Some(commands::already_output(id, &r.path, size))
        });
        Some(FileEntry {
            id: id.to_hex(),
            name,
            size,
            files,
            state,
            progress,
            have,
            chunks,
            down_rate,
            up_rate,
            eta,
            peers,
            path: rec.map(|r| r.path.clone()),
            error: job
                .and_then(|j| j.error.as_ref())
                .map(|(code, message)| json!({ "code": code, "message": message })),
            result_text: result.as_ref().filter(|_| state == "seeding").map(|r| r.1.clone()),
            result: result.filter(|_| state == "seeding").map(|r| r.0),
        })
    }

    /// The peers of a file's download with their rates, and its chunk map.
    pub fn detail(&self, id: &FileId) -> serde_json::Value {
        let peers = self.lock_jobs().get(id).map(|j| j.live.peers()).unwrap_or_default();
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let peers: Vec<_> = peers
            .iter()
            .map(|p| {
                let rate = rates
                    .get(id)
                    .and_then(|r| r.peers.get(&p.peer_id))
                    .map_or(0.0, |m| m.rate());
                json!({
                    "peer_id": p.peer_id.to_hex(),
                    "addr": p.addr,
                    "partial": p.partial,
                    "connected": p.connected.load(std::sync::atomic::Ordering::Relaxed),
                    "bytes": p.bytes.get(),
                    "down_rate": rate,
                })
            })
            .collect();
        let connected = peers.iter().filter(|p| p["connected"] == true).count();
        let sequential = self.lock_jobs().get(id).is_some_and(|j| j.sequential);
        let prefix_bytes = self
            .store
            .get(id)
            .map_or(0, |f| download::prefix_of(&f.manifest, &f.have, 0).1);
        json!({ "peers": peers, "peers_connected": connected, "chunk_map": self.chunk_map_json(id),
                "sequential": sequential, "prefix_bytes": prefix_bytes })
    }

    /// The have bits in at most [`MAP_CELLS`] cells, each a digit: 0 none
    /// of its chunks, 9 all of them.
    fn chunk_map_json(&self, id: &FileId) -> serde_json::Value {
        let Some(f) = self.store.get(id) else {
            return json!({ "cells": 0, "chunks": 0, "map": "" });
        };
        let map = chunk_map(&f.have);
        json!({ "cells": map.len(), "chunks": f.have.len(), "map": map })
    }

    /// Starts (or resumes) downloading `id` into the storage folder;
    /// `sequential`: chunks in order (streaming).
    pub async fn download(self: &Arc<Self>, id: FileId, sequential: bool) -> Result<FileEntry, Refusal> {
        // (The jobs' lock is released before `file` takes it again.)
        let running = self
            .lock_jobs()
            .get(&id)
            .is_some_and(|j| j.state == JobState::Downloading);
        if running {
            return self.file(&id)?.ok_or_else(|| Refusal::new(404, "not_found", "gone"));
        }
        let home = &self.home;
        if let Some(rec) = home.state()?.files.get(&id.to_hex()) {
            if rec.partial_in.is_none() && rec.path.exists() {
                // Already here: nothing to fetch. A job left paused or
                // failed after the file was recorded (a pause or a tracker
                // error at the very end) would hide that: it goes.
                self.lock_jobs().remove(&id);
                return self.file(&id)?.ok_or_else(|| Refusal::new(404, "not_found", "gone"));
            }
        }
        let (file, owners, partial) = commands::all_owners(&self.client, id).await?;
        let me = home.identity.peer_id;
        let peers: Vec<_> = owners.into_iter().filter(|o| o.peer_id != me).collect();
        let partial: Vec<_> = partial.into_iter().filter(|o| o.peer.peer_id != me).collect();
        if peers.is_empty() && partial.is_empty() {
            return Err(CommandError::NoOwner(format!("{} ({})", file.name, id)).into());
        }
        let dir = home.storage_dir();
        std::fs::create_dir_all(&dir).map_err(|source| CommandError::Folder {
            path: dir.clone(),
            source,
        })?;
        tokio::task::block_in_place(|| home.record_partial(&file, &dir))?;
        let live = Arc::new(Live::default());
        {
            let mut jobs = self.lock_jobs();
            if jobs.get(&id).is_some_and(|j| j.state == JobState::Downloading) {
                // Another request started it meanwhile.
                drop(jobs);
                return self.file(&id)?.ok_or_else(|| Refusal::new(404, "not_found", "gone"));
            }
            let plan = DownloadPlan {
                file_id: id,
                peers,
                partial,
                sources: None,
                dir,
                identity: home.identity.identity.clone(),
                sharing: home.config.sharing.clone(),
                store: Some(self.store.clone()),
                progress: None,
                live: Some(live.clone()),
                download_limit: Some(self.limits.down.clone()),
                only: Vec::new(),
                sequential,
            };
            let task = tokio::spawn(self.clone().run_job(plan));
            jobs.insert(
                id,
                Job {
                    name: file.name.clone(),
                    size: file.size,
                    state: JobState::Downloading,
                    error: None,
                    task: Some(task.abort_handle()),
                    live,
                    result: None,
                    sequential,
                },
            );
        }
        info!(file = %id, name = %file.name, "download started");
        self.file(&id)?.ok_or_else(|| Refusal::new(404, "not_found", "gone"))
    }

    /// One download, to its end: announced as a partial owner while it
    /// runs, then recorded and registered as owned.
    async fn run_job(self: Arc<Self>, mut plan: DownloadPlan) {
        let id = plan.file_id;
        let me = self.home.identity.peer_id;
        self.metrics.downloads_active.inc();
        // Dropped when the task ends or is aborted (pause, remove, stop).
        let _active = Finally(|| {
            self.metrics.downloads_active.dec();
        });
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        plan.sources = Some(rx);
        let announcer = tokio::spawn(commands::partial_loop(
            self.client.clone(),
            self.store.clone(),
            me,
            id,
            self.addrs.clone(),
            tx,
        ));
        let _announcer = Finally(|| announcer.abort());
        let live = plan.live.clone();
        let result = download::run(plan).await;
        if let Some(l) = live {
            l.end();
        }
        let outcome = match result {
            Ok(report) => self.finish(&report).await.map(|()| report),
            Err(e) => Err(CommandError::from(e)),
        };
        let mut jobs = self.lock_jobs();
        let Some(job) = jobs.get_mut(&id) else { return };
        job.task = None;
        match outcome {
            Ok(report) => {
                info!(file = %id.short(), "download done; seeding it");
                job.state = JobState::Done;
                job.result = Some(commands::get_output(&report));
            }
            Err(e) => {
                warn!(file = %id.short(), "download failed: {e}");
                job.state = JobState::Failed;
                job.error = Some((e.code(), e.to_string()));
            }
        }
    }

    async fn finish(&self, report: &download::DownloadReport) -> Result<(), CommandError> {
        let home = &self.home;
        tokio::task::block_in_place(|| home.record_owned(&report.manifest, &report.path))?;
        self.own(&report.manifest).await
    }

    /// Registers a file as owned by this node (announcing the node first
    /// if the tracker forgot it).
    async fn own(&self, m: &protocol::content::Manifest) -> Result<(), CommandError> {
        let me = self.home.identity.peer_id;
        let own = || {
            self.client.call(Request::Own {
                peer_id: me,
                file: m.meta(),
            })
        };
        match own().await {
            Err(TrackerError::Api(ApiError::UnknownPeer(_))) => {
                commands::announce(&self.client, &self.home, self.addrs.clone()).await?;
                own().await?;
            }
            other => {
                other?;
            }
        }
        commands::pool(&self.client, me, m).await;
        Ok(())
    }

    /// Stops a running download, keeping its verified part.
    pub fn pause(&self, id: &FileId) -> Result<(), Refusal> {
        let mut jobs = self.lock_jobs();
        let Some(job) = jobs.get_mut(id) else {
            return Err(Refusal::new(
                409,
                "not_downloading",
                format!("{id} is not being downloaded here"),
            ));
        };
        match job.state {
            JobState::Downloading => {
                if let Some(t) = job.task.take() {
                    t.abort();
                }
                job.live.end();
                job.state = JobState::Paused;
                info!(file = %id.short(), "download paused");
                Ok(())
            }
            JobState::Paused => Ok(()),
            _ => Err(Refusal::new(
                409,
                "not_downloading",
                format!("{id} is not being downloaded here"),
            )),
        }
    }

    /// Continues a paused, failed or unfinished download.
    pub async fn resume(self: &Arc<Self>, id: &FileId) -> Result<FileEntry, Refusal> {
        match self.file(id)? {
            None => Err(Refusal::new(404, "not_found", format!("no file {id} here"))),
            Some(e) if e.state == "seeding" => Err(Refusal::new(
                409,
                "complete",
                format!("{id} is complete; nothing to resume"),
            )),
            Some(e) if e.state == "downloading" => Ok(e),
            Some(_) => {
                let sequential = self.lock_jobs().get(id).is_some_and(|j| j.sequential);
                self.download(*id, sequential).await
            }
        }
    }

    /// Shares `path` (canonical, inside the roots): hashes, registers,
    /// records and serves it.
    pub async fn share(&self, path: &Path) -> Result<FileEntry, Refusal> {
        let md =
            std::fs::metadata(path).map_err(|e| Refusal::new(404, "not_found", format!("{}: {e}", path.display())))?;
        if !md.is_file() && !md.is_dir() {
            return Err(Refusal::new(
                400,
                "bad_input",
                format!("{} is neither a regular file nor a folder", path.display()),
            ));
        }
        let m = commands::hash_one(&self.home, path, false, true).await?;
        self.own(&m).await?;
        let home = &self.home;
        tokio::task::block_in_place(|| home.record_owned(&m, path))?;
        let id = m.id();
        match commands::load_one(&id, &home.manifest_path(&id), path, None) {
            Ok(Some(f)) => {
                self.store.insert(f);
            }
            Ok(None) => {}
            Err(e) => warn!(file = %id.short(), "shared but not served: {e}"),
        }
        info!(file = %id, name = %m.name, "shared");
        self.file(&id)?
            .ok_or_else(|| Refusal::new(500, "internal", "the file was not recorded"))
    }

    /// Stops serving and downloading `id`, disowns it on the tracker and
    /// forgets it; with `delete_data`, removes its data files too (only
    /// inside the daemon's folders).
    pub async fn remove(&self, id: &FileId, delete_data: bool) -> Result<serde_json::Value, Refusal> {
        let job = self.lock_jobs().remove(id);
        if let Some(j) = &job {
            if let Some(t) = &j.task {
                t.abort();
            }
            j.live.end();
        }
        let rec = self.home.state()?.files.get(&id.to_hex()).cloned();
        if job.is_none() && rec.is_none() {
            return Err(Refusal::new(404, "not_found", format!("no file {id} here")));
        }
        self.store.remove(id);
        self.rates.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let me = self.home.identity.peer_id;
        match self
            .client
            .call(Request::Disown {
                peer_id: me,
                file_id: *id,
            })
            .await
        {
            Ok(_) => {}
            Err(e) => warn!(file = %id.short(), "disown: {e}"),
        }
        let hex = id.to_hex();
        let home = &self.home;
        tokio::task::block_in_place(|| {
            home.update_state(|s| {
                s.files.remove(&hex);
            })
        })?;
        let _ = std::fs::remove_file(home.manifest_path(id));
        let mut deleted = Vec::new();
        if let (true, Some(rec)) = (delete_data, &rec) {
            // Only what the daemon wrote: files in its storage folder (never
            // the originals a share root holds), and a link there is
            // removed, not followed (a downloaded folder goes whole; the
            // removal of a folder never follows the links inside it).
            let storage = std::fs::canonicalize(self.home.storage_dir()).ok();
            let inside = |p: &Path| {
                let dir = std::fs::canonicalize(p.parent()?).ok()?;
                let c = dir.join(p.file_name()?);
                let ours = storage.as_ref().is_some_and(|s| dir.starts_with(s));
                ours.then_some(c)
            };
            let mut targets = vec![rec.path.clone()];
            if let Some(dir) = &rec.partial_in {
                targets.extend(["part", "tree", "have", "manifest"].map(|e| download::sidecar(dir, id, e)));
            }
            for t in targets {
                if let Some(c) = inside(&t) {
                    let folder = std::fs::symlink_metadata(&c).is_ok_and(|m| m.is_dir());
                    let removed = if folder {
                        std::fs::remove_dir_all(&c)
                    } else {
                        std::fs::remove_file(&c)
                    };
                    if removed.is_ok() {
                        deleted.push(c);
                    }
                }
            }
        }
        info!(file = %id.short(), deleted = deleted.len(), "removed");
        Ok(json!({ "id": hex, "removed": true, "deleted": deleted }))
    }

    /// Aborts every running download (their verified parts are saved).
    fn stop_jobs(&self) {
        for j in self.lock_jobs().values_mut() {
            if let Some(t) = j.task.take() {
                t.abort();
            }
        }
    }

    /// Counts for `/status`.
    pub fn counts(&self) -> serde_json::Value {
        let jobs = self.lock_jobs();
        let of = |s: JobState| jobs.values().filter(|j| j.state == s).count();
        json!({
            "served": self.store.len(),
            "downloading": of(JobState::Downloading),
            "paused": of(JobState::Paused),
            "failed": of(JobState::Failed),
        })
    }
}

/// `path` made canonical (links and `..` resolved), if it lies inside one
/// of `roots` (canonical); a 404 or a 403 naming the roots otherwise.
pub fn inside(roots: &[PathBuf], path: &Path) -> Result<PathBuf, Refusal> {
    let canonical = match std::fs::canonicalize(path) {
        Ok(c) => c,
        // Missing inside a root: say so; elsewhere, the same refusal as
        // an existing path, so answers tell nothing about other folders.
        Err(e) if path.is_absolute() && roots.iter().any(|r| path.starts_with(r)) => {
            return Err(Refusal::new(404, "not_found", format!("{}: {e}", path.display())))
        }
        Err(_) => path.to_path_buf(),
    };
    if roots.iter().any(|r| canonical.starts_with(r)) {
        return Ok(canonical);
    }
    let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(Refusal::new(
        403,
        "outside_roots",
        format!(
            "{} is outside the folders this daemon may read; it may read only: {} \
             (the storage folder, and `share_roots` and `watch_dir` of the node's configuration)",
            path.display(),
            list.join(", ")
        ),
    ))
}

/// The have bits in at most [`MAP_CELLS`] cells, each a digit: `0` none
/// of its chunks, `9` all of them, in between by proportion (rounded
/// down, so only a whole cell shows 9).
pub fn chunk_map(have: &crate::store::HaveBits) -> String {
    let n = have.len() as u64;
    let cells = n.min(MAP_CELLS as u64);
    let mut map = String::with_capacity(cells as usize);
    for c in 0..cells {
        let (from, to) = ((c * n / cells) as u32, ((c + 1) * n / cells) as u32);
        let got = (from..to).filter(|&i| have.get(i)).count() as u32;
        let span = (to - from).max(1);
        let digit = if got == span { 9 } else { got * 9 / span };
        map.push(char::from(b'0' + digit as u8));
    }
    map
}

/// Runs a closure when dropped.
struct Finally<F: FnMut()>(F);

impl<F: FnMut()> Drop for Finally<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HaveBits;

    #[test]
    fn the_token_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = ensure_token(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(ensure_token(dir.path()).unwrap(), t);
        let path = dir.path().join("http-token");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0);
        std::fs::write(&path, b"").unwrap();
        let again = ensure_token(dir.path()).unwrap();
        assert!(again.len() == 64 && again != t);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), again);
    }

    #[test]
    fn chunk_maps_are_downsampled_to_512_cells() {
        let small = HaveBits::new(3);
        small.set(1);
        assert_eq!(chunk_map(&small), "090");
        let huge = HaveBits::new(65_536);
        for i in 0..128 {
            huge.set(i);
        }
        huge.set(200);
        let map = chunk_map(&huge);
        assert_eq!(map.len(), MAP_CELLS as usize);
        assert!(map.starts_with("9") && map[1..].starts_with('0'), "{}", &map[..4]);
        assert_eq!(&map[1..2], "0");
        assert_eq!(chunk_map(&HaveBits::new(0)), "");
        assert!(chunk_map(&HaveBits::full(1000)).chars().all(|c| c == '9'));
    }

    #[test]
    fn only_canonical_paths_inside_the_roots_pass() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let out = dir.path().join("out");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(root.join("sub/a"), b"a").unwrap();
        std::fs::write(out.join("b"), b"b").unwrap();
        std::os::unix::fs::symlink(out.join("b"), root.join("link")).unwrap();
        let roots = vec![root.canonicalize().unwrap()];
        assert!(inside(&roots, &root.join("sub/../sub/a")).is_ok());
        for bad in [out.join("b"), root.join("../out/b"), root.join("link")] {
            let r = inside(&roots, &bad).unwrap_err();
            assert_eq!((r.status, r.code), (403, "outside_roots"), "{bad:?}");
            assert!(r.message.contains(roots[0].to_str().unwrap()), "{}", r.message);
        }
        // A root's sibling with the root's name as prefix is outside too.
        std::fs::create_dir_all(dir.path().join("root2")).unwrap();
        std::fs::write(dir.path().join("root2/c"), b"c").unwrap();
        assert_eq!(inside(&roots, &dir.path().join("root2/c")).unwrap_err().status, 403);
        assert_eq!(inside(&roots, &root.join("missing")).unwrap_err().status, 404);
    }
}
