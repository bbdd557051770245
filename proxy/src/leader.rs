//! Leader tracking: one long poll per member. Each member answers a
//! WatchLeader request as soon as its own view of (leader, term) differs
//! from the proxy's, so the proxy learns of a new leader within the time
//! the members need to elect it, not on the next failed request.

use std::{sync::Arc, time::Duration};

use protocol::{
    codec,
    tracker_api::{Answer, Envelope, Reply, Request},
};
use tokio::sync::watch;

use crate::upstream::Upstreams;

/// How long one long poll may wait on the member.
const POLL_MS: u32 = 3_000;
/// Pause after a failed poll before trying that member again.
const RETRY: Duration = Duration::from_millis(50);

pub fn spawn_watchers(up: Arc<Upstreams>, stop: watch::Receiver<bool>) {
    for id in up.members.keys().copied() {
        let up = up.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = watch_once(&up, id) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
}

async fn watch_once(up: &Upstreams, id: u64) {
    let view = up.view();
    let env = Envelope::stale(Request::WatchLeader {
        leader: view.leader,
        term: view.term,
        wait_ms: POLL_MS,
    });
    let Ok(frame) = codec::encode(&env) else { return };
    let res = tokio::time::timeout(Duration::from_millis(POLL_MS as u64 + 2_000), up.call_raw(id, &frame)).await;
    match res {
        Ok(Ok(body)) => match codec::decode::<Answer>(&body, up.limit) {
            Ok(Ok(Reply::Status(s))) => up.observe(s.leader, s.term),
            _ => tokio::time::sleep(RETRY).await,
        },
        Ok(Err(e)) => {
            tracing::debug!(member = id, error = %e, "watch failed");
            tokio::time::sleep(RETRY).await;
        }
        Err(_) => {}
    }
}
