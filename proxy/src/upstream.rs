//! One long-lived QUIC connection per tracker member, dialled lazily and
//! replaced when it breaks; requests are multiplexed on it as streams.
//! Also holds the proxy's belief about who leads.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use protocol::{codec, config::MemberAddr};
use tokio::sync::watch;

/// Who leads, as far as this proxy knows, and in which term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderView {
    pub leader: Option<u64>,
    pub term: u64,
}

pub struct Member {
    pub id: u64,
    pub addr: String,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
}

pub struct Upstreams {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    pub members: BTreeMap<u64, Arc<Member>>,
    pub limit: usize,
    view: watch::Sender<LeaderView>,
    /// Serialises updates of the view.
    update: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("member {0} is not configured")]
    Unknown(u64),
    #[error("member {id}: {msg}")]
    Connect { id: u64, msg: String },
    #[error("member {id}: {source}")]
    Call { id: u64, source: codec::CallError },
}

impl Upstreams {
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig, trackers: &[MemberAddr], limit: usize) -> Self {
        let members = trackers
            .iter()
            .map(|m| {
                (
                    m.id,
                    Arc::new(Member {
                        id: m.id,
                        addr: m.api.clone(),
                        conn: Default::default(),
                    }),
                )
            })
            .collect();
        Upstreams {
            endpoint,
            client,
            members,
            limit,
            view: watch::channel(LeaderView::default()).0,
            update: Mutex::new(()),
        }
    }

    pub fn leader(&self) -> Option<u64> {
        self.view.borrow().leader
    }

    pub fn view(&self) -> LeaderView {
        *self.view.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<LeaderView> {
        self.view.subscribe()
    }

    /// Takes in what a member said about the leader. Newer terms win; in
    /// the same term a known leader is never replaced by "unknown".
    pub fn observe(&self, leader: Option<u64>, term: u64) {
        let _g = self.update.lock().expect("view lock");
        let cur = *self.view.borrow();
        let newer = term > cur.term || (term == cur.term && cur.leader.is_none() && leader.is_some());
        if newer && (leader.is_none() || leader.is_some_and(|l| self.members.contains_key(&l))) {
            if leader != cur.leader {
                tracing::info!(?leader, term, "leader changed");
            }
            self.view.send_replace(LeaderView { leader, term });
        }
    }

    /// A follower named the leader: believe it for the current term
    /// unless the watchers already know better.
    pub fn observe_hint(&self, leader: u64, term: u64) {
        let _g = self.update.lock().expect("view lock");
        let cur = *self.view.borrow();
        if cur.term == term && cur.leader != Some(leader) && self.members.contains_key(&leader) {
            self.view.send_replace(LeaderView {
                leader: Some(leader),
                term,
            });
        }
    }

    /// Forgets a leader that failed us (its connection broke), unless a
    /// newer view has arrived meanwhile.
    pub fn suspect(&self, id: u64, term: u64) {
        let _g = self.update.lock().expect("view lock");
        let cur = *self.view.borrow();
        if cur.leader == Some(id) && cur.term == term {
            self.view.send_replace(LeaderView { leader: None, term });
        }
    }

    /// The live connection to member `id`, dialling it if needed.
    pub async fn conn(&self, id: u64) -> Result<quinn::Connection, UpstreamError> {
        let m = self.members.get(&id).ok_or(UpstreamError::Unknown(id))?;
        let mut slot = m.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let err = |msg: String| UpstreamError::Connect { id, msg };
        let addr = protocol::net::resolve(&m.addr)
            .await
            .map_err(|e| err(format!("resolve {}: {e}", m.addr)))?;
        let conn = self
            .endpoint
            .connect_with(self.client.clone(), addr, &format!("tracker-{id}"))
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends an encoded frame to member `id`, returns the raw answer body.
    pub async fn call_raw(&self, id: u64, frame: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        let conn = self.conn(id).await?;
        codec::call_raw_body(&conn, frame, self.limit)
            .await
            .map_err(|source| UpstreamError::Call { id, source })
    }
}
