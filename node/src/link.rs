//! Links on the node: the link `share` and `link` print for a file (this
//! node's proxies and the fingerprint of its CA certificate), and what a
//! command given a link (`get LINK`, `login --link`, `register --link`)
//! does before it connects: check the CA certificate against the link's
//! fingerprint, use the link's proxies, and on a home without a
//! configuration file keep that network (HOME/ca.pem, HOME/config.json).
//! The format itself is `protocol::link`.

use std::path::{Path, PathBuf};

use protocol::{
    ids::FileId,
    link::{CaFingerprint, Link, LinkError, MAX_PROXIES},
    tracker_api::{Reply, Request},
};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::json;

use crate::{
    cli::{Command, NetworkArgs},
    commands::{emit, logged_in, CommandError},
    home::Home,
};

/// The largest CA file read (a certificate is about 1 KiB).
const MAX_CA_FILE: u64 = 1 << 20;

/// Why a link could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum LinkFailure {
    #[error(transparent)]
    Bad(#[from] LinkError),
    /// The CA certificate is not the one the link names: nothing was sent.
    #[error(
        "bad link: field `ca`: the link names the CA {link}, but {path} has {file}; not connecting \
         (give the CA certificate of the link's network with --ca FILE)"
    )]
    CaMismatch {
        path: PathBuf,
        file: CaFingerprint,
        link: CaFingerprint,
    },
    #[error("CA certificate {path}: {message}")]
    Ca { path: PathBuf, message: String },
    /// The network registered the link's id under another name or size.
    #[error("bad link: field `{field}`: the link says {link}, but file {id} is {found}")]
    Differs {
        field: &'static str,
        id: FileId,
        link: String,
        found: String,
    },
    #[error("--ca goes with a link (`get LINK --ca FILE`, `login USER --link LINK --ca FILE`)")]
    CaWithoutLink,
    #[error("{path}: {source}")]
    Save { path: PathBuf, source: std::io::Error },
}

impl LinkFailure {
    /// The stable code (`--json`): `bad_link` (a malformed link, or one
    /// whose name or size is not the file's), `ca_mismatch` (the CA
    /// certificate is not the link's), `config` (the CA file cannot be
    /// used), `usage`, `io`.
    pub fn code(&self) -> &'static str {
        match self {
            LinkFailure::Bad(_) | LinkFailure::Differs { .. } => "bad_link",
            LinkFailure::CaMismatch { .. } => "ca_mismatch",
            LinkFailure::Ca { .. } => "config",
            LinkFailure::CaWithoutLink => "usage",
            LinkFailure::Save { .. } => "io",
        }
    }
}

/// The certificates of a PEM file, read under a size bound.
fn ca_certs(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), LinkFailure> {
    let ca = |message: String| LinkFailure::Ca {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| ca(e.to_string()))?;
    if meta.len() > MAX_CA_FILE {
        return Err(ca(format!("{} bytes, over the limit of {MAX_CA_FILE}", meta.len())));
    }
    let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ca("no certificate in the file".into()));
    }
    Ok((pem, certs))
}

/// The fingerprint links carry for the CA file at `path`: that of its
/// first certificate.
pub fn ca_fingerprint(path: &Path) -> Result<CaFingerprint, LinkFailure> {
    let (_, certs) = ca_certs(path)?;
    Ok(CaFingerprint::of_der(&certs[0]))
}

/// The link of a file on this node's network: its proxies (the first
/// [`MAX_PROXIES`]) and the fingerprint of `ca`.
pub fn link_for(home: &Home, ca: CaFingerprint, id: FileId, name: &str, size: u64) -> Link {
    Link {
        id,
        name: name.to_owned(),
        size,
        proxies: home.config.proxies.iter().take(MAX_PROXIES).cloned().collect(),
        ca,
    }
}

/// The fingerprint of this home's CA certificate, for the links of
/// `share`; on a terminal, a warning when the links name only loopback
/// proxies (useless on another machine).
pub fn home_fingerprint(home: &Home, json: bool) -> Result<CaFingerprint, CommandError> {
    let ca = ca_fingerprint(&home.config.ca_cert)?;
    let loopback = |p: &String| {
        protocol::net::split_host_port(p)
            .is_ok_and(|(h, _)| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
    };
    if !json && home.config.proxies.iter().all(loopback) {
        eprintln!(
            "note: the links name loopback proxies only ({}); for a friend on another machine, list the \
             proxies' public addresses in `proxies` of the configuration",
            home.config.proxies.join(", ")
        );
    }
    Ok(ca)
}

/// The link a command was given, with its `--ca`: `get LINK`,
/// `register`/`login --link LINK`. `--ca` without a link is refused.
fn given(command: &Command) -> Result<Option<(&str, Option<&Path>)>, LinkFailure> {
    match command {
        Command::Get { id_or_name, ca, .. } if protocol::link::looks_like_link(id_or_name) => {
            Ok(Some((id_or_name, ca.as_deref())))
        }
        Command::Get { ca: Some(_), .. } => Err(LinkFailure::CaWithoutLink),
        Command::Register {
            network: NetworkArgs { link: Some(link), ca },
            ..
        }
        | Command::Login {
            network: NetworkArgs { link: Some(link), ca },
            ..
        } => Ok(Some((link, ca.as_deref()))),
        _ => Ok(None),
    }
}

/// Before a command given a link connects anywhere: parses the link,
/// checks the CA certificate (`--ca`, else the configured `ca_cert`)
/// against its `ca` field (the file must hold exactly that one
/// certificate), and points the command at the link's proxies. A home
/// without a configuration file (no `--config`, no HOME/config.json)
/// keeps the network: the certificate is copied to HOME/ca.pem and
/// HOME/config.json lists the link's proxies, so that `seed`, `search`
/// and later commands reach the same network. A home with a
/// configuration is not changed: the link's proxies serve this command.
pub fn prepare(home: &mut Home, command: &Command, explicit_config: bool, json: bool) -> Result<(), LinkFailure> {
    let Some((text, ca)) = given(command)? else {
        return Ok(());
    };
    let link = Link::parse(text)?;
    let path = ca.map_or_else(|| home.config.ca_cert.clone(), Path::to_path_buf);
    let (pem, certs) = ca_certs(&path)?;
    let found: Vec<CaFingerprint> = certs.iter().map(|c| CaFingerprint::of_der(c)).collect();
    if found.len() > 1 {
        return Err(LinkFailure::Ca {
            path,
            message: format!(
                "holds {} certificates; a link pins one CA: give --ca a file with the cluster's CA certificate alone",
                found.len()
            ),
        });
    }
    if found[0] != link.ca {
        return Err(LinkFailure::CaMismatch {
            path,
            file: found[0],
            link: link.ca,
        });
    }
    home.config.proxies = link.proxies.clone();
    let config_path = home.dir.join("config.json");
    if explicit_config || config_path.exists() {
        home.config.ca_cert = path;
        return Ok(());
    }
    let save = |path: &Path| {
        let path = path.to_owned();
        move |source| LinkFailure::Save { path, source }
    };
    let dir = std::fs::canonicalize(&home.dir).map_err(save(&home.dir))?;
    let ca_home = dir.join("ca.pem");
    protocol::durable::write(&ca_home, &pem, 0o644).map_err(save(&ca_home))?;
    let config = json!({ "proxies": link.proxies, "ca_cert": ca_home });
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    protocol::durable::write(&config_path, text.as_bytes(), 0o644).map_err(save(&config_path))?;
    home.config.ca_cert = ca_home;
    tracing::info!(proxies = ?link.proxies, ca = %link.ca, "kept the link's network in config.json");
    if !json {
        eprintln!(
            "this home now reaches the link's network ({}): saved in {}",
            link.proxies.join(", "),
            config_path.display()
        );
    }
    Ok(())
}

/// The link named by `get`'s argument, if it is one.
pub fn in_get(id_or_name: &str) -> Result<Option<Link>, LinkFailure> {
    if protocol::link::looks_like_link(id_or_name) {
        Ok(Some(Link::parse(id_or_name)?))
    } else {
        Ok(None)
    }
}

/// Whether a file's name and size are the link's.
pub fn check_file(link: &Link, name: &str, size: u64) -> Result<(), LinkFailure> {
    if name != link.name {
        return Err(LinkFailure::Differs {
            field: "name",
            id: link.id,
            link: format!("{:?}", link.name),
            found: format!("named {name:?}"),
        });
    }
    if size != link.size {
        return Err(LinkFailure::Differs {
            field: "size",
            id: link.id,
            link: format!("{} bytes", link.size),
            found: format!("{size} bytes"),
        });
    }
    Ok(())
}

/// Checks the link's name and size against what the network registered
/// under its id (before a download is handed to the daemon).
pub async fn check_registered(home: &Home, link: &Link) -> Result<(), CommandError> {
    let (client, _) = logged_in(home)?;
    let reply = client
        .call(Request::GetOwners {
            file_id: link.id,
            cursor: None,
            limit: 1,
        })
        .await;
    client.close().await;
    match reply? {
        Reply::Owners { file, .. } => Ok(check_file(link, &file.name, file.size)?),
        _ => Err(CommandError::Tracker(crate::tracker::TrackerError::Unexpected(
            "get-owners",
        ))),
    }
}

/// `quorrent link ID_OR_NAME`: the link of one of this node's files (owned
/// or partly downloaded), from the state file; text: the link alone.
pub fn print(home: &Home, id_or_name: &str, json: bool) -> Result<(), CommandError> {
    let state = home.state()?;
    let by_id = (id_or_name.len() == 64)
        .then(|| id_or_name.parse::<FileId>().ok())
        .flatten();
    let mut hits: Vec<(FileId, &str, u64)> = state
        .files
        .iter()
        .filter_map(|(hex, rec)| Some((hex.parse::<FileId>().ok()?, rec.name.as_str(), rec.size)))
        .filter(|(id, name, _)| match by_id {
            Some(want) => *id == want,
            None => *name == id_or_name,
        })
        .collect();
    let (id, name, size) = match hits.len() {
        0 => return Err(CommandError::NotHere(id_or_name.to_owned())),
        1 => hits.remove(0),
        _ => {
            return Err(CommandError::Ambiguous {
                name: id_or_name.to_owned(),
                ids: hits.iter().map(|h| h.0.to_hex()).collect::<Vec<_>>().join(", "),
            })
        }
    };
    let link = link_for(home, ca_fingerprint(&home.config.ca_cert)?, id, name, size).to_string();
    emit(
        json,
        json!({ "file_id": id.to_hex(), "name": name, "size": size, "link": link }),
        || link.clone(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn command(args: &[&str]) -> Command {
        crate::cli::Cli::parse_from(std::iter::once("quorrent").chain(args.iter().copied())).command
    }

    #[test]
    fn prepare_checks_the_ca_and_a_fresh_home_keeps_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        protocol::tls::generate(&certs, &dir.path().join("ca"), &["proxy-1".into()], &[]).unwrap();
        let ca = certs.join("ca.pem");
        let ca_arg = ca.to_str().unwrap();
        let link = Link {
            id: FileId([1; 32]),
            name: "a.bin".into(),
            size: 3,
            proxies: vec!["192.0.2.1:7400".into()],
            ca: ca_fingerprint(&ca).unwrap(),
        }
        .to_string();
        let mut home = Home::open(Some(dir.path().join("h")), None).unwrap();

        let e = prepare(&mut home, &command(&["get", "x.bin", "--ca", ca_arg]), false, true).unwrap_err();
        assert!(matches!(e, LinkFailure::CaWithoutLink), "{e}");
        // A file of two certificates pins nothing: refused.
        let pem = std::fs::read(&ca).unwrap();
        let two = dir.path().join("two.pem");
        std::fs::write(&two, [pem.clone(), pem].concat()).unwrap();
        let e = prepare(
            &mut home,
            &command(&["get", &link, "--ca", two.to_str().unwrap()]),
            false,
            true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("holds 2 certificates"), "{e}");
        // Another CA: refused naming the field and both fingerprints.
        let other = dir.path().join("other");
        protocol::tls::generate(&other, &dir.path().join("other-ca"), &[], &[]).unwrap();
        let other_ca = other.join("ca.pem");
        let e = prepare(
            &mut home,
            &command(&["login", "bob", "--link", &link, "--ca", other_ca.to_str().unwrap()]),
            false,
            true,
        )
        .unwrap_err();
        assert_eq!(e.code(), "ca_mismatch");
        let fp = ca_fingerprint(&other_ca).unwrap().to_string();
        assert!(
            e.to_string().contains("field `ca`") && e.to_string().contains(&fp),
            "{e}"
        );
        assert!(!home.dir.join("config.json").exists());

        // The right CA: the link's proxies, kept in the fresh home.
        prepare(&mut home, &command(&["get", &link, "--ca", ca_arg]), false, true).unwrap();
        assert_eq!(home.config.proxies, vec!["192.0.2.1:7400".to_string()]);
        let again = Home::open(Some(dir.path().join("h")), None).unwrap();
        assert_eq!(again.config.proxies, vec!["192.0.2.1:7400".to_string()]);
        assert_eq!(
            ca_fingerprint(&again.config.ca_cert).unwrap(),
            ca_fingerprint(&ca).unwrap()
        );
        // Now configured: a later link is checked against HOME/ca.pem and
        // leaves config.json alone.
        let before = std::fs::read(again.dir.join("config.json")).unwrap();
        let mut home = again;
        prepare(&mut home, &command(&["get", &link]), false, true).unwrap();
        assert_eq!(std::fs::read(home.dir.join("config.json")).unwrap(), before);
    }
}
