//! The operator as a user installs it, on a real node (tests/cluster/node: kubelet, containerd,
//! runc, the CNI bridge, kube-proxy): `helm install` of the chart with the image `make image`
//! built, imported into containerd (no registry). Its pod must turn Ready through its probes with
//! the restricted security context enforced by the runtime, hold the Lease, and carry the demo
//! application (`locall-demo-app`, real processes exporting their own metrics, which Prometheus
//! finds through pod discovery) from 1.0.0 to 2.0.0, then roll back a bad 3.0.0 whose error-rate
//! gate reads those metrics, with real requests from a bounded load generator on loopback split
//! by kube-proxy between the real pods (ReplicaRatio).

mod support;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::{Api, ListParams};
use locall_operator::api::{LocallRelease, Phase};
use std::{
    process::Command,
    time::{Duration, Instant},
};
use support::*;

/// The real node, brought up when it is not (idempotent: re-imports the images when it is).
fn real_node() -> String {
    let host = cluster().host_address.clone();
    assert!(
        !host.is_empty() && host != "127.0.0.1",
        "the local cluster listens on loopback only ({host:?}), which pods on a real node cannot reach: \
         tests/cluster/down, then REAL_NODE=1 tests/cluster/up (make test does)"
    );
    let st = Command::new(repo().join("tests/cluster/node")).arg("up").env("LOCALL_CLUSTER_DIR", &cluster().dir).status().unwrap();
    assert!(st.success(), "tests/cluster/node up failed; see {}/logs", cluster().dir.display());
    host
}

/// The demo application's release: ReplicaRatio traffic over 4 real pods, an error-rate gate on
/// the pods' own `http_requests_total` (job "pods": Prometheus's pod discovery, never the
/// simulator's series).
fn release(ns: &str, label: &str, version: &str, error_rate: f64) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "{version}"
  replicas: 4
  service: {{port: 8080}}
  template:
    metadata:
      annotations: {{prometheus.io/scrape: "true", prometheus.io/port: "8080"}}
    spec:
      nodeSelector: {{locall.io/real-node: "true"}}
      tolerations: [{{key: locall.io/real-node, operator: Exists, effect: NoSchedule}}]
      terminationGracePeriodSeconds: 2
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
      - name: api
        image: locall.local/locall-demo-app:{version}
        imagePullPolicy: Never
        args: [serve]
        env:
        - {{name: VERSION, valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app.kubernetes.io/version']"}}}}}}
        - {{name: ERROR_RATE, value: "{error_rate}"}}
        - {{name: LATENCY_MS, value: "10"}}
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
        securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
  stages:
  - name: production
    steps: [{{weight: 25, pause: 10s}}, {{weight: 50, pause: 10s}}, {{weight: 100}}]
  traffic: {{method: ReplicaRatio}}
  analysis:
    interval: 2s
    metrics:
    - name: error-rate
      query: >-
        sum(rate(http_requests_total{{job="pods",namespace="{{{{namespace}}}}",service="{{{{service}}}}",version="{{{{version}}}}",code=~"5.."}}[10s]))
        / sum(rate(http_requests_total{{job="pods",namespace="{{{{namespace}}}}",service="{{{{service}}}}",version="{{{{version}}}}"}}[10s]))
      success: {{op: "<", value: 0.02}}
      rollback: {{op: ">", value: 0.05}}
      consecutive: 2
"#
    )
}

/// The pid of the process `comm` in the pod with `uid` (its cgroup names the pod), on this machine.
fn pod_process(uid: &str, comm: &str) -> Option<u32> {
    let tag = format!("pod{uid}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (cgroup.contains(&tag) && name.trim() == comm).then_some(pid)
    })
}

async fn wait_phase(api: &Api<LocallRelease>, want: Phase, within: Duration) -> LocallRelease {
    let deadline = Instant::now() + within;
    loop {
        let lr = api.get("locall-api").await.expect("the release");
        let st = lr.status.clone().unwrap_or_default();
        if st.observed_generation == lr.metadata.generation {
            assert!(st.phase == want || !st.phase.is_terminal(), "ended {:?} while waiting for {want:?}: {}", st.phase, st.message);
            if st.phase == want {
                return lr;
            }
        }
        assert!(Instant::now() < deadline, "not {want:?} after {within:?}: {:?} {}; gates {:?}", st.phase, st.message, st.gates);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn the_chart_on_a_real_node_releases_a_real_application_and_rolls_back_a_bad_one() {
    let host = real_node();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "realnode").await;
    let label = ns.clone();

    // helm install, as a user would, with the image imported into the node's containerd.
    let prometheus = format!("http://{host}:{}", cluster().prometheus_url.rsplit(':').next().unwrap());
    let selector = format!("releaseSelector=locall.io/operator={label}");
    let only_here = format!("approvalPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={ns}");
    let prom = format!("prometheusUrl={prometheus}");
    let started = Instant::now();
    let (ok, out, err) = helm(&[
        "install",
        &ns,
        chart_dir().to_str().unwrap(),
        "--namespace",
        &ns,
        "--wait",
        "--timeout",
        "3m",
        "--kubeconfig",
        cluster().kubeconfig.to_str().unwrap(),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        &selector,
        "--set",
        &prom,
        "--set",
        &only_here,
        "--set-string",
        "nodeSelector.locall\\.io/real-node=true",
        "--set",
        "tolerations[0].key=locall.io/real-node",
        "--set",
        "tolerations[0].operator=Exists",
        "--set",
        "tolerations[0].effect=NoSchedule",
    ]);
    let _uninstall = Uninstall(ns.clone());
    assert!(ok, "helm install:\n{out}\n{err}\n{}", kubectl(&["-n", &ns, "describe", "pods"]).1);
    let to_ready = started.elapsed();

    // The operator's pod: on the real node, Ready through its probes, as user 65532 with a
    // read-only root filesystem and no capabilities (read from the running process itself).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let op = pods.list(&ListParams::default().labels("app.kubernetes.io/name=locall-operator")).await.unwrap().items;
    assert_eq!(op.len(), 1, "one operator pod");
    let op = &op[0];
    let spec = op.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("real-0"), "the operator runs on the real node");
    let image = &op.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].image;
    assert!(image.contains("locall-operator"), "{image}");
    let pid = pod_process(op.metadata.uid.as_deref().unwrap(), "locall-operator").expect("the operator's process on this machine");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_default().split_whitespace().collect::<Vec<_>>();
    assert_eq!(field("Uid:"), ["65532"; 4], "runs as 65532:\n{status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"], "no capabilities");
    assert_eq!(field("NoNewPrivs:"), ["1"], "no privilege escalation");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts.lines().find(|l| l.split_whitespace().nth(4) == Some("/")).expect("root mount");
    assert!(root.split_whitespace().nth(5).unwrap().split(',').any(|o| o == "ro"), "read-only root filesystem: {root}");
    let holder = wait_for(Duration::from_secs(60), "the operator to hold its Lease", || async {
        let (ok, out, _) = kubectl(&["-n", &ns, "get", "lease", &format!("{ns}-locall-operator"), "-o", "jsonpath={.spec.holderIdentity}"]);
        (ok && !out.is_empty()).then_some(out)
    })
    .await;
    assert!(holder.starts_with(op.metadata.name.as_deref().unwrap()), "the Lease is held by the pod: {holder}");
    println!("chart pod Ready on the real node {:.1} s after helm install", to_ready.as_secs_f64());

    // 1.0.0, with real requests through its ClusterIP Service (kube-proxy) from then on.
    let releases: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    apply_yaml(&client, &ns, &release(&ns, &label, "1.0.0", 0.0)).await;
    let ip = wait_for(Duration::from_secs(60), "the Service", || async {
        let (ok, ip, _) = kubectl(&["-n", &ns, "get", "service", "locall-api", "-o", "jsonpath={.spec.clusterIP}"]);
        (ok && !ip.is_empty()).then_some(ip)
    })
    .await;
    let mut load = Command::new(env!("CARGO_BIN_EXE_locall-demo-app"));
    load.args(["load", &format!("http://{ip}:8080/"), "--rps", "40", "--seconds", "600", "--concurrency", "16"]);
    let _load = Load(spawn_tied_to_process(load));
    wait_phase(&releases, Phase::Succeeded, Duration::from_secs(180)).await;

    // 2.0.0: shifted 25, 50, 100 % on the pods' own measurements.
    apply_yaml(&client, &ns, &release(&ns, &label, "2.0.0", 0.0)).await;
    let lr = wait_phase(&releases, Phase::Succeeded, Duration::from_secs(300)).await;
    assert_eq!(lr.status.unwrap().stable.unwrap().version, "2.0.0");
    let served = prom_query(&format!(r#"sum(increase(http_requests_total{{job="pods",namespace="{ns}",version="2.0.0"}}[30s]))"#)).await;
    assert!(served.first().is_some_and(|(_, v)| *v > 100.0), "2.0.0's pods answered the load themselves: {served:?}");

    // 3.0.0 answers 30% of requests with a 500: caught at its first step and rolled back.
    apply_yaml(&client, &ns, &release(&ns, &label, "3.0.0", 0.3)).await;
    let lr = wait_phase(&releases, Phase::RolledBack, Duration::from_secs(300)).await;
    let st = lr.status.unwrap();
    let failure = st.failure.as_ref().expect("status.failure");
    let text = serde_json::to_string(failure).unwrap();
    assert!(text.contains("error-rate"), "the error-rate gate rolled it back: {text}");
    assert_eq!(st.stable.as_ref().unwrap().version, "2.0.0");
    // Both versions answered real requests while 3.0.0 had its share: kube-proxy split them.
    let split = prom_query(&format!(
        r#"sum by (version, code) (increase(http_requests_total{{job="pods",namespace="{ns}",version=~"2.0.0|3.0.0"}}[2m]))"#
    ))
    .await;
    let count = |v: &str, code: &str| split.iter().find(|(l, _)| l["version"] == v && l["code"] == code).map_or(0.0, |(_, n)| *n);
    assert!(count("3.0.0", "500") > 0.0 && count("2.0.0", "200") > 0.0, "{split:?}");
    println!(
        "3.0.0 answered {:.0} requests ({:.0} with 500), 2.0.0 {:.0}, in its last 2 minutes",
        count("3.0.0", "200") + count("3.0.0", "500"),
        count("3.0.0", "500"),
        count("2.0.0", "200") + count("2.0.0", "500")
    );
    // Back on 2.0.0: its pods Ready, 3.0.0's gone.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for(Duration::from_secs(60), "2.0.0 Ready and 3.0.0 scaled to 0", || async {
        let ds = deployments.list(&ListParams::default()).await.ok()?.items;
        let ready = |v: &str| {
            ds.iter()
                .filter(|d| {
                    d.spec
                        .as_ref()
                        .and_then(|s| s.template.metadata.as_ref())
                        .and_then(|m| m.labels.as_ref())
                        .and_then(|l| l.get("app.kubernetes.io/version"))
                        .is_some_and(|x| x == v)
                })
                .map(|d| {
                    (d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0), d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0))
                })
                .next()
        };
        (ready("2.0.0") == Some((4, 4)) && ready("3.0.0").is_none_or(|(want, _)| want == 0)).then_some(())
    })
    .await;
}

/// `helm uninstall` and the namespace removed when the test ends, passed or not.
struct Uninstall(String);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let kc = cluster().kubeconfig.to_str().unwrap().to_string();
        let _ = helm(&["uninstall", &self.0, "--namespace", &self.0, "--kubeconfig", &kc, "--wait", "--timeout", "60s"]);
        let _ = kubectl(&["delete", "namespace", &self.0, "--wait=false"]);
    }
}

/// The load generator, stopped when the test ends (and with the test process, if it dies).
struct Load(std::process::Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
