//! The recorded history: one [`Op`] per client operation, with when it was
//! invoked, when it completed and what came back. Workers write these as
//! JSON lines; the checker reads them.
//!
//! Keys are small integers so that operations conflict: files `0..files`
//! (named [`file_name`]), peers `0..clients` (client `i` owns peer `i`),
//! shared user names `0..users` (named [`user_name`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The name of file `k` of the key space.
pub fn file_name(k: u32) -> String {
    format!("chaos-file-{k:02}")
}

/// The name of shared user `k` (contended Register and Login).
pub fn user_name(k: u32) -> String {
    format!("chaos-user-{k}")
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Call {
    /// Register a shared user name (always with that user's password).
    Register {
        user: u32,
    },
    /// Log in as a shared user with its password (`good`) or a wrong one.
    Login {
        user: u32,
        good: bool,
    },
    /// Peer `peer` owns file `file`.
    Own {
        file: u32,
        peer: u32,
    },
    /// Peer `peer` no longer owns file `file`.
    Disown {
        file: u32,
        peer: u32,
    },
    /// All owners of `file` (linearizable read).
    GetOwners {
        file: u32,
    },
    /// Search by name text (linearizable read); `files` are the keys whose
    /// names contain the text, i.e. the only ones it can return.
    Search {
        text: String,
        files: Vec<u32>,
    },
    /// Announce or heartbeat of the client's own peer: recorded for the
    /// report, not part of the model (liveness is soft state).
    Announce {
        peer: u32,
    },
    Heartbeat {
        peer: u32,
    },
}

impl Call {
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Call::Register { .. } | Call::Login { .. } | Call::Own { .. } | Call::Disown { .. } | Call::Announce { .. }
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Call::Register { .. } => "register",
            Call::Login { .. } => "login",
            Call::Own { .. } => "own",
            Call::Disown { .. } => "disown",
            Call::GetOwners { .. } => "get-owners",
            Call::Search { .. } => "search",
            Call::Announce { .. } => "announce",
            Call::Heartbeat { .. } => "heartbeat",
        }
    }
}

/// A definite answer (the operation took effect, or was refused by the
/// state machine, which is also an effect-free linearizable answer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ret {
    /// A write was applied.
    Done,
    /// Register: the name was taken.
    UserExists,
    /// Login: no such user or wrong password.
    BadCredentials,
    /// Disown or GetOwners of a file never registered.
    UnknownFile,
    /// GetOwners: the owning peers.
    Owners(BTreeSet<u32>),
    /// Search: each key file found, with its live-owner count.
    Files(Vec<(u32, u32)>),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Completed with this answer.
    Ok(Ret),
    /// Certainly not applied (refused before it reached the log).
    Fail(String),
    /// Timed out or lost: may or may not have been applied.
    Unknown(String),
}

/// One operation of one client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (process) that ran it; a client runs one op at a time.
    pub client: u32,
    /// CLOCK_MONOTONIC nanoseconds (shared by every process on the machine).
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub call: Call,
    pub outcome: Outcome,
}
