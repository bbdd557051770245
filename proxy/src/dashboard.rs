//! The cluster as the proxy sees it, served over HTTP: every member's
//! [`MemberReport`] (asked with `MemberStatus` four times a second on the
//! proxy's own connections, so it works wherever the proxy reaches the
//! members), up or down, the timeline of leader changes (from the leader
//! watchers, the moment the proxy learns of one), the write series and the
//! proxy's counters. `/status` is that view as JSON; `GET /status?after=V`
//! waits (up to 1 s) until the view's version passes V, so the page hears
//! of a new leader at once without holding a stream open. The page itself
//! (`assets/`) is embedded in the binary.
//!
//! Also the proxy's `/livez`, `/readyz` (a leader is known and answers)
//! and `/metrics`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use hyper::{Method, StatusCode};
use protocol::{
    codec,
    http::{self, Request, Response},
    tracker_api::{Answer, Envelope, MemberReport, Reply, Request as ApiRequest},
};
use serde::Serialize;
use tokio::sync::watch;

use crate::{forward::Forwarder, upstream::Upstreams};

/// How often each member is asked for its figures.
const POLL: Duration = Duration::from_millis(250);
/// A member that does not answer within this is shown down.
const ASK_TIMEOUT: Duration = Duration::from_millis(600);
/// Leader changes kept for the timeline.
const TIMELINE: usize = 64;
/// Longest `?after=` wait.
const LONG_POLL: Duration = Duration::from_secs(1);
/// Members are asked only while someone read `/status` this recently.
const WATCHED: Duration = Duration::from_secs(15);

static INDEX_HTML: &[u8] = include_bytes!("../assets/dashboard.html");
static APP_JS: &[u8] = include_bytes!("../assets/dashboard.js");
static STYLE_CSS: &[u8] = include_bytes!("../assets/dashboard.css");

/// One member as the proxy last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub up: bool,
    /// Unix ms of its last answer.
    pub seen_ms: Option<u64>,
    pub error: Option<String>,
    pub report: Option<MemberReport>,
}

/// One change of the leader the proxy follows.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderChange {
    pub at_ms: u64,
    pub leader: Option<u64>,
    pub term: u64,
}

#[derive(Default)]
struct View {
    version: u64,
    members: BTreeMap<u64, MemberView>,
    timeline: VecDeque<LeaderChange>,
}

pub struct Dashboard {
    up: Arc<Upstreams>,
    fwd: Arc<Forwarder>,
    name: String,
    view: Mutex<View>,
    version: watch::Sender<u64>,
    started_ms: u64,
    /// Unix ms of the last `/status` read (0: never).
    viewed_ms: std::sync::atomic::AtomicU64,
}

impl Dashboard {
    /// Starts following the members; the tasks end with `stop`.
    pub fn start(up: Arc<Upstreams>, fwd: Arc<Forwarder>, name: String, stop: watch::Receiver<bool>) -> Arc<Self> {
        let members = up
            .members
            .values()
            .map(|m| {
                (
                    m.id,
                    MemberView {
                        id: m.id,
                        addr: m.addr.clone(),
                        up: false,
                        seen_ms: None,
                        error: Some("not asked yet".into()),
                        report: None,
                    },
                )
            })
            .collect();
        let d = Arc::new(Dashboard {
            up,
            fwd,
            name,
            view: Mutex::new(View {
                members,
                ..View::default()
            }),
            version: watch::channel(0).0,
            started_ms: protocol::unix_ms(),
            viewed_ms: Default::default(),
        });
        // With `http_addr` "off" nobody can look: ask nothing.
        if d.fwd.metrics.on() {
            tokio::spawn(follow_leader(Arc::downgrade(&d), stop.clone()));
            for id in d.up.members.keys().copied() {
                tokio::spawn(poll_member(Arc::downgrade(&d), id, stop.clone()));
            }
        }
        d
    }

    fn bump(&self, v: &mut View) {
        v.version += 1;
        self.version.send_replace(v.version);
    }

    /// The whole view as JSON (what `/status` answers).
    pub fn status(&self) -> serde_json::Value {
        self.viewed_ms
            .store(protocol::unix_ms(), std::sync::atomic::Ordering::Relaxed);
        let leader = self.up.view();
        let m = &self.fwd.metrics;
        m.pending.set(self.fwd.pending_in_use() as i64);
        m.connections.set(self.fwd.guard.stats().connections as i64);
        let v = self.view.lock().expect("view lock");
        serde_json::json!({
            "version": v.version,
            "now_ms": protocol::unix_ms(),
            "proxy": {
                "name": self.name,
                "started_ms": self.started_ms,
                "counters": m.totals(),
                "series": m.series(),
                "recording": m.on(),
            },
            "leader": leader.leader,
            "term": leader.term,
            "members": v.members.values().collect::<Vec<_>>(),
            "timeline": v.timeline,
        })
    }

    /// `/readyz`: a leader is known and answers MemberStatus as leader.
    async fn ready(&self) -> Result<String, String> {
        let leader = self.up.leader().ok_or("no leader known")?;
        match ask(&self.up, leader).await {
            Ok(r) if r.role == "leader" => Ok(format!("leader {leader} answers")),
            Ok(r) => Err(format!("member {leader} answers as {}", r.role)),
            Err(e) => Err(format!("leader {leader}: {e}")),
        }
    }
}

async fn ask(up: &Upstreams, id: u64) -> Result<MemberReport, String> {
    let frame = codec::encode(&Envelope::stale(ApiRequest::MemberStatus)).map_err(|e| e.to_string())?;
    let body = tokio::time::timeout(ASK_TIMEOUT, up.call_raw(id, &frame))
        .await
        .map_err(|_| format!("no answer within {} ms", ASK_TIMEOUT.as_millis()))?
        .map_err(|e| e.to_string())?;
    match codec::decode::<Answer>(&body, up.limit) {
        Ok(Ok(Reply::Member(r))) => Ok(*r),
        Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn poll_member(d: Weak<Dashboard>, id: u64, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(dash) = d.upgrade() else { return };
        // Nobody looking: ask nothing (the first look wakes the polls, and
        // the page shows "seen ... ago" until their answers arrive).
        let viewed = dash.viewed_ms.load(std::sync::atomic::Ordering::Relaxed);
        if protocol::unix_ms().saturating_sub(viewed) > WATCHED.as_millis() as u64 {
            continue;
        }
        let res = ask(&dash.up, id).await;
        if let Ok(r) = &res {
            // A member's own word on the leader is news to the watchers too.
            dash.up.observe(r.leader, r.term);
        }
        let mut v = dash.view.lock().expect("view lock");
        let Some(m) = v.members.get_mut(&id) else { return };
        let shape = |m: &MemberView| {
            let r = m.report.as_ref();
            (m.up, r.map(|r| (r.role.clone(), r.leader, r.term)))
        };
        let before = shape(m);
        match res {
            Ok(r) => {
                m.up = true;
                m.seen_ms = Some(protocol::unix_ms());
                m.error = None;
                m.report = Some(r);
            }
            Err(e) => {
                m.up = false;
                m.error = Some(e);
                if let Some(r) = m.report.as_mut() {
                    r.role = "unreachable".into();
                }
            }
        }
        // Waiting pages hear of what a person would notice at once; the
        // figures reach them within the long poll's second anyway.
        if shape(m) != before {
            dash.bump(&mut v);
        }
    }
}

async fn follow_leader(d: Weak<Dashboard>, mut stop: watch::Receiver<bool>) {
    let Some(mut views) = d.upgrade().map(|d| d.up.subscribe()) else {
        return;
    };
    let mut last = None;
    loop {
        let now = *views.borrow_and_update();
        if now.leader.is_some() && now.leader != last {
            let Some(dash) = d.upgrade() else { return };
            if dash.fwd.metrics.on() && last.is_some() {
                dash.fwd.metrics.leader_changes.inc();
            }
            let mut v = dash.view.lock().expect("view lock");
            if v.timeline.len() == TIMELINE {
                v.timeline.pop_front();
            }
            v.timeline.push_back(LeaderChange {
                at_ms: protocol::unix_ms(),
                leader: now.leader,
                term: now.term,
            });
            dash.bump(&mut v);
            last = now.leader;
        }
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The proxy's HTTP routes.
pub fn handler(d: Weak<Dashboard>) -> http::Handler {
    http::handler(move |req: Request| {
        let d = d.upgrade();
        async move {
            let Some(d) = d else {
                return http::error(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the proxy is stopping");
            };
            route(&d, req).await
        }
    })
}

async fn route(d: &Dashboard, req: Request) -> Response {
    let known = [
        "/",
        "/dashboard.js",
        "/dashboard.css",
        "/livez",
        "/readyz",
        "/status",
        "/metrics",
    ];
    if req.method != Method::GET && req.method != Method::HEAD {
        return if known.contains(&req.path.as_str()) {
            http::method_not_allowed(&req, "GET")
        } else {
            http::not_found(&req)
        };
    }
    match req.path.as_str() {
        "/" | "/index.html" => http::asset("dashboard.html", INDEX_HTML),
        "/dashboard.js" => http::asset("dashboard.js", APP_JS),
        "/dashboard.css" => http::asset("dashboard.css", STYLE_CSS),
        "/livez" => http::json(StatusCode::OK, &serde_json::json!({ "ok": true })),
        "/readyz" => match d.ready().await {
            Ok(why) => http::json(StatusCode::OK, &serde_json::json!({ "ok": true, "reason": why })),
            Err(why) => http::error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why),
        },
        "/status" => {
            if let Some(after) = req.param("after") {
                let Ok(after) = after.parse::<u64>() else {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "bad_param",
                        format!("parameter `after`: {after:?} is not a version number"),
                    );
                };
                let mut rx = d.version.subscribe();
                let _ = tokio::time::timeout(LONG_POLL, rx.wait_for(|v| *v > after)).await;
            }
            http::json(StatusCode::OK, &d.status())
        }
        "/metrics" => {
            let m = &d.fwd.metrics;
            m.pending.set(d.fwd.pending_in_use() as i64);
            m.connections.set(d.fwd.guard.stats().connections as i64);
            http::metrics(&m.registry)
        }
        _ => http::not_found(&req),
    }
}
