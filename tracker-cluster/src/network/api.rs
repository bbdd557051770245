//! The tracker API server (`quorrent-tracker/1`): accepts connections
//! from proxies (and tools), one stream per request, and answers each
//! [`Envelope`] with an [`Answer`].
//!
//! Writes and linearizable reads are served by the leader only; any
//! member answers ClusterStatus, WatchLeader and stale reads. A follower
//! answers everything else with `NotLeader` naming the leader.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use protocol::{
    codec::{self, CodecError},
    ids::{check_query, check_user},
    tracker_api::{
        Answer, ApiError, Consistency, Envelope, PartialOwner, PeerInfo, Reply, Request, MAX_OWN_MANY,
        MAX_POOLED_OWNERS,
    },
};

use crate::{
    app::App,
    registry::{token_hash, Op, Write},
};

/// Longest accepted password, bytes (argon2 cost does not grow with it,
/// but the frame should stay small).
const MAX_PASSWORD: usize = 1024;
/// Longest WatchLeader wait honoured.
const MAX_WATCH: Duration = Duration::from_secs(10);

/// Accepts connections until the endpoint is closed, within the caps of
/// `app.api_guard` (connections, per source IP, handshake timeout).
pub async fn serve(app: Arc<App>, endpoint: quinn::Endpoint) {
    let guard = app.api_guard.clone();
    protocol::listen::serve(endpoint, guard, move |conn| serve_conn(app.clone(), conn)).await;
}

async fn serve_conn(app: Arc<App>, conn: quinn::Connection) {
    // A client holding a proxy certificate of our CA may tell us the
    // node's address for throttling; anyone else may not.
    let trusted =
        protocol::tls::peer_cert(&conn).is_some_and(|c| protocol::tls::has_role(&c, protocol::tls::Role::Proxy));
    let remote = conn.remote_address();
    if trusted {
        // The endpoint lets anyone open `max_streams_per_connection`
        // streams; a proxy multiplexes all its nodes' requests on one
        // connection, so it may use every pending permit.
        let streams = u32::try_from(app.config.limits.max_pending).unwrap_or(u32::MAX);
        conn.set_max_concurrent_bi_streams(streams.into());
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(&app, send, recv, remote, trusted).await {
                tracing::debug!(error = %e, %remote, "api stream ended badly");
            }
        });
    }
}

async fn serve_stream(
    app: &App,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: SocketAddr,
    trusted: bool,
) -> Result<(), CodecError> {
    let limit = app.config.limits.max_frame_bytes;
    // The permit comes before the body: past it, nothing is read.
    let Ok(_permit) = app.pending.try_acquire() else {
        let _ = recv.stop(0u32.into());
        codec::write_frame(&mut send, &Answer::Err(ApiError::Overloaded)).await?;
        let _ = send.finish();
        return Ok(());
    };
    let answer: Answer = match app.api_guard.read_body(&mut recv, limit).await {
        Err(e @ (CodecError::TooLarge { .. } | CodecError::Truncated | CodecError::Timeout)) => {
            let _ = recv.stop(0u32.into());
            Err(ApiError::BadFrame(e.to_string()))
        }
        Err(e) => return Err(e),
        Ok(body) => match codec::decode::<Envelope>(&body, limit) {
            Err(e) => Err(ApiError::BadFrame(e.to_string())),
            Ok(env) => {
                let origin = if trusted { env.origin.unwrap_or(remote) } else { remote };
                handle(app, env, origin.ip()).await
            }
        },
    };
    codec::write_frame(&mut send, &answer).await?;
    let _ = send.finish();
    Ok(())
}

/// Serves one request.
pub async fn handle(app: &App, env: Envelope, origin: IpAddr) -> Answer {
    let kind = env.request.kind();
    let started = Instant::now();
    let answer = dispatch(app, env, origin).await;
    app.telemetry.request(kind, &answer, started.elapsed());
    match &answer {
        Err(ApiError::Internal) => tracing::error!(kind, "request failed internally"),
        Err(e) => tracing::debug!(kind, error = %e, "request refused"),
        Ok(_) => tracing::trace!(kind, us = started.elapsed().as_micros() as u64, "request served"),
    }
    answer
}

async fn dispatch(app: &App, env: Envelope, origin: IpAddr) -> Answer {
    let Envelope {
        token,
        write_id,
        consistency,
        request,
        ..
    } = env;
    let token = token.as_deref().map(token_hash);
    match request {
        Request::ClusterStatus => Ok(Reply::Status(app.status())),
        Request::MemberStatus => Ok(Reply::Member(Box::new(crate::telemetry::report(app)))),
        Request::WatchLeader { leader, term, wait_ms } => watch_leader(app, leader, term, wait_ms).await,
        Request::Register { user, password } => {
            app.leader_check()?;
            check_user(&user)?;
            check_password(&password)?;
            throttle_register(app, origin)?;
            let phc = hash_password(app, password).await?;
            app.proposer
                .propose(Write {
                    id: write_id,
                    op: Op::CreateUser { user, phc },
                })
                .await
        }
        Request::Login { user, password } => login(app, user, password, origin).await,
        Request::Logout => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            app.proposer
                .propose(Write {
                    id: write_id,
                    op: Op::DeleteSession { token },
                })
                .await
        }
        Request::AnnouncePeer { peer_id, addrs } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            if addrs.len() > app.config.limits.max_peer_addrs {
                return Err(ApiError::Invalid(format!(
                    "{} addresses, at most {} allowed",
                    addrs.len(),
                    app.config.limits.max_peer_addrs
                )));
            }
            let op = Op::AnnouncePeer {
                token,
                peer: peer_id,
                addrs,
            };
            propose_from_peer(app, write_id, peer_id, op).await
        }
        Request::Own { peer_id, file } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            crate::registry::check_meta(&file)?;
            let file_id = file.id;
            let op = Op::Own {
                token,
                peer: peer_id,
                file,
            };
            let answer = propose_from_peer(app, write_id, peer_id, op).await;
            if answer.is_ok() {
                // A complete owner now, no longer a partial one.
                app.partials.lock().expect("partials lock").remove(&file_id, &peer_id);
                // A file the live index left out has a live owner again.
                let pos = app.state.read().registry.position(&file_id);
                if let (Some(pos), Some(ix)) = (pos, app.live_index.lock().expect("live index lock").as_mut()) {
                    ix.revive(pos);
                }
            }
            answer
        }
        Request::OwnMany { peer_id, files } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            if files.is_empty() || files.len() > MAX_OWN_MANY {
                return Err(ApiError::Invalid(format!(
                    "{} files in one request, 1 to {MAX_OWN_MANY} allowed",
                    files.len()
                )));
            }
            for (i, f) in files.iter().enumerate() {
                crate::registry::check_meta(f).map_err(|e| ApiError::Invalid(format!("file {i} ({}): {e}", f.id)))?;
            }
            let ids: Vec<_> = files.iter().map(|f| f.id).collect();
            let op = Op::OwnMany {
                token,
                peer: peer_id,
                files,
            };
            let answer = propose_from_peer(app, write_id, peer_id, op).await;
            if answer.is_ok() {
                let mut partials = app.partials.lock().expect("partials lock");
                for id in &ids {
                    partials.remove(id, &peer_id);
                }
                drop(partials);
                let st = app.state.read();
                if let Some(ix) = app.live_index.lock().expect("live index lock").as_mut() {
                    for pos in ids.iter().filter_map(|id| st.registry.position(id)) {
                        ix.revive(pos);
                    }
                }
            }
            answer
        }
        Request::Pool {
            peer_id,
            file_id,
            contents,
        } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            crate::registry::check_pool_contents(contents.len())?;
            let op = Op::Pool {
                token,
                peer: peer_id,
                file: file_id,
                contents,
            };
            propose_from_peer(app, write_id, peer_id, op).await
        }
        Request::GetPooled { contents, limit } => {
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            crate::registry::check_pool_contents(contents.len())?;
            read_barrier(app, consistency).await?;
            let limit = limit.clamp(1, MAX_POOLED_OWNERS);
            let live = app.live_fn();
            let st = app.state.read();
            st.registry
                .session_user(&token, st.registry.now_ms(app.clock.now_ms()))?;
            let items = st.registry.pooled(&contents, limit, live);
            Ok(Reply::Pooled { items })
        }
        Request::Disown { peer_id, file_id } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            let answer = app
                .proposer
                .propose(Write {
                    id: write_id,
                    op: Op::Disown {
                        token,
                        peer: peer_id,
                        file: file_id,
                    },
                })
                .await;
            if answer.is_ok() {
                app.partials.lock().expect("partials lock").remove(&file_id, &peer_id);
            }
            answer
        }
        Request::AnnouncePartial { peer_id, file_id, have } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            let file = {
                let st = app.state.read();
                let now = st.registry.now_ms(app.clock.now_ms());
                st.registry.check_peer_session(&token, &peer_id, now)?;
                st.registry
                    .file_meta(&file_id)
                    .cloned()
                    .ok_or(ApiError::UnknownFile(file_id))?
            };
            let now = Instant::now();
            app.partials
                .lock()
                .expect("partials lock")
                .announce(peer_id, &file, have, now)?;
            // A sign of life like a heartbeat.
            app.liveness.lock().expect("liveness lock").touch(peer_id, now);
            Ok(Reply::Done)
        }
        Request::Heartbeat { peer_id } => {
            app.leader_check()?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            let st = app.state.read();
            let now = st.registry.now_ms(app.clock.now_ms());
            st.registry.check_peer_session(&token, &peer_id, now)?;
            drop(st);
            app.liveness
                .lock()
                .expect("liveness lock")
                .touch(peer_id, Instant::now());
            Ok(Reply::Done)
        }
        Request::Search { text, cursor, limit } => {
            check_query(&text)?;
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            read_barrier(app, consistency).await?;
            let limit = limit.clamp(1, app.config.limits.max_search_page);
            let leading = app.leader_check().is_ok();
            let (mut hits, next) = {
                let live = app.live_fn();
                let st = app.state.read();
                st.registry
                    .session_user(&token, st.registry.now_ms(app.clock.now_ms()))?;
                // On the leader, files whose owners are all long gone are
                // skipped via the live index (see `App::live_index`).
                let index = app.live_index.lock().expect("live index lock");
                let index = index.as_ref().filter(|_| leading);
                st.registry.search_with(&text, cursor, limit, live, index)
            };
            if leading {
                let now = Instant::now();
                let partials = app.partials.lock().expect("partials lock");
                for h in &mut hits {
                    h.partial_owners = partials.count(&h.file.id, now);
                }
            }
            Ok(Reply::Files { hits, next })
        }
        Request::GetOwners { file_id, cursor, limit } => {
            let token = token.ok_or(ApiError::NotLoggedIn)?;
            read_barrier(app, consistency).await?;
            let limit = limit.clamp(1, app.config.owners.max_owners_page);
            // Partial owners come with the first page, from the leader.
            let partial: Vec<_> = if cursor.is_none() && app.leader_check().is_ok() {
                let now = Instant::now();
                let partials = app.partials.lock().expect("partials lock");
                partials
                    .owners(&file_id, now)
                    .into_iter()
                    .map(|(p, have)| (p, have.to_vec()))
                    .collect()
            } else {
                Vec::new()
            };
            let live = app.live_fn();
            let st = app.state.read();
            st.registry
                .session_user(&token, st.registry.now_ms(app.clock.now_ms()))?;
            let (file, owners, next) = st.registry.owners_page(&file_id, cursor, limit, live)?;
            let partial = partial
                .into_iter()
                .filter_map(|(peer_id, have)| {
                    let addrs = st.registry.peer_addrs(&peer_id)?.to_vec();
                    Some(PartialOwner {
                        peer: PeerInfo { peer_id, addrs },
                        have,
                    })
                })
                .collect();
            Ok(Reply::Owners {
                file,
                owners,
                next,
                partial,
            })
        }
    }
}

/// Proposes a write made by `peer`; once it is applied, the request also
/// counts as a sign of life of that peer.
async fn propose_from_peer(
    app: &App,
    id: Option<protocol::tracker_api::WriteId>,
    peer: protocol::ids::PeerId,
    op: Op,
) -> Answer {
    let answer = app.proposer.propose(Write { id, op }).await;
    if answer.is_ok() {
        app.liveness.lock().expect("liveness lock").touch(peer, Instant::now());
    }
    answer
}

/// Makes a read linearizable: confirms leadership with a quorum and waits
/// until the state machine has applied the read index. A stale read is
/// served from whatever this member has applied.
async fn read_barrier(app: &App, consistency: Consistency) -> Result<(), ApiError> {
    if consistency == Consistency::Stale {
        return Ok(());
    }
    app.leader_check()?;
    app.raft.ensure_linearizable().await.map_err(|e| match e {
        openraft::error::RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
            ApiError::NotLeader {
                leader: f.leader_id,
                addr: f.leader_node.map(|n| n.api),
            }
        }
        openraft::error::RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_)) => {
            ApiError::NotLeader {
                leader: None,
                addr: None,
            }
        }
        openraft::error::RaftError::Fatal(_) => ApiError::Unavailable("this tracker is shutting down".into()),
    })?;
    Ok(())
}

async fn watch_leader(app: &App, leader: Option<u64>, term: u64, wait_ms: u32) -> Answer {
    app.check_member()?;
    let mut rx = app.raft.metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64).min(MAX_WATCH);
    loop {
        {
            let m = rx.borrow_and_update();
            // A removed member names no leader (its metrics may still).
            let now = m.current_leader.filter(|_| app.removal.reason().is_none());
            if now != leader || m.current_term != term {
                return Ok(Reply::Status(app.status_from(&m)));
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(ApiError::Unavailable("this tracker is shutting down".into())),
            Err(_) => return Ok(Reply::Status(app.status())),
        }
    }
}

/// A blocking task that did not finish means this member's runtime is
/// going away; the proxy retries that on the next leader.
fn shutting_down() -> ApiError {
    ApiError::Unavailable("this tracker is shutting down".into())
}

fn check_password(p: &str) -> Result<(), ApiError> {
    if p.is_empty() || p.len() > MAX_PASSWORD {
        return Err(ApiError::Invalid(format!("password must be 1 to {MAX_PASSWORD} bytes")));
    }
    Ok(())
}

/// Takes a Register token from the origin's bucket and from the leader's
/// argon2 budget, or answers `Throttled`.
fn throttle_register(app: &App, origin: IpAddr) -> Result<(), ApiError> {
    use crate::throttle::Refused;
    let refused = app
        .register
        .lock()
        .expect("register throttle lock")
        .take(Some(origin), Instant::now());
    let (what, wait) = match refused {
        Ok(()) => return Ok(()),
        Err(Refused::Source(d)) => ("register", d),
        Err(Refused::Global(d)) => {
            tracing::debug!(%origin, "register refused: the argon2 budget is spent");
            ("register (tracker-wide)", d)
        }
    };
    Err(ApiError::Throttled {
        what: what.into(),
        retry_after_ms: (wait.as_millis() as u64).max(1),
    })
}

/// argon2id with the crate's default (OWASP) parameters, on the argon2
/// pool (fixed threads, reused memory).
async fn hash_password(app: &App, password: String) -> Result<String, ApiError> {
    app.argon.hash(password).await.map_err(|e| match e {
        crate::argon_pool::PoolError::Stopped => shutting_down(),
        e => {
            tracing::error!(error = %e, "argon2 hashing failed");
            ApiError::Internal
        }
    })
}

/// Verifies on the argon2 pool; an unknown user (`phc: None`) is checked
/// against a dummy hash so it costs the same time as a wrong password.
async fn verify_password(app: &App, phc: Option<String>, password: String) -> Result<bool, ApiError> {
    app.argon.verify(phc, password).await.map_err(|_| shutting_down())
}

/// Login: throttle, check the password on the leader, then replicate the
/// new session (only the token's hash is stored).
///
/// Login is not deduplicated by the client table: its answer holds the
/// token, which must not be stored in the replicated state. A retried
/// login opens a second session, which is harmless and expires.
async fn login(app: &App, user: String, password: String, origin: IpAddr) -> Answer {
    app.leader_check()?;
    check_user(&user)?;
    check_password(&password)?;
    if let Some(wait) = app
        .throttle
        .lock()
        .expect("throttle lock")
        .check(&user, Some(origin), Instant::now())
    {
        return Err(ApiError::TooManyAttempts {
            retry_after_ms: wait.as_millis() as u64,
        });
    }
    read_barrier(app, Consistency::Linearizable).await?;
    let phc = app.state.read().registry.password_hash(&user).map(str::to_owned);
    if !verify_password(app, phc, password).await? {
        app.throttle
            .lock()
            .expect("throttle lock")
            .failed(&user, Some(origin), Instant::now());
        return Err(ApiError::BadCredentials);
    }
    app.throttle
        .lock()
        .expect("throttle lock")
        .succeeded(&user, Some(origin));
    let token = hex::encode(rand::random::<[u8; 32]>());
    let now = app.state.read().registry.now_ms(app.clock.now_ms());
    let expires_ms = now + app.config.session_ttl_secs * 1000;
    let op = Op::CreateSession {
        token: token_hash(&token),
        user: user.clone(),
        expires_ms,
    };
    app.proposer.propose(Write { id: None, op }).await?;
    Ok(Reply::LoggedIn {
        user,
        token,
        expires_ms,
    })
}
