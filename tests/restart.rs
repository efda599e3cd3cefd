//! An operator restarted over releases that need nothing writes nothing: no status, no child, no
//! Event. More releases than the operator reconciles at once, so that the first reconciles after
//! the start race the initial list of the child caches (they used to re-apply one Deployment each).
//! And a release's first life writes each child once and reads back nothing it has just written.

mod support;

use kube::{
    api::{Api, ListParams, PostParams},
    Client, ResourceExt,
};
use locall_operator::api::{LocallRelease, Phase};
use serde_json::json;
use std::{collections::BTreeMap, time::Duration};
use support::*;

/// More than the operator's default concurrency (8).
const RELEASES: usize = 12;

/// Requests that change something, as the operator counted them on their way out.
async fn mutating_requests(metrics_addr: &str) -> f64 {
    api_requests(metrics_addr, &["create", "patch", "update", "delete"], None).await
}

/// Every object the releases own or are, by kind/name, with its resourceVersion.
async fn versions(client: &Client, ns: &str) -> BTreeMap<String, String> {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
    let lp = ListParams::default();
    let mut v = BTreeMap::new();
    for lr in Api::<LocallRelease>::namespaced(client.clone(), ns).list(&lp).await.unwrap() {
        v.insert(format!("LocallRelease/{}", lr.name_any()), lr.resource_version().unwrap_or_default());
    }
    for d in Api::<Deployment>::namespaced(client.clone(), ns).list(&lp).await.unwrap() {
        v.insert(format!("Deployment/{}", d.name_any()), d.resource_version().unwrap_or_default());
    }
    for s in Api::<Service>::namespaced(client.clone(), ns).list(&lp).await.unwrap() {
        v.insert(format!("Service/{}", s.name_any()), s.resource_version().unwrap_or_default());
    }
    v
}

#[tokio::test]
async fn an_operator_restarted_over_settled_releases_writes_nothing() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "restart-noop").await;
    let label = format!("restart-{ns}");
    let mut op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    for i in 0..RELEASES {
        let lr: LocallRelease = serde_json::from_value(json!({
            "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease",
            "metadata": {"name": format!("app-{i}"), "labels": {"locall.io/operator": label}},
            "spec": {"version": "1.0.0", "replicas": 1, "template": {"spec": {"containers": [{"name": "api", "image": "locall/api:1.0.0"}]}},
                     "stages": [{"name": "production"}]}
        }))
        .unwrap();
        api.create(&PostParams::default(), &lr).await.unwrap();
    }
    wait_for(Duration::from_secs(180), "every release to succeed", || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|lr| lr.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded && s.observed_generation == lr.metadata.generation))
            .then_some(())
    })
    .await;
    // Settled: the last Deployment status updates have arrived and been reconciled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = versions(&client, &ns).await;
    assert_eq!(before.keys().filter(|k| k.starts_with("Deployment/")).count(), RELEASES, "{before:?}");

    // The operator runs without transparent huge pages (each would be 2 MiB resident for a few
    // small objects; see the README's Performance section).
    let status = std::fs::read_to_string(format!("/proc/{}/status", op.child.id())).unwrap();
    assert!(status.lines().any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])), "THP is on for the operator:\n{status}");

    op.kill();
    op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let addr = op.metrics_addr.clone();
    wait_for(Duration::from_secs(60), "the restarted operator to reconcile every release", || async {
        (scrape(&addr, "controller_runtime_reconcile_total").await >= RELEASES as f64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = reqwest::Client::new().get(format!("http://{addr}/metrics")).bearer_auth(admin_token()).send().await.unwrap();
    let counted: Vec<String> =
        requests.text().await.unwrap().lines().filter(|l| l.starts_with("locall_api_requests_total")).map(String::from).collect();
    assert_eq!(mutating_requests(&addr).await, 0.0, "the restarted operator wrote to the API server: {counted:?}");
    assert_eq!(versions(&client, &ns).await, before, "something the releases own changed across the restart");
    op.kill();
}

/// One release, from nothing to Succeeded, with an operator of its own: its Deployment and its
/// Service are each written once, and the Service is read from its watch cache, not the API
/// server: at most twice (a cache not yet listed, or not yet showing the write). The pass that
/// verifies traffic right after moving it reads the answer to the write, and does not write
/// again what the watch caches have not seen yet (it used to: 7 reads of the Service over 5
/// reconciles, and sometimes a second Deployment apply; then one read per reconcile).
#[tokio::test]
async fn a_release_writes_each_child_once_and_reads_back_nothing_it_just_wrote() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "requests").await;
    let label = format!("requests-{ns}");
    let op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let lr: LocallRelease = serde_json::from_value(json!({
        "apiVersion": "locall.io/v1alpha1", "kind": "LocallRelease",
        "metadata": {"name": "app", "labels": {"locall.io/operator": label}},
        "spec": {"version": "1.0.0", "replicas": 1, "template": {"spec": {"containers": [{"name": "api", "image": "locall/api:1.0.0"}]}},
                 "stages": [{"name": "production"}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &lr).await.unwrap();
    wait_for(Duration::from_secs(120), "the release to succeed", || async {
        let lr = api.get("app").await.ok()?;
        lr.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded).then_some(())
    })
    .await;
    // The last Deployment status updates arrive and are reconciled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let addr = op.metrics_addr.clone();
    let reconciles = scrape(&addr, "controller_runtime_reconcile_total").await;
    let requests = |verbs: &'static [&'static str], resource: &'static str| {
        let addr = addr.clone();
        async move { api_requests(&addr, verbs, Some(resource)).await }
    };
    assert_eq!(requests(&["patch", "create", "update"], "deployments").await, 1.0, "Deployment writes");
    assert_eq!(requests(&["patch", "create", "update"], "services").await, 1.0, "Service writes");
    let reads = requests(&["get"], "services").await;
    assert!(reconciles >= 3.0, "{reconciles} reconciles");
    assert!(reads <= 2.0, "{reads} reads of the Service over {reconciles} reconciles");
}
