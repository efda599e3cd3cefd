//! Shared by the end-to-end suites: one local cluster for all tests (started by
//! `tests/cluster/up` if it is not up yet), a namespace per test, Prometheus queries and waits.
#![allow(dead_code)]

use kube::{
    api::{Api, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use std::{collections::HashMap, future::Future, path::PathBuf, process::Command, sync::OnceLock, time::Duration};

/// Where the local cluster is and how to reach it.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub prometheus_url: String,
    pub dir: PathBuf,
    /// Where pods on the real node reach the API server and Prometheus (127.0.0.1: they cannot).
    pub host_address: String,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared local cluster, brought up on first use (idempotent).
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::env::var("LOCALL_CLUSTER_DIR").map(PathBuf::from).unwrap_or_else(|_| repo().join("target/cluster"));
        let status = Command::new(repo().join("tests/cluster/up")).env("LOCALL_CLUSTER_DIR", &dir).status().expect("run tests/cluster/up");
        assert!(status.success(), "tests/cluster/up failed; see {}/logs", dir.display());
        let env = std::fs::read_to_string(dir.join("env")).expect("target/cluster/env");
        let vars: HashMap<String, String> = env
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Cluster {
            kubeconfig: PathBuf::from(&vars["KUBECONFIG"]),
            prometheus_url: vars["PROMETHEUS_URL"].clone(),
            host_address: vars.get("LOCALL_HOST_ADDRESS").cloned().unwrap_or_default(),
            dir,
        }
    })
}

/// A client for the local cluster as its admin.
pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = cluster();
    let kc = Kubeconfig::read_from(&c.kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Creates a fresh namespace for one test: `<prefix>-<random>`.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"locall.io/test": prefix}}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
    name
}

/// Creates any object from YAML or JSON in a namespace through the dynamic API.
pub async fn apply_yaml(client: &Client, ns: &str, yaml: &str) {
    use kube::{
        api::{DynamicObject, Patch, PatchParams},
        discovery::Discovery,
    };
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect();
    for v in docs {
        let mut obj: DynamicObject = serde_json::from_value(v).expect("object");
        // The tests' releases carry a label, so the tests' operator takes only them (and an
        // operator left running by `make demo` can leave them alone).
        if obj.types.as_ref().is_some_and(|t| t.kind == "LocallRelease") {
            obj.metadata.labels.get_or_insert_with(Default::default).insert("locall.io/e2e".into(), "true".into());
        }
        let tm = obj.types.clone().expect("apiVersion and kind");
        let gvk = kube::api::GroupVersionKind::try_from(&tm).expect("gvk");
        let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap_or_else(|| panic!("unknown kind {gvk:?}"));
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(client.clone(), obj.metadata.namespace.as_deref().unwrap_or(ns), &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let name = obj.metadata.name.clone().expect("name");
        api.patch(&name, &PatchParams::apply("locall-tests").force(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }
}

/// Polls `check` every 500 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs an instant query against the local Prometheus: each series' labels and value.
pub async fn prom_query(query: &str) -> Vec<(HashMap<String, String>, f64)> {
    let client = prometheus_http_query::Client::try_from(cluster().prometheus_url.as_str()).expect("prometheus url");
    let res = match client.query(query).get().await {
        Ok(r) => r,
        Err(_) => return vec![],
    };
    res.data().as_vector().map(|v| v.iter().map(|s| (s.metric().clone(), s.sample().value())).collect()).unwrap_or_default()
}

/// Creates the stage namespace `name` for releases of namespace `from`: it opts in by its
/// `locall.io/accept-releases-from` annotation (a namespace accepts no one else's releases
/// unless it says so).
pub fn stage_namespace(name: &str, from: &str) {
    let (ok, _, err) = kubectl(&["create", "namespace", name]);
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(&["annotate", "namespace", name, &format!("locall.io/accept-releases-from={from}")]);
    assert!(ok, "{err}");
}

/// Asks `locall-api` in `ns` for an on-demand action through its `locall.io/request`
/// annotation, as `kubectl locall` would.
pub fn request(ns: &str, action: &str, id: &str, by: &str) {
    let value = format!(r#"locall.io/request={{"action":"{action}","id":"{id}","by":"{by}"}}"#);
    let (ok, _, err) = kubectl(&["-n", ns, "annotate", "--overwrite", "lr", "locall-api", &value]);
    assert!(ok, "request {action}: {err}");
}

/// kubectl against the local cluster; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl").arg("--kubeconfig").arg(&cluster().kubeconfig).args(args).output().expect("run kubectl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Installs (or updates) the LocallRelease CRD from crds/ and waits until it is served.
pub async fn install_crd() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let path = repo().join("crds/locallreleases.yaml");
        let (ok, _, err) =
            kubectl(&["apply", "--server-side", "--force-conflicts", "--field-manager", "locall-tests", "-f", path.to_str().unwrap()]);
        assert!(ok, "install CRD: {err}");
        // Polled rather than `kubectl wait`: right after a create, the CRD has no
        // .status.conditions yet and `kubectl wait` fails on that instead of waiting.
        let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(client().await);
        wait_for(Duration::from_secs(30), "the LocallRelease CRD to be Established", || {
            let crds = crds.clone();
            async move {
                let crd = crds.get_opt("locallreleases.locall.io").await.ok().flatten()?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    })
    .await;
}

/// A running operator process (the crate's binary), killed when dropped or when the test exits.
pub struct Operator {
    pub child: std::process::Child,
    pub metrics_addr: String,
}

impl Operator {
    /// Starts `locall-operator` against the local cluster, reconciling the releases that match
    /// `selector`. Its log goes to target/cluster/logs/operator-<tag>.log.
    pub fn start(tag: &str, selector: &str) -> Operator {
        Operator::start_with(tag, selector, &[], &[])
    }

    /// As `start`, with extra flags and environment variables.
    pub fn start_with(tag: &str, selector: &str, args: &[&str], env: &[(&str, &str)]) -> Operator {
        let c = cluster();
        let port = free_port();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(c.dir.join(format!("logs/operator-{tag}.log"))).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_locall-operator"));
        cmd.env("KUBECONFIG", &c.kubeconfig)
            // LOCALL_OPERATOR_LOG overrides the operator's log filter when a test is debugged.
            .env("RUST_LOG", std::env::var("LOCALL_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()))
            .args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--release-selector", selector, "--log-format", "json"])
            .args(["--prometheus-url", &c.prometheus_url])
            .args(args)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = spawn_tied_to_process(cmd);
        Operator { child, metrics_addr: format!("127.0.0.1:{port}") }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operator shared by the tests of one test binary: it reconciles the tests' releases
/// (`locall.io/e2e=true`, set by `apply_yaml`) except those labelled `locall.io/operator`
/// (tests that run their own operator set that label).
pub fn shared_operator() {
    static OP: OnceLock<std::sync::Mutex<Operator>> = OnceLock::new();
    OP.get_or_init(|| std::sync::Mutex::new(Operator::start("shared", "locall.io/e2e=true,!locall.io/operator")));
}

/// Spawns `cmd` so that it dies with the test process. PR_SET_PDEATHSIG fires when the thread
/// that forked exits, so every child is forked by one spawner thread that lives as long as the
/// process.
pub fn spawn_tied_to_process(mut cmd: Command) -> std::process::Child {
    use std::{os::unix::process::CommandExt, sync::mpsc};
    type Request = (Command, mpsc::Sender<std::process::Child>);
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let _ = reply.send(cmd.spawn().expect("spawn"));
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply, child) = mpsc::channel();
    cmd.stdin(std::process::Stdio::null());
    tx.lock().unwrap().send((cmd, reply)).expect("spawner alive");
    child.recv().expect("spawned")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A webhook receiver on loopback that records every JSON body POSTed to it (with its
/// `idempotency-key` header in `_key`); while `down` is set it answers 500 and records nothing.
pub struct Receiver {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// On a given loopback port (0 for any).
    pub async fn start_on(port: u16) -> Receiver {
        use axum::{routing::post, Router};
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, d) = (received.clone(), down.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: axum::http::HeaderMap, body: String| {
                let (r, d) = (r.clone(), d.clone());
                async move {
                    if d.load(std::sync::atomic::Ordering::SeqCst) {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down");
                    }
                    let mut v = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
                    if let (Some(o), Some(k)) = (v.as_object_mut(), headers.get("idempotency-key")) {
                        o.insert("_key".into(), k.to_str().unwrap_or_default().into());
                    }
                    r.lock().unwrap().push(v);
                    (axum::http::StatusCode::OK, "ok")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, received, down }
    }
}

/// An operator's /metrics text; None when it cannot be reached. It answers a token the API
/// server authenticates for a user allowed to read it.
async fn metrics_text(metrics_addr: &str) -> Option<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let request = reqwest::Client::new().get(format!("http://{metrics_addr}/metrics")).bearer_auth(admin_token());
    Some(request.send().await.ok()?.text().await.unwrap_or_default())
}

/// Sum of the samples of every series named `name` (any labels) on an operator's /metrics;
/// NaN when it cannot be reached.
pub async fn scrape(metrics_addr: &str, name: &str) -> f64 {
    let Some(body) = metrics_text(metrics_addr).await else { return f64::NAN };
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests the operator counted on their way to the API server (`locall_api_requests_total`),
/// summed over `verbs` and, if given, one `resource` (`services`, `locallreleases/status`).
pub async fn api_requests(metrics_addr: &str, verbs: &[&str], resource: Option<&str>) -> f64 {
    let Some(body) = metrics_text(metrics_addr).await else { return f64::NAN };
    body.lines()
        .filter_map(|l| l.strip_prefix("locall_api_requests_total{verb=\""))
        .filter_map(|l| {
            let (verb, rest) = l.split_once('"')?;
            let (res, value) = rest.strip_prefix(",resource=\"")?.split_once("\"} ")?;
            (verbs.contains(&verb) && resource.is_none_or(|r| r == res)).then(|| value.trim().parse::<f64>().ok())?
        })
        .sum::<f64>()
        // An empty sum of f64 is -0.0, printed "-0": none of these requests made yet is 0.
        + 0.0
}

/// The 5xx ratio of one version behind one Service, as the simulator exports it (a gate's query).
pub const ERROR_RATIO: &str = r#"sum(rate(http_requests_total{namespace="{{namespace}}",service="{{service}}",version="{{version}}",code=~"5.."}[10s])) / sum(rate(http_requests_total{namespace="{{namespace}}",service="{{service}}",version="{{version}}"}[10s]))"#;

/// The backends of the release's HTTPRoute `locall-api` in `ns`: (Service name, weight).
pub async fn route_weights(client: &Client, ns: &str) -> std::collections::BTreeMap<String, i64> {
    use kube::api::DynamicObject;
    let ar = locall_operator::traffic::gateway::httproute_resource();
    let r = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get("locall-api").await.unwrap();
    r.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["weight"].as_i64().unwrap()))
        .collect()
}

/// The Helm chart (charts/locall-operator).
pub fn chart_dir() -> PathBuf {
    repo().join("charts/locall-operator")
}

/// The helm binary built by `tests/cluster/build build_helm` (cached, keyed by HELM_VERSION).
pub fn helm_bin() -> PathBuf {
    static HELM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(h) = std::env::var("HELM") {
            return PathBuf::from(h);
        }
        let build = repo().join("tests/cluster/build");
        let st = Command::new(&build).arg("build_helm").status().expect("run tests/cluster/build build_helm");
        assert!(st.success(), "tests/cluster/build build_helm failed");
        let versions = repo().join("tests/cluster/versions.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(". '{}' && printf %s \"$HELM_BIN/helm\"", versions.display()))
            .output()
            .expect("read versions.sh");
        PathBuf::from(String::from_utf8(out.stdout).unwrap())
    })
    .clone()
}

/// helm with `args`; returns (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm_bin()).args(args).output().expect("run helm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `helm template` of the chart as release `name` in `ns`, with extra args; the rendered objects.
pub fn render(name: &str, ns: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let chart = chart_dir();
    let mut args = vec!["template", name, chart.to_str().unwrap(), "--namespace", ns];
    args.extend_from_slice(extra);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template {extra:?}: {err}");
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered yaml"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

/// The kinds of rendered objects, in order.
pub fn kinds(objs: &[serde_json::Value]) -> Vec<String> {
    objs.iter().map(|o| o["kind"].as_str().unwrap_or_default().to_string()).collect()
}

/// The rendered objects of one kind.
pub fn of_kind<'a>(objs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// A kubeconfig at `path` holding only a fresh 1 h token of ServiceAccount `ns/sa` (the local
/// API server's address, its certificate not verified, as the admin kubeconfig does); returns
/// the token.
pub fn service_account_kubeconfig(ns: &str, sa: &str, path: &std::path::Path) -> String {
    let (ok, token, err) = kubectl(&["create", "token", sa, "-n", ns, "--duration", "1h"]);
    assert!(ok, "create token for {ns}/{sa}: {err}");
    let admin: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(&cluster().kubeconfig).unwrap()).unwrap();
    let server = admin["clusters"][0]["cluster"]["server"].as_str().expect("server").to_string();
    let kc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "insecure-skip-tls-verify": true}}],
        "users": [{"name": "sa", "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": ns}}],
        "current-context": "sa",
    });
    std::fs::write(path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    token.trim().to_string()
}

/// The local cluster's admin bearer token (system:masters).
pub fn admin_token() -> String {
    std::fs::read_to_string(cluster().dir.join("admin-token")).expect("the cluster's admin-token").trim().to_string()
}
