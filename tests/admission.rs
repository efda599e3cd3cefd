//! What the API server itself accepts and refuses, with the CRD from `crds/locallreleases.yaml`
//! installed: every example under `examples/` passes server-side validation, and each mistake a
//! user can make in a LocallRelease is rejected at admission with an error naming the field.

mod support;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams},
    Client,
};
use locall_operator::api::Dur;
use serde_json::{json, Value};
use std::path::Path;
use support::*;

/// Creates the namespace unless it exists.
async fn ensure_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// Every `.yaml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_example_passes_server_side_validation() {
    let client = client().await;
    install_crd().await;
    let files = yaml_files(&repo().join("examples"));
    let names: Vec<String> = files.iter().map(|f| f.strip_prefix(repo()).unwrap().display().to_string()).collect();
    for expected in [
        "examples/demo/namespaces.yaml",
        "examples/demo/release-v1.yaml",
        "examples/demo/release-v2.yaml",
        "examples/demo/migration-fails.yaml",
        "examples/demo/release-v3-bad.yaml",
        "examples/locall-api.yaml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} is missing; found {names:?}");
    }

    // The namespaces the examples name (as Namespace objects or as metadata.namespace).
    let mut namespaces = std::collections::BTreeSet::new();
    let mut releases = 0;
    for (file, name) in files.iter().zip(&names) {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.starts_with('#'), "{name} starts with a header comment saying what it shows and how to apply it");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if v.is_null() {
                continue;
            }
            if v["kind"] == "Namespace" {
                namespaces.insert(v["metadata"]["name"].as_str().expect("namespace name").to_string());
            }
            if let Some(ns) = v["metadata"]["namespace"].as_str() {
                namespaces.insert(ns.to_string());
            }
            releases += usize::from(v["kind"] == "LocallRelease");
        }
    }
    assert!(releases >= 5, "{releases} LocallReleases in the examples");
    for ns in &namespaces {
        ensure_namespace(&client, ns).await;
    }
    // The demo's namespaces, Secrets and ConfigMaps are harmless to apply for real.
    let (ok, out, err) = kubectl(&["apply", "-f", repo().join("examples/demo/namespaces.yaml").to_str().unwrap()]);
    assert!(ok, "apply examples/demo/namespaces.yaml:\n{out}{err}");

    let mut failures = vec![];
    for (file, name) in files.iter().zip(&names) {
        // Strict: an unknown or misspelt field fails too instead of being pruned silently.
        let (ok, out, err) = kubectl(&["apply", "--dry-run=server", "--validate=strict", "-f", file.to_str().unwrap()]);
        println!("{name}:\n{out}{err}");
        if !ok || !err.trim().is_empty() {
            failures.push(format!("{name}: {}", err.trim()));
        }
    }
    assert!(failures.is_empty(), "examples refused by the API server:\n{}", failures.join("\n"));
}

/// A valid release that uses every field the invalid cases below break.
const BASE: &str = r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata:
  name: admission
spec:
  version: 1.0.0
  replicas: 2
  template:
    spec:
      containers:
      - name: api
        image: registry.locall.io/locall-api:1.0.0
  service:
    port: 8080
  preflight:
    secrets:
    - {name: locall-db, keys: [url]}
    tls:
    - {secretName: locall-api-tls, minValidity: 720h}
  hooks:
    preDeploy:
    - {name: tests, command: [make, test], retries: 1, timeout: 10m}
    - {name: cache-clear}
    migration:
      changesSchema: true
      backup: {command: [backup]}
      migrate: {command: [migrate], retries: 0}
      restore: {command: [restore]}
    postDeploy:
    - {name: enable-alerts}
  stages:
  - name: staging
    namespace: admission-staging
    replicas: 1
    verify: [{name: e2e}]
    steps: [{weight: 100}]
  - name: production
    approval: true
    steps:
    - {weight: 10, pause: 20s}
    - {weight: 50, pause: 1m}
    - {weight: 100}
  traffic:
    method: GatewayAPI
    gateway: {name: locall-gateway}
"#;

fn base() -> Value {
    serde_yaml::from_str(BASE).expect("BASE parses")
}

/// Sets the value at a JSON pointer, creating the last key if needed.
fn set(v: &mut Value, pointer: &str, x: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in BASE"));
    match parent {
        Value::Object(m) => {
            m.insert(key.to_string(), x);
        }
        Value::Array(l) => l[key.parse::<usize>().expect("an index")] = x,
        _ => panic!("{pointer}: parent is not a container"),
    }
}

/// Removes the key at a JSON pointer.
fn remove(v: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let removed = v.pointer_mut(parent).and_then(Value::as_object_mut).and_then(|m| m.remove(key));
    assert!(removed.is_some(), "no {pointer} in BASE");
}

/// A metric with a rollback trigger, named `name`.
fn metric(name: &str) -> Value {
    json!({"name": name, "query": "sum(rate(errors[1m]))", "rollback": {"op": ">", "value": 0.05}})
}

/// An analysis of the given metrics.
fn analysis(metrics: Value) -> Value {
    json!({"interval": "10s", "metrics": metrics})
}

/// A go-live window.
fn window(name: &str, duration: &str, interval: &str) -> Value {
    json!({"name": name, "duration": duration, "interval": interval})
}

/// A notification target named `name`.
fn notification(name: &str) -> Value {
    json!({"name": name, "format": "Slack", "urlSecret": {"name": "hooks", "key": "slack"}})
}

/// A change to BASE.
type Edit = fn(&mut Value);

/// One mistake: what it is, how it changes BASE, and the field path the API server must name.
struct Case {
    what: &'static str,
    edit: Edit,
    path: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case { what: "missing stages", edit: |v| remove(v, "/spec/stages"), path: "spec.stages" },
        Case { what: "empty stages list", edit: |v| set(v, "/spec/stages", json!([])), path: "spec.stages" },
        Case { what: "step weight 0", edit: |v| set(v, "/spec/stages/0/steps/0/weight", json!(0)), path: "spec.stages[0].steps[0].weight" },
        Case {
            what: "step weight 101",
            edit: |v| set(v, "/spec/stages/1/steps/2/weight", json!(101)),
            path: "spec.stages[1].steps[2].weight",
        },
        Case {
            what: "last step not 100",
            edit: |v| set(v, "/spec/stages/1/steps", json!([{"weight": 10}, {"weight": 50}])),
            path: "spec.stages[1].steps",
        },
        Case { what: "duplicate stage names", edit: |v| set(v, "/spec/stages/1/name", json!("staging")), path: "spec.stages[1]" },
        Case {
            what: "duplicate step weights",
            edit: |v| set(v, "/spec/stages/1/steps", json!([{"weight": 50}, {"weight": 50}, {"weight": 100}])),
            path: "spec.stages[1].steps",
        },
        Case {
            what: "bad step pause `5x`",
            edit: |v| set(v, "/spec/stages/1/steps/0/pause", json!("5x")),
            path: "spec.stages[1].steps[0].pause",
        },
        Case {
            what: "bad TLS minValidity `30d`",
            edit: |v| set(v, "/spec/preflight/tls/0/minValidity", json!("30d")),
            path: "spec.preflight.tls[0].minValidity",
        },
        Case {
            what: "bad Job timeout `1.5h`",
            edit: |v| set(v, "/spec/hooks/preDeploy/0/timeout", json!("1.5h")),
            path: "spec.hooks.preDeploy[0].timeout",
        },
        Case { what: "replicas 0", edit: |v| set(v, "/spec/replicas", json!(0)), path: "spec.replicas" },
        Case { what: "stage replicas 0", edit: |v| set(v, "/spec/stages/0/replicas", json!(0)), path: "spec.stages[0].replicas" },
        Case { what: "missing version", edit: |v| remove(v, "/spec/version"), path: "spec.version" },
        Case { what: "version with spaces", edit: |v| set(v, "/spec/version", json!("2.0 beta")), path: "spec.version" },
        Case { what: "empty version", edit: |v| set(v, "/spec/version", json!("")), path: "spec.version" },
        Case { what: "GatewayAPI without gateway", edit: |v| remove(v, "/spec/traffic/gateway"), path: "spec.traffic.gateway" },
        Case {
            what: "ReplicaRatio with a gateway",
            edit: |v| set(v, "/spec/traffic/method", json!("ReplicaRatio")),
            path: "spec.traffic.gateway",
        },
        Case { what: "unknown traffic method", edit: |v| set(v, "/spec/traffic/method", json!("Istio")), path: "spec.traffic.method" },
        Case {
            what: "duplicate preDeploy Job names",
            edit: |v| set(v, "/spec/hooks/preDeploy/1/name", json!("tests")),
            path: "spec.hooks.preDeploy[1]",
        },
        Case {
            what: "preDeploy Job name with uppercase",
            edit: |v| set(v, "/spec/hooks/preDeploy/0/name", json!("Tests")),
            path: "spec.hooks.preDeploy[0].name",
        },
        Case {
            what: "verify Job name with uppercase",
            edit: |v| set(v, "/spec/stages/0/verify/0/name", json!("E2E")),
            path: "spec.stages[0].verify[0].name",
        },
        Case {
            what: "negative preDeploy retries",
            edit: |v| set(v, "/spec/hooks/preDeploy/0/retries", json!(-1)),
            path: "spec.hooks.preDeploy[0].retries",
        },
        Case {
            what: "negative migrate retries",
            edit: |v| set(v, "/spec/hooks/migration/migrate/retries", json!(-1)),
            path: "spec.hooks.migration.migrate.retries",
        },
        Case {
            what: "invalid stage namespace",
            edit: |v| set(v, "/spec/stages/0/namespace", json!("Staging_NS")),
            path: "spec.stages[0].namespace",
        },
        Case { what: "service port 0", edit: |v| set(v, "/spec/service/port", json!(0)), path: "spec.service.port" },
        Case { what: "missing template", edit: |v| remove(v, "/spec/template"), path: "spec.template" },
        Case {
            what: "template and components both",
            edit: |v| {
                set(v, "/spec/components", json!([{"name": "api", "template": {"spec": {"containers": [{"name": "api", "image": "a"}]}}}]))
            },
            path: "spec.template",
        },
        Case {
            what: "component without an image",
            edit: |v| {
                remove(v, "/spec/template");
                set(v, "/spec/components", json!([{"name": "api", "template": {"spec": {"containers": [{"name": "api"}]}}}]));
            },
            path: "spec.components[0].template.spec.containers[0].image",
        },
        Case {
            what: "component without containers",
            edit: |v| {
                remove(v, "/spec/template");
                set(v, "/spec/components", json!([{"name": "api", "template": {"spec": {"containers": []}}}]));
            },
            path: "spec.components[0].template.spec.containers",
        },
        Case {
            what: "component name with capitals",
            edit: |v| {
                remove(v, "/spec/template");
                set(v, "/spec/components", json!([{"name": "API", "template": {"spec": {"containers": [{"name": "api", "image": "a"}]}}}]));
            },
            path: "spec.components[0].name",
        },
        Case {
            what: "component after an unknown component",
            edit: |v| {
                remove(v, "/spec/template");
                set(
                    v,
                    "/spec/components",
                    json!([{"name": "worker", "after": ["api"], "template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}}]),
                );
            },
            path: "spec.components",
        },
        Case {
            what: "two components with one name",
            edit: |v| {
                remove(v, "/spec/template");
                let c = json!({"name": "api", "template": {"spec": {"containers": [{"name": "api", "image": "a"}]}}});
                set(v, "/spec/components", json!([c.clone(), c]));
            },
            path: "spec.components[1]",
        },
        Case {
            what: "metric gating an unknown component",
            edit: |v| {
                remove(v, "/spec/template");
                set(v, "/spec/components", json!([{"name": "api", "template": {"spec": {"containers": [{"name": "api", "image": "a"}]}}}]));
                set(
                    v,
                    "/spec/analysis",
                    json!({"metrics": [{"name": "e", "query": "q", "component": "worker", "rollback": {"op": ">", "value": 1}}]}),
                );
            },
            path: "spec.analysis.metrics",
        },
        Case { what: "replicas as a string", edit: |v| set(v, "/spec/replicas", json!("three")), path: "spec.replicas" },
        Case {
            what: "weight as a string",
            edit: |v| set(v, "/spec/stages/1/steps/0/weight", json!("ten")),
            path: "spec.stages[1].steps[0].weight",
        },
        Case {
            what: "analysis without metrics",
            edit: |v| set(v, "/spec/analysis", json!({"metrics": []})),
            path: "spec.analysis.metrics",
        },
        Case {
            what: "metric with an empty query",
            edit: |v| {
                set(v, "/spec/analysis", json!({"metrics": [{"name": "error-rate", "query": "", "rollback": {"op": ">", "value": 0.05}}]}))
            },
            path: "spec.analysis.metrics[0].query",
        },
        Case {
            what: "metric name with uppercase",
            edit: |v| {
                set(v, "/spec/analysis", json!({"metrics": [{"name": "ErrorRate", "query": "q", "rollback": {"op": ">", "value": 0.05}}]}))
            },
            path: "spec.analysis.metrics[0].name",
        },
        Case {
            what: "metric without a success criterion or a rollback trigger",
            edit: |v| set(v, "/spec/analysis", json!({"metrics": [{"name": "e", "query": "q"}]})),
            path: "spec.analysis.metrics[0]",
        },
        Case {
            what: "unknown threshold operator",
            edit: |v| set(v, "/spec/analysis", json!({"metrics": [{"name": "e", "query": "q", "rollback": {"op": "=~", "value": 1}}]})),
            path: "spec.analysis.metrics[0].rollback.op",
        },
        Case {
            what: "consecutive 0",
            edit: |v| {
                set(
                    v,
                    "/spec/analysis",
                    json!({"metrics": [{"name": "e", "query": "q", "rollback": {"op": ">", "value": 1}, "consecutive": 0}]}),
                )
            },
            path: "spec.analysis.metrics[0].consecutive",
        },
        Case {
            what: "unknown no-data policy",
            edit: |v| {
                set(
                    v,
                    "/spec/analysis",
                    json!({"metrics": [{"name": "e", "query": "q", "rollback": {"op": ">", "value": 1}, "noData": "Ignore"}]}),
                )
            },
            path: "spec.analysis.metrics[0].noData",
        },
        Case {
            what: "negative minimum sample",
            edit: |v| {
                set(
                    v,
                    "/spec/analysis",
                    json!({"metrics": [{"name": "e", "query": "q", "rollback": {"op": ">", "value": 1}, "minSample": -1}]}),
                )
            },
            path: "spec.analysis.metrics[0].minSample",
        },
        Case {
            what: "bad analysis interval",
            edit: |v| {
                set(
                    v,
                    "/spec/analysis",
                    json!({"interval": "soon", "metrics": [{"name": "e", "query": "q", "rollback": {"op": ">", "value": 1}}]}),
                )
            },
            path: "spec.analysis.interval",
        },
        Case {
            what: "go-live window with a bad duration",
            edit: |v| set(v, "/spec/goLive", json!({"windows": [{"name": "0-15m", "duration": "15 minutes", "interval": "1m"}]})),
            path: "spec.goLive.windows[0].duration",
        },
        Case {
            what: "unknown notification format",
            edit: |v| set(v, "/spec/notifications", json!([{"name": "n", "format": "Email", "urlSecret": {"name": "s", "key": "k"}}])),
            path: "spec.notifications[0].format",
        },
        Case {
            what: "notification Secret without a key",
            edit: |v| set(v, "/spec/notifications", json!([{"name": "n", "format": "Slack", "urlSecret": {"name": "s"}}])),
            path: "spec.notifications[0].urlSecret.key",
        },
        Case {
            what: "approval without who",
            edit: |v| set(v, "/spec/approvals", json!([{"stage": "production", "version": "1.0.0"}])),
            path: "spec.approvals[0].by",
        },
        Case {
            what: "approvers on a stage without approval",
            edit: |v| set(v, "/spec/stages/0/approvers", json!({"required": 2})),
            path: "spec.stages[0].approvers",
        },
        Case {
            what: "six approvers required",
            edit: |v| set(v, "/spec/stages/1/approvers", json!({"required": 6})),
            path: "spec.stages[1].approvers.required",
        },
        Case {
            what: "an empty approver group",
            edit: |v| set(v, "/spec/stages/1/approvers", json!({"groups": [""]})),
            path: "spec.stages[1].approvers.groups[0]",
        },
        Case {
            what: "duplicate verify Job names",
            edit: |v| set(v, "/spec/stages/0/verify", json!([{"name": "e2e"}, {"name": "e2e"}])),
            path: "spec.stages[0].verify[1]",
        },
        Case {
            what: "duplicate postDeploy Job names",
            edit: |v| set(v, "/spec/hooks/postDeploy", json!([{"name": "alerts"}, {"name": "alerts"}])),
            path: "spec.hooks.postDeploy[1]",
        },
        Case {
            what: "schema-changing migration without a restore Job",
            edit: |v| remove(v, "/spec/hooks/migration/restore"),
            path: "spec.hooks.migration.restore",
        },
        Case {
            what: "approval for a stage that does not exist",
            edit: |v| set(v, "/spec/approvals", json!([{"stage": "prod", "version": "1.0.0", "by": "alice"}])),
            path: "spec.approvals",
        },
        Case {
            what: "pod template without containers",
            edit: |v| remove(v, "/spec/template/spec/containers"),
            path: "spec.template.spec.containers",
        },
        // Durations: bounded, so the engine's time arithmetic never overflows and every admitted
        // string parses; intervals and windows never zero.
        Case {
            what: "pause of 2300000000h",
            edit: |v| set(v, "/spec/stages/1/steps/0/pause", json!("2300000000h")),
            path: "spec.stages[1].steps[0].pause",
        },
        Case {
            what: "Job timeout of 99999999999s",
            edit: |v| set(v, "/spec/hooks/preDeploy/0/timeout", json!("99999999999s")),
            path: "spec.hooks.preDeploy[0].timeout",
        },
        Case {
            what: "TLS minValidity of 9000h (more than a year)",
            edit: |v| set(v, "/spec/preflight/tls/0/minValidity", json!("9000h")),
            path: "spec.preflight.tls[0].minValidity",
        },
        Case {
            what: "pause with a 7-digit number",
            edit: |v| set(v, "/spec/stages/1/steps/0/pause", json!("1000000ms")),
            path: "spec.stages[1].steps[0].pause",
        },
        Case {
            what: "duration longer than 20 characters",
            edit: |v| set(v, "/spec/hooks/migration/backup/timeout", json!("1h1h1h1h1h1h1h1h1h1h1h")),
            path: "spec.hooks.migration.backup.timeout",
        },
        Case {
            what: "restore timeout over a year in minutes",
            edit: |v| set(v, "/spec/hooks/migration/restore/timeout", json!("525601m")),
            path: "spec.hooks.migration.restore.timeout",
        },
        Case {
            what: "analysis interval 0s",
            edit: |v| set(v, "/spec/analysis", json!({"interval": "0s", "metrics": [metric("e")]})),
            path: "spec.analysis.interval",
        },
        Case {
            what: "metric interval 500ms",
            edit: |v| {
                let mut m = metric("e");
                m["interval"] = json!("500ms");
                set(v, "/spec/analysis", analysis(json!([m])));
            },
            path: "spec.analysis.metrics[0].interval",
        },
        Case {
            what: "go-live window of 0s",
            edit: |v| set(v, "/spec/goLive", json!({"windows": [window("0-15m", "0s", "1s")]})),
            path: "spec.goLive.windows[0].duration",
        },
        Case {
            what: "go-live window measured every 0s",
            edit: |v| set(v, "/spec/goLive", json!({"windows": [window("0-15m", "15m", "1m"), window("15m-2h", "1h45m", "0ms")]})),
            path: "spec.goLive.windows[1].interval",
        },
        Case {
            what: "go-live window longer than a year",
            edit: |v| set(v, "/spec/goLive", json!({"windows": [window("forever", "9000h", "1h")]})),
            path: "spec.goLive.windows[0].duration",
        },
        // Names: unique in their lists (the API server names the second), never `--`.
        Case {
            what: "duplicate metric names",
            edit: |v| set(v, "/spec/analysis", analysis(json!([metric("error-rate"), metric("latency"), metric("error-rate")]))),
            path: "spec.analysis.metrics[2]",
        },
        Case {
            what: "duplicate rollback verify Job names",
            edit: |v| set(v, "/spec/rollback", json!({"verify": [{"name": "smoke"}, {"name": "smoke"}]})),
            path: "spec.rollback.verify[1]",
        },
        Case {
            what: "duplicate notification names",
            edit: |v| set(v, "/spec/notifications", json!([notification("eng"), notification("eng")])),
            path: "spec.notifications[1]",
        },
        Case {
            what: "duplicate go-live window names",
            edit: |v| set(v, "/spec/goLive", json!({"windows": [window("w", "15m", "1m"), window("w", "1h", "5m")]})),
            path: "spec.goLive.windows[1]",
        },
        Case { what: "stage name with --", edit: |v| set(v, "/spec/stages/0/name", json!("pre--prod")), path: "spec.stages[0].name" },
        Case {
            what: "preDeploy Job name with --",
            edit: |v| set(v, "/spec/hooks/preDeploy/1/name", json!("cache--clear")),
            path: "spec.hooks.preDeploy[1].name",
        },
        Case {
            what: "postDeploy Job name with --",
            edit: |v| set(v, "/spec/hooks/postDeploy/0/name", json!("enable--alerts")),
            path: "spec.hooks.postDeploy[0].name",
        },
        Case {
            what: "verify Job name with --",
            edit: |v| set(v, "/spec/stages/0/verify/0/name", json!("e2e--full")),
            path: "spec.stages[0].verify[0].name",
        },
        Case {
            what: "rollback verify Job name with --",
            edit: |v| set(v, "/spec/rollback", json!({"verify": [{"name": "smoke--test"}]})),
            path: "spec.rollback.verify[0].name",
        },
        Case {
            what: "metric name with --",
            edit: |v| set(v, "/spec/analysis", analysis(json!([metric("error--rate")]))),
            path: "spec.analysis.metrics[0].name",
        },
        Case { what: "stage name ending in -", edit: |v| set(v, "/spec/stages/0/name", json!("staging-")), path: "spec.stages[0].name" },
        // Each stage in its own namespace.
        Case {
            what: "two stages in the same namespace",
            edit: |v| set(v, "/spec/stages/1/namespace", json!("admission-staging")),
            path: "spec.stages",
        },
        Case {
            what: "two stages without a namespace (both the release's)",
            edit: |v| remove(v, "/spec/stages/0/namespace"),
            path: "spec.stages",
        },
        // Queries: something to run.
        Case {
            what: "metric with a whitespace-only query",
            edit: |v| {
                let mut m = metric("e");
                m["query"] = json!(" \n\t ");
                set(v, "/spec/analysis", analysis(json!([m])));
            },
            path: "spec.analysis.metrics[0].query",
        },
        Case {
            what: "metric with an empty sampleQuery",
            edit: |v| {
                let mut m = metric("e");
                m["sampleQuery"] = json!("");
                set(v, "/spec/analysis", analysis(json!([metric("a"), m])));
            },
            path: "spec.analysis.metrics[1].sampleQuery",
        },
        Case {
            what: "metric with a whitespace-only sampleQuery",
            edit: |v| {
                let mut m = metric("e");
                m["sampleQuery"] = json!("   ");
                set(v, "/spec/analysis", analysis(json!([m])));
            },
            path: "spec.analysis.metrics[0].sampleQuery",
        },
        // Names that become object names or labels (issue 11). The release's own name names its
        // Services and Deployments (`<name>-<revision>`, DNS-1035, at most 63).
        Case { what: "release name with a dot", edit: |v| set(v, "/metadata/name", json!("locall.api")), path: "metadata.name" },
        Case { what: "release name starting with a digit", edit: |v| set(v, "/metadata/name", json!("1api")), path: "metadata.name" },
        Case { what: "release name of 55 characters", edit: |v| set(v, "/metadata/name", json!("a".repeat(55))), path: "metadata.name" },
        Case {
            what: "gateway namespace that is not a DNS label",
            edit: |v| set(v, "/spec/traffic/gateway/namespace", json!("Gateways_NS")),
            path: "spec.traffic.gateway.namespace",
        },
        Case {
            what: "gateway name that is not an object name",
            edit: |v| set(v, "/spec/traffic/gateway/name", json!("locall_gateway")),
            path: "spec.traffic.gateway.name",
        },
        Case {
            what: "container name with uppercase",
            edit: |v| set(v, "/spec/template/spec/containers/0/name", json!("API")),
            path: "spec.template.spec.containers[0].name",
        },
        Case {
            what: "container without an image",
            edit: |v| {
                v.pointer_mut("/spec/template/spec/containers").and_then(Value::as_array_mut).unwrap().push(json!({"name": "sidecar"}))
            },
            path: "spec.template.spec.containers[1].image",
        },
        Case {
            what: "container with an empty image",
            edit: |v| set(v, "/spec/template/spec/containers/0/image", json!("")),
            path: "spec.template.spec.containers[0].image",
        },
        Case {
            what: "init container without an image",
            edit: |v| set(v, "/spec/template/spec/initContainers", json!([{"name": "init"}])),
            path: "spec.template.spec.initContainers[0].image",
        },
        Case {
            what: "pod template label key with a space",
            edit: |v| set(v, "/spec/template/metadata", json!({"labels": {"team name": "core"}})),
            path: "spec.template.metadata.labels",
        },
        Case {
            what: "pod template label value with a slash",
            edit: |v| set(v, "/spec/template/metadata", json!({"labels": {"team": "core/api"}})),
            path: "spec.template.metadata.labels",
        },
        Case {
            what: "pod template annotation key with two slashes",
            edit: |v| set(v, "/spec/template/metadata", json!({"annotations": {"a/b/c": "x"}})),
            path: "spec.template.metadata.annotations",
        },
        Case {
            what: "Service annotation key with a space",
            edit: |v| set(v, "/spec/service/annotations", json!({"sim.locall.io/rps": "10", "bad key": "x"})),
            path: "spec.service.annotations",
        },
        Case {
            what: "Service annotation key with an uppercase prefix",
            edit: |v| set(v, "/spec/service/annotations", json!({"Sim.Locall.io/rps": "10"})),
            path: "spec.service.annotations",
        },
        Case {
            what: "Service annotation name over 63 characters",
            edit: |v| set(v, "/spec/service/annotations", json!({format!("locall.io/{}", "a".repeat(64)): "x"})),
            path: "spec.service.annotations",
        },
        Case {
            what: "preDeploy Job pod label key ending in -",
            edit: |v| set(v, "/spec/hooks/preDeploy/0/podLabels", json!({"team-": "core"})),
            path: "spec.hooks.preDeploy[0].podLabels",
        },
        Case {
            what: "verify Job pod label value over 63 characters",
            edit: |v| set(v, "/spec/stages/0/verify/0/podLabels", json!({"team": "a".repeat(64)})),
            path: "spec.stages[0].verify[0].podLabels",
        },
        Case {
            what: "migration pod annotation key with an empty prefix",
            edit: |v| set(v, "/spec/hooks/migration/backup/podAnnotations", json!({"/name": "x"})),
            path: "spec.hooks.migration.backup.podAnnotations",
        },
        Case {
            what: "rollback verify Job pod label key with a space",
            edit: |v| set(v, "/spec/rollback", json!({"verify": [{"name": "smoke", "podLabels": {"a b": "c"}}]})),
            path: "spec.rollback.verify[0].podLabels",
        },
        Case {
            what: "postDeploy Job with an empty image",
            edit: |v| set(v, "/spec/hooks/postDeploy/0/image", json!("")),
            path: "spec.hooks.postDeploy[0].image",
        },
        // URLs the operator calls: they parse, http or https, with a host.
        Case {
            what: "Prometheus URL that does not parse",
            edit: |v| set(v, "/spec/analysis", json!({"prometheus": "prometheus:9090 /", "metrics": [metric("e")]})),
            path: "spec.analysis.prometheus",
        },
        Case {
            what: "Prometheus URL without a scheme",
            edit: |v| set(v, "/spec/analysis", json!({"prometheus": "prometheus.monitoring:9090", "metrics": [metric("e")]})),
            path: "spec.analysis.prometheus",
        },
        Case {
            what: "Prometheus URL with an ftp scheme",
            edit: |v| set(v, "/spec/analysis", json!({"prometheus": "ftp://prometheus:9090", "metrics": [metric("e")]})),
            path: "spec.analysis.prometheus",
        },
        Case {
            what: "Prometheus URL without a host",
            edit: |v| set(v, "/spec/analysis", json!({"prometheus": "http://", "metrics": [metric("e")]})),
            path: "spec.analysis.prometheus",
        },
        Case {
            what: "empty Prometheus URL",
            edit: |v| set(v, "/spec/analysis", json!({"prometheus": "", "metrics": [metric("e")]})),
            path: "spec.analysis.prometheus",
        },
    ]
}

/// Dry-run create of `obj` in `ns`: `Ok` when admitted, else the API server's status.
async fn dry_run_create(api: &Api<DynamicObject>, obj: &Value) -> Result<(), kube::core::Status> {
    let obj: DynamicObject = serde_json::from_value(obj.clone()).expect("a Kubernetes object");
    let pp = PostParams { dry_run: true, field_manager: Some("locall-tests".into()) };
    match api.create(&pp, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(*status),
        Err(e) => panic!("dry-run create failed without an API status: {e}"),
    }
}

#[tokio::test]
async fn invalid_releases_are_rejected_at_admission_naming_the_field() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "admission").await;
    let gvk = GroupVersionKind::gvk("locall.io", "v1alpha1", "LocallRelease");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, "locallreleases"));

    // The base is admitted: every rejection below is the edit's doing. So is a small release
    // (defaults: ReplicaRatio traffic, no hooks, one stage in the release's namespace).
    if let Err(s) = dry_run_create(&api, &base()).await {
        panic!("BASE is refused: {}", s.message);
    }
    let minimal = json!({
        "apiVersion": "locall.io/v1alpha1",
        "kind": "LocallRelease",
        "metadata": {"name": "minimal"},
        "spec": {"version": "1", "template": {"spec": {"containers": [{"name": "api", "image": "api:1"}]}}, "stages": [{"name": "production", "steps": [{"weight": 100}]}]},
    });
    if let Err(s) = dry_run_create(&api, &minimal).await {
        panic!("a minimal release is refused: {}", s.message);
    }

    let cases = cases();
    assert!(cases.len() >= 15);
    let mut wrong = vec![];
    for (i, case) in cases.iter().enumerate() {
        let mut obj = base();
        set(&mut obj, "/metadata/name", json!(format!("invalid-{i}")));
        (case.edit)(&mut obj);
        match dry_run_create(&api, &obj).await {
            Ok(()) => {
                println!("[{i:2}] {}: ADMITTED", case.what);
                wrong.push(format!("{}: admitted, expected a rejection naming {}", case.what, case.path));
            }
            Err(s) => {
                println!("[{i:2}] {}: {} {}: {}", case.what, s.code, s.reason, s.message);
                if s.code != 422 || !s.message.contains(case.path) {
                    wrong.push(format!("{}: expected 422 naming {}, got {} {}: {}", case.what, case.path, s.code, s.reason, s.message));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// The API server and the engine agree on durations: what is admitted parses to at most a year;
/// what is refused is refused naming the field with the rule's own message (never a CEL
/// evaluation error); and a refused duration of the grammar still parses (saturated), so an
/// object admitted under older, looser rules never makes a list of releases fail.
#[tokio::test]
async fn durations_the_api_server_admits_are_the_ones_the_engine_handles() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "admission-durations").await;
    let gvk = GroupVersionKind::gvk("locall.io", "v1alpha1", "LocallRelease");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, "locallreleases"));
    const LIMIT: &str = "must be at most 8760h (one year)";
    const PATTERN: &str = "should match";
    // (pause, None when admitted, else a fragment of the API server's message)
    let cases: &[(&str, Option<&str>)] = &[
        ("0s", None),
        ("1ms", None),
        ("999999ms", None),
        ("999999s", None),
        ("000001s", None),
        ("1h1h", None),
        ("8760h", None),
        ("525600m", None),
        ("8759h59m59s999ms", None),
        ("8760h1ms", Some(LIMIT)),
        ("8761h", Some(LIMIT)),
        ("9000h", Some(LIMIT)),
        ("525601m", Some(LIMIT)),
        ("999999h", Some(LIMIT)),
        // The longest admitted by pattern and maxLength: still a valid Go duration.
        ("999999h999999h99999m", Some(LIMIT)),
        ("1000000ms", Some(PATTERN)),
        ("2300000000h", Some(PATTERN)),
        ("99999999999s", Some(PATTERN)),
        ("5x", Some(PATTERN)),
        ("1.5h", Some(PATTERN)),
        ("30d", Some(PATTERN)),
        ("1h1h1h1h1h1h1h1h1h1h1h", Some("20")),
    ];
    let mut wrong = vec![];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let mut obj = base();
        set(&mut obj, "/metadata/name", json!(format!("duration-{i}")));
        set(&mut obj, "/spec/stages/1/steps/0/pause", json!(text));
        let field = "spec.stages[1].steps[0].pause";
        let parsed = text.parse::<Dur>();
        match (dry_run_create(&api, &obj).await, expected) {
            (Ok(()), None) => {
                println!("{text:>24}: admitted, parses to {:?}", parsed);
                if !parsed.as_ref().is_ok_and(|d| *d <= Dur::LIMIT) {
                    wrong.push(format!("{text}: admitted, but the engine parses it to {parsed:?}"));
                }
            }
            (Ok(()), Some(why)) => wrong.push(format!("{text}: admitted, expected a rejection saying {why:?}")),
            (Err(s), expected) => {
                println!("{text:>24}: {} {}", s.code, s.message);
                match expected {
                    None => wrong.push(format!("{text}: refused: {}", s.message)),
                    Some(why) if s.code != 422 || !s.message.contains(field) || !s.message.contains(why) => {
                        wrong.push(format!("{text}: expected 422 naming {field} and saying {why:?}, got {}: {}", s.code, s.message))
                    }
                    Some(_) if s.message.contains("evaluating rule") => {
                        wrong.push(format!("{text}: a CEL evaluation error: {}", s.message))
                    }
                    Some(_) => {}
                }
                let grammar = text.bytes().all(|b| b.is_ascii_digit() || b"mhs".contains(&b)) && text.ends_with(['s', 'm', 'h']);
                if grammar && parsed.is_err() {
                    wrong.push(format!("{text}: refused at admission, but one admitted earlier would not parse: {parsed:?}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {} durations wrong:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// The API server and the operator agree on release names and Prometheus URLs: every name
/// admitted gives Service and Deployment names the API server accepts (DNS-1035, at most 63, the
/// release's name unabridged), every URL admitted is one the operator's Prometheus client takes,
/// and what is refused is refused naming the field.
#[tokio::test]
async fn names_and_urls_the_api_server_admits_are_the_ones_the_operator_uses() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "admission-names").await;
    let gvk = GroupVersionKind::gvk("locall.io", "v1alpha1", "LocallRelease");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, "locallreleases"));
    let service_name = regex::Regex::new(r"^[a-z]([-a-z0-9]*[a-z0-9])?$").unwrap();
    let mut wrong = vec![];
    let (longest, too_long) = ("a".repeat(54), "a".repeat(55));
    let names: &[(&str, bool)] = &[
        ("a", true),
        ("locall-api", true),
        ("api-2", true),
        ("a--b", true),
        (&longest, true),
        (&too_long, false),
        ("2api", false),
        ("api-", false),
        ("-api", false),
        ("locall.api", false),
        ("locall_api", false),
        ("Locall", false),
    ];
    for (name, admit) in names {
        let mut obj = base();
        set(&mut obj, "/metadata/name", json!(name));
        let deployment = locall_operator::engine::names::deployment(name, "0a1b2c3d");
        match dry_run_create(&api, &obj).await {
            Ok(()) if *admit => {
                if deployment != format!("{name}-0a1b2c3d") || deployment.len() > 63 || !service_name.is_match(&deployment) {
                    wrong.push(format!("{name:?}: admitted, but its Deployment/Service would be {deployment:?}"));
                }
            }
            Ok(()) => wrong.push(format!("{name:?}: admitted")),
            Err(s) if *admit => wrong.push(format!("{name:?}: refused: {}", s.message)),
            Err(s) if s.code != 422 || !s.message.contains("metadata.name must be") => {
                wrong.push(format!("{name:?}: expected 422 naming metadata.name, got {} {}", s.code, s.message))
            }
            Err(_) => {}
        }
    }
    let urls: &[(&str, bool)] = &[
        ("http://prometheus:9090", true),
        ("https://prometheus.monitoring.svc:9090/prom", true),
        ("http://127.0.0.1:19090", true),
        ("http://[::1]:9090", true),
        ("HTTP://prometheus", true),
        ("http://user:pw@prometheus:9090/?a=b", true),
        ("prometheus:9090", false),
        ("prometheus.monitoring", false),
        ("/api/v1", false),
        ("ftp://prometheus", false),
        ("http://", false),
        ("http:///path", false),
        ("http://prom etheus", false),
        ("", false),
    ];
    for (i, (url, admit)) in urls.iter().enumerate() {
        let mut obj = base();
        set(&mut obj, "/metadata/name", json!(format!("url-{i}")));
        set(&mut obj, "/spec/analysis", json!({"prometheus": url, "metrics": [metric("e")]}));
        let parsed = prometheus_http_query::Client::try_from(*url);
        match dry_run_create(&api, &obj).await {
            Ok(()) if *admit => {
                if let Err(e) = parsed {
                    wrong.push(format!("{url:?}: admitted, but the operator's client refuses it: {e}"));
                }
            }
            Ok(()) => wrong.push(format!("{url:?}: admitted")),
            Err(s) if *admit => wrong.push(format!("{url:?}: refused: {}", s.message)),
            Err(s) if s.code != 422 || !s.message.contains("spec.analysis.prometheus") => {
                wrong.push(format!("{url:?}: expected 422 naming spec.analysis.prometheus, got {} {}", s.code, s.message))
            }
            Err(s) => println!("{url:>40}: {}", s.message),
        }
    }
    assert!(wrong.is_empty(), "{} wrong:\n{}", wrong.len(), wrong.join("\n"));
}

/// The same rejection through `kubectl apply`, as a user sees it.
#[tokio::test]
async fn kubectl_apply_shows_the_field_path() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "admission-kubectl").await;
    let mut obj = base();
    set(&mut obj, "/metadata/namespace", json!(ns));
    set(&mut obj, "/spec/stages/1/steps/0/weight", json!(101));
    let file = std::env::temp_dir().join(format!("locall-admission-{ns}.yaml"));
    std::fs::write(&file, serde_yaml::to_string(&obj).unwrap()).unwrap();
    let (ok, out, err) = kubectl(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    println!("{out}{err}");
    assert!(!ok, "weight 101 was admitted: {out}");
    assert!(err.contains("spec.stages[1].steps[0].weight"), "{err}");
}

/// Lists the API documents as optional may be left out: a stage without `steps` (100% at once),
/// hooks without `preDeploy` (the CEL rules guard with `has()`).
#[tokio::test]
async fn optional_lists_may_be_omitted() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "admission-optional").await;
    let gvk = GroupVersionKind::gvk("locall.io", "v1alpha1", "LocallRelease");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk_with_plural(&gvk, "locallreleases"));
    let mut refused = vec![];
    let variants: [(&str, Edit); 4] = [
        ("a stage without steps", |v| remove(v, "/spec/stages/0/steps")),
        ("hooks without preDeploy", |v| remove(v, "/spec/hooks/preDeploy")),
        // The lists and durations with rules of their own, at their limits.
        ("analysis, go-live windows, rollback verify and notifications", |v| {
            let mut m = metric("error-rate");
            m["sampleQuery"] = json!("sum(increase(requests[1m]))");
            m["interval"] = json!("1s");
            set(v, "/spec/analysis", json!({"interval": "1s", "metrics": [m, metric("latency-p95")]}));
            set(v, "/spec/goLive", json!({"windows": [window("0-15m", "1s", "1s"), window("15m-2h", "8760h", "8760h")]}));
            set(v, "/spec/rollback", json!({"verify": [{"name": "smoke", "timeout": "8760h"}, {"name": "smoke-2"}]}));
            set(v, "/spec/notifications", json!([notification("eng"), notification("biz")]));
        }),
        // One stage in the release's namespace, explicitly (only the engine can tell).
        ("a single stage with a namespace", |v| {
            set(v, "/spec/stages", json!([{"name": "production", "namespace": "admission", "steps": [{"weight": 100}]}]))
        }),
    ];
    for (i, (what, edit)) in variants.into_iter().enumerate() {
        let mut obj = base();
        set(&mut obj, "/metadata/name", json!(format!("optional-{i}")));
        edit(&mut obj);
        if let Err(s) = dry_run_create(&api, &obj).await {
            println!("{what}: {}", s.message);
            refused.push(format!("{what}: {}", s.message));
        }
    }
    assert!(refused.is_empty(), "valid releases refused:\n{}", refused.join("\n"));
}
