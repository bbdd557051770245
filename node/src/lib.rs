//! The quorrent node: its home (identity, session, the locked state file
//! and its repair), the tracker client, the peer server, the multi-peer
//! downloader, the daemon (HTTP API, web page, metrics) and the commands
//! of the `quorrent` command line.

pub mod cli;
pub mod commands;
pub mod daemon;
pub mod data;
pub mod download;
pub mod home;
pub mod human;
pub mod link;
pub mod local;
pub mod peer_server;
pub mod rate;
pub mod repair;
pub mod state;
pub mod store;
pub mod tracker;
