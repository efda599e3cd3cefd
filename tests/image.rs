//! The operator's container image (`make image`, scripts/image), proven on this machine without a
//! container engine: umoci unpacks it into an OCI bundle and runc runs it as the Helm chart runs
//! the pod (the chart's own args and env, user 65532 from the image, read-only root filesystem,
//! no capabilities, no privilege escalation), as the chart's ServiceAccount with the chart's RBAC
//! (a token kubeconfig mounted read-only), on the host's network (the local cluster's kwok nodes
//! run no containers, so runc stands in for the kubelet's runtime). It must answer its probes and
//! /metrics and carry a release to Succeeded. And the image must be what it says: its labels, the
//! chart's image name, nothing in it but the binary, its libraries, CA certificates, users and
//! SBOM, and the same digest when built again.

mod support;

use kube::api::Api;
use locall_operator::api::{LocallRelease, Phase};
use serde_json::{json, Value};
use sha2::Digest;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};
use support::*;

/// The built image: its OCI layout, tag, manifest digest and config.
struct Image {
    layout: PathBuf,
    tag: String,
    name: String,
    digest: String,
    config: Value,
}

/// Builds the image once per test binary with scripts/image (a no-op cargo build and a few
/// seconds when `make test` has just built it).
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = build_image(&repo().join("target/image"));
        let index = read_json(&out.join("oci/index.json"));
        let entry = &index["manifests"][0];
        let manifest = read_json(&blob(&out.join("oci"), entry["digest"].as_str().unwrap()));
        let config = read_json(&blob(&out.join("oci"), manifest["config"]["digest"].as_str().unwrap()));
        let full = entry["annotations"]["io.containerd.image.name"].as_str().expect("image name").to_string();
        let (name, tag) = full.rsplit_once(':').unwrap();
        Image {
            layout: out.join("oci"),
            tag: tag.to_string(),
            name: name.to_string(),
            digest: entry["digest"].as_str().unwrap().to_string(),
            config,
        }
    })
}

fn build_image(out: &Path) -> PathBuf {
    let st = Command::new(repo().join("scripts/image")).env("IMAGE_DIR", out).status().expect("run scripts/image");
    assert!(st.success(), "scripts/image failed");
    out.to_path_buf()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// runc and umoci from Debian (tests/cluster/build install_oci_tools), once.
fn oci_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let st = Command::new(repo().join("tests/cluster/build")).arg("install_oci_tools").status().expect("run tests/cluster/build");
        assert!(st.success(), "tests/cluster/build install_oci_tools failed");
    });
}

/// `umoci unpack` of the image into a fresh bundle `dir` (config.json and rootfs/).
fn unpack(dir: &Path) {
    oci_tools();
    let img = image();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let out = Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:{}", img.layout.display(), img.tag)])
        .arg(dir)
        .output()
        .expect("run umoci");
    assert!(out.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&out.stderr));
}

fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every regular file under `root`, as absolute paths inside it.
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, at: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(at).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                walk(root, &e.path(), out);
            } else {
                assert!(t.is_file(), "only regular files and directories in the image: {}", e.path().display());
                out.insert(format!("/{}", e.path().strip_prefix(root).unwrap().display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn the_image_holds_the_binary_its_libraries_and_certificates_only_and_is_reproducible() {
    let img = image();
    let cfg = &img.config["config"];
    assert_eq!(cfg["User"], "65532:65532");
    assert_eq!(cfg["Entrypoint"], json!(["/usr/local/bin/locall-operator"]));
    assert!(cfg.get("Cmd").is_none_or(Value::is_null), "no Cmd: the chart passes args: {cfg}");

    // Labels: what a registry shows, and what ties the image to its commit.
    let labels = &cfg["Labels"];
    let (_, head, _) = run("git", &["-C", repo().to_str().unwrap(), "rev-parse", "HEAD"]);
    let (_, time, _) = run("git", &["-C", repo().to_str().unwrap(), "log", "-1", "--format=%ct"]);
    let created = chrono::DateTime::from_timestamp(time.trim().parse().unwrap(), 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(labels["org.opencontainers.image.title"], "locall-operator");
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["org.opencontainers.image.licenses"], env!("CARGO_PKG_LICENSE"));
    assert_eq!(labels["org.opencontainers.image.source"], env!("CARGO_PKG_REPOSITORY"));
    assert!(labels["org.opencontainers.image.revision"].as_str().unwrap().starts_with(head.trim()), "{labels}");
    assert_eq!(labels["org.opencontainers.image.created"], created.as_str(), "the commit's time");
    assert_eq!(img.config["created"], created.as_str());

    // The chart's default image is the one a release publishes: its repository and appVersion.
    let objs = render("locall", "locall-system", &[]);
    let deployment = of_kind(&objs, "Deployment")[0];
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], format!("{}:{}", img.name, img.tag).as_str());

    // Nothing but the binary, the libraries ldd says it loads, CA certificates, users, the SBOM.
    let bundle = cluster().dir.join(format!("image-test/contents-{}", std::process::id()));
    let _bundle = RemoveDir(bundle.clone());
    unpack(&bundle);
    let rootfs = bundle.join("rootfs");
    let (ok, ldd, err) = run("ldd", &[rootfs.join("usr/local/bin/locall-operator").to_str().unwrap()]);
    assert!(ok, "ldd: {err}");
    let mut expected: BTreeSet<String> = ldd
        .lines()
        .filter_map(|l| l.split("=>").last()?.split_whitespace().next().filter(|p| p.starts_with('/')).map(str::to_string))
        .collect();
    for f in [
        "/usr/local/bin/locall-operator",
        "/usr/share/doc/locall-operator/sbom.cdx.json",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    ] {
        expected.insert(f.to_string());
    }
    assert_eq!(files(&rootfs), expected, "the image's files");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");

    // CA certificates for TLS (webhooks, a Prometheus behind https): a bundle of real ones.
    let pem = std::fs::read(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let mut certs = 0;
    for p in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let p = p.expect("PEM");
        p.parse_x509().expect("an X.509 certificate");
        certs += 1;
    }
    assert!(certs >= 100, "{certs} CA certificates");

    // The SBOM: the Rust crates linked in (not the dev-dependencies) and the Debian packages.
    let sbom = read_json(&rootfs.join("usr/share/doc/locall-operator/sbom.cdx.json"));
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let names: BTreeSet<&str> = sbom["components"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    for n in ["kube-client", "tokio", "rustls", "libc6", "ca-certificates"] {
        assert!(names.contains(n), "{n} in the SBOM");
    }
    for n in ["proptest", "mlua", "jsonschema"] {
        assert!(!names.contains(n), "dev-dependency {n} in the SBOM");
    }
    assert_eq!(read_json(&repo().join("target/image/sbom.cdx.json")), sbom, "the SBOM beside the image is the one inside");

    // The archive is the same image, as another tool reads it (what `skopeo copy` would push).
    oci_tools();
    let archive = format!("locall-operator-{}.oci.tar", img.tag);
    let (ok, raw, err) =
        run("skopeo", &["inspect", "--raw", &format!("oci-archive:{}", repo().join("target/image").join(&archive).display())]);
    assert!(ok, "skopeo inspect: {err}");
    assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(raw.as_bytes())), img.digest, "the archive's manifest");

    // Built again elsewhere: the same bytes.
    let again = cluster().dir.join(format!("image-test/again-{}", std::process::id()));
    let _again = RemoveDir(again.clone());
    build_image(&again);
    let index = read_json(&again.join("oci/index.json"));
    assert_eq!(index["manifests"][0]["digest"], img.digest.as_str(), "the same commit, the same digest");
    assert!(
        std::fs::read(again.join(&archive)).unwrap() == std::fs::read(repo().join("target/image").join(&archive)).unwrap(),
        "the same archive"
    );
}

/// A directory removed when dropped (pass or fail).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A runc container, killed and deleted when dropped (pass or fail), then its directory (bundle,
/// kubeconfig) removed.
struct Container {
    id: String,
    dir: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run("runc", &["kill", &self.id, "KILL"]);
        let _ = run("runc", &["delete", "--force", &self.id]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster-scoped RBAC objects the chart rendered for this test, deleted when dropped.
struct ClusterRbac(Vec<(String, String)>);

impl Drop for ClusterRbac {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = kubectl(&["delete", kind, name, "--ignore-not-found"]);
        }
    }
}

fn pod_env(env: &Value, pod: &str, ns: &str) -> Vec<String> {
    env.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap();
            let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
                (Some(v), _) => v.to_string(),
                (None, Some("metadata.name")) => pod.to_string(),
                (None, Some("metadata.namespace")) => ns.to_string(),
                _ => panic!("an env var the test cannot fill as the kubelet would: {e}"),
            };
            format!("{name}={value}")
        })
        .collect()
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in /proc/PID/status")).trim()
}

async fn get(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut req = reqwest::Client::new().get(url).timeout(Duration::from_secs(2));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.ok()?;
    Some((r.status().as_u16(), r.text().await.unwrap_or_default()))
}

#[tokio::test]
async fn the_image_runs_as_the_chart_runs_it_and_carries_a_release() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = client().await;
    install_crd().await;
    let img = image();
    let ns = namespace(&client, "image").await;
    let label = ns.clone();
    let id = format!("locall-{ns}");
    let dir = cluster().dir.join("image-test").join(&id);
    let bundle = dir.join("bundle");
    let _container = Container { id: id.clone(), dir: dir.clone() };

    // The chart as `helm install <ns> -n <ns>` renders it, for this test's releases only.
    let objs = render(
        &ns,
        &ns,
        &[
            "--set",
            &format!("prometheusUrl={}", cluster().prometheus_url),
            "--set-string",
            &format!("releaseSelector=locall.io/operator={label}"),
        ],
    );
    let rbac: Vec<&Value> = objs
        .iter()
        .filter(|o| ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap()))
        .collect();
    let _rbac_cleanup = ClusterRbac(
        rbac.iter()
            .filter(|o| o["kind"].as_str().unwrap().starts_with("Cluster"))
            .map(|o| (o["kind"].as_str().unwrap().to_string(), o["metadata"]["name"].as_str().unwrap().to_string()))
            .filter(|(_, name)| name.contains(&ns))
            .collect(),
    );
    let yaml: String = rbac.iter().map(|o| format!("---\n{}\n", serde_yaml::to_string(o).unwrap())).collect();
    apply_yaml(&client, &ns, &yaml).await;
    let sa = of_kind(&objs, "ServiceAccount")[0]["metadata"]["name"].as_str().unwrap().to_string();
    let kube_dir = dir.join("kube");
    std::fs::create_dir_all(&kube_dir).unwrap();
    service_account_kubeconfig(&ns, &sa, &kube_dir.join("config"));

    // The bundle: the image's own process (user, entrypoint), the pod's args, env and security
    // context, the kubeconfig mounted read-only, the host's network.
    unpack(&bundle);
    let pod = &of_kind(&objs, "Deployment")[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let selector = format!("locall.io/operator={label}");
    assert!(args.windows(2).any(|w| w == ["--release-selector", selector.as_str()]), "only this test's releases: {args:?}");
    let at = args.iter().position(|a| a == "--metrics-addr").expect("the chart passes --metrics-addr") + 1;
    assert_eq!(args[at], "0.0.0.0:8080", "the chart's metrics address");
    args[at] = metrics_addr.clone(); // one port per run on the shared host network, loopback only
    let pod_name = format!("{id}-pod");
    let mut config = read_json(&bundle.join("config.json"));
    let process = &mut config["process"];
    assert_eq!(process["user"]["uid"], container["securityContext"]["runAsUser"], "the image's user is the chart's");
    assert_eq!(process["user"]["gid"], pod["securityContext"]["runAsGroup"], "the image's group is the chart's");
    let entrypoint = process["args"][0].clone();
    process["args"] = json!([entrypoint].into_iter().chain(args.iter().map(|a| json!(a))).collect::<Vec<_>>());
    let mut env: Vec<String> = serde_json::from_value(process["env"].clone()).unwrap();
    env.extend(pod_env(&container["env"], &pod_name, &ns));
    env.push("KUBECONFIG=/var/run/locall/config".into());
    process["env"] = json!(env);
    process["terminal"] = json!(false);
    // capabilities: drop ALL; allowPrivilegeEscalation: false.
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    process["capabilities"] = json!({"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []});
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    process["noNewPrivileges"] = json!(true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    config["root"]["readonly"] = json!(true);
    config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/var/run/locall", "type": "bind", "source": kube_dir,
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
    }));
    config["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "network");
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let log_path = cluster().dir.join(format!("logs/operator-{id}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let pid_file = dir.join("pid");
    let started = Instant::now();
    let st = Command::new("runc")
        .args(["run", "--detach", "--bundle", bundle.to_str().unwrap(), "--pid-file", pid_file.to_str().unwrap(), &id])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("run runc");
    assert!(st.success(), "runc run failed (log: {})", log_path.display());
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();

    // `runc run --detach` returns once the container is started, which can be a moment before runc's
    // init has exec'd the entrypoint (its /proc/<pid>/exe then reads "/"): wait for the exec, so the
    // checks below are of the operator's own process.
    let exe = loop {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        if exe == Path::new("/usr/local/bin/locall-operator") || started.elapsed() > Duration::from_secs(10) {
            break exe;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(exe, Path::new("/usr/local/bin/locall-operator"), "the entrypoint is the operator, not a shell");
    // It runs as 65532 with nothing extra: no capabilities, no way to gain privileges.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(status_field(&status, "Uid:").split_whitespace().collect::<Vec<_>>(), ["65532"; 4], "{status}");
    assert_eq!(status_field(&status, "Gid:").split_whitespace().collect::<Vec<_>>(), ["65532"; 4], "{status}");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(&status, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    // Its root filesystem is read-only: mounted so, and a write through it is refused, even root's.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).expect("the root mount");
    assert!(root.split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro"), "root mounted read-only: {root}");
    let write = std::fs::write(format!("/proc/{pid}/root/tmp/probe"), b"x");
    assert_eq!(write.err().and_then(|e| e.raw_os_error()), Some(libc::EROFS), "a write to the root filesystem");
    // The host's network: the same network namespace as this test.
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(), std::fs::read_link("/proc/self/ns/net").unwrap());

    // Probes and metrics, as the kubelet and Prometheus would call them.
    let base = format!("http://{metrics_addr}");
    // Polled every 20 ms (wait_for's 500 ms would be the measurement).
    let ready = loop {
        if get(&format!("{base}/readyz"), None).await.is_some_and(|r| r.0 == 200) {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "/readyz of the containerised operator (log: {})", log_path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(get(&format!("{base}/healthz"), None).await.map(|r| r.0), Some(200), "/healthz");
    let (code, body) = get(&format!("{base}/metrics"), Some(admin_token().as_str())).await.expect("/metrics answers");
    assert_eq!(code, 200, "/metrics: {body}");
    assert!(body.contains("# TYPE controller_runtime_reconcile_time_seconds histogram"), "{body}");

    // A release, carried to Succeeded by the containerised operator (holding the chart's Lease).
    let manifest = format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "1.0.0"
  replicas: 1
  service: {{port: 8080}}
  template:
    spec: {{containers: [{{name: api, image: "locall/api:1.0.0"}}]}}
  stages: [{{name: production, steps: [{{weight: 100}}]}}]
  traffic: {{method: ReplicaRatio}}
"#
    );
    let applied = Instant::now();
    apply_yaml(&client, &ns, &manifest).await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    wait_for(Duration::from_secs(120), &format!("{ns}/locall-api to succeed (log: {})", log_path.display()), || async {
        let lr = api.get_opt("locall-api").await.ok().flatten()?;
        let st = lr.status.as_ref()?;
        (st.phase == Phase::Succeeded && st.observed_generation == lr.metadata.generation).then_some(())
    })
    .await;
    let succeeded = applied.elapsed();
    let lease_at = args.iter().position(|a| a == "--lease-name").expect("the chart elects a leader") + 1;
    let (ok, holder, err) = kubectl(&["-n", &ns, "get", "lease", &args[lease_at], "-o", "jsonpath={.spec.holderIdentity}"]);
    assert!(ok && holder == pod_name, "the containerised operator holds the chart's Lease: {holder} {err}");
    let (_, body) = get(&format!("{base}/metrics"), Some(admin_token().as_str())).await.expect("/metrics answers");
    let series = format!(r#"locall_release_phase{{namespace="{ns}",name="locall-api",phase="Succeeded"}} 1"#);
    assert!(body.lines().any(|l| l == series), "{series} in /metrics");

    // SIGTERM, as the kubelet stops a pod: the operator (PID 1 of its container) exits at once.
    let term = Instant::now();
    let (ok, _, err) = run("runc", &["kill", &id, "TERM"]);
    assert!(ok, "runc kill TERM: {err}");
    let stopped = wait_for(Duration::from_secs(10), "the container to stop on SIGTERM", || async {
        let (_, state, _) = run("runc", &["state", &id]);
        let state: Value = serde_json::from_str(&state).ok()?;
        (state["status"] == "stopped").then(|| term.elapsed())
    })
    .await;
    eprintln!(
        "image {} ({}): Ready {} ms after runc run, release Succeeded {} ms after apply, stopped {} ms after SIGTERM",
        img.tag,
        img.digest,
        ready.as_millis(),
        succeeded.as_millis(),
        stopped.as_millis()
    );
}

/// No Docker here to build the Dockerfile, so it is held to what the image built here says: the
/// same user, entrypoint, labels (version included) and the same pinned SBOM tool.
#[test]
fn the_dockerfile_describes_the_same_image() {
    let img = image();
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let script = std::fs::read_to_string(repo().join("scripts/image")).unwrap();
    let cfg = &img.config["config"];
    let line =
        |prefix: &str| dockerfile.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("{prefix} in the Dockerfile"));
    assert_eq!(line("USER "), cfg["User"].as_str().unwrap());
    assert_eq!(serde_json::from_str::<Value>(line("ENTRYPOINT ")).unwrap(), cfg["Entrypoint"]);
    assert_eq!(line("ARG VERSION="), env!("CARGO_PKG_VERSION"), "the Dockerfile's VERSION is the crate's");
    assert_eq!(line("COPY --from=build "), "/rootfs/ /", "the final image is the root filesystem scripts/image wrote");
    let cyclonedx = script.lines().find_map(|l| l.strip_prefix("CYCLONEDX_VERSION=")).unwrap();
    assert!(dockerfile.contains(&format!("cargo-cyclonedx --version {cyclonedx}")), "cargo-cyclonedx {cyclonedx} pinned in the Dockerfile");
    // LABEL key="value" pairs, one per line after LABEL.
    let labels: std::collections::BTreeMap<String, String> = dockerfile
        .lines()
        .map(|l| l.trim().trim_start_matches("LABEL ").trim_end_matches(" \\"))
        .filter_map(|l| l.strip_prefix("org.opencontainers.image.")?.split_once('='))
        .map(|(k, v)| (format!("org.opencontainers.image.{k}"), v.trim_matches('"').to_string()))
        .collect();
    let ours: BTreeSet<&String> = cfg["Labels"].as_object().unwrap().keys().collect();
    assert_eq!(labels.keys().collect::<BTreeSet<_>>(), ours, "the same label keys");
    for k in ["title", "description", "source", "licenses"] {
        let k = format!("org.opencontainers.image.{k}");
        assert_eq!(labels[&k], cfg["Labels"][&k].as_str().unwrap(), "{k}");
    }
}
