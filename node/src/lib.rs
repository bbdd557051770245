//! The quorrent node: its home (identity, session, state), the tracker
//! client, the peer server, the multi-peer downloader and the commands of
//! the `quorrent` command line.

pub mod cli;
pub mod commands;
pub mod download;
pub mod home;
pub mod peer_server;
pub mod rate;
pub mod store;
pub mod tracker;
