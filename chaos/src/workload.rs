//! The workload: logical clients that talk to the cluster through a proxy,
//! run register, login, own, disown, search, get-owners, announce and
//! heartbeat on a small key space (so operations conflict), and record
//! every operation as an [`Op`] (JSON lines on stdout).
//!
//! A client has one operation at a time. A request that times out or is
//! answered "unavailable" is sent again with the same [`WriteId`] until it
//! gets a definite answer: the tracker applies a write once whatever the
//! number of tries, so the recorded operation spans from the first try to
//! the definite answer. Only operations cut short by the end of the run
//! stay `Unknown`.

use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Duration};

use protocol::{
    codec,
    ids::{ClientId, FileId, PeerId},
    tracker_api::{Answer, ApiError, Consistency, Envelope, FileMeta, Reply, Request, WriteId, ALPN},
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::{mpsc, watch};

use crate::{
    history::{file_name, user_name, Call, Op, Outcome, Ret},
    mono_ns,
};

/// What every client of a run agrees on.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Files in the key space.
    pub files: u32,
    /// Shared user names (contended Register and Login).
    pub users: u32,
}

/// The password of shared user `k` (Login with `good: false` uses another).
pub fn password(k: u32) -> String {
    format!("chaos-password-{k}")
}

/// Client `i`'s own account, under which its peer owns files.
fn own_user(i: u32) -> String {
    format!("chaos-client-{i}")
}

/// The peer of client `i`.
pub fn peer_id(i: u32) -> PeerId {
    let mut b = [0x5a; 32];
    b[28..].copy_from_slice(&i.to_be_bytes());
    PeerId(b)
}

/// The client index of a peer id made by [`peer_id`].
pub fn peer_index(p: &PeerId) -> Option<u32> {
    (p.0[..28] == [0x5a; 28]).then(|| u32::from_be_bytes(p.0[28..].try_into().expect("4 bytes")))
}

/// The metadata of file `k`.
pub fn file_meta(k: u32) -> FileMeta {
    meta_named(file_name(k))
}

/// A 1 MiB file's metadata with its id taken from its name.
fn meta_named(name: String) -> FileMeta {
    FileMeta {
        id: FileId(*blake3::hash(name.as_bytes()).as_bytes()),
        name,
        size: 1 << 20,
        chunk_size: 256 << 10,
        chunk_count: 4,
        files: 0,
    }
}

/// Preloaded file `n` (not in the key space: its name matches no search
/// of the workload).
pub fn preload_meta(n: u64) -> FileMeta {
    meta_named(format!("preload-{n:09}"))
}

/// The key-space file of a name made by [`file_name`].
fn file_index(name: &str) -> Option<u32> {
    name.strip_prefix("chaos-file-")?.parse().ok()
}

/// How long one try may take before it is abandoned and sent again (the
/// proxy's own deadline for finding a leader is 5 s).
const TRY_TIMEOUT: Duration = Duration::from_secs(6);

/// One logical client.
pub struct Client {
    index: u32,
    proxy: SocketAddr,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    conn: Option<quinn::Connection>,
    id: ClientId,
    seq: u64,
    token: Option<String>,
    stop: watch::Receiver<bool>,
}

/// Why a request got no definite answer.
enum Indefinite {
    /// The run ended first.
    Stopped,
    /// Refused before reaching the log (e.g. "overloaded"), but an earlier
    /// try had no definite answer and may have been applied.
    Refused(String),
}

impl Client {
    pub fn new(
        index: u32,
        proxy: SocketAddr,
        endpoint: quinn::Endpoint,
        config: quinn::ClientConfig,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Client {
            index,
            proxy,
            endpoint,
            config,
            conn: None,
            id: rand::random(),
            seq: 0,
            token: None,
            stop,
        }
    }

    async fn connection(&mut self) -> Result<quinn::Connection, String> {
        if let Some(c) = &self.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let host = self.proxy.ip().to_string();
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.proxy, &host)
            .map_err(|e| e.to_string())?;
        let c = tokio::time::timeout(TRY_TIMEOUT, connecting)
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// One try: the answer, or why there is none.
    async fn try_once(&mut self, frame: &[u8]) -> Result<Answer, String> {
        let conn = self.connection().await?;
        match tokio::time::timeout(TRY_TIMEOUT, codec::call_raw::<Answer>(&conn, frame, 1 << 20)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e.to_string())
            }
            Err(_) => {
                self.conn = None;
                Err("timed out".into())
            }
        }
    }

    /// Sends `request` until it gets a definite answer (writes keep their
    /// [`WriteId`]) or the run stops. "Unavailable" is not definite: the
    /// proxy may have handed the write to a leader that applied it.
    async fn call(&mut self, request: Request) -> Result<Answer, Indefinite> {
        let write_id = request.is_write().then(|| {
            self.seq += 1;
            WriteId {
                client: self.id,
                seq: self.seq,
            }
        });
        let env = Envelope {
            token: self.token.clone(),
            write_id,
            origin: None,
            consistency: Consistency::Linearizable,
            request,
        };
        let frame = codec::encode(&env).expect("a request encodes");
        let mut backoff = Duration::from_millis(20);
        let mut tried = false;
        loop {
            if *self.stop.borrow() {
                return Err(Indefinite::Stopped);
            }
            match self.try_once(&frame).await {
                Ok(Err(ApiError::Unavailable(_) | ApiError::NotLeader { .. } | ApiError::Internal)) | Err(_) => {}
                Ok(Err(e @ (ApiError::Overloaded | ApiError::Throttled { .. } | ApiError::TooManyAttempts { .. })))
                    if tried && write_id.is_some() =>
                {
                    return Err(Indefinite::Refused(e.code().to_string()));
                }
                Ok(answer) => return Ok(answer),
            }
            tried = true;
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Makes this client's account, session and peer (not recorded).
    pub async fn set_up(&mut self) -> Result<(), String> {
        let user = own_user(self.index);
        let pw = format!("{user}-password");
        let register = Request::Register {
            user: user.clone(),
            password: pw.clone(),
        };
        match self.call(register).await {
            Ok(Ok(_) | Err(ApiError::UserExists(_))) => {}
            Ok(Err(e)) => return Err(format!("register {user}: {e}")),
            Err(_) => return Err("stopped or refused".into()),
        }
        match self
            .call(Request::Login {
                user: user.clone(),
                password: pw,
            })
            .await
        {
            Ok(Ok(Reply::LoggedIn { token, .. })) => self.token = Some(token),
            Ok(other) => return Err(format!("login {user}: {other:?}")),
            Err(_) => return Err("stopped".into()),
        }
        match self.call(request_of(&Call::Announce { peer: self.index })).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("announce: {e}")),
            Err(_) => Err("stopped".into()),
        }
    }

    /// Registers a file owned by this client's peer (set-up, not recorded).
    pub async fn own_file(&mut self, file: FileMeta) -> Result<(), String> {
        let own = Request::Own {
            peer_id: peer_id(self.index),
            file,
        };
        match self.call(own).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("stopped".into()),
        }
    }

    /// Picks a random operation.
    fn pick(&self, shape: &Shape, rng: &mut StdRng) -> Call {
        let me = self.index;
        let file = rng.gen_range(0..shape.files);
        let user = rng.gen_range(0..shape.users);
        match rng.gen_range(0..100) {
            0..=24 => Call::Own { file, peer: me },
            25..=44 => Call::Disown { file, peer: me },
            45..=69 => Call::GetOwners { file },
            // Either every key file or the one picked.
            70..=79 if rng.gen_bool(0.5) => Call::Search {
                text: "chaos-file".into(),
                files: (0..shape.files).collect(),
            },
            70..=79 => Call::Search {
                text: file_name(file),
                files: vec![file],
            },
            80..=83 => Call::Register { user },
            84..=89 => Call::Login {
                user,
                good: rng.gen_bool(0.8),
            },
            90..=94 => Call::Heartbeat { peer: me },
            _ => Call::Announce { peer: me },
        }
    }

    /// Runs one random operation and returns its record.
    pub async fn step(&mut self, shape: &Shape, rng: &mut StdRng) -> Op {
        let call = self.pick(shape, rng);
        self.run(call).await
    }

    /// Runs `call` and returns its record.
    pub async fn run(&mut self, call: Call) -> Op {
        let invoke_ns = mono_ns();
        let answer = self.call(request_of(&call)).await;
        let complete_ns = mono_ns();
        let outcome = match answer {
            Err(Indefinite::Stopped) => Outcome::Unknown("the run ended first".into()),
            Err(Indefinite::Refused(code)) => Outcome::Unknown(format!("{code} after a try with no answer")),
            Ok(a) => outcome_of(&call, a),
        };
        Op {
            client: self.index,
            invoke_ns,
            complete_ns,
            call,
            outcome,
        }
    }

    /// After the run: every file's owners and a login of every shared
    /// user, so that every acknowledged write is checked to be there.
    pub async fn final_reads(&mut self, shape: &Shape) -> Vec<Op> {
        let mut ops = Vec::new();
        for file in 0..shape.files {
            ops.push(self.run(Call::GetOwners { file }).await);
        }
        for user in 0..shape.users {
            // The workload's wrong passwords may have the user's logins
            // throttled for a while: wait that out (a refused try changes
            // nothing, and each is recorded).
            loop {
                let op = self.run(Call::Login { user, good: true }).await;
                let throttled = op.outcome == Outcome::Fail("throttled".into());
                ops.push(op);
                if !throttled || *self.stop.borrow() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        ops
    }
}

/// The request for a call.
fn request_of(call: &Call) -> Request {
    let announce = |peer: u32| Request::AnnouncePeer {
        peer_id: peer_id(peer),
        addrs: vec![SocketAddr::from(([192, 0, 2, 1], 40_000 + (peer % 20_000) as u16))],
    };
    match call {
        Call::Register { user } => Request::Register {
            user: user_name(*user),
            password: password(*user),
        },
        Call::Login { user, good } => Request::Login {
            user: user_name(*user),
            password: if *good {
                password(*user)
            } else {
                format!("{}-wrong", password(*user))
            },
        },
        Call::Own { file, peer } => Request::Own {
            peer_id: peer_id(*peer),
            file: file_meta(*file),
        },
        Call::Disown { file, peer } => Request::Disown {
            peer_id: peer_id(*peer),
            file_id: file_meta(*file).id,
        },
        Call::GetOwners { file } => Request::GetOwners {
            file_id: file_meta(*file).id,
            cursor: None,
            limit: 10_000,
        },
        Call::Search { text, .. } => Request::Search {
            text: text.clone(),
            cursor: 0,
            limit: 1000,
        },
        Call::Announce { peer } => announce(*peer),
        Call::Heartbeat { peer } => Request::Heartbeat {
            peer_id: peer_id(*peer),
        },
    }
}

/// The recorded outcome of a definite answer.
fn outcome_of(call: &Call, answer: Answer) -> Outcome {
    let ret = match (call, answer) {
        (_, Ok(Reply::Done | Reply::Registered { .. } | Reply::LoggedIn { .. })) => Ret::Done,
        (Call::Register { .. }, Err(ApiError::UserExists(_))) => Ret::UserExists,
        (Call::Login { .. }, Err(ApiError::BadCredentials)) => Ret::BadCredentials,
        (Call::Disown { .. } | Call::GetOwners { .. }, Err(ApiError::UnknownFile(_))) => Ret::UnknownFile,
        (_, Ok(Reply::Owners { owners, .. })) => Ret::Owners(
            owners
                .iter()
                .map(|o| peer_index(&o.peer_id).unwrap_or(u32::MAX))
                .collect::<BTreeSet<_>>(),
        ),
        (_, Ok(Reply::Files { hits, .. })) => Ret::Files(
            hits.iter()
                .filter_map(|h| Some((file_index(&h.file.name)?, h.live_owners)))
                .collect(),
        ),
        (_, Ok(other)) => return Outcome::Fail(format!("unexpected reply {other:?}")),
        (_, Err(e)) => return Outcome::Fail(e.code().to_string()),
    };
    Outcome::Ok(ret)
}

/// The clients one worker process runs.
pub struct Crew {
    /// Client indexes; client i uses proxy i mod n.
    pub clients: Vec<u32>,
    pub proxies: Vec<SocketAddr>,
    pub config: quinn::ClientConfig,
    pub shape: Shape,
    pub seed: u64,
}

/// Runs the crew until `stop` turns true; every finished operation goes
/// to `out`, each client's set-up result to `ready`, and the workload
/// starts when `start` turns true. Returns after every client has
/// recorded its last operation.
pub async fn run(
    crew: Crew,
    out: mpsc::UnboundedSender<Op>,
    ready: mpsc::UnboundedSender<Result<u32, String>>,
    start: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    let Crew {
        clients,
        proxies,
        config,
        shape,
        seed,
    } = crew;
    let endpoint = protocol::quic::endpoint((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), None).expect("UDP socket");
    let shape = Arc::new(shape);
    let mut tasks = tokio::task::JoinSet::new();
    for i in clients {
        let proxy = proxies[i as usize % proxies.len()];
        let mut client = Client::new(i, proxy, endpoint.clone(), config.clone(), stop.clone());
        let (out, ready, shape) = (out.clone(), ready.clone(), shape.clone());
        let (mut start, stop) = (start.clone(), stop.clone());
        tasks.spawn(async move {
            let r = client.set_up().await;
            let ok = r.is_ok();
            let _ = ready.send(r.map(|_| i));
            if !ok {
                return;
            }
            while !*start.borrow() {
                if start.changed().await.is_err() {
                    return;
                }
            }
            let mut rng = StdRng::seed_from_u64(seed ^ (u64::from(i) << 32));
            while !*stop.borrow() {
                let op = client.step(&shape, &mut rng).await;
                let _ = out.send(op);
                // A short pause so 64 clients do not take every CPU.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    endpoint.close(0u32.into(), b"done");
}

/// The client crypto for talking to proxies signed by the CA in `ca_pem`.
pub fn client_config(ca_pem: &std::path::Path) -> anyhow::Result<quinn::ClientConfig> {
    let roots = protocol::tls::load_ca_file(ca_pem)?;
    let crypto = protocol::tls::client_crypto(roots, None, ALPN)?;
    Ok(protocol::tls::quic_client(
        crypto,
        protocol::quic::control_transport(Duration::from_secs(10)),
    )?)
}
