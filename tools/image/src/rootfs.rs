//! The image's root filesystem: the operator binary, exactly the shared libraries `ldd` says it
//! loads, the CA certificates, a passwd/group naming uid 65532, the SBOM. Nothing else: no shell,
//! no package manager. Every file's bytes come from the build machine; every attribute (owner,
//! mode, time) is fixed by `oci::Layer`.

use anyhow::{bail, Context, Result};
use std::{collections::BTreeMap, path::Path, process::Command};

/// A file or directory in a layer: its path (relative, no leading slash) and its contents.
#[derive(Clone, Debug)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
}

/// The paths of one layer, sorted (a `BTreeMap`, so the tar is written in one order only).
pub type Tree = BTreeMap<String, Node>;

/// Where the operator's binary lives in the image (the entrypoint).
pub const ENTRYPOINT: &str = "/usr/local/bin/locall-operator";
/// Where the CA bundle goes: the first place rustls-native-certs (through openssl-probe) looks.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the SBOM goes inside the image.
pub const SBOM_PATH: &str = "/usr/share/doc/locall-operator/sbom.cdx.json";

const EXECUTABLE: u32 = 0o755;
const DATA: u32 = 0o644;

/// A shared library the binary loads, and where it goes in the image.
#[derive(Clone, Debug)]
pub struct Library {
    /// The path the dynamic loader uses (as `ldd` prints it); the same path in the image.
    pub path: String,
}

/// The libraries `ldd` lists for `binary`: the loader and every `name => /path`; the vDSO is the
/// kernel's and has no file. A library `ldd` cannot find is an error.
pub fn libraries(binary: &Path) -> Result<Vec<Library>> {
    let out = Command::new("ldd").arg(binary).output().context("run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: ldd says "not a dynamic executable" and exits 1.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(vec![]);
        }
        bail!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<Library>> {
    let mut libs = vec![];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or_default(),
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(Library { path: path.to_string() });
        }
    }
    libs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(libs)
}

/// The base layer: what rarely changes (the C runtime, CA certificates, users).
pub fn base(libs: &[Library]) -> Result<Tree> {
    let mut t = Tree::new();
    for lib in libs {
        // Read through symlinks (on a merged-/usr system /lib64/ld-linux-x86-64.so.2 is one):
        // the image holds a regular file at the path the loader asks for.
        let data = std::fs::read(&lib.path).with_context(|| format!("read {}", lib.path))?;
        file(&mut t, &lib.path, EXECUTABLE, data);
    }
    let ca = std::fs::read(CA_BUNDLE).with_context(|| format!("read the build machine's CA bundle {CA_BUNDLE}"))?;
    if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
        bail!("{CA_BUNDLE} holds no certificate");
    }
    file(&mut t, CA_BUNDLE, DATA, ca);
    // Users and groups by name for whatever asks (the image runs as 65532 by number); no login
    // shell exists, so none is named.
    file(
        &mut t,
        "/etc/passwd",
        DATA,
        b"root:x:0:0:root:/root:/nonexistent\nnonroot:x:65532:65532:nonroot:/nonexistent:/nonexistent\n".to_vec(),
    );
    file(&mut t, "/etc/group", DATA, b"root:x:0:\nnonroot:x:65532:\n".to_vec());
    // Host names from /etc/hosts (a pod's, mounted by the kubelet) before DNS, as glibc is told
    // on any distribution; glibc >= 2.34 has both lookups built in, so no NSS module is needed.
    file(&mut t, "/etc/nsswitch.conf", DATA, b"hosts: files dns\n".to_vec());
    dir(&mut t, "/tmp", 0o1777);
    Ok(t)
}

/// The application layer: the operator binary and its SBOM.
pub fn app(binary: &Path, sbom: Vec<u8>) -> Result<Tree> {
    let mut t = Tree::new();
    let data = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    file(&mut t, ENTRYPOINT, EXECUTABLE, data);
    file(&mut t, SBOM_PATH, DATA, sbom);
    Ok(t)
}

/// Adds a file and its parent directories (0755).
fn file(t: &mut Tree, path: &str, mode: u32, data: Vec<u8>) {
    let rel = path.trim_start_matches('/');
    parents(t, rel);
    t.insert(rel.to_string(), Node::File { mode, data });
}

fn dir(t: &mut Tree, path: &str, mode: u32) {
    let rel = path.trim_start_matches('/');
    parents(t, rel);
    t.insert(rel.to_string(), Node::Dir { mode });
}

fn parents(t: &mut Tree, rel: &str) {
    let mut at = String::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        t.entry(at.clone()).or_insert(Node::Dir { mode: 0o755 });
    }
}

/// The Debian package (name, version, architecture) a file of the build machine comes from, for
/// the SBOM; `None` where dpkg does not know it (or there is no dpkg). The CA bundle is no
/// package's file: `update-ca-certificates` writes it from the `ca-certificates` package.
pub fn debian_package(path: &str) -> Option<(String, String, String)> {
    if path == CA_BUNDLE {
        return installed("ca-certificates");
    }
    let real = std::fs::canonicalize(path).ok()?;
    // dpkg records the path a package ships (/lib/... on a merged-/usr system), not the resolved one.
    for p in [path.to_string(), real.display().to_string()] {
        let Ok(out) = Command::new("dpkg-query").args(["-S", &p]).output() else { return None };
        if !out.status.success() {
            continue;
        }
        let line = String::from_utf8_lossy(&out.stdout);
        return installed(line.lines().next()?.split(':').next()?.trim());
    }
    None
}

fn installed(pkg: &str) -> Option<(String, String, String)> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Version} ${Architecture}", pkg]).output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    let (version, arch) = v.trim().split_once(' ')?;
    out.status.success().then(|| (pkg.to_string(), version.to_string(), arch.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_loader_and_the_libraries() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x7f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        let paths: Vec<String> = parse_ldd(out).unwrap().into_iter().map(|l| l.path).collect();
        assert_eq!(paths, ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib64/ld-linux-x86-64.so.2"]);
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn parents_come_before_children_once() {
        let mut t = Tree::new();
        file(&mut t, "/usr/local/bin/x", EXECUTABLE, vec![]);
        file(&mut t, "/usr/share/doc/y", DATA, vec![]);
        let keys: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(keys, ["usr", "usr/local", "usr/local/bin", "usr/local/bin/x", "usr/share", "usr/share/doc", "usr/share/doc/y"]);
    }
}
