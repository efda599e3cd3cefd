//! `locall-image`: writes the operator's OCI image from a built binary, with no container engine.
//! `scripts/image` (`make image`) builds the binary and the SBOM, then runs this:
//!
//! ```text
//! locall-image --manifest-path Cargo.toml --binary PATH --sbom PATH --out DIR --name REPO \
//!   --revision COMMIT --epoch SECONDS --created RFC3339 [--rootfs DIR]
//! ```
//!
//! The tag is the crate's version; the labels come from its Cargo.toml and the commit.
//! It writes `DIR/oci/` (an OCI image layout), `DIR/<name>-<tag>.oci.tar` (the same layout as
//! one archive, for `skopeo copy oci-archive:`, `docker load` or `ctr images import`) and
//! `DIR/sbom.cdx.json`, and prints the image's digest and size. The same inputs give the same
//! bytes: nothing here reads the clock, the host name or the user.

mod oci;
mod rootfs;

use anyhow::{bail, Context, Result};
use oci::Blob;
use serde_json::{json, Value};
use std::{collections::BTreeMap, path::PathBuf};

struct Args {
    binary: PathBuf,
    sbom: PathBuf,
    out: PathBuf,
    /// Also write the root filesystem as files here (the Dockerfile copies it into its image).
    rootfs: Option<PathBuf>,
    name: String,
    revision: String,
    epoch: u64,
    created: String,
    package: Value,
}

fn args() -> Result<Args> {
    let mut one: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.strip_prefix("--") {
            Some(f) => one.insert(f.to_string(), value),
            None => bail!("unexpected argument {flag}"),
        };
    }
    let mut take = |k: &str| one.remove(k).with_context(|| format!("--{k} is required"));
    let manifest = take("manifest-path")?;
    let a = Args {
        binary: take("binary")?.into(),
        sbom: take("sbom")?.into(),
        out: take("out")?.into(),
        name: take("name")?,
        revision: take("revision")?,
        epoch: take("epoch")?.parse().context("--epoch: seconds since 1970")?,
        created: take("created")?,
        rootfs: one.remove("rootfs").map(PathBuf::from),
        package: package(&manifest)?,
    };
    if let Some(k) = one.keys().next() {
        bail!("unknown flag --{k}");
    }
    Ok(a)
}

/// The crate's own metadata (name, version, license, description, repository) from `cargo metadata`.
fn package(manifest: &str) -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path", manifest])
        .output()
        .context("run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    let root = std::fs::canonicalize(manifest)?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["manifest_path"].as_str().map(PathBuf::from) == Some(root.clone())))
        .cloned()
        .with_context(|| format!("no package in {manifest}"))
}

/// The image's labels (also its manifest's annotations): the OCI keys a registry shows.
fn labels(a: &Args) -> BTreeMap<String, String> {
    let field = |k: &str| a.package[k].as_str().unwrap_or_default().to_string();
    [
        ("title", field("name")),
        ("description", field("description")),
        ("version", field("version")),
        ("revision", a.revision.clone()),
        ("source", field("repository")),
        ("licenses", field("license")),
        ("created", a.created.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v))
    .collect()
}

fn main() -> Result<()> {
    let a = args()?;
    let libs = rootfs::libraries(&a.binary)?;
    let sbom = sbom_with_system_parts(&std::fs::read(&a.sbom).with_context(|| format!("read {}", a.sbom.display()))?, &libs)?;
    let trees = [rootfs::base(&libs)?, rootfs::app(&a.binary, sbom.clone())?];
    let (base, app) = (oci::layer(&trees[0], a.epoch)?, oci::layer(&trees[1], a.epoch)?);

    let labels = labels(&a);
    let tag = a.package["version"].as_str().context("the crate's version")?.to_string();
    let config = Blob::json(&json!({
        "created": a.created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "65532:65532",
            "Entrypoint": [rootfs::ENTRYPOINT],
            "Env": ["PATH=/usr/local/bin"],
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [base.diff_id, app.diff_id]},
        "history": [
            {"created": a.created, "created_by": "locall-image: C runtime (ldd), CA certificates, passwd"},
            {"created": a.created, "created_by": "locall-image: locall-operator and its SBOM"},
        ],
    }));
    let manifest = Blob::json(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": config.descriptor(oci::CONFIG),
        "layers": [base.blob.descriptor(oci::LAYER), app.blob.descriptor(oci::LAYER)],
        "annotations": labels,
    }));
    let mut entry = manifest.descriptor(oci::MANIFEST);
    entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
    // ref.name: the tag in this layout (umoci, skopeo `oci:DIR:TAG`); image.name: the name
    // containerd (`ctr images import`) and `docker load` give the image.
    entry["annotations"] = json!({
        "org.opencontainers.image.ref.name": tag,
        "io.containerd.image.name": format!("{}:{tag}", a.name),
    });
    let index = json!({"schemaVersion": 2, "mediaType": oci::INDEX, "manifests": [entry]});

    // Written next to the final place, then swapped in: a reader never sees half a layout.
    let layout = a.out.join("oci");
    let tmp = a.out.join("oci.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let files = oci::write_layout(&tmp, &[&config, &manifest, &base.blob, &app.blob], &index)?;
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::rename(&tmp, &layout)?;
    let short = a.name.rsplit('/').next().unwrap_or(&a.name);
    let archive = a.out.join(format!("{short}-{tag}.oci.tar"));
    std::fs::write(&archive, oci::tar(&files, a.epoch)?)?;
    std::fs::write(a.out.join("sbom.cdx.json"), &sbom)?;
    std::fs::write(a.out.join("digest"), format!("{}\n", manifest.digest))?;
    if let Some(dir) = &a.rootfs {
        for t in &trees {
            oci::write_tree(dir, t)?;
        }
    }

    let compressed = base.blob.data.len() + app.blob.data.len() + config.data.len() + manifest.data.len();
    let unpacked: usize =
        trees.iter().flat_map(|t| t.values()).map(|n| if let rootfs::Node::File { data, .. } = n { data.len() } else { 0 }).sum();
    println!("image   {}:{tag}", a.name);
    println!("digest  {}", manifest.digest);
    println!("size    {:.1} MiB compressed (what a registry stores), {:.1} MiB unpacked", mib(compressed), mib(unpacked));
    println!("layout  {}", layout.display());
    println!("archive {}", archive.display());
    Ok(())
}

fn mib(n: usize) -> f64 {
    n as f64 / (1024.0 * 1024.0)
}

/// The Rust SBOM (CycloneDX JSON from cargo-cyclonedx) with the image's other parts added as
/// components: the Debian packages the shared libraries and the CA certificates come from.
fn sbom_with_system_parts(rust: &[u8], libs: &[rootfs::Library]) -> Result<Vec<u8>> {
    let mut bom: Value = serde_json::from_slice(rust).context("the SBOM is not JSON")?;
    // cargo-cyclonedx names the crate itself by its cargo package id, `path+file:///<checkout>#...`:
    // the checkout's directory would make two clones of one commit differ. Its purl says the same
    // without the directory.
    let root = &bom["metadata"]["component"];
    if let (Some(old), Some(purl)) = (root["bom-ref"].as_str(), root["purl"].as_str()) {
        if old.starts_with("path+") {
            let (old, purl) = (old.to_string(), purl.split('?').next().unwrap_or(purl).to_string());
            replace_prefix(&mut bom, &old, &purl);
        }
    }
    let distro = os_release_id().unwrap_or_else(|| "debian".into());
    let mut seen = BTreeMap::new();
    for path in libs.iter().map(|l| l.path.as_str()).chain([rootfs::CA_BUNDLE]) {
        match rootfs::debian_package(path) {
            Some((name, version, arch)) => {
                seen.entry((name, version, arch)).or_insert_with(Vec::new).push(path.to_string());
            }
            None => eprintln!("locall-image: warning: no Debian package owns {path}; it is not in the SBOM"),
        }
    }
    let components = bom["components"].as_array_mut().context("the SBOM has no components")?;
    for ((name, version, arch), paths) in seen {
        let purl = format!("pkg:deb/{distro}/{name}@{}?arch={arch}", version.replace('+', "%2B"));
        components.push(json!({
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": purl,
            "properties": paths.iter().map(|p| json!({"name": "locall:image:path", "value": p})).collect::<Vec<_>>(),
        }));
    }
    Ok(serde_json::to_vec_pretty(&bom)?)
}

/// Every string in `v` that starts with `old` starts with `new` instead.
fn replace_prefix(v: &mut Value, old: &str, new: &str) {
    match v {
        Value::String(s) if s.starts_with(old) => *s = format!("{new}{}", &s[old.len()..]),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_prefix(x, old, new)),
        Value::Object(o) => o.values_mut().for_each(|x| replace_prefix(x, old, new)),
        _ => {}
    }
}

fn os_release_id() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("ID=")).map(|v| v.trim_matches('"').to_string())
}
