//! What each command of the command line does, on top of the home, the
//! tracker client, the peer server and the downloader. Every failure is a
//! [`CommandError`] whose message is the one line the user sees and whose
//! [`CommandError::code`] is the stable code of `--json`.
//!
//! Stopping: every wait (the tracker, the download, hashing, the password)
//! also ends on the process's stop signal (`home.stop`); a command stopped
//! that way ends with [`CommandError::is_stop`] true, which is not a
//! failure.

use std::{
    io::{BufRead, IsTerminal},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use indicatif::ProgressBar;
use protocol::{
    content::{hash_file, Manifest, ManifestError, MAX_CHUNK, MIN_CHUNK},
    ids::{ContentId, PeerId},
    ids::{FileId, NameError},
    tracker_api::{ApiError, FileMeta, PartialOwner, PeerInfo, Reply, Request, SearchHit, MAX_POOL_CONTENTS},
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    cli::{Command, RateArgs},
    data::Data,
    download::{self, DownloadError, DownloadPlan, Sources},
    home::{Home, HomeError, Session},
    human,
    peer_server::{PeerServer, ServeError},
    rate::{Limits, RateLimit},
    repair::Repaired,
    store::{HaveBits, SharedFile, Store},
    tracker::{TrackerClient, TrackerError},
};

/// Why a command failed; the message is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Link(#[from] crate::link::LinkFailure),
    #[error("not logged in: run `quorrent login USER`")]
    NotLoggedIn,
    #[error("cannot read the password: {0}")]
    Password(String),
    #[error("{path}: {source}")]
    Share { path: PathBuf, source: ManifestError },
    #[error("{0}")]
    Name(#[from] NameError),
    #[error("{0}")]
    BadInput(String),
    #[error("no file named {0:?} is registered (try `quorrent search`)")]
    UnknownName(String),
    #[error("{0}: not one of this node's files (see `quorrent list`)")]
    NotHere(String),
    #[error("several files are named {name:?}; pick one by id: {ids}")]
    Ambiguous { name: String, ids: String },
    #[error("no live owner of {0}: nobody is seeding it right now")]
    NoOwner(String),
    #[error("cannot use folder {path}: {source}")]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("invalid listen address {0:?} in the configuration")]
    Listen(String),
    #[error("interrupted; {verified} of {} verified and kept, run get again to resume", human::count(*total, "chunk", "chunks"))]
    Interrupted { verified: u32, total: u32 },
    /// Stopped by a signal while waiting on something other than the
    /// tracker (the password, hashing).
    #[error("stopped before {0} finished")]
    Stopped(&'static str),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// The running daemon of this home refused or failed the work handed
    /// to it; `code` is its error code.
    #[error("the node daemon: {message}")]
    Daemon { code: &'static str, message: String },
}

impl CommandError {
    /// The stable code of this error, printed by `--json` as
    /// `{"error": {"code", "message"}}`: the tracker's own codes
    /// (`ApiError::code`) for its answers, and for the node's own errors
    /// `unreachable` (no proxy answers), `refused_certificate` (a proxy's
    /// certificate does not verify against the CA), `not_logged_in`,
    /// `not_found`, `ambiguous`, `no_owner`, `bad_input`, `config`, `io`,
    /// `corrupt_state` (run `repair`), `locked` (another command of the
    /// home held the state lock too long), `download`, `internal`,
    /// `stopped`, `interrupted`.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Home(e) => e.code(),
            CommandError::Tracker(e) => e.code(),
            CommandError::Download(e) => match e {
                DownloadError::NoPeers => "no_owner",
                DownloadError::Disk { .. } | DownloadError::Socket(_) => "io",
                DownloadError::Tls(_) => "internal",
                _ => "download",
            },
            CommandError::Serve(e) => match e {
                ServeError::Bind { .. } => "io",
                ServeError::Tls(_) => "internal",
            },
            CommandError::Link(e) => e.code(),
            CommandError::NotLoggedIn => "not_logged_in",
            CommandError::Password(_) | CommandError::Name(_) | CommandError::BadInput(_) => "bad_input",
            CommandError::Share { source, .. } => match source {
                ManifestError::Io(_) => "io",
                _ => "bad_input",
            },
            CommandError::UnknownName(_) | CommandError::NotHere(_) => "not_found",
            CommandError::Ambiguous { .. } => "ambiguous",
            CommandError::NoOwner(_) => "no_owner",
            CommandError::Folder { .. } => "io",
            CommandError::Listen(_) => "config",
            CommandError::Interrupted { .. } => "interrupted",
            CommandError::Stopped(_) => "stopped",
            CommandError::Http(_) => "io",
            CommandError::Daemon { code, .. } => code,
        }
    }

    /// Whether the command ended because the process was told to stop
    /// (SIGINT/SIGTERM): a clean end, not a failure.
    pub fn is_stop(&self) -> bool {
        matches!(
            self,
            CommandError::Tracker(TrackerError::Stopped)
                | CommandError::Home(HomeError::Stopped(_))
                | CommandError::Interrupted { .. }
                | CommandError::Stopped(_)
        )
    }
}

/// Runs one command.
pub async fn run(home: &Home, command: Command, json: bool) -> Result<(), CommandError> {
    match command {
        Command::Register {
            user, password_stdin, ..
        } => register(home, &user, password_stdin, json).await,
        Command::Login {
            user, password_stdin, ..
        } => login(home, &user, password_stdin, json).await,
        Command::Logout => logout(home, json).await,
        Command::Share { paths, follow_links } => share(home, &paths, follow_links, json).await,
        Command::Search { text } => search(home, &text, json).await,
        Command::Get {
            id_or_name,
            output,
            no_seed,
            no_partial,
            only,
            sequential,
            rates,
            ..
        } => {
            // A link: its network was set up by `link::prepare`.
            let link = crate::link::in_get(&id_or_name)?;
            let id_or_name = link.as_ref().map_or(id_or_name, |l| l.id.to_hex());
            let opts = GetOptions {
                output,
                no_seed,
                partial: !no_partial,
                only,
                sequential,
                limits: limits(home, &rates),
                link,
            };
            get(home, &id_or_name, opts, json).await
        }
        Command::Seed { rates } => seed(home, limits(home, &rates)).await,
        Command::Limits { up, down } => crate::rate::limits_command(home, up, down, json).await,
        Command::Status => status(home, json).await,
        Command::Repair { folders } => repair(home, folders, json).await,
        Command::List => crate::local::list(home, json),
        Command::Link { id_or_name } => crate::link::print(home, &id_or_name, json),
        Command::Verify { id_or_name } => crate::local::verify(home, &id_or_name, json).await,
        Command::Unshare { id_or_name } => crate::local::unshare(home, &id_or_name, json).await,
    }
}

/// Prints `value` as JSON, or `text` for people.
pub(crate) fn emit(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

/// The password (see CLI.md), read on the blocking pool so that a signal
/// is not held up by a prompt or a standard input that never ends.
async fn read_password(home: &Home, from_stdin: bool) -> Result<String, CommandError> {
    let read = tokio::task::spawn_blocking(move || read_password_blocking(from_stdin));
    tokio::select! {
        r = read => r.map_err(|e| CommandError::Password(e.to_string()))?,
        _ = home.stop.stopped() => Err(CommandError::Stopped("the password was read")),
    }
}

fn read_password_blocking(from_stdin: bool) -> Result<String, CommandError> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CommandError::Password(e.to_string()))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else if let Ok(p) = std::env::var("QUORRENT_PASSWORD") {
        p
    } else {
        rpassword::prompt_password("Password: ").map_err(|e| CommandError::Password(e.to_string()))?
    };
    if password.is_empty() {
        return Err(CommandError::Password("the password is empty".into()));
    }
    Ok(password)
}

/// The stored session if it has not expired.
fn live_session(home: &Home) -> Result<Option<Session>, CommandError> {
    Ok(home.session()?.filter(|s| s.expires_ms > protocol::unix_ms()))
}

/// A tracker client carrying the session token, or "not logged in".
pub(crate) fn logged_in(home: &Home) -> Result<(Arc<TrackerClient>, Session), CommandError> {
    let session = live_session(home)?.ok_or(CommandError::NotLoggedIn)?;
    let client = tracker_client(home, Some(session.token.clone()))?;
    Ok((client, session))
}

/// A tracker client for `home` that gives up when the process stops.
fn tracker_client(home: &Home, token: Option<String>) -> Result<Arc<TrackerClient>, CommandError> {
    Ok(TrackerClient::with_stop(&home.config, token, home.stop.clone())?)
}

fn unexpected(what: &'static str) -> CommandError {
    CommandError::Tracker(TrackerError::Unexpected(what))
}

async fn register(home: &Home, user: &str, stdin: bool, json: bool) -> Result<(), CommandError> {
    protocol::ids::check_user(user)?;
    let password = read_password(home, stdin).await?;
    let client = tracker_client(home, None)?;
    let reply = client
        .call(Request::Register {
            user: user.into(),
            password,
        })
        .await?;
    client.close().await;
    let Reply::Registered { user } = reply else {
        return Err(unexpected("register"));
    };
    info!(%user, "registered");
    emit(json, json!({ "user": user }), || format!("registered {user}"));
    Ok(())
}

async fn login(home: &Home, user: &str, stdin: bool, json: bool) -> Result<(), CommandError> {
    protocol::ids::check_user(user)?;
    let password = read_password(home, stdin).await?;
    let client = tracker_client(home, None)?;
    let reply = client
        .call(Request::Login {
            user: user.into(),
            password,
        })
        .await?;
    client.close().await;
    let Reply::LoggedIn {
        user,
        token,
        expires_ms,
    } = reply
    else {
        return Err(unexpected("login"));
    };
    home.save_session(&Session {
        user: user.clone(),
        token,
        expires_ms,
    })?;
    info!(%user, "logged in");
    emit(json, json!({ "user": user, "expires": expires_ms }), || {
        let left = expires_ms.saturating_sub(protocol::unix_ms()) as f64 / 1000.0;
        format!("logged in as {user} (the session lasts {})", human::duration(left))
    });
    Ok(())
}

async fn logout(home: &Home, json: bool) -> Result<(), CommandError> {
    if let Some(session) = home.session()? {
        let client = tracker_client(home, Some(session.token))?;
        match client.call(Request::Logout).await {
            // An expired session is as good as ended.
            Ok(_) => {}
            Err(e) if e.is_not_logged_in() => {}
            Err(e) => return Err(e.into()),
        }
        client.close().await;
    }
    home.clear_session()?;
    emit(json, json!({}), || "logged out".into());
    Ok(())
}

/// A bar on stderr when it is a terminal and the output is not JSON.
fn progress_bar(json: bool, len: u64, template: &str) -> Option<ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    if let Some(style) = human::bar_style(template) {
        bar.set_style(style);
    }
    Some(bar)
}

/// The addresses this node announces for other nodes to dial: the
/// configured `advertise` list if any; else the peer server's address
/// (`bound`; with no server running, as in `share`, the configured listen
/// address when its port is fixed). A wildcard IP (0.0.0.0, ::) is
/// replaced by the local IP this host uses to reach its first proxy, so
/// that a node listening on every interface announces one others reach.
pub(crate) async fn advertised(home: &Home, bound: Option<SocketAddr>) -> Vec<SocketAddr> {
    let config = &home.config;
    if !config.advertise.is_empty() {
        // Checked when the configuration was loaded.
        return config.advertise.iter().filter_map(|a| a.parse().ok()).collect();
    }
    let addr = match bound {
        Some(a) => a,
        None => match config.listen.parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => a,
            _ => return Vec::new(),
        },
    };
    if !addr.ip().is_unspecified() {
        return vec![addr];
    }
    let Some(proxy) = config.proxies.first() else {
        return Vec::new();
    };
    let local = match protocol::net::resolve(proxy).await {
        Ok(p) => protocol::net::local_ip_towards(p),
        Err(e) => Err(e),
    };
    match local {
        Ok(ip) => vec![SocketAddr::new(ip, addr.port())],
        Err(e) => {
            warn!(%proxy, error = %e, "no local address towards the proxy; set `advertise` in the configuration");
            Vec::new()
        }
    }
}

async fn share(home: &Home, paths: &[PathBuf], follow_links: bool, json: bool) -> Result<(), CommandError> {
    let ca = crate::link::home_fingerprint(home, json)?;
    // The daemon never follows links (they could lead out of the folders
    // it may read): a share that does is done here, and the daemon serves
    // it from its next heartbeat on.
    let daemon = match follow_links {
        false => crate::daemon::client::running(home).await,
        true => None,
    };
    let Some(link) = daemon else {
        return share_here(home, paths, ca, follow_links, json).await;
    };
    // The daemon shares only from its folders; the rest is done here
    // (the daemon serves it from its next heartbeat on).
    let mut here = Vec::new();
    for path in paths {
        let Ok(abs) = std::fs::canonicalize(path) else {
            here.push(path.clone());
            continue;
        };
        match link.post("/api/shares", &json!({ "path": abs })).await {
            Ok(entry) => {
                let (id, name, size) = (&entry["id"], &entry["name"], &entry["size"]);
                let (id, name) = (id.as_str().unwrap_or(""), name.as_str().unwrap_or(""));
                let file_id = id.parse().map_err(|_| unexpected("share"))?;
                let link = crate::link::link_for(home, ca, file_id, name, size.as_u64().unwrap_or(0)).to_string();
                emit(
                    json,
                    json!({ "file_id": id, "name": name, "size": size, "files": entry["files"], "link": link }),
                    || format!("{id}  {name}  {}\n  {link}", human::size(size.as_u64().unwrap_or(0))),
                );
            }
            Err(CommandError::Daemon {
                code: "outside_roots", ..
            }) => here.push(path.clone()),
            Err(e) => return Err(e),
        }
    }
    if here.is_empty() {
        return Ok(());
    }
    share_here(home, &here, ca, follow_links, json).await
}

/// `share` done by this process; `ca` is the fingerprint its links carry.
async fn share_here(
    home: &Home,
    paths: &[PathBuf],
    ca: protocol::link::CaFingerprint,
    follow_links: bool,
    json: bool,
) -> Result<(), CommandError> {
    let (client, _) = logged_in(home)?;
    let mut manifests = Vec::new();
    for path in paths {
        manifests.push((path, hash_one(home, path, follow_links, json).await?));
    }
    for (path, m) in manifests {
        own_one(home, &client, &m, path).await?;
        info!(file = %m.id(), name = %m.name, "shared");
        let files = m.meta().files;
        let link = crate::link::link_for(home, ca, m.id(), &m.name, m.size).to_string();
        emit(
            json,
            json!({ "file_id": m.id().to_hex(), "name": m.name, "size": m.size, "files": files, "link": link }),
            || match files {
                0 => format!("{}  {}  {}\n  {link}", m.id(), m.name, human::size(m.size)),
                n => format!(
                    "{}  {}/  {} in {}\n  {link}",
                    m.id(),
                    m.name,
                    human::size(m.size),
                    human::count(n as u64, "file", "files")
                ),
            },
        );
    }
    if !json {
        eprintln!("run `quorrent seed` to serve your files");
    }
    client.close().await;
    Ok(())
}

/// Chunks and hashes one file or folder (a bar on a terminal), on the
/// blocking pool; ends on the stop signal. A folder's symbolic links are
/// refused unless `follow_links`.
pub(crate) async fn hash_one(
    home: &Home,
    path: &Path,
    follow_links: bool,
    json: bool,
) -> Result<Manifest, CommandError> {
    let path = &path.to_path_buf();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CommandError::Share {
            path: path.clone(),
            source: ManifestError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")),
        })?
        .to_owned();
    let md = std::fs::metadata(path).map_err(|e| CommandError::Share {
        path: path.clone(),
        source: e.into(),
    })?;
    let share_err = |source| CommandError::Share {
        path: path.clone(),
        source,
    };
    let tree = if md.is_dir() {
        let p = path.clone();
        let walked = tokio::task::spawn_blocking(move || protocol::content::walk_tree(&p, follow_links))
            .await
            .map_err(|e| share_err(ManifestError::Io(std::io::Error::other(e))))?;
        Some(walked.map_err(share_err)?)
    } else {
        None
    };
    let size = match &tree {
        Some(t) => t.validate().map_err(|e| share_err(e.into()))?,
        None => md.len(),
    };
    let bar = progress_bar(json, size, "hashing {msg} {bar:40} {size}/{total_size} {rate}");
    if let Some(b) = &bar {
        b.set_message(name.clone());
    }
    let chunk_size = chunk_size_for(size, home.config.sharing.chunk_size);
    let (p, b) = (path.clone(), bar.clone());
    let hashing = tokio::task::spawn_blocking(move || {
        let progress = |done| {
            if let Some(b) = &b {
                b.set_position(done);
            }
        };
        match tree {
            Some(tree) => protocol::content::hash_tree(&p, name, chunk_size, tree, progress),
            None => hash_file(&p, name, chunk_size, progress),
        }
    });
    let hashed = tokio::select! {
        h = hashing => h,
        _ = home.stop.stopped() => {
            if let Some(b) = bar { b.abandon(); }
            return Err(CommandError::Stopped("the files were hashed"));
        }
    };
    let manifest = hashed
        .map_err(|e| CommandError::Share {
            path: path.clone(),
            source: ManifestError::Io(std::io::Error::other(e)),
        })?
        .map_err(|source| CommandError::Share {
            path: path.clone(),
            source,
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(manifest)
}

/// Registers `m` (at `path`) as owned by this node and records it.
pub(crate) async fn own_one(
    home: &Home,
    client: &TrackerClient,
    m: &Manifest,
    path: &Path,
) -> Result<(), CommandError> {
    // Announcing here would replace the addresses of a `seed` of this
    // node that may be running: announce only a peer the tracker lacks.
    let own = || {
        client.call(Request::Own {
            peer_id: home.identity.peer_id,
            file: m.meta(),
        })
    };
    match own().await {
        Err(TrackerError::Api(ApiError::UnknownPeer(_))) => {
            announce(client, home, advertised(home, None).await).await?;
            own().await?;
        }
        other => {
            other?;
        }
    }
    pool(client, home.identity.peer_id, m).await;
    // The state lock may be held by another command of this home (up
    // to its bound): wait off the async workers.
    tokio::task::block_in_place(|| home.record_owned(m, path))?;
    Ok(())
}

/// The configured chunk size, doubled as needed to keep the manifest of a
/// very large file at most 65,536 chunks (2 MiB) long.
pub(crate) fn chunk_size_for(size: u64, configured: u32) -> u32 {
    let mut c = configured.clamp(MIN_CHUNK, MAX_CHUNK);
    while size.div_ceil(c as u64) > 65_536 && c < MAX_CHUNK {
        c = (c * 2).min(MAX_CHUNK);
    }
    c
}

pub(crate) async fn announce(client: &TrackerClient, home: &Home, addrs: Vec<SocketAddr>) -> Result<(), CommandError> {
    client
        .call(Request::AnnouncePeer {
            peer_id: home.identity.peer_id,
            addrs,
        })
        .await?;
    Ok(())
}

/// Most GetOwners pages followed (at the tracker's default page of 2,000
/// that is 20 million owners, far past any quota).
const MAX_OWNER_PAGES: usize = 10_000;

/// Owners kept for one download: far more than it dials (`max_peers`),
/// so that it can replace the ones that fail, and a bound on what a file
/// with millions of owners costs the node's memory.
const MAX_OWNERS_KEPT: usize = 4096;

/// A file's metadata, its live complete owners, page by page, up to
/// [`MAX_OWNERS_KEPT`], and its partial owners (from the first page).
pub(crate) async fn all_owners(
    client: &TrackerClient,
    file_id: FileId,
) -> Result<(FileMeta, Vec<PeerInfo>, Vec<PartialOwner>), CommandError> {
    let mut owners = Vec::new();
    let mut partial_owners = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_OWNER_PAGES {
        let Reply::Owners {
            file,
            owners: page,
            next,
            partial,
        } = client
            .call(Request::GetOwners {
                file_id,
                cursor,
                limit: u32::MAX,
            })
            .await?
        else {
            return Err(unexpected("get-owners"));
        };
        owners.extend(page);
        if cursor.is_none() {
            partial_owners = partial;
        }
        if owners.len() >= MAX_OWNERS_KEPT {
            owners.truncate(MAX_OWNERS_KEPT);
            return Ok((file, owners, partial_owners));
        }
        match next {
            // A cursor must move forward, or the tracker is misbehaving.
            Some(n) if cursor.is_none_or(|c| n > c) => cursor = Some(n),
            Some(_) => return Err(unexpected("get-owners")),
            None => return Ok((file, owners, partial_owners)),
        }
    }
    Err(unexpected("get-owners"))
}

/// Every search hit for `text`, page by page.
pub(crate) async fn search_all(client: &TrackerClient, text: &str) -> Result<Vec<SearchHit>, CommandError> {
    search_upto(client, text, usize::MAX).await
}

/// The first `max` hits (whole pages: up to 999 more).
pub(crate) async fn search_upto(
    client: &TrackerClient,
    text: &str,
    max: usize,
) -> Result<Vec<SearchHit>, CommandError> {
    protocol::ids::check_query(text)?;
    let mut hits = Vec::new();
    let mut cursor = 0;
    let limit = max.min(1000) as u32;
    for _ in 0..1000 {
        if hits.len() >= max {
            break;
        }
        let Reply::Files { hits: page, next } = client
            .call(Request::Search {
                text: text.into(),
                cursor,
                limit,
            })
            .await?
        else {
            return Err(unexpected("search"));
        };
        hits.extend(page);
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    Ok(hits)
}

async fn search(home: &Home, text: &str, json: bool) -> Result<(), CommandError> {
    let (client, _) = logged_in(home)?;
    let hits = search_all(&client, text).await?;
    client.close().await;
    if json {
        println!("{}", hits_json(&hits));
    } else if hits.is_empty() {
        println!("no file matches {text:?}");
    } else {
        println!(
            "{:<64}  {:>10}  {:>6}  {:>7}  name",
            "file id", "size", "owners", "partial"
        );
        for h in &hits {
            println!(
                "{:<64}  {:>10}  {:>6}  {:>7}  {}",
                h.file.id,
                human::size(h.file.size),
                h.live_owners,
                h.partial_owners,
                h.file.name
            );
        }
        println!("{}", human::count_usize(hits.len(), "file", "files"));
    }
    Ok(())
}

/// Search hits as `search --json` prints them.
pub(crate) fn hits_json(hits: &[SearchHit]) -> serde_json::Value {
    let arr: Vec<_> = hits
        .iter()
        .map(|h| {
            json!({
                "file_id": h.file.id.to_hex(),
                "name": h.file.name,
                "size": h.file.size,
                "files": h.file.files,
                "owners": h.live_owners,
                "partial_owners": h.partial_owners,
            })
        })
        .collect();
    serde_json::Value::Array(arr)
}

/// A file id, or the id of the one file registered under exactly `name`.
pub(crate) async fn resolve(client: &TrackerClient, id_or_name: &str) -> Result<FileId, CommandError> {
    if id_or_name.len() == 64 {
        if let Ok(id) = id_or_name.parse::<FileId>() {
            return Ok(id);
        }
    }
    let hits = search_all(client, id_or_name).await?;
    let exact: Vec<&FileMeta> = hits.iter().map(|h| &h.file).filter(|f| f.name == id_or_name).collect();
    match exact.as_slice() {
        [] => Err(CommandError::UnknownName(id_or_name.into())),
        [one] => Ok(one.id),
        many => Err(CommandError::Ambiguous {
            name: id_or_name.into(),
            ids: many
                .iter()
                .map(|f| format!("{} ({})", f.id, human::size(f.size)))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

pub(crate) fn listen_addr(home: &Home) -> Result<SocketAddr, CommandError> {
    home.config
        .listen
        .parse()
        .map_err(|_| CommandError::Listen(home.config.listen.clone()))
}

/// The rate limits of the process, each direction: the flag, else the
/// configuration, else none.
fn limits(home: &Home, args: &RateArgs) -> Limits {
    let sharing = &home.config.sharing;
    Limits::new(
        args.max_upload_rate.or(sharing.max_upload_rate),
        args.max_download_rate.or(sharing.max_download_rate),
    )
}

/// How `get` runs, from its flags.
struct GetOptions {
    output: Option<PathBuf>,
    no_seed: bool,
    /// Announce this node as a partial owner while downloading, and use
    /// other partial owners as sources.
    partial: bool,
    /// `--only` patterns (empty: everything).
    only: Vec<String>,
    /// Chunks in order (streaming).
    sequential: bool,
    limits: Limits,
    /// `get LINK`: the file's name and size must be the link's.
    link: Option<protocol::link::Link>,
}

/// How often a downloading node announces what it holds, and asks the
/// tracker again for owners (to find partial owners that joined later).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
const REQUERY_EVERY: Duration = Duration::from_millis(1500);
/// Owners asked for on a re-query (the first page): far more than a
/// download dials.
const REQUERY_OWNERS: u32 = 256;

/// While a download runs: announces this node as a partial owner of `id`
/// once its manifest is known (the store has the file) and then every
/// [`ANNOUNCE_EVERY`], and sends the owners of every re-query to the
/// download. Runs until aborted.
pub(crate) async fn partial_loop(
    client: Arc<TrackerClient>,
    store: Arc<Store>,
    me: PeerId,
    id: FileId,
    addrs: Vec<SocketAddr>,
    tx: tokio::sync::mpsc::Sender<Sources>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced: Option<tokio::time::Instant> = None;
    let mut queried = tokio::time::Instant::now();
    let mut pooled_at: Option<tokio::time::Instant> = None;
    let mut warned = false;
    loop {
        tick.tick().await;
        let due = announced.is_none_or(|t| t.elapsed() >= ANNOUNCE_EVERY);
        if let (true, Some(f)) = (due, store.get(&id)) {
            announced = Some(tokio::time::Instant::now());
            let request = Request::AnnouncePartial {
                peer_id: me,
                file_id: id,
                have: f.have.to_bytes(),
            };
            match client.call(request).await {
                Ok(_) => {}
                Err(TrackerError::Api(ApiError::UnknownPeer(_))) => {
                    let again = Request::AnnouncePeer {
                        peer_id: me,
                        addrs: addrs.clone(),
                    };
                    if let Err(e) = client.call(again).await {
                        warn!("announce failed: {e}");
                    }
                }
                Err(TrackerError::Stopped) => return,
                Err(e) if !warned => {
                    warned = true;
                    warn!("cannot announce this node as a partial owner ({e}); downloading on");
                }
                Err(e) => tracing::debug!("partial announce failed: {e}"),
            }
        }
        // The first list with pooled sources goes as soon as the manifest
        // is known, not a re-query later.
        let pool_due = pooled_at.is_none() && store.get(&id).is_some();
        if queried.elapsed() >= REQUERY_EVERY || pool_due {
            queried = tokio::time::Instant::now();
            let request = Request::GetOwners {
                file_id: id,
                cursor: None,
                limit: REQUERY_OWNERS,
            };
            match client.call(request).await {
                Ok(Reply::Owners { owners, partial, .. }) => {
                    let sources = Sources {
                        owners: owners.into_iter().filter(|o| o.peer_id != me).collect(),
                        partial: partial.into_iter().filter(|o| o.peer.peer_id != me).collect(),
                        pooled: pooled_sources(&client, &store, id, me, &mut pooled_at).await,
                    };
                    // A download that is busy skips one list: the next one
                    // comes in a moment.
                    if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(sources) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(TrackerError::Stopped) => return,
                Err(e) => tracing::debug!("owners re-query failed: {e}"),
            }
        }
    }
}

/// How often a download asks again for other items holding its contents.
const POOL_REQUERY_EVERY: Duration = Duration::from_secs(5);
/// Owners per pooled item asked for.
const POOLED_OWNERS: u32 = 16;

/// The other items holding `id`'s contents, with their live owners (this
/// node left out), once `id`'s manifest is known (the store has it), and
/// then every [`POOL_REQUERY_EVERY`]; empty otherwise or on a failure.
async fn pooled_sources(
    client: &TrackerClient,
    store: &Store,
    id: FileId,
    me: PeerId,
    at: &mut Option<tokio::time::Instant>,
) -> Vec<protocol::tracker_api::PooledItem> {
    if at.is_some_and(|t| t.elapsed() < POOL_REQUERY_EVERY) {
        return Vec::new();
    }
    let Some(f) = store.get(&id) else { return Vec::new() };
    *at = Some(tokio::time::Instant::now());
    let contents = pool_contents(&f.manifest);
    if contents.is_empty() {
        return Vec::new();
    }
    match client
        .call(Request::GetPooled {
            contents,
            limit: POOLED_OWNERS,
        })
        .await
    {
        Ok(Reply::Pooled { mut items }) => {
            items.retain(|i| i.file.id != id);
            for i in &mut items {
                i.owners.retain(|o| o.peer_id != me);
            }
            items
        }
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::debug!("pooled sources query failed: {e}");
            Vec::new()
        }
    }
}

/// The contents an item is pooled under: each non-empty file's, the
/// largest first, each once, at most [`MAX_POOL_CONTENTS`].
pub(crate) fn pool_contents(m: &Manifest) -> Vec<ContentId> {
    let mut contents = m.contents();
    contents.sort_by_key(|c| std::cmp::Reverse(c.chunks));
    let mut seen = std::collections::HashSet::new();
    contents
        .into_iter()
        .map(|c| c.id)
        .filter(|c| seen.insert(*c))
        .take(MAX_POOL_CONTENTS)
        .collect()
}

/// Tells the tracker which contents `m`, just owned by this node, holds,
/// so downloaders of the same bytes under other names find this copy.
/// Best effort: a failure is logged, the item stays owned.
pub(crate) async fn pool(client: &TrackerClient, me: PeerId, m: &Manifest) {
    let contents = pool_contents(m);
    if contents.is_empty() {
        return;
    }
    let request = Request::Pool {
        peer_id: me,
        file_id: m.id(),
        contents,
    };
    if let Err(e) = client.call(request).await {
        warn!(file = %m.id().short(), "cannot pool its contents (other names of the same bytes will not find this copy): {e}");
    }
}

async fn get(home: &Home, id_or_name: &str, opts: GetOptions, json: bool) -> Result<(), CommandError> {
    // A running daemon of this home downloads into its storage folder with
    // partial owners: the usual case is handed to it.
    if opts.output.is_none() && opts.partial && opts.only.is_empty() {
        if let Some(daemon) = crate::daemon::client::running(home).await {
            if let Some(link) = &opts.link {
                crate::link::check_registered(home, link).await?;
            }
            return get_via_daemon(home, &daemon, id_or_name, opts.sequential, json).await;
        }
    }
    let GetOptions {
        output,
        no_seed,
        partial: use_partial,
        only,
        sequential,
        limits,
        link,
    } = opts;
    let upload = Some(limits.up.clone());
    let (client, _) = logged_in(home)?;
    let id = resolve(&client, id_or_name).await?;
    let (file, owners, partial) = all_owners(&client, id).await?;
    if let Some(link) = &link {
        crate::link::check_file(link, &file.name, file.size)?;
    }
    let me = home.identity.peer_id;
    if let Some(rec) = home.state()?.files.get(&id.to_hex()) {
        if rec.partial_in.is_none() && rec.path.exists() {
            // Already owned here: nothing to fetch, register and seed.
            return owned_already(home, &client, id, &rec.path, no_seed, upload, json).await;
        }
    }
    let peers: Vec<_> = owners.into_iter().filter(|o| o.peer_id != me).collect();
    let partial: Vec<_> = if use_partial {
        partial.into_iter().filter(|o| o.peer.peer_id != me).collect()
    } else {
        Vec::new()
    };
    if peers.is_empty() && partial.is_empty() {
        return Err(CommandError::NoOwner(format!("{} ({})", file.name, id)));
    }
    if !only.is_empty() && file.files == 0 {
        return Err(CommandError::BadInput(format!(
            "--only selects files of a folder, and {} is a single file",
            file.name
        )));
    }
    let dir = output.unwrap_or_else(|| home.storage_dir());
    std::fs::create_dir_all(&dir).map_err(|source| CommandError::Folder {
        path: dir.clone(),
        source,
    })?;
    tokio::task::block_in_place(|| home.record_partial(&file, &dir))?;

    let store = Store::new();
    load_owned(home, &store)?;
    let server = PeerServer::start_limited(&home.identity, listen_addr(home)?, store.clone(), upload.clone())?;
    // Partial owners: the tracker must know where this node listens
    // before it can hand it out (one replicated write), then the loop
    // announces what it holds and re-asks for owners while it downloads.
    let mut sources = None;
    let mut partial_task = None;
    if use_partial {
        let addrs = advertised(home, Some(server.local_addr())).await;
        if let Err(e) = announce(&client, home, addrs.clone()).await {
            server.shutdown().await;
            return Err(e);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        sources = Some(rx);
        partial_task = Some(tokio::spawn(partial_loop(
            client.clone(),
            store.clone(),
            me,
            id,
            addrs,
            tx,
        )));
    }
    let stop_partial = move || {
        if let Some(t) = &partial_task {
            t.abort();
        }
    };
    let bar = progress_bar(
        json,
        file.size,
        "{bar:40} {size}/{total_size} {rate} ETA {time_left} {msg}",
    );
    let progress = bar.clone().map(|b| {
        Arc::new(move |p: &download::Progress| {
            b.set_position(p.bytes_done);
            let peers = human::count_usize(p.peers, "peer", "peers");
            if sequential {
                b.set_message(format!("{peers}, {} playable", human::size(p.prefix_bytes)));
            } else {
                b.set_message(peers);
            }
        }) as download::ProgressFn
    });
    info!(file = %id, name = %file.name, owners = peers.len(), partial = partial.len(), "downloading");
    let plan = DownloadPlan {
        file_id: id,
        peers,
        partial,
        sources,
        dir: dir.clone(),
        identity: home.identity.identity.clone(),
        sharing: home.config.sharing.clone(),
        store: Some(store.clone()),
        progress,
        live: None,
        download_limit: Some(limits.down.clone()),
        only: only.clone(),
        sequential,
    };
    if sequential && !json && file.files == 0 {
        let part = download::sidecar(&std::fs::canonicalize(&dir).unwrap_or(dir.clone()), &id, "part");
        eprintln!("sequential: {} fills from its start as it arrives", part.display());
    }
    let result = tokio::select! {
        r = download::run(plan) => r,
        _ = home.stop.stopped() => {
            stop_partial();
            let n = file.chunk_count;
            let have = download::load_have(&dir, &id, n);
            if let Some(b) = &bar { b.abandon(); }
            server.shutdown().await;
            return Err(CommandError::Interrupted { verified: have.count(), total: n });
        }
    };
    stop_partial();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            server.shutdown().await;
            return Err(e.into());
        }
    };
    // The manifest hashes to the id; its name and size are the file's.
    if let Some(Err(e)) = link.map(|l| crate::link::check_file(&l, &report.manifest.name, report.manifest.size)) {
        server.shutdown().await;
        return Err(e.into());
    }
    if !only.is_empty() {
        // Part of a folder: not this node's to own or seed as the folder.
        server.shutdown().await;
        tokio::task::block_in_place(|| {
            home.update_state(|s| {
                s.files.remove(&id.to_hex());
            })
        })?;
        client.close().await;
        let (value, text) = get_output(&report);
        emit(json, value, || text);
        return Ok(());
    }
    tokio::task::block_in_place(|| home.record_owned(&report.manifest, &report.path))?;
    announce(&client, home, advertised(home, Some(server.local_addr())).await).await?;
    client
        .call(Request::Own {
            peer_id: me,
            file: report.manifest.meta(),
        })
        .await?;
    pool(&client, me, &report.manifest).await;
    let (value, text) = get_output(&report);
    emit(json, value, || text);
    if no_seed {
        server.shutdown().await;
        client.close().await;
        return Ok(());
    }
    if !json {
        eprintln!("seeding; press Ctrl-C to stop");
    }
    serve_until_stopped(home, &client, server, &store).await
}

/// How often `get` asks a daemon how its download goes.
const DAEMON_POLL: Duration = Duration::from_millis(200);

/// `get` handed to the running daemon: it downloads and seeds; this
/// process waits for the end and prints what `get` prints.
async fn get_via_daemon(
    home: &Home,
    link: &crate::daemon::client::Link,
    id_or_name: &str,
    sequential: bool,
    json: bool,
) -> Result<(), CommandError> {
    let id = match id_or_name.parse::<FileId>() {
        Ok(id) if id_or_name.len() == 64 => id,
        _ => {
            let (client, _) = logged_in(home)?;
            let id = resolve(&client, id_or_name).await;
            client.close().await;
            id?
        }
    };
    info!(file = %id, "handing the download to the running daemon");
    link.post(
        "/api/downloads",
        &json!({ "id": id.to_hex(), "sequential": sequential }),
    )
    .await?;
    let path = format!("/api/files/{}", id.to_hex());
    loop {
        let entry = link.get(&path).await?;
        match entry["state"].as_str() {
            Some("failed") => {
                let code = crate::daemon::client::known_code(entry["error"]["code"].as_str().unwrap_or(""));
                let message = entry["error"]["message"].as_str().unwrap_or("the download failed");
                return Err(CommandError::Daemon {
                    code,
                    message: message.to_owned(),
                });
            }
            Some("seeding") if entry["result"].is_object() => {
                let text = entry["result_text"].as_str().unwrap_or("").to_owned();
                emit(json, entry["result"].clone(), || text);
                return Ok(());
            }
            // Complete already (owned before this request).
            Some("seeding") => {
                let name = entry["name"].as_str().unwrap_or("").to_owned();
                emit(json, entry, || format!("{name}: already here, seeded by the daemon"));
                return Ok(());
            }
            // Someone paused it on the page, or the daemon restarted and
            // holds it partly: waiting would never end.
            Some(state @ ("paused" | "partial")) => {
                return Err(CommandError::Daemon {
                    code: "stopped",
                    message: format!(
                        "the download of {id} is {state} in the daemon (resume it on its page or POST /api/files/{}/resume)",
                        id.to_hex()
                    ),
                });
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(DAEMON_POLL) => {}
            _ = home.stop.stopped() => return Err(CommandError::Stopped("the download in the daemon")),
        }
    }
}

/// What `get` prints for a finished download: JSON and text.
pub(crate) fn get_output(report: &download::DownloadReport) -> (serde_json::Value, String) {
    let path = std::fs::canonicalize(&report.path).unwrap_or(report.path.clone());
    let value = json!({
        "file_id": report.file_id.to_hex(),
        "path": path,
        "size": report.manifest.size,
        "seconds": report.seconds,
        "peers": report.peers_used(),
        "per_peer": report.per_peer,
        "finished_ms": report.finished_ms,
    });
    let rate = human::rate(report.manifest.size as f64 / report.seconds.max(1e-3));
    let text = format!(
        "{} ({}) in {} ({rate}) from {} -> {}",
        report.manifest.name,
        human::size(report.manifest.size),
        human::duration(report.seconds),
        human::count_usize(report.peers_used(), "peer", "peers"),
        path.display()
    );
    (value, text)
}

/// What `get` prints for a file already here.
pub(crate) fn already_output(id: &FileId, path: &Path, size: u64) -> (serde_json::Value, String) {
    (
        json!({ "file_id": id.to_hex(), "path": path, "size": size, "seconds": 0.0, "peers": 0 }),
        format!("already here: {}", path.display()),
    )
}

/// `get` of a file this node already owns: report it, make sure the
/// tracker knows, and seed unless told not to.
async fn owned_already(
    home: &Home,
    client: &TrackerClient,
    id: FileId,
    path: &Path,
    no_seed: bool,
    upload: Option<Arc<RateLimit>>,
    json: bool,
) -> Result<(), CommandError> {
    let store = Store::new();
    load_owned(home, &store)?;
    let size = store.get(&id).map_or(0, |f| f.manifest.size);
    let server = PeerServer::start_limited(&home.identity, listen_addr(home)?, store.clone(), upload)?;
    let print = || {
        let (value, text) = already_output(&id, path, size);
        emit(json, value, || text)
    };
    if no_seed {
        let registered = register_owned(home, client, server.local_addr(), &store).await;
        server.shutdown().await;
        client.close().await;
        registered?;
        print();
        return Ok(());
    }
    print();
    serve_until_stopped(home, client, server, &store).await
}

async fn seed(home: &Home, limits: Limits) -> Result<(), CommandError> {
    crate::daemon::run(home, limits).await
}

/// Announces the server, registers every complete owned file, then
/// heartbeats until SIGINT or SIGTERM; files another command of the home
/// added to the state meanwhile are served from the next heartbeat on.
pub(crate) async fn serve_until_stopped(
    home: &Home,
    client: &TrackerClient,
    server: PeerServer,
    store: &Store,
) -> Result<(), CommandError> {
    let addr = server.local_addr();
    let registered = register_owned(home, client, addr, store).await;
    if let Err(e) = registered {
        server.shutdown().await;
        return Err(e);
    }
    let every = Duration::from_secs(home.config.sharing.heartbeat_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = home.stop.stopped() => break,
            _ = tick.tick() => {
                if let Err(e) = load_new(home, store) {
                    warn!("cannot read the state: {e}");
                }
                match client.call(Request::Heartbeat { peer_id: home.identity.peer_id }).await {
                    Ok(_) => {}
                    Err(TrackerError::Api(ApiError::UnknownPeer(_))) => {
                        warn!("the tracker forgot this peer; announcing again");
                        if let Err(e) = register_owned(home, client, addr, store).await {
                            warn!("announce failed: {e}");
                        }
                    }
                    Err(e) if e.is_not_logged_in() => {
                        server.shutdown().await;
                        return Err(e.into());
                    }
                    Err(TrackerError::Stopped) => break,
                    Err(e) => warn!("heartbeat failed: {e}"),
                }
            }
        }
    }
    info!("stopping");
    tokio::join!(server.shutdown(), client.close());
    Ok(())
}

pub(crate) async fn register_owned(
    home: &Home,
    client: &TrackerClient,
    addr: SocketAddr,
    store: &Store,
) -> Result<(), CommandError> {
    announce(client, home, advertised(home, Some(addr)).await).await?;
    for (hex, rec) in home.state()?.files {
        let Ok(id) = hex.parse::<FileId>() else { continue };
        let Some(f) = store.get(&id) else { continue };
        if rec.partial_in.is_none() {
            client
                .call(Request::Own {
                    peer_id: home.identity.peer_id,
                    file: f.manifest.meta(),
                })
                .await?;
            pool(client, home.identity.peer_id, &f.manifest).await;
        }
    }
    Ok(())
}

/// Puts every file of the state that is still on disk into the store:
/// complete files whole, partial downloads with their verified chunks.
pub(crate) fn load_owned(home: &Home, store: &Store) -> Result<(), CommandError> {
    for (hex, rec) in home.state()?.files {
        let Ok(id) = hex.parse::<FileId>() else { continue };
        let manifest_path = match &rec.partial_in {
            Some(dir) => download::sidecar(dir, &id, "manifest"),
            None => home.manifest_path(&id),
        };
        let loaded = load_one(&id, &manifest_path, &rec.path, rec.partial_in.as_deref());
        match loaded {
            Ok(Some(shared)) => {
                store.insert(shared);
            }
            Ok(None) => {}
            Err(e) => warn!(file = %id.short(), path = %rec.path.display(), "not served: {e}"),
        }
    }
    Ok(())
}

/// Puts into the store the files of the state it does not serve yet.
pub(crate) fn load_new(home: &Home, store: &Store) -> Result<(), CommandError> {
    for (hex, rec) in home.state()?.files {
        let Ok(id) = hex.parse::<FileId>() else { continue };
        if store.get(&id).is_some() {
            continue;
        }
        let manifest_path = match &rec.partial_in {
            Some(dir) => download::sidecar(dir, &id, "manifest"),
            None => home.manifest_path(&id),
        };
        if let Ok(Some(shared)) = load_one(&id, &manifest_path, &rec.path, rec.partial_in.as_deref()) {
            info!(file = %id.short(), name = %rec.name, "serving a file another command added");
            store.insert(shared);
        }
    }
    Ok(())
}

pub(crate) fn load_one(
    id: &FileId,
    manifest_path: &Path,
    data: &Path,
    partial_in: Option<&Path>,
) -> Result<Option<SharedFile>, String> {
    let bytes = match std::fs::read(manifest_path) {
        Ok(b) => b,
        // A partial download that has not got its manifest yet.
        Err(_) if partial_in.is_some() => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", manifest_path.display())),
    };
    let manifest = Manifest::decode_checked(&bytes, *id).map_err(|e| e.to_string())?;
    // A partial download's data is where the manifest says (a part file
    // or a folder being built), whatever the record guessed before the
    // manifest was known.
    let data = match partial_in {
        Some(dir) => download::data_path(dir, id, &manifest),
        None => data.to_path_buf(),
    };
    let data = Data::open(&manifest, &data, false).map_err(|e| e.to_string())?;
    let n = manifest.chunks.len() as u32;
    let have = match partial_in {
        Some(dir) => download::load_have(dir, id, n),
        None => HaveBits::full(n),
    };
    Ok(Some(SharedFile {
        manifest,
        manifest_bytes: bytes,
        data: Arc::new(data),
        have: Arc::new(have),
    }))
}

/// Rebuilds the state file (`repair.rs`) on the blocking pool, since it
/// hashes data; the state is written only at the end, so a stop before
/// leaves it as it was.
async fn repair(home: &Home, folders: Vec<PathBuf>, json: bool) -> Result<(), CommandError> {
    let (dir, storage, stop) = (home.dir.clone(), home.storage_dir(), home.stop.clone());
    let work = tokio::task::spawn_blocking(move || crate::repair::repair(&dir, &storage, &folders, &stop));
    let done = tokio::select! {
        r = work => r.map_err(|e| HomeError::Io { path: home.dir.clone(), source: std::io::Error::other(e) })??,
        _ = home.stop.stopped() => return Err(CommandError::Stopped("the state was repaired")),
    };
    emit(json, repaired_json(&done), || repaired_text(&done));
    Ok(())
}

fn repaired_json(r: &Repaired) -> serde_json::Value {
    let files: Vec<_> = r
        .files
        .iter()
        .map(|f| {
            let state = if f.record.partial_in.is_some() {
                "partial"
            } else {
                "complete"
            };
            json!({ "file_id": f.id.to_hex(), "name": f.record.name, "size": f.record.size, "state": state,
                    "have": f.have, "chunks": f.chunks, "path": f.record.path })
        })
        .collect();
    let missing: Vec<_> = r
        .missing
        .iter()
        .map(|(id, name)| json!({ "file_id": id.to_hex(), "name": name }))
        .collect();
    json!({ "files": files, "missing": missing, "skipped": r.skipped, "kept_aside": r.kept_aside })
}

fn repaired_text(r: &Repaired) -> String {
    let mut lines = Vec::new();
    if let Some(aside) = &r.kept_aside {
        lines.push(format!("the damaged state file is kept as {}", aside.display()));
    }
    for f in &r.files {
        let state = if f.record.partial_in.is_some() {
            "partial "
        } else {
            "complete"
        };
        lines.push(format!(
            "{state}  {}  {}/{}  {}  {}",
            f.id,
            f.have,
            human::count(f.chunks, "chunk", "chunks"),
            f.record.name,
            f.record.path.display()
        ));
    }
    for (id, name) in &r.missing {
        lines.push(format!(
            "no data   {id}  {name}: not found; give its folder (`quorrent repair FOLDER`)"
        ));
    }
    for s in &r.skipped {
        lines.push(format!("skipped   {s}"));
    }
    lines.push(format!(
        "state rebuilt: {}",
        human::count_usize(r.files.len(), "file", "files")
    ));
    lines.join("\n")
}

async fn status(home: &Home, json: bool) -> Result<(), CommandError> {
    let session = live_session(home)?;
    let client = tracker_client(home, session.as_ref().map(|s| s.token.clone()))?;
    let reply = client.call(Request::ClusterStatus).await?;
    // The leader's own figures, the ones its /status, the dashboard and
    // `cluster.sh status` show (the proxy sends it to the leader).
    let report = match client.call(Request::MemberStatus).await {
        Ok(Reply::Member(r)) => Some(*r),
        _ => None,
    };
    client.close().await;
    let Reply::Status(st) = reply else {
        return Err(unexpected("cluster-status"));
    };
    let user = session.map(|s| s.user);
    emit(
        json,
        json!({
            "peer_id": home.identity.peer_id.to_hex(),
            "user": user,
            "leader": st.leader,
            "term": st.term,
            "members": st.members,
            "leader_report": report,
        }),
        || {
            let mut s = format!(
                "peer id  {}\nuser     {}\nleader   {}\nterm     {}",
                home.identity.peer_id,
                user.as_deref().unwrap_or("(not logged in)"),
                st.leader.map_or("none".into(), |l| l.to_string()),
                st.term
            );
            let dash = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            if let Some(r) = &report {
                let reg = &r.registry;
                s.push_str(&format!(
                    "\ncommit   {}\napplied  {}\nregistry {}, {}, {}, {}",
                    dash(r.commit_index),
                    dash(r.applied_index),
                    human::count(reg.users, "user", "users"),
                    human::count(reg.files, "file", "files"),
                    human::count(reg.owners, "owner", "owners"),
                    human::count(reg.peers, "peer", "peers")
                ));
            }
            s.push_str("\nmembers");
            for m in &st.members {
                let lag = report
                    .as_ref()
                    .and_then(|r| r.followers.iter().find(|f| f.id == m.id))
                    .map(|f| format!("  lag {}", f.lag))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "\n  {}  api {}  raft {}{}{lag}",
                    m.id,
                    m.api_addr,
                    m.raft_addr,
                    if Some(m.id) == st.leader { "  (leader)" } else { "" }
                ));
            }
            s
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_grows_only_for_huge_files() {
        assert_eq!(chunk_size_for(1 << 30, 256 << 10), 256 << 10);
        assert_eq!(chunk_size_for(64 << 30, 256 << 10), 1 << 20);
        assert_eq!(chunk_size_for(u64::MAX, 256 << 10), MAX_CHUNK);
        assert_eq!(chunk_size_for(10, 1), MIN_CHUNK);
    }
}
