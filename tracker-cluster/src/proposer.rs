//! Group commit: client writes wait in one bounded queue; a single task
//! takes everything that is waiting (up to `max_batch`) as one Raft entry,
//! so one log append and one fsync per member carry many writes. Up to
//! `max_in_flight` entries are being replicated at once; while they are,
//! new writes pile up and make the next entry bigger, which is what lets
//! throughput grow with the number of clients.
//!
//! `max_batch` bounds an entry's weight, not its count of requests: an
//! OwnMany counts one per file, so an entry holds at most `max_batch`
//! files however they arrive (an entry of 1,024 OwnMany requests of 1,024
//! files would be some 100 MB, past the Raft frame limit).
//!
//! An entry proposed in one term is answered by openraft when it is
//! applied or when the log is cut back; an entry that a snapshot from the
//! next leader covers is neither, and its caller would wait for ever (the
//! chaos test found this: a leader cut off with writes in flight, caught
//! up by snapshot and elected again, served no write at all). So a batch
//! whose term has passed is answered "unavailable": it may still be
//! applied, and the client's retry with the same write id gets its one
//! answer whichever way it went.

use std::sync::Arc;

use openraft::error::{ClientWriteError as OpenWriteError, RaftError as OpenRaftError};
use protocol::{
    config::Quotas,
    tracker_api::{Answer, ApiError},
};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::{
    clock::Clock,
    registry::{Batch, Op, Write},
    typ::Raft,
};

type Job = (Write, oneshot::Sender<Answer>);

/// The handle the API uses to propose writes.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Job>,
}

impl Proposer {
    /// Starts the batching task.
    /// Every batch carries `quotas` (see [`Batch`] for why).
    pub fn start(
        raft: Raft,
        queue: usize,
        max_batch: usize,
        max_in_flight: usize,
        quotas: Quotas,
        clock: Clock,
        batch_writes: Option<prometheus_client::metrics::histogram::Histogram>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(run(
            raft,
            rx,
            max_batch.max(1),
            max_in_flight.max(1),
            quotas,
            clock,
            batch_writes,
        ));
        Proposer { tx }
    }

    /// Proposes one write and waits for its answer once committed and
    /// applied. A full queue answers "overloaded" at once.
    pub async fn propose(&self, write: Write) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send((write, tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ApiError::Unavailable("shutting down".into()),
        })?;
        rx.await
            .unwrap_or_else(|_| Err(ApiError::Unavailable("write dropped during shutdown".into())))
    }
}

/// What a write counts for against `max_batch`.
fn weight(w: &Write) -> usize {
    match &w.op {
        Op::OwnMany { files, .. } => files.len().max(1),
        // A Pool touches one map entry per content: 64 weigh one Own.
        Op::Pool { contents, .. } => contents.len().div_ceil(64).max(1),
        _ => 1,
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    max_in_flight: usize,
    quotas: Quotas,
    clock: Clock,
    batch_writes: Option<prometheus_client::metrics::histogram::Histogram>,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    // A job taken from the queue that did not fit in the last entry.
    let mut held: Option<Job> = None;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut load = weight(&first.0);
        let mut jobs = vec![first];
        while load < max_batch {
            match rx.try_recv() {
                Ok(job) if load + weight(&job.0) > max_batch => {
                    held = Some(job);
                    break;
                }
                Ok(job) => {
                    load += weight(&job.0);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        if let Some(h) = &batch_writes {
            h.observe(load as f64);
        }
        let raft = raft.clone();
        let term = raft.metrics().borrow().current_term;
        let now_ms = clock.now_ms();
        tokio::spawn(async move {
            let (writes, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
            let n = writes.len();
            let batch = Batch { now_ms, writes, quotas };
            let written = tokio::select! {
                r = raft.client_write(batch) => r,
                _ = term_passed(&raft, term) => {
                    for reply in replies {
                        let _ = reply.send(Err(ApiError::Unavailable(
                            "the leader lost its term while the write was in flight; it may still be applied, \
                             retry with the same write id"
                                .into(),
                        )));
                    }
                    drop(permit);
                    return;
                }
            };
            match written {
                Ok(resp) if resp.data.len() == n => {
                    for (reply, answer) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(answer);
                    }
                }
                Ok(resp) => {
                    tracing::error!(want = n, got = resp.data.len(), "state machine answered a batch short");
                    for reply in replies {
                        let _ = reply.send(Err(ApiError::Internal));
                    }
                }
                Err(e) => {
                    let err = write_error(&raft, e);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Resolves once this member's term is past `term` (or Raft stopped).
async fn term_passed(raft: &Raft, term: u64) {
    let mut m = raft.metrics();
    loop {
        if m.borrow_and_update().current_term > term {
            return;
        }
        if m.changed().await.is_err() {
            return;
        }
    }
}

/// Maps openraft's write error to what crosses the wire.
fn write_error(raft: &Raft, e: OpenRaftError<u64, OpenWriteError<u64, crate::typ::Member>>) -> ApiError {
    match e {
        OpenRaftError::APIError(OpenWriteError::ForwardToLeader(f)) => ApiError::NotLeader {
            leader: f.leader_id,
            addr: f.leader_node.map(|n| n.api),
        },
        OpenRaftError::APIError(OpenWriteError::ChangeMembershipError(e)) => {
            tracing::error!(error = %e, "unexpected membership error on a write");
            ApiError::Internal
        }
        OpenRaftError::Fatal(e) => {
            tracing::error!(error = %e, "raft stopped");
            let _ = raft;
            ApiError::Unavailable("this tracker is shutting down".into())
        }
    }
}
