//! The commands about what this node holds: `list` (every file owned or
//! partly downloaded, from the state file), `verify` (re-hash the local
//! data against the manifest and report the bad chunks) and `unshare`
//! (stop owning a file: Disown on the tracker, forget it here; a running
//! daemon of the home does it, so it also stops serving it). A file is
//! named by its 64-digit id or by its name among this node's files.

use std::path::PathBuf;

use protocol::{content::Manifest, ids::FileId, tracker_api::Request};
use serde_json::json;

use crate::{
    commands::{emit, logged_in, CommandError},
    download,
    home::Home,
    human,
    state::FileRecord,
    store::HaveBits,
};

/// One of this node's files, with its manifest when there is one yet.
struct Local {
    id: FileId,
    rec: FileRecord,
    manifest: Option<Manifest>,
}

fn manifest_of(home: &Home, id: &FileId, rec: &FileRecord) -> Option<Manifest> {
    let path: PathBuf = match &rec.partial_in {
        Some(dir) => download::sidecar(dir, id, "manifest"),
        None => home.manifest_path(id),
    };
    let bytes = std::fs::read(path).ok()?;
    Manifest::decode_checked(&bytes, *id).ok()
}

fn all(home: &Home) -> Result<Vec<Local>, CommandError> {
    let state = home.state()?;
    Ok(state
        .files
        .into_iter()
        .filter_map(|(hex, rec)| {
            let id: FileId = hex.parse().ok()?;
            let manifest = manifest_of(home, &id, &rec);
            Some(Local { id, rec, manifest })
        })
        .collect())
}

/// The file named by `id_or_name` among this node's files.
fn find(home: &Home, id_or_name: &str) -> Result<Local, CommandError> {
    let files = all(home)?;
    if id_or_name.len() == 64 {
        if let Ok(id) = id_or_name.parse::<FileId>() {
            return files
                .into_iter()
                .find(|f| f.id == id)
                .ok_or_else(|| CommandError::NotHere(id_or_name.to_owned()));
        }
    }
    let mut named: Vec<Local> = files.into_iter().filter(|f| f.rec.name == id_or_name).collect();
    match named.len() {
        0 => Err(CommandError::NotHere(id_or_name.to_owned())),
        1 => Ok(named.remove(0)),
        _ => Err(CommandError::Ambiguous {
            name: id_or_name.to_owned(),
            ids: named.iter().map(|f| f.id.to_hex()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Chunks verified locally: all of a complete file, the recorded set of a
/// partial one.
fn have_of(f: &Local, m: &Manifest) -> HaveBits {
    let n = m.chunks.len() as u32;
    match &f.rec.partial_in {
        Some(dir) => download::load_have(dir, &f.id, n),
        None => HaveBits::full(n),
    }
}

/// `quorrent list`.
pub fn list(home: &Home, json: bool) -> Result<(), CommandError> {
    let files = all(home)?;
    let rows: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let (chunks, have) = match &f.manifest {
                Some(m) => (m.chunks.len() as u32, have_of(f, m).count()),
                None => (0, 0),
            };
            let state = if f.rec.partial_in.is_some() {
                "partial"
            } else {
                "complete"
            };
            json!({
                "file_id": f.id.to_hex(),
                "name": f.rec.name,
                "size": f.rec.size,
                "state": state,
                "chunks": chunks,
                "have": have,
                "path": f.rec.path,
            })
        })
        .collect();
    let value = serde_json::Value::Array(rows.clone());
    emit(json, value, || {
        if rows.is_empty() {
            return "no files here (share one with `quorrent share PATH`)".into();
        }
        rows.iter()
            .map(|r| {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                format!(
                    "{:<8}  {}  {:>10}  {}/{}  {}",
                    r["state"].as_str().unwrap_or(""),
                    r["file_id"].as_str().unwrap_or(""),
                    human::size(n("size")),
                    n("have"),
                    human::count(n("chunks"), "chunk", "chunks"),
                    r["name"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// `quorrent verify ID_OR_NAME`: the chunks held locally, re-hashed.
pub async fn verify(home: &Home, id_or_name: &str, json: bool) -> Result<(), CommandError> {
    let f = find(home, id_or_name)?;
    let m = f
        .manifest
        .clone()
        .ok_or_else(|| CommandError::NotHere(format!("{id_or_name} (no manifest yet)")))?;
    let path = f.rec.path.clone();
    let claimed = have_of(&f, &m);
    let checked = claimed.count();
    let m2 = m.clone();
    let good = tokio::task::spawn_blocking(move || -> std::io::Result<HaveBits> {
        let data = crate::data::Data::open(&m2, &path, false)?;
        Ok(download::reverify(&m2, &data, &claimed))
    })
    .await
    .map_err(|_| CommandError::Stopped("verify"))?
    .map_err(|source| CommandError::Folder {
        path: f.rec.path.clone(),
        source,
    })?;
    let claimed = have_of(&f, &m);
    let bad: Vec<u32> = (0..claimed.len()).filter(|&c| claimed.get(c) && !good.get(c)).collect();
    let value = json!({
        "file_id": f.id.to_hex(),
        "name": f.rec.name,
        "chunks": m.chunks.len(),
        "checked": checked,
        "bad": bad,
    });
    emit(json, value, || {
        let total = human::count_usize(m.chunks.len(), "chunk", "chunks");
        if bad.is_empty() {
            format!("{}: {checked} of {total} checked, all good", f.rec.name)
        } else {
            let verb = if bad.len() == 1 { "is" } else { "are" };
            format!(
                "{}: {} of {} {verb} bad: {:?} (run `quorrent get {}` to fetch {} again)",
                f.rec.name,
                bad.len(),
                human::count(checked, "checked chunk", "checked chunks"),
                bad,
                f.id.to_hex(),
                if bad.len() == 1 { "it" } else { "them" }
            )
        }
    });
    Ok(())
}

/// `quorrent unshare ID_OR_NAME`.
pub async fn unshare(home: &Home, id_or_name: &str, json: bool) -> Result<(), CommandError> {
    let f = find(home, id_or_name)?;
    let hex = f.id.to_hex();
    if let Some(link) = crate::daemon::client::running(home).await {
        // The daemon serves it: it disowns, stops serving and forgets.
        link.delete(&format!("/api/files/{hex}")).await?;
    } else {
        let (client, _) = logged_in(home)?;
        let r = client
            .call(Request::Disown {
                peer_id: home.identity.peer_id,
                file_id: f.id,
            })
            .await;
        client.close().await;
        r?;
        tokio::task::block_in_place(|| {
            home.update_state(|s| {
                s.files.remove(&hex);
            })
        })?;
        let _ = std::fs::remove_file(home.manifest_path(&f.id));
    }
    emit(json, json!({ "file_id": hex, "name": f.rec.name }), || {
        format!(
            "{}: no longer shared by this node (its data stays at {})",
            f.rec.name,
            f.rec.path.display()
        )
    });
    Ok(())
}
