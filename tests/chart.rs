//! The Helm chart (charts/locall-operator): it lints, renders, runs its pod under the restricted
//! security profile, keeps its opt-in parts off by default, rejects unknown values, ships the
//! same CRD as crds/, and its RBAC is exactly enough for the operator.
//!
//! The operator image cannot be pulled here (and the local cluster's kwok nodes run no
//! containers), so the chart's RBAC is tested for real without it: the rendered ServiceAccount,
//! ClusterRole, ClusterRoleBinding, Role and RoleBinding are applied to the local cluster, a token
//! is created for that ServiceAccount, and the operator *binary* runs on the host with a
//! kubeconfig holding only that token. It must then carry a release (migration, Gateway API
//! traffic, a preflight Secret) to Succeeded without a single "forbidden" in its log, while
//! `kubectl auth can-i` shows the ServiceAccount cannot do what the operator never needs.

mod support;

use kube::api::Api;
use locall_operator::api::{JobState, LocallRelease, Phase};
use serde_json::Value;
use std::{path::PathBuf, process::Command, time::Duration};
use support::*;

#[test]
fn helm_lint_strict_passes() {
    let (ok, out, err) = helm(&["lint", "--strict", chart_dir().to_str().unwrap()]);
    assert!(ok, "helm lint --strict:\n{out}\n{err}");
}

#[test]
fn renders_a_restricted_deployment_with_probes_and_args() {
    let objs = render("locall", "locall-system", &[]);
    let ks = kinds(&objs);
    for k in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"] {
        assert!(ks.iter().any(|x| x == k), "{k} rendered: {ks:?}");
    }
    let dep = of_kind(&objs, "Deployment")[0];
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], of_kind(&objs, "ServiceAccount")[0]["metadata"]["name"]);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{sc}");
    assert_eq!(sc["runAsUser"], 65532, "{sc}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{sc}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{sc}");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{sc}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 8080);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8080);
    assert_eq!(c["image"], "ghcr.io/locall/locall-operator:0.1.0");
    assert!(c["resources"]["requests"].is_object(), "resources from values: {}", c["resources"]);
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(
        args,
        [
            "--metrics-addr",
            "0.0.0.0:8080",
            "--log-format",
            "json",
            "--metrics-auth",
            "kubernetes",
            "--leader-elect",
            "--lease-name",
            "locall-locall-operator",
            "--notify-retry-for",
            "6h"
        ]
    );
    let env = c["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "POD_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"), "{env:?}");
    assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE" && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"), "{env:?}");
    let svc = of_kind(&objs, "Service")[0];
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);

    // Values reach the pod.
    let objs = render(
        "locall",
        "locall-system",
        &[
            "--set",
            "prometheusUrl=http://prom:9090,image.tag=9.9.9,image.pullPolicy=Always,resources.limits.memory=1Gi,notifyRetryFor=12h",
            "--set",
            "allowedProviderUrls={http://prom-a:9090,https://prom-b}",
        ],
    );
    let c = &of_kind(&objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--prometheus-url", "http://prom:9090"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--notify-retry-for", "12h"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--allowed-provider-urls", "http://prom-a:9090,https://prom-b"]), "{args:?}");
    assert_eq!(c["image"], "ghcr.io/locall/locall-operator:9.9.9");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
}

#[test]
fn service_monitor_and_pdb_are_opt_in() {
    let objs = render("locall", "locall-system", &[]);
    let ks = kinds(&objs);
    assert!(!ks.iter().any(|k| k == "ServiceMonitor" || k == "PodDisruptionBudget"), "{ks:?}");
    let objs = render("locall", "locall-system", &["--set", "serviceMonitor.enabled=true,pdb.enabled=true"]);
    let ks = kinds(&objs);
    assert!(ks.iter().any(|k| k == "ServiceMonitor"), "{ks:?}");
    assert!(ks.iter().any(|k| k == "PodDisruptionBudget"), "{ks:?}");
}

#[test]
fn schema_rejects_unknown_and_mistyped_values() {
    let chart = chart_dir();
    let (ok, _, err) = helm(&["template", "locall", chart.to_str().unwrap(), "--set", "nope=1"]);
    assert!(!ok, "an unknown value must be rejected");
    assert!(err.contains("nope"), "{err}");
    let (ok, _, _) = helm(&["template", "locall", chart.to_str().unwrap(), "--set", "pdb.enabled=maybe"]);
    assert!(!ok, "a mistyped value must be rejected");
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let ours = std::fs::read_to_string(repo().join("crds/locallreleases.yaml")).unwrap();
    let chart = std::fs::read_to_string(chart_dir().join("crds/locallreleases.yaml")).unwrap();
    assert!(ours == chart, "charts/locall-operator/crds/locallreleases.yaml differs from crds/locallreleases.yaml: copy it again");
    let objs = render("locall", "locall-system", &["--include-crds"]);
    assert!(objs.iter().any(|o| o["kind"] == "CustomResourceDefinition" && o["metadata"]["name"] == "locallreleases.locall.io"));
}

#[test]
fn rbac_has_no_wildcards_and_aggregates_to_view_and_edit() {
    let objs = render("locall", "locall-system", &[]);
    let roles: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role").collect();
    assert!(roles.len() >= 4, "operator, leader election, view, edit: {}", roles.len());
    for r in &roles {
        for rule in r["rules"].as_array().expect("rules") {
            for field in ["verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"] {
                for v in rule[field].as_array().into_iter().flatten() {
                    assert!(!v.as_str().unwrap_or_default().contains('*'), "wildcard in {} {}: {rule}", r["kind"], r["metadata"]["name"]);
                }
            }
        }
    }
    let by_name = |n: &str| *roles.iter().find(|r| r["metadata"]["name"] == n).unwrap_or_else(|| panic!("{n} rendered"));
    let operator_role = of_kind(&objs, "ClusterRoleBinding")[0]["roleRef"]["name"].as_str().unwrap().to_string();
    // Named after the release, as every cluster-scoped object of the chart: a second install
    // (another namespace's operator) must not collide with the first.
    let view = by_name(&format!("{operator_role}-view"));
    assert_eq!(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    assert_eq!(view["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));
    let edit = by_name(&format!("{operator_role}-edit"));
    assert_eq!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    let lease_role = of_kind(&objs, "Role")[0];
    assert_eq!(lease_role["metadata"]["namespace"], "locall-system");
    assert_eq!(lease_role["rules"][0]["resources"], serde_json::json!(["leases"]));
}

/// A release of `version` into `<ns>-stg` (staging) and `<ns>` (production), with a migration,
/// Gateway API traffic and a preflight Secret (as in tests/release.rs).
fn manifest(ns: &str, version: &str, label: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080}}
  template:
    spec: {{serviceAccountName: api, containers: [{{name: api, image: "locall/api:{version}"}}]}}
  preflight:
    secrets: [{{name: locall-db, keys: [url]}}]
    configMaps: [{{name: locall-config, keys: [region]}}]
  hooks:
    preDeploy: [{{name: tests}}]
    migration:
      changesSchema: true
      backup: {{command: [backup]}}
      migrate: {{command: [migrate]}}
      restore: {{command: [restore]}}
  stages:
  - {{name: staging, namespace: {ns}-stg, replicas: 1, verify: [{{name: e2e}}], steps: [{{weight: 100}}]}}
  - {{name: production, steps: [{{weight: 50, pause: 1s}}, {{weight: 100}}]}}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
"#
    )
}

/// The operator binary, run with `kubeconfig`, killed when dropped (or when the test thread that
/// spawned it exits, through PR_SET_PDEATHSIG, as in tests/support).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_operator(
    kubeconfig: &std::path::Path,
    selector: &str,
    lease_namespace: &str,
    lease: &str,
    log: &std::path::Path,
    metrics_port: u16,
    extra: &[String],
) -> Child {
    use std::os::unix::process::CommandExt;
    let f = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locall-operator"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info,kube=warn")
        .env("POD_NAME", "locall-operator-chart-test")
        .env("POD_NAMESPACE", lease_namespace)
        .args(["--leader-elect", "--lease-name", lease, "--lease-seconds", "10"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--release-selector", selector, "--log-format", "json"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Child(cmd.spawn().expect("spawn locall-operator"))
}

/// Removes what the test made outside its namespaces (the ClusterRole and ClusterRoleBinding named
/// after it, its kubeconfig), pass or fail.
struct Cleanup {
    cluster_role: String,
    kubeconfig: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let _ = kubectl(&["delete", "clusterrole,clusterrolebinding", &self.cluster_role, "--ignore-not-found"]);
    }
}

/// kubectl with the ServiceAccount's permissions (impersonated by the admin).
fn can_i(sa: &str, args: &[&str]) -> String {
    let mut a = vec!["auth", "can-i", "--as", sa];
    a.extend_from_slice(args);
    let (_, out, _) = kubectl(&a);
    out.trim().to_string()
}

// current_thread: the operator is spawned on the test's own thread, so PR_SET_PDEATHSIG kills it
// when the test ends, whatever happens.
#[tokio::test(flavor = "current_thread")]
async fn chart_rbac_is_enough_for_a_release_and_no_more() {
    rbac_is_enough(false).await;
}

/// The same with `watchNamespaces`: Roles in the served namespaces only, and a ClusterRole that
/// reads just those Namespace objects and reviews /metrics callers.
#[tokio::test(flavor = "current_thread")]
async fn namespaced_chart_rbac_is_enough_for_a_release_and_no_more() {
    rbac_is_enough(true).await;
}

async fn rbac_is_enough(namespaced: bool) {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "chart").await;
    let stg = format!("{ns}-stg");
    stage_namespace(&stg, &ns);
    // The pods run as the account api, which the stage namespace lends to this one.
    let (ok, _, err) = kubectl(&["annotate", "namespace", &stg, "locall.io/service-accounts=api"]);
    assert!(ok, "{err}");
    for n in [&ns, &stg] {
        let (ok, _, err) = kubectl(&["-n", n, "create", "serviceaccount", "api"]);
        assert!(ok, "{err}");
        let (ok, _, err) = kubectl(&["-n", n, "create", "secret", "generic", "locall-db", "--from-literal=url=postgres://db"]);
        assert!(ok, "{err}");
        let (ok, _, err) = kubectl(&["-n", n, "create", "configmap", "locall-config", "--from-literal=region=eu"]);
        assert!(ok, "{err}");
    }

    // The chart's RBAC objects, as `helm install <ns> --namespace <ns>` would create them (the
    // release name is the namespace, so cluster-scoped names are unique to this test).
    let served = format!("watchNamespaces={{{ns},{stg}}}");
    let set = ["--set", served.as_str()];
    let objs = render(&ns, &ns, if namespaced { &set } else { &[] });
    let rbac: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"].contains(&o["kind"].as_str().unwrap_or(""))
        })
        .collect();
    let expected = if namespaced { 12 } else { 8 };
    assert_eq!(
        rbac.len(),
        expected,
        "SA, operator + metrics-reader + view + edit ClusterRoles, ClusterRoleBinding, leader-election Role and RoleBinding (+ a Role and RoleBinding per served namespace)"
    );
    let yaml: String = rbac.iter().map(|o| format!("---\n{}\n", serde_yaml::to_string(o).unwrap())).collect();
    apply_yaml(&client, &ns, &yaml).await;
    let sa_name = of_kind(&objs, "ServiceAccount")[0]["metadata"]["name"].as_str().unwrap().to_string();
    let operator_role = of_kind(&objs, "ClusterRoleBinding")[0]["roleRef"]["name"].as_str().unwrap().to_string();
    let sa = format!("system:serviceaccount:{ns}:{sa_name}");
    let kc_path = cluster().dir.join(format!("kubeconfig-{ns}"));
    let _cleanup = Cleanup { cluster_role: operator_role.clone(), kubeconfig: kc_path.clone() };
    let _cleanup_reader = Cleanup { cluster_role: format!("{operator_role}-metrics-reader"), kubeconfig: kc_path.clone() };
    let _cleanup_view = Cleanup { cluster_role: format!("{operator_role}-view"), kubeconfig: kc_path.clone() };
    let _cleanup_edit = Cleanup { cluster_role: format!("{operator_role}-edit"), kubeconfig: kc_path.clone() };

    // A kubeconfig holding only the ServiceAccount's token.
    let token = service_account_kubeconfig(&ns, &sa_name, &kc_path);

    // No more than needed (the admin impersonates the ServiceAccount).
    assert_eq!(can_i(&sa, &["delete", "secrets", "-A"]), "no");
    assert_eq!(can_i(&sa, &["list", "secrets", "-A"]), "no");
    assert_eq!(can_i(&sa, &["list", "pods", "-A"]), "no");
    assert_eq!(can_i(&sa, &["create", "pods", "-n", &ns]), "no");
    assert_eq!(can_i(&sa, &["create", "locallreleases.locall.io", "-n", &ns]), "no");
    assert_eq!(can_i(&sa, &["get", "leases.coordination.k8s.io", "-n", &stg]), "no");
    assert_eq!(can_i(&sa, &["patch", "leases.coordination.k8s.io", "-n", &ns]), "yes");
    assert_eq!(can_i(&sa, &["delete", "leases.coordination.k8s.io", "-n", &ns]), "no");
    assert_eq!(can_i(&sa, &["get", "secrets", "-n", &stg]), "yes");
    if namespaced {
        assert_eq!(can_i(&sa, &["watch", "locallreleases.locall.io", "-A"]), "no");
        assert_eq!(can_i(&sa, &["watch", "locallreleases.locall.io", "-n", &ns]), "yes");
        assert_eq!(can_i(&sa, &["watch", "deployments", "-n", &stg]), "yes");
        assert_eq!(can_i(&sa, &["watch", "deployments", "-n", "default"]), "no");
        assert_eq!(can_i(&sa, &["get", "secrets", "-n", "default"]), "no");
        assert_eq!(can_i(&sa, &["list", "namespaces"]), "no");
        assert_eq!(can_i(&sa, &["get", &format!("namespace/{stg}")]), "yes");
        assert_eq!(can_i(&sa, &["get", "namespace/default"]), "no");
    } else {
        assert_eq!(can_i(&sa, &["watch", "locallreleases.locall.io", "-A"]), "yes");
    }

    // Enough: the operator binary, as the ServiceAccount, carries a release to Succeeded.
    let label = ns.clone();
    let log = cluster().dir.join(format!("logs/operator-{ns}.log"));
    // With leader election, as the chart runs it: the Lease lives in the release's namespace.
    let args: Vec<String> = of_kind(&objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let after = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    let lease = after("--lease-name").expect("--lease-name");
    assert_eq!(after("--metrics-auth").as_deref(), Some("kubernetes"));
    assert_eq!(after("--watch-namespaces"), namespaced.then(|| format!("{ns},{stg}")));
    let metrics_port = free_port();
    let mut extra = vec!["--metrics-auth".to_string(), "kubernetes".to_string()];
    extra.extend(after("--watch-namespaces").map(|w| ["--watch-namespaces".to_string(), w]).into_iter().flatten());
    let _op = start_operator(&kc_path, &format!("locall.io/operator={label}"), &ns, &lease, &log, metrics_port, &extra);
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", &label)).await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let lr = wait_for(
        Duration::from_secs(150),
        &format!("{ns}/locall-api to succeed with the chart's RBAC (log: {})", log.display()),
        || async {
            let lr = api.get_opt("locall-api").await.ok().flatten()?;
            let st = lr.status.as_ref()?;
            (st.phase == Phase::Succeeded && st.observed_generation == lr.metadata.generation).then_some(lr)
        },
    )
    .await;
    let (ok, holder, err) = kubectl(&["-n", &ns, "get", "lease", &lease, "-o", "jsonpath={.spec.holderIdentity}"]);
    assert!(ok && holder == "locall-operator-chart-test", "the operator holds the Lease {ns}/{lease}: {holder} {err}");
    let st = lr.status.unwrap();
    assert!(st.stable.as_ref().is_some_and(|s| s.version == "1.0.0"), "{:?}", st.stable);
    assert!(st.jobs.iter().any(|j| j.name == "migrate" && j.state == JobState::Succeeded), "the migration ran: {:?}", st.jobs);
    let (ok, route, err) = kubectl(&["-n", &ns, "get", "httproutes.gateway.networking.k8s.io", "locall-api", "-o", "name"]);
    assert!(ok && !route.is_empty(), "the HTTPRoute exists: {err}");

    // /metrics: 401 without a token, 403 for a user who may not read it (the operator's own
    // account), 200 for one who may (the admin); the operator asked the API server each time.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = reqwest::Client::new();
    let r = http.get(&url).send().await.expect("scrape");
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(&url).bearer_auth(token.trim()).send().await.expect("scrape");
    assert_eq!(r.status().as_u16(), 403, "{:?}", r.text().await);
    let r = http.get(&url).bearer_auth(admin_token()).send().await.expect("scrape");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("locall_"), "the operator's metrics");

    // Deleting the release runs the finalizer's cleanup, also as the ServiceAccount.
    let (ok, _, err) = kubectl(&["-n", &ns, "delete", "locallrelease", "locall-api", "--wait=true", "--timeout=60s"]);
    assert!(ok, "release deleted (finalizer done): {err}");
    // The staging namespace's children have no owner reference (it cannot cross namespaces): only
    // the finalizer removes them, and it swallows errors, so check they are gone.
    wait_for(Duration::from_secs(30), &format!("the finalizer to remove the children in {stg}"), || async {
        let (ok, out, _) = kubectl(&["-n", &stg, "get", "deployments,jobs,services,httproutes.gateway.networking.k8s.io", "-o", "name"]);
        (ok && out.trim().is_empty()).then_some(())
    })
    .await;
    // Nothing granted that the operator did not use: the API server's audit log (tests/cluster/up
    // logs what ServiceAccounts call) against the rendered rules.
    let granted = granted_rules(&objs);
    let used = wait_for(Duration::from_secs(20), "the audit log to show the finalizer's deletes", || async {
        let used = audit_calls(&sa);
        used.iter().any(|(_, r, v)| r == "deployments" && v == "delete").then_some(used)
    })
    .await;
    let not_granted: Vec<_> = used.difference(&granted).collect();
    assert!(not_granted.is_empty(), "calls outside the rules: {not_granted:?}");
    let unused: Vec<_> = granted
        .difference(&used)
        .filter(|g| !UNEXERCISED.iter().any(|(group, res, verb, _)| (*group, *res, *verb) == (g.0.as_str(), g.1.as_str(), g.2.as_str())))
        .collect();
    assert!(unused.is_empty(), "granted but never used by the operator (remove them from the chart): {unused:?}");

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let denied: Vec<&str> = text.lines().filter(|l| l.contains("forbidden") || l.contains("Forbidden") || l.contains(" 403")).collect();
    assert!(denied.is_empty(), "the operator was denied something with the chart's RBAC:\n{}", denied.join("\n"));
}

/// Rules the chart grants that one release cannot exercise, and why they stay.
const UNEXERCISED: &[(&str, &str, &str, &str)] = &[
    ("locall.io", "locallreleases/finalizers", "update", "checked by the OwnerReferencesPermissionEnforcement admission plugin when children get a blockOwnerDeletion owner reference; not a request of its own"),
    ("events.k8s.io", "events", "patch", "the event recorder patches an Event when the same one repeats (a series)"),
    (
        "",
        "services",
        "get",
        "a Service is read from the API server only when its watch cache cannot be believed (not listed yet, or not yet showing \
         the operator's own latest write of it): a release that goes smoothly reads none",
    ),
];

/// (apiGroup, resource[/subresource], verb) granted by the rendered operator ClusterRole and Role.
fn granted_rules(objs: &[Value]) -> std::collections::BTreeSet<(String, String, String)> {
    let mut out = std::collections::BTreeSet::new();
    let operator_role = of_kind(objs, "ClusterRoleBinding")[0]["roleRef"]["name"].as_str().unwrap().to_string();
    let roles =
        objs.iter().filter(|o| (o["kind"] == "ClusterRole" && o["metadata"]["name"] == operator_role.as_str()) || o["kind"] == "Role");
    for role in roles {
        for rule in role["rules"].as_array().unwrap() {
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        out.insert((g.as_str().unwrap().into(), r.as_str().unwrap().into(), v.as_str().unwrap().into()));
                    }
                }
            }
        }
    }
    out
}

/// (apiGroup, resource[/subresource], verb) the user called, from the API server's audit log. A
/// server-side apply that created its object (201) needed `create` as well as `patch`.
fn audit_calls(user: &str) -> std::collections::BTreeSet<(String, String, String)> {
    let path = cluster().dir.join("logs/audit.log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (is the cluster started by this tests/cluster/up?)", path.display()));
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<Value>(line) else { continue };
        if ev["user"]["username"] != user || ev["objectRef"].is_null() {
            continue;
        }
        let code = ev["responseStatus"]["code"].as_i64().unwrap_or(0);
        if code == 403 {
            continue;
        }
        let group = ev["objectRef"]["apiGroup"].as_str().unwrap_or("").to_string();
        let mut resource = ev["objectRef"]["resource"].as_str().unwrap_or("").to_string();
        if let Some(sub) = ev["objectRef"]["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = ev["verb"].as_str().unwrap_or("").to_string();
        if verb == "patch" && code == 201 {
            out.insert((group.clone(), resource.clone(), "create".to_string()));
        }
        out.insert((group, resource, verb));
    }
    out
}

/// Approvals signed by the API server: the chart's admission policies, applied to the local
/// cluster (bound to this test's namespace only), refuse an approval recorded in someone else's
/// name (annotation and `spec.approvals`), an approver outside the stage's groups, a request
/// signed for someone else, an edit lowering a stage's approval requirement and a forged
/// requested-by; a trusted GitOps identity may record approvals as in git; the API server
/// records who changed the version; `kubectl locall approve` fills in the caller's identity.
#[tokio::test]
async fn approvals_are_signed_by_the_api_server() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "approvals").await;
    let objs = render(
        &format!("appr-{ns}"),
        &ns,
        &[
            "--set-string",
            // The API server sets this label when the namespace is created.
            &format!(r"approvalPolicy.namespaceSelector.matchLabels.kubernetes\.io/metadata\.name={ns}"),
            "--set",
            "approvalPolicy.trustedIdentities={gitops-bot}",
            // The local cluster serves MutatingAdmissionPolicy (beta, enabled by tests/cluster/up).
            "--api-versions",
            "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy",
        ],
    );
    let policy: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            o["kind"].as_str().is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy") || k.starts_with("MutatingAdmissionPolicy"))
        })
        .collect();
    assert_eq!(policy.len(), 4, "the validating and the mutating policy, with their bindings");
    apply_yaml(&client, &ns, &policy.iter().map(|o| serde_yaml::to_string(o).unwrap()).collect::<Vec<_>>().join("---\n")).await;
    let release = format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: none}}}}
spec:
  version: "1.0.0"
  template: {{spec: {{containers: [{{name: api, image: "locall/api:1.0.0"}}]}}}}
  stages:
  - {{name: staging, namespace: {ns}-stg, approval: true}}
  - {{name: production, approval: true, approvers: {{required: 2, groups: [release-managers]}}}}
  traffic: {{method: ReplicaRatio}}
"#
    );
    apply_yaml(&client, &ns, &release).await;
    // alice, carol and gitops-bot may edit LocallReleases here.
    for (what, args) in [
        ("role", vec!["create", "role", "lr-editor", "--verb=get,patch,update", "--resource=locallreleases.locall.io"]),
        ("binding", vec!["create", "rolebinding", "lr-editors", "--role=lr-editor", "--user=alice", "--user=carol", "--user=gitops-bot"]),
    ] {
        let mut a = vec!["-n", ns.as_str()];
        a.extend(args);
        let (ok, _, err) = kubectl(&a);
        assert!(ok, "{what}: {err}");
    }
    let approve = |by: &str, stage: &str| format!(r#"locall.io/approve={{"by":"{by}","stage":"{stage}","version":"1.0.0"}}"#);
    let as_user = |user: &str, groups: &[&str], args: &[&str]| {
        let mut a = vec!["-n", ns.as_str(), "--as", user];
        for g in groups {
            a.extend(["--as-group", g]);
        }
        a.extend_from_slice(args);
        kubectl(&a)
    };
    let annotate =
        |user: &str, groups: &[&str], value: &str| as_user(user, groups, &["annotate", "--overwrite", "lr", "locall-api", value]);
    // The policy takes effect within seconds of being created. Probed with server-side dry runs:
    // an approval that got through before the policy was active would make every later identical
    // write an unchanged annotation, which the policy rightly lets through.
    let since = std::time::Instant::now();
    let refused = wait_for(Duration::from_secs(30), "the policy to refuse alice approving as bob", || async {
        let (ok, _, err) =
            as_user("alice", &[], &["annotate", "--dry-run=server", "--overwrite", "lr", "locall-api", &approve("bob", "staging")]);
        (!ok).then_some(err)
    })
    .await;
    println!("the approval policy was enforced {:.1} s after it was created", since.elapsed().as_secs_f64());
    let (ok, _, err) = annotate("alice", &[], &approve("bob", "staging"));
    assert!(!ok && err == refused, "{err}");
    assert!(refused.contains(r#""by" must be "alice""#) && refused.contains("metadata.annotations[locall.io/approve]"), "{refused}");
    // Not the exact form the plugin writes (a second "by", spaces): refused too.
    let (ok, _, err) = annotate("alice", &[], r#"locall.io/approve={"by" : "bob", "stage":"staging","version":"1.0.0"}"#);
    assert!(!ok && err.contains(r#""by" must be "alice""#), "{err}");
    let (ok, _, err) = annotate("alice", &[], &approve("alice", "staging"));
    assert!(ok, "alice approves staging as herself: {err}");
    // production names its approvers' group: alice outside it is refused, inside it accepted.
    let (ok, _, err) = annotate("alice", &[], &approve("alice", "production"));
    assert!(!ok && err.contains("none of the groups") && err.contains("production: release-managers"), "{err}");
    let (ok, _, err) = annotate("alice", &["release-managers"], &approve("alice", "production"));
    assert!(ok, "alice in release-managers approves production: {err}");
    // spec.approvals: a new entry in someone else's name is refused, one's own accepted, and the
    // stage's groups hold there too.
    let approvals = |entries: &[(&str, &str)]| {
        let list: Vec<String> =
            entries.iter().map(|(stage, by)| format!(r#"{{"stage":"{stage}","version":"1.0.0","by":"{by}"}}"#)).collect();
        format!(r#"{{"spec":{{"approvals":[{}]}}}}"#, list.join(","))
    };
    let patch = |user: &str, groups: &[&str], p: &str| as_user(user, groups, &["patch", "lr", "locall-api", "--type=merge", "-p", p]);
    let (ok, _, err) = patch("alice", &[], &approvals(&[("staging", "bob")]));
    assert!(!ok && err.contains("spec.approvals") && err.contains(r#""alice""#), "{err}");
    let (ok, _, err) = patch("carol", &[], &approvals(&[("production", "carol")]));
    assert!(!ok && err.contains("spec.approvals") && err.contains("approvers.groups"), "carol is not a release manager: {err}");
    let (ok, _, err) = patch("carol", &["release-managers"], &approvals(&[("production", "carol")]));
    assert!(ok, "{err}");
    // A trusted GitOps identity records approvals as written in git.
    let (ok, _, err) = patch("gitops-bot", &[], &approvals(&[("production", "carol"), ("production", "dave")]));
    assert!(ok, "{err}");
    // Requests (rollback, retry, promote, abort) are signed by their maker too.
    let request = |by: &str| format!(r#"locall.io/request={{"action":"promote","by":"{by}","id":"r-{by}"}}"#);
    let (ok, _, err) = annotate("alice", &[], &request("bob"));
    assert!(!ok && err.contains("metadata.annotations[locall.io/request]"), "{err}");
    let (ok, _, err) = annotate("alice", &[], &request("alice"));
    assert!(ok, "{err}");
    // Lowering a stage's approval requirement is not for a namespace editor; git may.
    let stages = |required: u8| {
        format!(
            r#"{{"spec":{{"stages":[{{"name":"staging","namespace":"{ns}-stg","approval":true}},{{"name":"production","approval":true,"approvers":{{"required":{required},"groups":["release-managers"]}}}}]}}}}"#
        )
    };
    let (ok, _, err) = patch("alice", &["release-managers"], &stages(1));
    assert!(!ok && err.contains("spec.stages: lowering"), "{err}");
    let (ok, _, err) = patch("alice", &[], &stages(3));
    assert!(ok, "raising it is fine: {err}");
    let (ok, _, err) = patch("gitops-bot", &[], &stages(2));
    assert!(ok, "{err}");
    // The API server records who changed the version; nobody can write it for someone else.
    let (ok, _, err) = patch("alice", &[], r#"{"spec":{"version":"1.1.0"}}"#);
    assert!(ok, "{err}");
    let lr: LocallRelease = Api::namespaced(client.clone(), &ns).get("locall-api").await.unwrap();
    let a = lr.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        (a.get("locall.io/requested-by").map(String::as_str), a.get("locall.io/requested-version").map(String::as_str)),
        (Some("alice"), Some("1.1.0"))
    );
    let (ok, _, err) = patch("carol", &[], r#"{"metadata":{"annotations":{"locall.io/requested-by":"bob"}}}"#);
    assert!(!ok && err.contains("metadata.annotations[locall.io/requested-by]"), "{err}");
    let (ok, _, err) = patch("carol", &[], r#"{"spec":{"version":"1.2.0"},"metadata":{"annotations":{"locall.io/requested-by":"alice"}}}"#);
    assert!(ok, "{err}");
    let lr: LocallRelease = Api::namespaced(client.clone(), &ns).get("locall-api").await.unwrap();
    let a = lr.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(a.get("locall.io/requested-by").map(String::as_str), Some("carol"), "the API server writes who really changed it");
    // The plugin records the caller's identity, as the API server knows it (the admin here), for
    // approvals and requests alike, whatever $USER says.
    let plugin = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-locall"))
            .arg("--kubeconfig")
            .arg(&cluster().kubeconfig)
            .args(["-n", &ns])
            .args(args)
            .env_remove("KUBECONFIG")
            .env("USER", "somebody-else")
            .output()
            .expect("run kubectl-locall");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("by admin"), "{stdout}");
    };
    plugin(&["approve", "locall-api", "--stage", "staging"]);
    let lr: LocallRelease = Api::namespaced(client.clone(), &ns).get("locall-api").await.unwrap();
    let value = &lr.metadata.annotations.unwrap()["locall.io/approve"];
    assert_eq!(value, r#"{"by":"admin","stage":"staging","version":"1.2.0"}"#);
    plugin(&["rollback", "locall-api"]);
    let lr: LocallRelease = Api::namespaced(client.clone(), &ns).get("locall-api").await.unwrap();
    let value: Value = serde_json::from_str(&lr.metadata.annotations.unwrap()["locall.io/request"]).unwrap();
    assert_eq!((value["action"].as_str(), value["by"].as_str()), (Some("rollback"), Some("admin")), "{value}");
    // The policies are this test's: removed with it.
    for o in &policy {
        let kind = o["kind"].as_str().unwrap().to_lowercase();
        let _ = kubectl(&["delete", &format!("{kind}.admissionregistration.k8s.io"), o["metadata"]["name"].as_str().unwrap()]);
    }
}
