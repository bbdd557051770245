//! Downloading one file from several peers at once: the async shell around
//! the clock-free [`scheduler`].
//!
//! One QUIC connection per peer, dialled with a client configuration that
//! accepts only the key belonging to the peer id the tracker gave. The
//! manifest is checked against the file id (and its name against path
//! tricks) before anything in it is believed. Chunk requests run as
//! concurrent streams; each chunk is read into a reused buffer, checked
//! against its BLAKE3 hash, and only then written at its offset and
//! counted.
//!
//! Partial owners: peers that are still downloading the file themselves
//! (from the tracker, with the bit set they last announced) are sources
//! like complete owners, for the chunks they hold. The bit set from the
//! tracker only adds chunks; the peer's own `Have` answer, asked about
//! every second while it is partial, replaces it. Owner lists that the
//! caller sends while the download runs (`DownloadPlan::sources`, from
//! re-asking the tracker) add the peers not known yet and update what
//! partial peers hold.
//!
//! Download rate: with a limit (`DownloadPlan::download_limit`, one per
//! process, see `rate.rs`) each chunk request waits for its bytes in
//! arrival order before it is sent, so the limit holds over every
//! download of the process and is shared fairly by their peers and files.
//!
//! Pooled sources: owners of *other* items holding some of this item's
//! contents (the same bytes under another name, or inside a folder; see
//! `ARCHITECTURE.md`, "One swarm per content"), sent in
//! [`Sources::pooled`]. Such a peer joins as a member with a [`Via`]: its
//! item's manifest is fetched and checked against that item's id, the
//! chunks of each shared content are mapped onto this item's chunk
//! indices, and the scheduler sees a peer holding exactly those chunks. A
//! chunk is asked for under the other item's id and index, and verified
//! against this item's hash like any other.
//!
//! On disk, a download in progress lives in `DIR/.quorrent/`: `ID.part`
//! (the data, written in place), `ID.have` (the verified-chunk bit set,
//! saved every few chunks and whenever the download stops, even when its
//! task is dropped) and `ID.manifest`. The bit set is a hint: on resume the
//! chunks it claims are hashed again, so a torn write after a crash costs
//! a refetch, never a wrong byte. On completion the data moves to
//! `DIR/NAME`; an existing different file of that name is never replaced:
//! the download takes the first free `NAME (1)`, `NAME (2)`, ... instead.
//!
//! Sequential (`DownloadPlan::sequential`, `get --sequential`): chunks are
//! asked for lowest first, so `ID.part` (full size from the start) holds
//! verified bytes from offset 0 up to `Progress::prefix_bytes`, which only
//! grows; a player may read that far while the rest arrives.

pub mod scheduler;

use std::{
    collections::{HashMap, VecDeque},
    fs::OpenOptions,
    io::ErrorKind,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use protocol::{
    codec,
    config::SharingConfig,
    content::{Manifest, ManifestError, MIN_CHUNK},
    ids::{ContentId, FileId},
    peer::{PeerError, PeerRequest, PeerResponse, ALPN, MAX_FRAME},
    tls::Identity,
    tracker_api::{PartialOwner, PeerInfo, PooledItem},
};
use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinSet},
};
use tracing::{debug, info, warn};

use crate::{
    daemon::metrics::{Direction, FileTraffic, NodeMetrics},
    data::Data,
    rate::RateLimit,
    store::{HaveBits, SharedFile, Store},
};
use scheduler::{PeerIdx, Progress as SchedProgress, SchedConfig, Scheduler};

/// Time allowed for dialling one address of a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one request (a manifest, a chunk) to be answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Save the verified-chunk bit set after this many new chunks.
const SAVE_EVERY: u32 = 32;
/// Chunk bytes in flight over all peers, at most. This bounds memory, and
/// on loopback more than this only overflows the receiving socket (4 peers
/// into one endpoint): 8 MiB gave 1.3x the rate of 32 MiB in bench_p2p.
const IN_FLIGHT_BUDGET: u64 = 8 << 20;
/// How often partial peers are asked again for what they hold.
const HAVE_REFRESH: Duration = Duration::from_secs(1);
/// How long a download waits with nothing to fetch while partial peers
/// may still get further, before it gives up.
const STUCK_FOR: Duration = Duration::from_secs(30);

/// Called with the state of the download after each verified chunk.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What a download is asked to do.
pub struct DownloadPlan {
    pub file_id: FileId,
    /// Owners to download from (the node itself excluded).
    pub peers: Vec<PeerInfo>,
    /// Partial owners to download from too (the node itself excluded),
    /// with the chunks the tracker says they hold.
    pub partial: Vec<PartialOwner>,
    /// Later owner lists (e.g. the tracker asked again every second or
    /// two): new peers join, partial peers' bit sets are merged.
    pub sources: Option<mpsc::Receiver<Sources>>,
    /// Folder the file lands in.
    pub dir: PathBuf,
    /// This node's key pair, presented to peers.
    pub identity: Identity,
    pub sharing: SharingConfig,
    /// When given, verified chunks are served from here while downloading.
    /// When given, verified chunks are served from here while
    /// downloading, and counted in the store's metrics.
    pub store: Option<Arc<Store>>,
    pub progress: Option<ProgressFn>,
    /// When given, the peers taking part are listed here as they join
    /// (the daemon's API shows them with their byte counts).
    pub live: Option<Arc<Live>>,
    /// When given, every chunk request waits here for its bytes first
    /// (the process's download limit, shared by all its downloads).
    pub download_limit: Option<Arc<RateLimit>>,
    /// Of a folder, only the files these patterns select
    /// ([`crate::data::selects`]); empty: everything.
    pub only: Vec<String>,
    /// Lowest missing chunk first (streaming), instead of rarest first.
    pub sequential: bool,
}

/// The peers of a running download as others may watch them: changed
/// when a peer joins or leaves, never per chunk (the byte counts are
/// atomic counters).
#[derive(Debug, Default)]
pub struct Live {
    peers: Mutex<Vec<LivePeer>>,
}

/// One peer of a running download.
#[derive(Debug, Clone)]
pub struct LivePeer {
    pub peer_id: protocol::ids::PeerId,
    /// The address its connection uses.
    pub addr: Option<SocketAddr>,
    /// It was still downloading the file itself when it joined.
    pub partial: bool,
    /// Verified bytes received from it in this download.
    pub bytes: Counter,
    /// Still connected and not dropped.
    pub connected: Arc<AtomicBool>,
}

impl Live {
    /// The peers that joined so far.
    pub fn peers(&self) -> Vec<LivePeer> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Marks every peer gone (the download ended or was paused).
    pub fn end(&self) {
        for p in self.peers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            p.connected.store(false, Ordering::Relaxed);
        }
    }

    fn add(&self, p: LivePeer) {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }
}

/// One owner list sent to a running download.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub owners: Vec<PeerInfo>,
    pub partial: Vec<PartialOwner>,
    /// Other items holding some of this item's contents, with their live
    /// owners (`Request::GetPooled`); used once the manifest is known.
    pub pooled: Vec<PooledItem>,
}

/// A snapshot of a download's progress.
#[derive(Debug, Clone)]
pub struct Progress {
    pub bytes_done: u64,
    pub size: u64,
    pub chunks_done: u32,
    pub chunks: u32,
    /// Peers still taking part.
    pub peers: usize,
    /// Chunks fetched in this run (not counting those resumed).
    pub fetched: u32,
    /// Verified bytes from the start of the file with no gap: what a
    /// player may read of the part file.
    pub prefix_bytes: u64,
}

/// What one peer contributed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerReport {
    pub peer_id: String,
    pub chunks: u32,
    pub bytes: u64,
    pub bad_chunks: u32,
    pub dropped: bool,
    /// The peer was still downloading the file when it joined.
    pub partial: bool,
    /// When the first chunk from it was verified (Unix ms).
    pub first_chunk_ms: Option<u64>,
    /// A pooled source: the id of the other item (same content under
    /// another name or in a folder) its chunks were asked for under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooled_from: Option<String>,
}

/// The result of a finished download.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub file_id: FileId,
    pub manifest: Manifest,
    pub path: PathBuf,
    /// Chunks found verified on disk at the start.
    pub resumed_chunks: u32,
    /// Chunks fetched from peers in this run.
    pub fetched_chunks: u32,
    pub per_peer: Vec<PeerReport>,
    pub seconds: f64,
    /// When the last chunk was verified (Unix ms).
    pub finished_ms: u64,
}

impl DownloadReport {
    /// Peers that delivered at least one chunk.
    pub fn peers_used(&self) -> usize {
        self.per_peer.iter().filter(|p| p.chunks > 0).count()
    }
}

/// Why a download stopped. Every variant keeps the verified part on disk.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("no live owner to download from")]
    NoPeers,
    #[error("could not reach any owner: {0}")]
    Unreachable(String),
    #[error("refusing the file: {0}")]
    BadManifest(String),
    #[error("every peer failed; {verified} of {} verified and kept, run get again to resume", crate::human::count(*total, "chunk", "chunks"))]
    AllPeersFailed { verified: u32, total: u32 },
    #[error("{} held by no reachable peer; {verified} of {total} verified and kept", crate::human::count(*missing, "chunk is", "chunks are"))]
    Unavailable { missing: u32, verified: u32, total: u32 },
    #[error("cannot write {path}: {source}; the verified part is kept, run get again to resume")]
    Disk { path: PathBuf, source: std::io::Error },
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    #[error("no file of the folder matches {0}")]
    NothingSelected(String),
    #[error("peer connection set-up: {0}")]
    Tls(#[from] protocol::tls::TlsError),
}

/// Files of a download in progress: `DIR/.quorrent/ID.EXT`.
pub fn sidecar(dir: &Path, id: &FileId, ext: &str) -> PathBuf {
    dir.join(".quorrent").join(format!("{}.{ext}", id.to_hex()))
}

/// Reads the verified-chunk set of a partial download (for seeding it).
pub fn load_have(dir: &Path, id: &FileId, chunks: u32) -> HaveBits {
    match std::fs::read(sidecar(dir, id, "have")) {
        Ok(bytes) => HaveBits::from_bytes(chunks, &bytes),
        Err(_) => HaveBits::new(chunks),
    }
}

fn disk(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Disk {
        path: path.to_owned(),
        source,
    }
}

/// Saves the bit set when the download stops for any reason, including
/// its task being dropped (Ctrl-C, a cancelled future).
struct HaveSaver {
    path: PathBuf,
    have: Arc<HaveBits>,
    armed: bool,
}

impl HaveSaver {
    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("have.tmp");
        std::fs::write(&tmp, self.have.to_bytes())?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl Drop for HaveSaver {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.save() {
                warn!("cannot save download state {}: {e}", self.path.display());
            }
        }
    }
}

/// The outputs of the download's tasks.
enum TaskOut {
    Joined {
        peer: PeerIdx,
        conn: quinn::Connection,
        manifest: Option<Manifest>,
        have: Vec<u8>,
        complete: bool,
    },
    JoinFailed {
        peer: PeerIdx,
        error: String,
        bad_manifest: bool,
    },
    Fetched {
        peer: PeerIdx,
        chunk: u32,
        result: Result<(), FetchError>,
        buf: Vec<u8>,
    },
    Have {
        peer: PeerIdx,
        bits: Option<Vec<u8>>,
        complete: bool,
    },
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Transport(String),
    #[error("peer refused: {0}")]
    Refused(PeerError),
    #[error("chunk failed verification")]
    Bad,
    #[error("disk: {0}")]
    Disk(std::io::Error),
}

/// How a pooled member serves this item: as chunks of another item.
struct Via {
    file: FileId,
    /// This item's chunk index -> the other item's; empty until joined.
    map: Arc<HashMap<u32, u32>>,
}

/// An owner not dialled yet.
struct Candidate {
    info: PeerInfo,
    /// A partial owner's chunks as the tracker last heard them.
    have: Option<Vec<u8>>,
    /// A pooled source: the other item it owns.
    via: Option<FileId>,
}

/// A peer taking part.
struct Member {
    info: PeerInfo,
    /// A pooled source (see the module documentation).
    via: Option<Via>,
    /// Connected and not dropped.
    conn: Option<quinn::Connection>,
    /// Still being dialled.
    joining: bool,
    complete: bool,
    /// Known as a partial owner, or joined saying it is not complete.
    partial: bool,
    /// A `Have` request to it is under way.
    refreshing: bool,
    first_chunk_ms: Option<u64>,
    /// Verified bytes from it: this download's count and the metric.
    bytes: Counter,
    metric: Option<Counter>,
    connected: Arc<AtomicBool>,
}

/// The open output of a download once its manifest is known.
struct Output {
    manifest: Arc<Manifest>,
    /// The part file, or the folder being built.
    part: PathBuf,
    data: Arc<Data>,
    have: Arc<HaveBits>,
    /// Bytes of the verified chunks.
    bytes_done: u64,
    /// Bytes to fetch in all (of the selected files only, with `only`).
    size: u64,
    saver: HaveSaver,
    sched: Scheduler,
    resumed: u32,
    traffic: FileTraffic,
    /// Chunks verified from the start with no gap.
    prefix: u32,
}

/// Downloads `plan.file_id` into `plan.dir`; see the module documentation.
pub async fn run(mut plan: DownloadPlan) -> Result<DownloadReport, DownloadError> {
    if plan.peers.is_empty() && plan.partial.is_empty() {
        return Err(DownloadError::NoPeers);
    }
    let mut sources = plan.sources.take();
    let mut d = Download::start(&plan).await?;
    loop {
        if d.schedule()? {
            return d.finish().await;
        }
        let idle = d.tasks.is_empty();
        if idle && sources.is_none() {
            // Nothing runs and nothing can be assigned: every peer is gone.
            let (verified, total) = d.out.as_ref().map_or((0, 0), |o| (o.have.count(), o.have.len()));
            return Err(DownloadError::AllPeersFailed { verified, total });
        }
        tokio::select! {
            done = d.tasks.join_next(), if !idle => {
                // An error here is a cancelled duplicate request.
                if let Some(Ok(event)) = done {
                    d.on_event(event).await?;
                }
            }
            got = async { sources.as_mut().expect("checked").recv().await }, if sources.is_some() => match got {
                Some(s) => d.on_sources(s),
                None => sources = None,
            },
            // Wakes a download that waits for partial peers to get further.
            _ = tokio::time::sleep(HAVE_REFRESH), if idle => {}
        }
    }
}

/// The state of one running download.
struct Download<'a> {
    plan: &'a DownloadPlan,
    started: Instant,
    endpoint: quinn::Endpoint,
    members: Vec<Member>,
    /// Owners beyond `max_peers`, standing by to replace peers that fail,
    /// with the tracker's bit set for partial ones.
    reserve: VecDeque<Candidate>,
    /// Every peer ever seen (members and reserve), by id.
    known: HashMap<protocol::ids::PeerId, Option<PeerIdx>>,
    tasks: JoinSet<TaskOut>,
    /// The output, once the manifest is known.
    out: Option<Output>,
    /// Peers that joined (with their chunk set) or failed, not yet told to
    /// the scheduler.
    waiting: Vec<(PeerIdx, Option<Vec<u8>>)>,
    join_errors: Vec<String>,
    bad_manifests: Vec<String>,
    pending_haves: usize,
    /// Since when nothing could be fetched (partial peers may get further).
    stuck_since: Option<Instant>,
    running: HashMap<(PeerIdx, u32), AbortHandle>,
    buffers: Vec<Vec<u8>>,
    fetched: u32,
    since_save: u32,
}

impl<'a> Download<'a> {
    async fn start(plan: &'a DownloadPlan) -> Result<Download<'a>, DownloadError> {
        let side = plan.dir.join(".quorrent");
        std::fs::create_dir_all(&side).map_err(disk(&side))?;
        let local_manifest = std::fs::read(sidecar(&plan.dir, &plan.file_id, "manifest"))
            .ok()
            .and_then(|b| Manifest::decode_checked(&b, plan.file_id).ok());
        let all_addrs = plan
            .peers
            .iter()
            .flat_map(|p| &p.addrs)
            .chain(plan.partial.iter().flat_map(|p| &p.peer.addrs));
        let bind: SocketAddr = if all_addrs.clone().any(|a| a.is_ipv4()) {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut d = Download {
            plan,
            started: Instant::now(),
            endpoint: protocol::quic::endpoint(bind, None).map_err(DownloadError::Socket)?,
            members: Vec::new(),
            reserve: VecDeque::new(),
            known: HashMap::new(),
            tasks: JoinSet::new(),
            out: None,
            waiting: Vec::new(),
            join_errors: Vec::new(),
            bad_manifests: Vec::new(),
            pending_haves: 0,
            stuck_since: None,
            running: HashMap::new(),
            buffers: Vec::new(),
            fetched: 0,
            since_save: 0,
        };
        if let Some(m) = local_manifest {
            d.out = Some(open_output(plan, m, 0).await?);
        }
        // Complete owners first: they can serve the whole file.
        d.on_sources(Sources {
            owners: plan.peers.clone(),
            partial: plan.partial.clone(),
            pooled: Vec::new(),
        });
        d.top_up_peers()?;
        Ok(d)
    }

    /// An owner list: unknown peers go to the reserve; what partial peers
    /// hold is merged (the tracker's copy only adds chunks).
    fn on_sources(&mut self, sources: Sources) {
        let partial = sources.partial.into_iter().map(|p| (p.peer, Some(p.have)));
        // Pooled sources only once this item's manifest is known (to map
        // their chunks), and only of items cut in chunks of the same size.
        let chunk_size = self.out.as_ref().map(|o| o.manifest.chunk_size);
        let own = self.plan.file_id;
        for item in sources
            .pooled
            .into_iter()
            .filter(|i| i.file.id != own && Some(i.file.chunk_size) == chunk_size)
        {
            for info in item.owners {
                // A peer known already (an owner of this item, or pooled
                // through another item) is not dialled twice.
                if let std::collections::hash_map::Entry::Vacant(e) = self.known.entry(info.peer_id) {
                    e.insert(None);
                    self.reserve.push_back(Candidate {
                        info,
                        have: None,
                        via: Some(item.file.id),
                    });
                }
            }
        }
        for (info, have) in sources.owners.into_iter().map(|i| (i, None)).chain(partial) {
            match self.known.get(&info.peer_id) {
                None => {
                    self.known.insert(info.peer_id, None);
                    self.reserve.push_back(Candidate { info, have, via: None });
                }
                Some(Some(p)) => {
                    let p = *p;
                    let m = &self.members[p];
                    if let (Some(o), Some(bits), true, None) = (self.out.as_mut(), &have, m.conn.is_some(), &m.via) {
                        o.sched.add_have(p, bits);
                    }
                }
                Some(None) => {
                    // Still in the reserve: keep the newer bit set.
                    if let Some(r) = self
                        .reserve
                        .iter_mut()
                        .find(|c| c.info.peer_id == info.peer_id && c.via.is_none())
                    {
                        if have.is_some() {
                            r.have = have;
                        }
                    }
                }
            }
        }
    }

    /// The scheduler's clock: microseconds since the start.
    fn now(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Dials owners from the reserve until `max_peers` are joining or
    /// connected.
    fn top_up_peers(&mut self) -> Result<(), DownloadError> {
        let max_peers = self.plan.sharing.max_peers.max(1);
        while self.members.iter().filter(|m| m.joining || m.conn.is_some()).count() < max_peers {
            let Some(Candidate {
                info,
                have: tracker_have,
                via,
            }) = self.reserve.pop_front()
            else {
                break;
            };
            if via.is_some() && self.out.is_none() {
                // Cannot be mapped yet; a later list brings it again.
                self.known.remove(&info.peer_id);
                continue;
            }
            let cfg = protocol::tls::quic_client(
                protocol::tls::peer_client_crypto(info.peer_id, &self.plan.identity, ALPN)?,
                protocol::quic::bulk_transport(),
            )?;
            self.tasks.spawn(join_peer(
                self.endpoint.clone(),
                cfg,
                self.members.len(),
                info.clone(),
                via.unwrap_or(self.plan.file_id),
                self.out.is_none() || via.is_some(),
            ));
            self.known.insert(info.peer_id, Some(self.members.len()));
            self.members.push(Member {
                info,
                via: via.map(|file| Via {
                    file,
                    map: Arc::default(),
                }),
                conn: None,
                joining: true,
                complete: false,
                partial: tracker_have.is_some(),
                refreshing: false,
                first_chunk_ms: None,
                bytes: Counter::default(),
                metric: None,
                connected: Arc::new(AtomicBool::new(false)),
            });
            if let Some(o) = self.out.as_mut() {
                o.sched.add_peer(&[]);
            }
        }
        Ok(())
    }

    /// Tells the scheduler what happened, starts the requests it decides
    /// and checks where the download stands: true when it is complete.
    fn schedule(&mut self) -> Result<bool, DownloadError> {
        self.top_up_peers()?;
        let pending_joins = self.members.iter().filter(|m| m.joining).count();
        let now = self.now();
        let Some(o) = self.out.as_mut() else {
            if pending_joins > 0 {
                return Ok(false);
            }
            return Err(if self.bad_manifests.is_empty() {
                DownloadError::Unreachable(self.join_errors.join("; "))
            } else {
                DownloadError::BadManifest(self.bad_manifests.join("; "))
            });
        };
        for (peer, have) in self.waiting.drain(..) {
            match have {
                Some(bits) => o.sched.update_have(peer, &bits),
                None => o.sched.peer_gone(peer),
            }
        }
        for (peer, chunk) in o.sched.assign(now) {
            let Some(conn) = self.members[peer].conn.clone() else {
                // The scheduler and the connections agree on who is alive;
                // should they not, the chunk goes back.
                o.sched.peer_gone(peer);
                continue;
            };
            let buf = self.buffers.pop().unwrap_or_default();
            // A pooled member holds only mapped chunks (its have set), so
            // the map has every chunk the scheduler gives it.
            let target = match &self.members[peer].via {
                None => (self.plan.file_id, chunk),
                Some(v) => (v.file, v.map.get(&chunk).copied().unwrap_or(chunk)),
            };
            let fetch = fetch_chunk(conn, o.manifest.clone(), o.data.clone(), target, peer, chunk, buf);
            // The download limit paces the requests, before a request's
            // timeout starts: the bytes asked for are the bytes received.
            let (limit, len) = (self.plan.download_limit.clone(), o.manifest.chunk_len(chunk) as u64);
            let fetch = async move {
                if let Some(limit) = limit {
                    limit.acquire(len).await;
                }
                fetch.await
            };
            self.running.insert((peer, chunk), self.tasks.spawn(fetch));
        }
        let missing = match o.sched.progress() {
            SchedProgress::Done => return Ok(true),
            SchedProgress::Running => {
                self.stuck_since = None;
                return Ok(false);
            }
            SchedProgress::Stuck { missing } => missing,
        };
        if pending_joins > 0 {
            return Ok(false);
        }
        // The rest is nowhere yet: wait while partial peers (asked again
        // every second) may get further, up to STUCK_FOR; else give up.
        let partial = (0..self.members.len())
            .any(|p| self.members[p].conn.is_some() && !self.members[p].complete && o.sched.is_alive(p));
        let since = *self.stuck_since.get_or_insert_with(Instant::now);
        let (verified, total) = (o.have.count(), o.have.len());
        if !(partial || self.pending_haves > 0) || since.elapsed() >= STUCK_FOR {
            return Err(if o.sched.alive_peers() == 0 {
                DownloadError::AllPeersFailed { verified, total }
            } else {
                DownloadError::Unavailable {
                    missing,
                    verified,
                    total,
                }
            });
        }
        Ok(false)
    }

    /// Asks a partial peer again, in a second, what it holds (one request
    /// at a time per peer, for as long as it is partial).
    fn refresh_later(&mut self, p: PeerIdx) {
        let m = &mut self.members[p];
        if m.refreshing || m.complete {
            return;
        }
        let Some(conn) = m.conn.clone() else { return };
        m.refreshing = true;
        self.pending_haves += 1;
        let file = m.via.as_ref().map_or(self.plan.file_id, |v| v.file);
        self.tasks.spawn(refresh_have(conn, file, p));
    }

    async fn on_event(&mut self, event: TaskOut) -> Result<(), DownloadError> {
        match event {
            TaskOut::Joined {
                peer,
                conn,
                mut manifest,
                mut have,
                complete,
            } => {
                let plan = self.plan;
                if self.members[peer].via.is_some() {
                    // A pooled source: its manifest is the other item's.
                    let (Some(o), Some(theirs)) = (self.out.as_ref(), manifest.take()) else {
                        self.join_failed(peer, "pooled source without a manifest".into(), false);
                        return Ok(());
                    };
                    let map = chunk_map(&o.manifest, &theirs);
                    if map.is_empty() {
                        conn.close(1u32.into(), b"no shared content");
                        let error = format!("item {} shares no content with this one", theirs.id());
                        self.join_failed(peer, error, false);
                        return Ok(());
                    }
                    have = map_have(&map, &have, o.manifest.chunks.len() as u32);
                    info!(peer = %self.members[peer].info.peer_id.short(), via = %theirs.id().short(),
                        chunks = map.len(), "pooled source joined");
                    if let Some(v) = self.members[peer].via.as_mut() {
                        v.map = Arc::new(map);
                    }
                }
                let m = &mut self.members[peer];
                info!(peer = %m.info.peer_id.short(), complete, "peer joined");
                m.joining = false;
                m.complete = complete;
                m.partial |= !complete;
                m.connected.store(true, Ordering::Relaxed);
                if let Some(metrics) = plan.store.as_ref().and_then(|s| s.metrics()) {
                    m.metric = Some(metrics.peer(Direction::Down, m.info.peer_id.short()));
                }
                if let Some(live) = &plan.live {
                    live.add(LivePeer {
                        peer_id: m.info.peer_id,
                        addr: Some(conn.remote_address()),
                        partial: m.partial,
                        bytes: m.bytes.clone(),
                        connected: m.connected.clone(),
                    });
                }
                m.conn = Some(conn);
                if let (None, Some(manifest)) = (&self.out, manifest) {
                    self.out = Some(open_output(self.plan, manifest, self.members.len()).await?);
                }
                self.waiting.push((peer, Some(have)));
                if !complete {
                    self.refresh_later(peer);
                }
            }
            TaskOut::JoinFailed {
                peer,
                error,
                bad_manifest,
            } => self.join_failed(peer, error, bad_manifest),
            TaskOut::Have { peer, bits, complete } => {
                self.pending_haves -= 1;
                self.members[peer].refreshing = false;
                let bits = match (&self.members[peer].via, &self.out, bits) {
                    (Some(v), Some(o), Some(b)) => Some(map_have(&v.map, &b, o.manifest.chunks.len() as u32)),
                    (_, _, b) => b,
                };
                if let (Some(o), Some(bits)) = (self.out.as_mut(), bits) {
                    o.sched.update_have(peer, &bits);
                    self.members[peer].complete = complete;
                }
                if self.out.as_ref().is_some_and(|o| o.sched.is_alive(peer)) {
                    self.refresh_later(peer);
                }
            }
            TaskOut::Fetched {
                peer,
                chunk,
                result,
                buf,
            } => {
                self.running.remove(&(peer, chunk));
                self.buffers.push(buf);
                self.on_fetched(peer, chunk, result)?;
            }
        }
        Ok(())
    }

    fn join_failed(&mut self, peer: PeerIdx, error: String, bad_manifest: bool) {
        let m = &mut self.members[peer];
        warn!(peer = %m.info.peer_id.short(), "peer failed: {error}");
        m.joining = false;
        let line = format!("peer {}: {error}", m.info.peer_id.short());
        // A pooled source's failure never makes this item's manifest bad.
        if bad_manifest && m.via.is_none() {
            self.bad_manifests.push(line);
        } else {
            self.join_errors.push(line);
        }
        self.waiting.push((peer, None));
    }

    fn on_fetched(&mut self, peer: PeerIdx, chunk: u32, result: Result<(), FetchError>) -> Result<(), DownloadError> {
        let now = self.now();
        let plan = self.plan;
        let metrics: Option<&Arc<NodeMetrics>> = plan.store.as_ref().and_then(|s| s.metrics());
        let Some(o) = self.out.as_mut() else { return Ok(()) };
        let member = &mut self.members[peer];
        let short = member.info.peer_id.short();
        match result {
            Ok(()) => {
                let len = o.manifest.chunk_len(chunk) as u64;
                for duplicate in o.sched.chunk_ok(peer, chunk, len, now) {
                    if let Some(h) = self.running.remove(&duplicate) {
                        h.abort();
                    }
                }
                if let Some(m) = &metrics {
                    m.chunks_verified.inc();
                }
                if o.have.set(chunk) {
                    o.bytes_done += len;
                    o.traffic.down.inc_by(len);
                    member.bytes.inc_by(len);
                    if let Some(c) = &member.metric {
                        c.inc_by(len);
                    }
                    if member.first_chunk_ms.is_none() {
                        member.first_chunk_ms = Some(protocol::unix_ms());
                    }
                    self.fetched += 1;
                    self.since_save += 1;
                    if self.since_save >= SAVE_EVERY {
                        self.since_save = 0;
                        if let Err(e) = o.saver.save() {
                            warn!("cannot save download state: {e}");
                        }
                    }
                    if let Some(f) = &self.plan.progress {
                        f(&progress_of(o, self.fetched));
                    }
                }
            }
            Err(FetchError::Disk(source)) => {
                return Err(DownloadError::Disk {
                    path: o.part.clone(),
                    source,
                });
            }
            Err(FetchError::Bad) => {
                warn!(peer = %short, chunk, "chunk failed verification");
                if let Some(m) = &metrics {
                    m.chunks_rejected.inc();
                }
                if o.sched.chunk_bad(peer, chunk) {
                    warn!(peer = %short, "peer dropped: bad data");
                    drop_peer(member, b"bad data");
                    if let Some(m) = &metrics {
                        m.peers_banned.inc();
                    }
                }
            }
            Err(e) => {
                debug!(peer = %short, chunk, "request failed: {e}");
                if member.conn.as_ref().is_none_or(|c| c.close_reason().is_some()) {
                    info!(peer = %short, "peer gone");
                    o.sched.peer_gone(peer);
                    member.conn = None;
                    member.connected.store(false, Ordering::Relaxed);
                } else {
                    let not_held = matches!(e, FetchError::Refused(PeerError::MissingChunk));
                    if o.sched.request_failed(peer, chunk, not_held) {
                        warn!(peer = %short, "peer dropped: too many failed requests");
                        drop_peer(member, b"too many failures");
                        if let Some(m) = &metrics {
                            m.peers_banned.inc();
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the data durable, moves it to its name and reports.
    async fn finish(mut self) -> Result<DownloadReport, DownloadError> {
        let Some(mut o) = self.out.take() else {
            unreachable!("a download completes only once its manifest is known")
        };
        let finished_ms = protocol::unix_ms();
        self.tasks.abort_all();
        let data = o.data.clone();
        tokio::task::spawn_blocking(move || data.sync())
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(disk(&o.part))?;
        let dir = &self.plan.dir;
        let path = if o.manifest.is_folder() {
            let (d, built, m) = (dir.clone(), o.part.clone(), o.manifest.clone());
            let path = tokio::task::spawn_blocking(move || finish_folder(&d, &built, &m))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(disk(dir))?;
            o.data.moved_to(&path);
            path
        } else {
            finish_file(dir, &o.part, &o.manifest).map_err(disk(dir))?
        };
        o.saver.armed = false;
        let _ = std::fs::remove_file(&o.saver.path);
        let _ = std::fs::remove_file(sidecar(dir, &self.plan.file_id, "manifest"));
        self.endpoint.close(0u32.into(), b"done");
        if let Some(live) = &self.plan.live {
            live.end();
        }
        let per_peer = self
            .members
            .iter()
            .enumerate()
            .map(|(p, m)| {
                let s = o.sched.stats(p);
                PeerReport {
                    peer_id: m.info.peer_id.to_hex(),
                    chunks: s.chunks,
                    bytes: s.bytes,
                    bad_chunks: s.strikes,
                    dropped: s.dropped,
                    partial: m.partial,
                    first_chunk_ms: m.first_chunk_ms,
                    pooled_from: m.via.as_ref().map(|v| v.file.to_hex()),
                }
            })
            .collect();
        info!(file = %self.plan.file_id.short(), path = %path.display(), fetched = self.fetched,
            resumed = o.resumed, "download complete");
        Ok(DownloadReport {
            file_id: self.plan.file_id,
            manifest: (*o.manifest).clone(),
            path,
            resumed_chunks: o.resumed,
            fetched_chunks: self.fetched,
            per_peer,
            seconds: self.started.elapsed().as_secs_f64(),
            finished_ms,
        })
    }
}

fn drop_peer(m: &mut Member, why: &[u8]) {
    m.connected.store(false, Ordering::Relaxed);
    if let Some(c) = m.conn.take() {
        c.close(1u32.into(), why);
    }
}

/// Verified bytes from the start of the file with no gap, for the first
/// `from` chunks known verified; returns the chunks of the prefix too.
pub fn prefix_of(m: &Manifest, have: &HaveBits, from: u32) -> (u32, u64) {
    let mut c = from;
    while c < have.len() && have.get(c) {
        c += 1;
    }
    // A folder has no one file to read from the start: no prefix.
    let bytes = match m.tree {
        None => (c as u64 * m.chunk_size as u64).min(m.size),
        Some(_) => 0,
    };
    (c, bytes)
}

fn progress_of(o: &mut Output, fetched: u32) -> Progress {
    let (prefix, prefix_bytes) = prefix_of(&o.manifest, &o.have, o.prefix);
    o.prefix = prefix;
    let chunks_done = o.have.count();
    Progress {
        bytes_done: o.bytes_done,
        size: o.size,
        chunks_done,
        chunks: o.have.len(),
        peers: o.sched.alive_peers(),
        fetched,
        prefix_bytes,
    }
}

/// Opens (or reopens) the part file once the manifest is known: keeps the
/// manifest beside it, re-verifies the chunks the saved bit set claims,
/// publishes the file to the store so it is served while downloading, and
/// makes the scheduler with one (still empty) slot per peer.
async fn open_output(plan: &DownloadPlan, manifest: Manifest, peers: usize) -> Result<Output, DownloadError> {
    let id = plan.file_id;
    let manifest_path = sidecar(&plan.dir, &id, "manifest");
    if !manifest_path.exists() {
        std::fs::write(&manifest_path, manifest.encode()).map_err(disk(&manifest_path))?;
    }
    let part = data_path(&plan.dir, &id, &manifest);
    let n = manifest.chunks.len() as u32;
    let wanted = crate::data::wanted_chunks(&manifest, &plan.only);
    let selects_any =
        |t: &protocol::content::Tree| t.entries.iter().any(|e| crate::data::selects(&plan.only, e.path()));
    if manifest.tree.as_ref().is_some_and(|t| !selects_any(t)) {
        return Err(DownloadError::NothingSelected(plan.only.join(", ")));
    }
    let data = if manifest.is_folder() {
        // Up to 100,000 files created: off the async workers.
        let (m, at, only) = (manifest.clone(), part.clone(), plan.only.clone());
        tokio::task::spawn_blocking(move || crate::data::create_tree(&m, &at, &only))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(disk(&part))?;
        Data::open(&manifest, &part, true).map_err(disk(&part))?
    } else {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(disk(&part))?;
        file.set_len(manifest.size).map_err(disk(&part))?;
        Data::File(file)
    };
    let claimed = load_have(&plan.dir, &id, n);
    let manifest = Arc::new(manifest);
    let data = Arc::new(data);
    let have = {
        let (m, d) = (manifest.clone(), data.clone());
        tokio::task::spawn_blocking(move || reverify(&m, &d, &claimed))
            .await
            .map_err(std::io::Error::other)
            .map_err(disk(&part))?
    };
    let have = Arc::new(have);
    let resumed = have.count();
    let bytes_done = manifest.bytes_in(|c| have.get(c));
    let size = match &wanted {
        Some(w) => manifest.bytes_in(|c| w.get(c)),
        None => manifest.size,
    };
    if resumed > 0 {
        info!(file = %id.short(), resumed, of = n, "resuming");
    }
    let mut traffic = FileTraffic::default();
    if let Some(store) = &plan.store {
        store.insert(SharedFile {
            manifest: (*manifest).clone(),
            manifest_bytes: manifest.encode(),
            data: data.clone(),
            have: have.clone(),
        });
        traffic = store.traffic(&id).unwrap_or_default();
    }
    let max_depth = plan.sharing.max_in_flight_per_peer.max(2);
    // By the mean chunk: a folder of small files has many short chunks.
    let mean_chunk = (manifest.size / n.max(1) as u64).clamp(MIN_CHUNK as u64, manifest.chunk_size as u64);
    let budget = (IN_FLIGHT_BUDGET / mean_chunk).max(4) as usize;
    let max_total = budget.min(max_depth * plan.sharing.max_peers.max(1));
    let mut cfg = SchedConfig::new(max_depth, max_total);
    // Downloaders that start together ask for different chunks first.
    cfg.seed = rand::random::<u64>() | 1;
    cfg.sequential = plan.sequential;
    // Chunks not selected count as done for the scheduler.
    let mut sched = Scheduler::new(n, cfg, |c| have.get(c) || wanted.as_ref().is_some_and(|w| !w.get(c)));
    // Every peer has a slot from the start, empty until it says what it holds.
    for _ in 0..peers {
        sched.add_peer(&[]);
    }
    Ok(Output {
        saver: HaveSaver {
            path: sidecar(&plan.dir, &id, "have"),
            have: have.clone(),
            armed: true,
        },
        manifest,
        part,
        data,
        have,
        bytes_done,
        size,
        sched,
        resumed,
        traffic,
        prefix: 0,
    })
}

/// Where a download's data is while it runs: `ID.part`, or for a folder
/// the folder `ID.tree` being built.
pub fn data_path(dir: &Path, id: &FileId, m: &Manifest) -> PathBuf {
    sidecar(dir, id, if m.is_folder() { "tree" } else { "part" })
}

/// Keeps the claimed chunks whose bytes on disk still match their hash.
pub fn reverify(m: &Manifest, data: &Data, claimed: &HaveBits) -> HaveBits {
    let have = HaveBits::new(claimed.len());
    let mut buf = Vec::new();
    for c in (0..claimed.len()).filter(|&c| claimed.get(c)) {
        buf.resize(m.chunk_len(c) as usize, 0);
        let ok = data.read_chunk(m, c, &mut buf).is_ok() && blake3::hash(&buf).as_bytes() == &m.chunks[c as usize];
        if ok {
            have.set(c);
        }
    }
    have
}

/// Moves the finished part file to `dir/NAME`, or to the first free
/// `NAME (k)` when a different file already holds the name. A file of that
/// name with the very same content is kept and the part dropped.
fn finish_file(dir: &Path, part: &Path, m: &Manifest) -> std::io::Result<PathBuf> {
    let (stem, ext) = match m.name.rfind('.') {
        Some(i) if i > 0 => (&m.name[..i], &m.name[i..]),
        _ => (m.name.as_str(), ""),
    };
    for k in 0..1000 {
        let name = if k == 0 {
            m.name.clone()
        } else {
            format!("{stem} ({k}){ext}")
        };
        let target = dir.join(&name);
        match std::fs::hard_link(part, &target) {
            Ok(()) => {
                std::fs::remove_file(part)?;
                return Ok(target);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if same_content(&target, m) {
                    std::fs::remove_file(part)?;
                    return Ok(target);
                }
            }
            Err(_) if !target.exists() => {
                // No hard links on this file system: a rename, checked above.
                std::fs::rename(part, &target)?;
                return Ok(target);
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        "no free name for the file",
    ))
}

/// Moves the finished folder to `dir/NAME`, or to the first free
/// `NAME (k)`: an existing folder is never merged into or replaced, unless
/// it holds exactly this folder (then it is kept and the new copy
/// dropped).
fn finish_folder(dir: &Path, built: &Path, m: &Manifest) -> std::io::Result<PathBuf> {
    for k in 0..1000 {
        let name = if k == 0 {
            m.name.clone()
        } else {
            format!("{} ({k})", m.name)
        };
        let target = dir.join(&name);
        if std::fs::symlink_metadata(&target).is_ok() {
            if same_content(&target, m) {
                std::fs::remove_dir_all(built)?;
                return Ok(target);
            }
            continue;
        }
        // Never onto a name taken between the check and here (not even
        // an empty folder): RENAME_NOREPLACE.
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, built, cwd, &target, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(target),
            Err(e) if e == rustix::io::Errno::EXIST => {
                debug!("{} taken meanwhile", target.display());
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        "no free name for the folder",
    ))
}

/// Whether the file or folder at `path` is exactly what `m` describes
/// (hashed again in full).
pub fn same_content(path: &Path, m: &Manifest) -> bool {
    if let Some(tree) = &m.tree {
        // The tree first (a walk): a folder of another shape, however
        // large, is not hashed.
        return std::fs::symlink_metadata(path).is_ok_and(|md| md.is_dir())
            && protocol::content::walk_tree(path, false).is_ok_and(|t| &t == tree)
            && protocol::content::hash_tree(path, m.name.clone(), m.chunk_size, tree.clone(), |_| {})
                .is_ok_and(|got| got.chunks == m.chunks);
    }
    std::fs::metadata(path).is_ok_and(|md| md.is_file() && md.len() == m.size)
        && protocol::content::hash_file(path, m.name.clone(), m.chunk_size, |_| {})
            .is_ok_and(|got| got.chunks == m.chunks)
}

/// Dials a peer (each of its addresses in turn), fetches and checks the
/// manifest when asked, and asks which chunks it holds.
async fn join_peer(
    endpoint: quinn::Endpoint,
    cfg: quinn::ClientConfig,
    peer: PeerIdx,
    info: PeerInfo,
    id: FileId,
    want_manifest: bool,
) -> TaskOut {
    let failed = |error: String, bad_manifest| TaskOut::JoinFailed {
        peer,
        error,
        bad_manifest,
    };
    let conn = match dial(&endpoint, cfg, &info).await {
        Ok(c) => c,
        Err(e) => return failed(e, false),
    };
    let manifest = if want_manifest {
        match request(&conn, &PeerRequest::Manifest { file: id }).await {
            Ok(PeerResponse::Manifest { bytes }) => match Manifest::decode_checked(&bytes, id) {
                Ok(m) => Some(m),
                Err(e @ ManifestError::Name(_)) => return failed(e.to_string(), true),
                Err(e) => return failed(format!("bad manifest: {e}"), true),
            },
            Ok(other) => return failed(unexpected(&other), false),
            Err(e) => return failed(e, false),
        }
    } else {
        None
    };
    match request(&conn, &PeerRequest::Have { file: id }).await {
        Ok(PeerResponse::Have { bits, complete }) => TaskOut::Joined {
            peer,
            conn,
            manifest,
            have: bits,
            complete,
        },
        Ok(other) => failed(unexpected(&other), false),
        Err(e) => failed(e, false),
    }
}

fn unexpected(resp: &PeerResponse) -> String {
    match resp {
        PeerResponse::Error(e) => e.to_string(),
        _ => "unexpected answer".into(),
    }
}

async fn dial(
    endpoint: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    info: &PeerInfo,
) -> Result<quinn::Connection, String> {
    let mut last = "no address".to_string();
    for addr in &info.addrs {
        let attempt = async {
            endpoint
                .connect_with(cfg.clone(), *addr, "quorrent-peer")
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out"),
        }
    }
    Err(last)
}

async fn request(conn: &quinn::Connection, req: &PeerRequest) -> Result<PeerResponse, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, codec::call(conn, req, MAX_FRAME)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn refresh_have(conn: quinn::Connection, id: FileId, peer: PeerIdx) -> TaskOut {
    tokio::time::sleep(HAVE_REFRESH).await;
    let (bits, complete) = match request(&conn, &PeerRequest::Have { file: id }).await {
        Ok(PeerResponse::Have { bits, complete }) => (Some(bits), complete),
        _ => (None, false),
    };
    TaskOut::Have { peer, bits, complete }
}

/// This item's chunk index -> `theirs`' for every content the two share
/// (a content appearing twice in this item maps both places onto its first
/// place in `theirs`). Both manifests are checked ones; the chunk hashes
/// are compared again, so a map never holds a chunk whose hash differs.
pub fn chunk_map(mine: &Manifest, theirs: &Manifest) -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    if mine.chunk_size != theirs.chunk_size {
        return map;
    }
    let mut held: HashMap<ContentId, (u32, u32)> = HashMap::new();
    for c in theirs.contents() {
        held.entry(c.id).or_insert((c.first_chunk, c.chunks));
    }
    for c in mine.contents() {
        let Some(&(first, chunks)) = held.get(&c.id) else {
            continue;
        };
        if chunks != c.chunks {
            continue;
        }
        for k in 0..chunks {
            let (x, y) = (c.first_chunk + k, first + k);
            if mine.chunks.get(x as usize).is_some() && mine.chunks.get(x as usize) == theirs.chunks.get(y as usize) {
                map.insert(x, y);
            }
        }
    }
    map
}

/// A have bit set of the other item (`bits`, its indices) as this item's:
/// bit `x` set when `map[x]` is set there.
fn map_have(map: &HashMap<u32, u32>, bits: &[u8], chunks: u32) -> Vec<u8> {
    let mut out = vec![0u8; chunks.div_ceil(8) as usize];
    for (&x, &y) in map {
        let set = bits.get((y / 8) as usize).is_some_and(|b| b >> (y % 8) & 1 == 1);
        if set && x < chunks {
            out[(x / 8) as usize] |= 1 << (x % 8);
        }
    }
    out
}

/// Fetches one chunk into `buf` (asked for as `target`: this item's id and
/// index, or a pooled source's), verifies it against this item's chunk
/// `chunk` and writes it at its offset.
async fn fetch_chunk(
    conn: quinn::Connection,
    manifest: Arc<Manifest>,
    data: Arc<Data>,
    target: (FileId, u32),
    peer: PeerIdx,
    chunk: u32,
    mut buf: Vec<u8>,
) -> TaskOut {
    let len = manifest.chunk_len(chunk) as usize;
    buf.resize(len, 0);
    let (id, index) = target;
    let received = tokio::time::timeout(REQUEST_TIMEOUT, receive_chunk(&conn, id, index, &mut buf)).await;
    let result = match received {
        Err(_) => Err(FetchError::Transport("timed out".into())),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => {
            // Hashed and written in place, on the runtime thread (about
            // 100 us for 256 KiB from a buffer in cache): cheaper than a
            // hand-off to the blocking pool per chunk, see bench_p2p.
            if blake3::hash(&buf).as_bytes() != &manifest.chunks[chunk as usize] {
                Err(FetchError::Bad)
            } else {
                data.write_chunk(&manifest, chunk, &buf).map_err(FetchError::Disk)
            }
        }
    };
    TaskOut::Fetched {
        peer,
        chunk,
        result,
        buf,
    }
}

async fn receive_chunk(conn: &quinn::Connection, id: FileId, chunk: u32, buf: &mut [u8]) -> Result<(), FetchError> {
    let t = |e: &dyn std::fmt::Display| FetchError::Transport(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| t(&e))?;
    codec::write_frame(&mut send, &PeerRequest::Chunk { file: id, index: chunk })
        .await
        .map_err(|e| t(&e))?;
    send.finish().map_err(|e| t(&e))?;
    let resp: PeerResponse = codec::read_frame(&mut recv, 64 << 10).await.map_err(|e| t(&e))?;
    match resp {
        PeerResponse::Chunk { len } if len as usize == buf.len() => {
            recv.read_exact(buf).await.map_err(|e| t(&e))?;
            Ok(())
        }
        PeerResponse::Chunk { len } => Err(FetchError::Transport(format!(
            "chunk of {len} bytes, expected {}",
            buf.len()
        ))),
        PeerResponse::Error(e) => Err(FetchError::Refused(e)),
        _ => Err(FetchError::Transport("unexpected answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::content::{hash_file, hash_folder, MIN_CHUNK};

    #[test]
    fn chunk_maps_join_names_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(d.path().join("song.flac"), &bytes).unwrap();
        let root = d.path().join("album");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::write(root.join("b.flac"), &bytes).unwrap();
        let song = hash_file(&d.path().join("song.flac"), "song.flac".into(), MIN_CHUNK, |_| {}).unwrap();
        let renamed = Manifest {
            name: "renamed.flac".into(),
            ..song.clone()
        };
        let album = hash_folder(&root, "album".into(), MIN_CHUNK, false, |_| {}).unwrap();
        let same: HashMap<u32, u32> = (0..7).map(|i| (i, i)).collect();
        assert_eq!(chunk_map(&song, &renamed), same);
        // The song is chunks 1..8 of the album (a.txt is chunk 0).
        assert_eq!(chunk_map(&song, &album), (0..7).map(|i| (i, i + 1)).collect());
        assert_eq!(chunk_map(&album, &song), (1..8).map(|i| (i, i - 1)).collect());
        let other = hash_file(&root.join("a.txt"), "a.txt".into(), MIN_CHUNK, |_| {}).unwrap();
        assert!(chunk_map(&song, &other).is_empty());
        // Have sets cross over: the album's chunks 1 and 7 are the song's 0 and 6.
        let map = chunk_map(&song, &album);
        assert_eq!(map_have(&map, &[0b1000_0010], 7), vec![0b0100_0001]);
        assert_eq!(map_have(&map, &[0, 0b1], 7), vec![0]);
        assert_eq!(map_have(&map, &[0x80], 7), vec![0b0100_0000]);
        assert_eq!(map_have(&map, &[], 7), vec![0]);
    }
}
