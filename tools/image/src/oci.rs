//! Writes an OCI image layout (image-spec v1.1) byte for byte the same for the same inputs: tar
//! entries sorted, owned by 0:0 with no user or group names, every mtime the commit's time, gzip
//! with no name and no time, JSON with sorted keys and no whitespace.

use crate::rootfs::{Node, Tree};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::{io::Write, path::Path};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A content-addressed blob: its bytes and their sha256.
pub struct Blob {
    pub data: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(data: Vec<u8>) -> Blob {
        let digest = format!("sha256:{:x}", Sha256::digest(&data));
        Blob { data, digest }
    }

    pub fn json(v: &Value) -> Blob {
        Blob::new(serde_json::to_vec(v).expect("JSON"))
    }

    /// An OCI descriptor of this blob.
    pub fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.data.len()})
    }
}

/// A layer: the compressed blob, and the digest of the uncompressed tar (the config's diff_id).
pub struct Layer {
    pub blob: Blob,
    pub diff_id: String,
}

/// The tar of `tree`, every entry owned by 0:0, modified at `mtime`.
pub fn tar(tree: &Tree, mtime: u64) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in tree {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match node {
            Node::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Node::File { mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
        }
    }
    Ok(b.into_inner()?)
}

pub fn layer(tree: &Tree, mtime: u64) -> Result<Layer> {
    let tar = tar(tree, mtime)?;
    let diff_id = format!("sha256:{:x}", Sha256::digest(&tar));
    // No file name, mtime 0, "unknown" OS: the header says nothing about where it was made.
    let mut gz = flate2::GzBuilder::new().mtime(0).operating_system(255).write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    Ok(Layer { blob: Blob::new(gz.finish()?), diff_id })
}

/// Writes the layout (`oci-layout`, `index.json`, `blobs/sha256/*`) into `dir`, which must not
/// exist, and returns its files as a tree (for the archive).
pub fn write_layout(dir: &Path, blobs: &[&Blob], index: &Value) -> Result<Tree> {
    let mut files = Tree::new();
    files.insert("blobs".into(), Node::Dir { mode: 0o755 });
    files.insert("blobs/sha256".into(), Node::Dir { mode: 0o755 });
    for b in blobs {
        let hex = b.digest.trim_start_matches("sha256:");
        files.insert(format!("blobs/sha256/{hex}"), Node::File { mode: 0o644, data: b.data.clone() });
    }
    files.insert("oci-layout".into(), Node::File { mode: 0o644, data: serde_json::to_vec(&json!({"imageLayoutVersion": "1.0.0"}))? });
    files.insert("index.json".into(), Node::File { mode: 0o644, data: serde_json::to_vec(index)? });
    write_tree(dir, &files)?;
    Ok(files)
}

/// Writes `tree` as files under `dir`, with their modes.
pub fn write_tree(dir: &Path, tree: &Tree) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, node) in tree {
        let at = dir.join(path);
        let mode = match node {
            Node::Dir { mode } => {
                std::fs::create_dir_all(&at)?;
                mode
            }
            Node::File { mode, data } => {
                std::fs::write(&at, data).with_context(|| format!("write {}", at.display()))?;
                mode
            }
        };
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> Tree {
        let mut t = Tree::new();
        t.insert("etc".into(), Node::Dir { mode: 0o755 });
        t.insert("etc/passwd".into(), Node::File { mode: 0o644, data: b"root:x:0:0::/:/x\n".to_vec() });
        t
    }

    #[test]
    fn the_same_tree_gives_the_same_layer() {
        let (a, b) = (layer(&tree(), 1_700_000_000).unwrap(), layer(&tree(), 1_700_000_000).unwrap());
        assert_eq!(a.blob.digest, b.blob.digest);
        assert_eq!(a.diff_id, b.diff_id);
        assert_ne!(layer(&tree(), 1_700_000_001).unwrap().diff_id, a.diff_id, "the time is in the tar");
    }

    #[test]
    fn entries_are_root_owned_at_the_given_time_in_order() {
        let data = tar(&tree(), 42).unwrap();
        let mut ar = tar::Archive::new(data.as_slice());
        let entries: Vec<(String, u64, u64, u64, String)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let user = h.username().unwrap().unwrap_or_default().to_string();
                (e.path().unwrap().display().to_string(), h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap(), user)
            })
            .collect();
        assert_eq!(entries, [("etc/".into(), 0, 0, 42, String::new()), ("etc/passwd".into(), 0, 0, 42, String::new())]);
    }
}
