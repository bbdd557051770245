//! The command line of `quorrent` (see CLI.md, the contract): the argument
//! types, parsed with clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// quorrent: share, find and download files from many peers at once.
#[derive(Debug, Parser)]
#[command(name = "quorrent", version)]
pub struct Cli {
    /// Configuration file (JSON); default: HOME/config.json, else built-in
    /// defaults that reach the local cluster.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The node's home: key pair, session, state.
    #[arg(long, global = true, env = "QUORRENT_HOME")]
    pub home: Option<PathBuf>,
    /// Print one JSON value on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account.
    Register {
        user: String,
        /// Read the password from one line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Open a session (stored in the home).
    Login {
        user: String,
        /// Read the password from one line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// End the session on the tracker and locally.
    Logout,
    /// Chunk, hash and register files or folders as owned by this node
    /// (a folder is one item: its whole tree, empty folders included).
    Share {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// In a folder, read what a symbolic link points to instead of
        /// refusing the folder.
        #[arg(long)]
        follow_links: bool,
    },
    /// Find registered files by name.
    Search { text: String },
    /// Download a file from several owners at once, then seed it.
    Get {
        /// A 64-digit file id, an exact file name, or a `quorrent:` link
        /// (its network is used: see `--ca`).
        id_or_name: String,
        /// With a link: the cluster's CA certificate (PEM), checked against
        /// the link's `ca` fingerprint before any connection. Default: the
        /// configured `ca_cert` (a home without a configuration file:
        /// HOME/ca.pem).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Folder to put the file in (default: the storage folder).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Exit once downloaded and registered, instead of seeding.
        #[arg(long)]
        no_seed: bool,
        /// Neither announce this node as a partial owner while it
        /// downloads nor download from other partial owners (only from
        /// complete owners, as before partial owners existed).
        #[arg(long)]
        no_partial: bool,
        /// Of a folder, fetch only the files whose path inside it matches
        /// PATTERN (`*` any characters, `?` one; a folder's path selects
        /// all it holds); repeatable. The result is not seeded as the
        /// whole folder.
        #[arg(long, value_name = "PATTERN")]
        only: Vec<String>,
        /// Fetch the chunks in order, lowest first, so that the file
        /// (DIR/.quorrent/ID.part while it downloads) can be played or
        /// read from the start as it arrives.
        #[arg(long)]
        sequential: bool,
        #[command(flatten)]
        rates: RateArgs,
    },
    /// The daemon: serve every file owned or partly downloaded, and the
    /// HTTP API and web page (`http_addr`, default 127.0.0.1:7490), until
    /// stopped.
    #[command(alias = "daemon")]
    Seed {
        #[command(flatten)]
        rates: RateArgs,
    },
    /// Show or change the rate limits of the running daemon of the home,
    /// at once for the transfers under way (until it stops; lasting
    /// limits are `sharing.max_upload_rate` and
    /// `sharing.max_download_rate` of the configuration).
    Limits {
        /// New upload limit: a rate (e.g. 40MB/s) or `none`.
        #[arg(long, value_name = "RATE|none", value_parser = crate::rate::parse_limit)]
        up: Option<crate::rate::LimitArg>,
        /// New download limit: a rate (e.g. 40MB/s) or `none`.
        #[arg(long, value_name = "RATE|none", value_parser = crate::rate::parse_limit)]
        down: Option<crate::rate::LimitArg>,
    },
    /// Show the node id, the session and the cluster.
    Status,
    /// List the files this node owns or partly has (state, chunks held).
    List,
    /// Print the `quorrent:` link of one of this node's files, for a friend
    /// to `get`.
    Link {
        /// A 64-digit file id, or the name of one of this node's files.
        id_or_name: String,
    },
    /// Re-hash this node's data of a file against its manifest and report
    /// the bad chunks.
    Verify {
        /// A 64-digit file id, or the name of one of this node's files.
        id_or_name: String,
    },
    /// Stop owning a file: Disown on the tracker, forget it here (a
    /// running daemon of the home stops serving it); the data stays.
    Unshare {
        /// A 64-digit file id, or the name of one of this node's files.
        id_or_name: String,
    },
    /// Rebuild the state file from the manifests in the home and the data
    /// in the storage folder and in FOLDER... (re-hashed); a damaged state
    /// file is kept as state.json.corrupt-UNIXMS.
    Repair {
        /// More folders holding shared files or downloads (`get -o`).
        folders: Vec<PathBuf>,
    },
}

/// Reaching the network of a `quorrent:` link (`register`, `login`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NetworkArgs {
    /// Reach the network this link names (its proxies), after checking the
    /// CA certificate against its `ca` fingerprint; a home without a
    /// configuration file keeps that network in HOME/config.json.
    #[arg(long, value_name = "LINK")]
    pub link: Option<String>,
    /// With `--link`: the cluster's CA certificate (PEM). Default: the
    /// configured `ca_cert` (a home without a configuration file:
    /// HOME/ca.pem).
    #[arg(long, value_name = "FILE", requires = "link")]
    pub ca: Option<PathBuf>,
}

/// The rate limits of a command that sends and receives chunk data.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RateArgs {
    /// Send chunk data to other nodes at most this fast, over all
    /// connections: bytes per second, or with a unit, e.g. 40MB/s,
    /// 512KiB/s (B, kB, MB, GB, KiB, MiB, GiB). Overrides
    /// `sharing.max_upload_rate` of the configuration; default: no limit.
    #[arg(long, value_name = "RATE", value_parser = protocol::config::parse_byte_rate)]
    pub max_upload_rate: Option<u64>,
    /// Receive chunk data from other nodes at most this fast, over all
    /// downloads of the process (RATE as for --max-upload-rate).
    /// Overrides `sharing.max_download_rate`; default: no limit.
    #[arg(long, value_name = "RATE", value_parser = protocol::config::parse_byte_rate)]
    pub max_download_rate: Option<u64>,
}

impl Command {
    /// Whether the command runs long and logs to stderr as it goes.
    pub fn logs_to_stderr(&self) -> bool {
        matches!(self, Command::Seed { .. })
    }
}
