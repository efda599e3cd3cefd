//! Regressions of the release engine's rewrite ("Trust", #10), on the local cluster, each seen
//! as a user sees it: a stage removed under a running release holds it (Stalled) instead of
//! killing the operator; a revert and a retry are attempts of their own, with fresh Jobs and a
//! fresh backup, and a restore uses the backup of the attempt that migrated; superseding a
//! candidate never deletes a Deployment its route still names.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    api::{Api, DynamicObject, ListParams, WatchEvent, WatchParams},
    Client, Resource, ResourceExt,
};
use locall_operator::api::{conditions, LocallRelease, LocallReleaseStatus, Phase};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};
use support::*;

/// The operator of this file's tests 2 to 4: it takes only releases labelled with its own
/// `locall.io/operator` value, so an operator of another suite never touches them.
fn operator_label() -> &'static str {
    static OP: OnceLock<(String, Mutex<Operator>)> = OnceLock::new();
    let (label, _) = OP.get_or_init(|| {
        let label = format!("regressions-{:06x}", rand::random::<u32>() & 0xffffff);
        let op = Operator::start(&label, &format!("locall.io/operator={label}"));
        (label, Mutex::new(op))
    });
    label
}

/// A Gateway API release named `name`; `extra` goes at the end of `spec` (hooks).
fn manifest(ns: &str, name: &str, version: &str, label: &str, stages: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: {name}, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080}}
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  stages: {stages}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
{extra}
"#
    )
}

/// A migration that changes the schema: a backup first, a restore when a release rolls back.
const MIGRATION: &str =
    "  hooks:\n    migration: {changesSchema: true, backup: {command: [backup]}, migrate: {command: [migrate]}, restore: {command: [restore]}}";

/// One production stage whose first step holds 50% for ten minutes (a `promote` request or a
/// rollback ends it).
const HELD_AT_50: &str = "[{name: production, steps: [{weight: 50, pause: 10m}, {weight: 100}]}]";

async fn status(client: &Client, ns: &str, name: &str) -> Option<LocallReleaseStatus> {
    Api::<LocallRelease>::namespaced(client.clone(), ns).get_opt(name).await.ok().flatten()?.status
}

/// Waits until the status of release `name` satisfies `check`; the panic shows the last status.
async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    secs: u64,
    check: impl Fn(&LocallReleaseStatus) -> bool,
) -> LocallReleaseStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    loop {
        if let Some(st) = status(client, ns, name).await {
            if check(&st) {
                return st;
            }
            last = Some(st);
        }
        if tokio::time::Instant::now() > deadline {
            let s = last.map(|s| format!("{} {} seq {} weight {}: {}", s.candidate_version, s.phase, s.sequence, s.weight, s.message));
            panic!("timed out after {secs} s waiting for {ns}/{name}: {what}; last status: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn wait_phase(client: &Client, ns: &str, name: &str, version: &str, phase: Phase) -> LocallReleaseStatus {
    wait_status(client, ns, name, &format!("{version} {phase}"), 90, |st| st.candidate_version == version && st.phase == phase).await
}

/// Waits until `version` holds `weight` in production (the router read back at that weight).
async fn wait_weight(client: &Client, ns: &str, name: &str, version: &str, weight: i32) -> LocallReleaseStatus {
    wait_status(client, ns, name, &format!("{version} at {weight}% in production"), 90, |st| {
        st.candidate_version == version && st.phase == Phase::Production && st.weight == weight && st.step_started_at.is_some()
    })
    .await
}

/// Puts an on-demand request on release `locall-api` and waits until the operator handled it.
async fn request(client: &Client, ns: &str, action: &str) {
    let id = format!("{action}-{:08x}", rand::random::<u32>());
    let json = format!(r#"{{"action":"{action}","id":"{id}","by":"regressions@locall.io"}}"#);
    let (ok, _, err) = kubectl(&["-n", ns, "annotate", "--overwrite", "lr/locall-api", &format!("locall.io/request={json}")]);
    assert!(ok, "{err}");
    wait_status(client, ns, "locall-api", &format!("request {id} handled"), 30, |st| st.handled_request == id).await;
}

/// The Jobs of one kind (`Backup`, `Restore`, ...) of release `locall-api`: name -> BACKUP_ID.
async fn jobs_of(client: &Client, ns: &str, kind: &str) -> BTreeMap<String, Option<String>> {
    let sel = format!("locall.io/release={ns}.locall-api,locall.io/job-kind={kind}");
    let list = Api::<Job>::namespaced(client.clone(), ns).list(&ListParams::default().labels(&sel)).await.unwrap();
    list.items
        .iter()
        .map(|j| {
            let env = j.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|p| p.containers[0].env.clone()).unwrap_or_default();
            (j.name_any(), env.into_iter().find(|e| e.name == "BACKUP_ID").and_then(|e| e.value))
        })
        .collect()
}

fn stalled(st: &LocallReleaseStatus) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    st.conditions.iter().find(|c| c.type_ == conditions::STALLED && c.status == "True")
}

#[tokio::test]
async fn removing_the_current_stage_holds_with_a_condition_while_other_releases_progress() {
    let started = std::time::Instant::now();
    let client = client().await;
    install_crd().await;
    let a = namespace(&client, "regr-stall").await;
    stage_namespace(&format!("{a}-stg"), &a);
    let b = namespace(&client, "regr-other").await;
    // An operator of its own: the test watches its process and its log.
    let label = format!("stall-{a}");
    let mut op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let log = cluster().dir.join(format!("logs/operator-{label}.log"));

    let staging = format!("{{name: staging, namespace: {a}-stg, replicas: 1, steps: [{{weight: 100}}]}}");
    let production = |pause: &str| format!("{{name: production, steps: [{{weight: 20, pause: {pause}}}, {{weight: 100}}]}}");
    let a_full =
        |version: &str, pause: &str| manifest(&a, "locall-api", version, &label, &format!("[{staging}, {}]", production(pause)), "");
    let b_release = |version: &str| {
        manifest(&b, "locall-api", version, &label, "[{name: production, steps: [{weight: 50, pause: 1s}, {weight: 100}]}]", "")
    };

    apply_yaml(&client, &a, &a_full("1.0.0", "1s")).await;
    apply_yaml(&client, &b, &b_release("1.0.0")).await;
    tokio::join!(
        wait_phase(&client, &a, "locall-api", "1.0.0", Phase::Succeeded),
        wait_phase(&client, &b, "locall-api", "1.0.0", Phase::Succeeded)
    );
    apply_yaml(&client, &a, &a_full("2.0.0", "30s")).await;
    let held = wait_weight(&client, &a, "locall-api", "2.0.0", 20).await;
    let prod_before = route_weights(&client, &a).await;
    let stg_before = route_weights(&client, &format!("{a}-stg")).await;
    assert_eq!(prod_before.values().sum::<i64>(), 100, "{prod_before:?}");
    assert_eq!(prod_before.get(&format!("locall-api-{}", held.revision)), Some(&20), "{prod_before:?}");

    // The production stage disappears from the spec while 2.0.0 holds 20% there.
    let without_production = manifest(&a, "locall-api", "2.0.0", &label, &format!("[{staging}]"), "");
    apply_yaml(&client, &a, &without_production).await;
    let st = wait_status(&client, &a, "locall-api", "Stalled=True naming spec.stages", 30, |st| {
        stalled(st).is_some_and(|c| c.message.contains("spec.stages"))
    })
    .await;
    let c = stalled(&st).unwrap();
    println!("Stalled: {} {}", c.reason, c.message);
    assert_eq!(c.reason, "SpecConflict", "{c:?}");
    assert_eq!((st.phase, st.candidate_version.as_str(), st.weight), (Phase::Production, "2.0.0", 20), "{}", st.message);
    assert_eq!(route_weights(&client, &a).await, prod_before, "production traffic untouched");

    // Meanwhile another release of the same operator goes on.
    apply_yaml(&client, &b, &b_release("2.0.0")).await;
    wait_phase(&client, &b, "locall-api", "2.0.0", Phase::Succeeded).await;

    // A still holds, nothing of it written.
    let st = status(&client, &a, "locall-api").await.unwrap();
    assert!(stalled(&st).is_some_and(|c| c.message.contains("spec.stages")), "{:?}", st.conditions);
    assert_eq!((st.phase, st.weight, st.revision.as_str()), (Phase::Production, 20, held.revision.as_str()), "{}", st.message);
    assert_eq!(route_weights(&client, &a).await, prod_before, "production traffic untouched");
    assert_eq!(route_weights(&client, &format!("{a}-stg")).await, stg_before, "staging traffic untouched");
    assert!(op.child.try_wait().unwrap().is_none(), "the operator is still running");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("panicked"),
        "the operator panicked: {}",
        text.lines().filter(|l| l.contains("panicked")).collect::<Vec<_>>().join("\n")
    );

    // The stage is put back: the release resumes where it held and finishes.
    apply_yaml(&client, &a, &a_full("2.0.0", "30s")).await;
    let st = wait_phase(&client, &a, "locall-api", "2.0.0", Phase::Succeeded).await;
    assert!(!conditions::is_true(&st.conditions, conditions::STALLED), "{:?}", st.conditions);
    assert_eq!(st.sequence, held.sequence, "the same attempt resumed");
    assert_eq!(route_weights(&client, &a).await.get(&format!("locall-api-{}", held.revision)), Some(&100));
    assert!(op.child.try_wait().unwrap().is_none(), "the operator is still running");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "the operator panicked");
    op.kill();
    println!("stage removed: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_revert_takes_a_fresh_backup_and_a_later_restore_gets_its_id() {
    let started = std::time::Instant::now();
    let label = operator_label();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "regr-revert").await;
    let v1 = manifest(&ns, "locall-api", "1.0.0", label, HELD_AT_50, MIGRATION);
    let v2 = manifest(&ns, "locall-api", "2.0.0", label, HELD_AT_50, MIGRATION);

    apply_yaml(&client, &ns, &v1).await;
    let first = wait_phase(&client, &ns, "locall-api", "1.0.0", Phase::Succeeded).await;
    let rev1 = first.revision.clone();
    let first_backup = format!("locall-api-{rev1}-1-backup");
    assert_eq!((first.sequence, first.backup_id.as_deref()), (1, Some(first_backup.as_str())));
    apply_yaml(&client, &ns, &v2).await;
    wait_weight(&client, &ns, "locall-api", "2.0.0", 50).await;
    request(&client, &ns, "promote").await;
    let second = wait_phase(&client, &ns, "locall-api", "2.0.0", Phase::Succeeded).await;
    assert_eq!(second.sequence, 2);

    // git revert: the first manifest again, the same revision as the first release.
    apply_yaml(&client, &ns, &v1).await;
    let revert = wait_weight(&client, &ns, "locall-api", "1.0.0", 50).await;
    assert_eq!((revert.revision.as_str(), revert.sequence), (rev1.as_str(), 3), "a revert is a new attempt");
    let revert_backup = format!("locall-api-{rev1}-3-backup");
    assert_eq!(revert.backup_id.as_deref(), Some(revert_backup.as_str()));
    let backups = jobs_of(&client, &ns, "Backup").await;
    println!("backup Jobs: {backups:?}");
    assert_eq!(backups.get(&first_backup), Some(&Some(first_backup.clone())), "{backups:?}");
    assert_eq!(backups.get(&revert_backup), Some(&Some(revert_backup.clone())), "the revert took a backup of its own: {backups:?}");
    assert_eq!(backups.len(), 3, "one backup per attempt: {backups:?}");
    assert!(jobs_of(&client, &ns, "Migrate").await.contains_key(&format!("locall-api-{rev1}-3-migrate")), "the revert migrated afresh");

    // The revert is rolled back while it holds 50%: the restore uses the revert's backup.
    request(&client, &ns, "rollback").await;
    let st = wait_phase(&client, &ns, "locall-api", "1.0.0", Phase::RolledBack).await;
    let restores = jobs_of(&client, &ns, "Restore").await;
    println!("restore Jobs: {restores:?}");
    assert_eq!(restores.len(), 1, "{restores:?}");
    let (name, id) = restores.into_iter().next().unwrap();
    assert_eq!(name, format!("locall-api-{rev1}-3-restore"));
    assert_eq!(id.as_deref(), st.backup_id.as_deref(), "BACKUP_ID is the revert's status.backupId");
    assert_eq!(id.as_deref(), Some(revert_backup.as_str()), "restored from the revert's backup, not the first 1.0.0's ({first_backup})");
    assert!(st.failure.as_ref().is_some_and(|f| f.database_restored_at.is_some()), "{:?}", st.failure);
    assert_eq!(st.stable.as_ref().map(|s| s.version.as_str()), Some("2.0.0"));
    assert_eq!(route_weights(&client, &ns).await.get(&format!("locall-api-{}", second.revision)), Some(&100));
    println!("revert: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test]
async fn a_retry_takes_a_backup_with_a_new_id() {
    let started = std::time::Instant::now();
    let label = operator_label();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "regr-retry").await;
    apply_yaml(&client, &ns, &manifest(&ns, "locall-api", "1.0.0", label, HELD_AT_50, MIGRATION)).await;
    wait_phase(&client, &ns, "locall-api", "1.0.0", Phase::Succeeded).await;
    apply_yaml(&client, &ns, &manifest(&ns, "locall-api", "2.0.0", label, HELD_AT_50, MIGRATION)).await;
    wait_weight(&client, &ns, "locall-api", "2.0.0", 50).await;
    request(&client, &ns, "rollback").await;
    let rolled = wait_phase(&client, &ns, "locall-api", "2.0.0", Phase::RolledBack).await;
    let earlier = jobs_of(&client, &ns, "Backup").await;
    assert_eq!(earlier.len(), 2, "{earlier:?}");

    request(&client, &ns, "retry").await;
    let st = wait_status(&client, &ns, "locall-api", "the retry's backup Job recorded", 60, |st| {
        st.sequence > rolled.sequence && st.jobs.iter().any(|j| j.kind == locall_operator::api::JobKind::Backup)
    })
    .await;
    assert_eq!(st.sequence, rolled.sequence + 1, "one more attempt");
    assert_eq!((st.candidate_version.as_str(), st.revision.as_str()), ("2.0.0", rolled.revision.as_str()));
    let backups = wait_for(Duration::from_secs(30), "the retry's backup Job", || async {
        let b = jobs_of(&client, &ns, "Backup").await;
        (b.len() > earlier.len()).then_some(b)
    })
    .await;
    println!("backup Jobs: {backups:?}");
    let new: Vec<_> = backups.iter().filter(|(n, _)| !earlier.contains_key(*n)).collect();
    assert_eq!(new.len(), 1, "{backups:?}");
    let (name, id) = new[0];
    let id = id.clone().expect("the backup Job has BACKUP_ID");
    assert!(earlier.values().all(|e| e.as_deref() != Some(id.as_str())), "BACKUP_ID {id} was used before: {earlier:?}");
    assert_eq!(st.backup_id.as_deref(), Some(id.as_str()), "status.backupId is the new backup's");
    assert_eq!(name, &format!("locall-api-{}-{}-backup", st.revision, st.sequence));
    println!("retry (attempt {}): {:.1} s", st.attempt, started.elapsed().as_secs_f64());
}

/// One watch event, as recorded: the object's resourceVersion orders it against every other.
#[derive(Clone, Debug)]
struct Seen {
    kind: &'static str,
    event: &'static str,
    name: String,
    rv: u64,
    deleting: bool,
    revision: Option<String>,
    version: Option<String>,
    /// An HTTPRoute's backends: (Service, weight).
    backends: Vec<(String, i64)>,
}

impl Seen {
    fn names(&self, service: &str) -> bool {
        self.backends.iter().any(|(s, _)| s == service)
    }
}

fn seen<K: Resource>(kind: &'static str, event: &'static str, o: &K, backends: Vec<(String, i64)>) -> Seen {
    let meta = o.meta();
    Seen {
        kind,
        event,
        name: meta.name.clone().unwrap_or_default(),
        rv: meta.resource_version.as_deref().and_then(|v| v.parse().ok()).expect("a numeric resourceVersion"),
        deleting: meta.deletion_timestamp.is_some(),
        revision: meta.labels.as_ref().and_then(|l| l.get("locall.io/revision").cloned()),
        version: meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/version").cloned()),
        backends,
    }
}

/// Lists, then watches from the list's resourceVersion on, recording every version of every
/// object; a closed watch resumes from the last version seen, so nothing is missed.
async fn record<K>(
    api: Api<K>,
    kind: &'static str,
    backends: fn(&K) -> Vec<(String, i64)>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    let list = api.list(&ListParams::default()).await.unwrap();
    for o in &list.items {
        log.lock().unwrap().push(seen(kind, "LISTED", o, backends(o)));
    }
    let mut rv = list.metadata.resource_version.unwrap();
    tokio::spawn(async move {
        loop {
            let mut stream = api.watch(&WatchParams::default().timeout(120), &rv).await.unwrap().boxed();
            while let Some(ev) = stream.next().await {
                let (event, o) = match ev.unwrap() {
                    WatchEvent::Added(o) => ("ADDED", o),
                    WatchEvent::Modified(o) => ("MODIFIED", o),
                    WatchEvent::Deleted(o) => ("DELETED", o),
                    WatchEvent::Bookmark(b) => {
                        rv = b.metadata.resource_version;
                        continue;
                    }
                    WatchEvent::Error(e) => panic!("watch of {kind}: {e:?}"),
                };
                let s = seen(kind, event, &o, backends(&o));
                rv = s.rv.to_string();
                log.lock().unwrap().push(s);
            }
        }
    })
}

fn route_backends(r: &DynamicObject) -> Vec<(String, i64)> {
    let rules = r.data["spec"]["rules"].as_array().cloned().unwrap_or_default();
    rules
        .iter()
        .flat_map(|rule| rule["backendRefs"].as_array().cloned().unwrap_or_default())
        .map(|b| (b["name"].as_str().unwrap_or_default().to_string(), b["weight"].as_i64().unwrap_or(1)))
        .collect()
}

#[tokio::test]
async fn superseding_never_deletes_a_deployment_the_route_still_sends_traffic_to() {
    let started = std::time::Instant::now();
    let label = operator_label();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "regr-supersede").await;
    let stages = "[{name: production, steps: [{weight: 25, pause: 10m}, {weight: 100}]}]";
    apply_yaml(&client, &ns, &manifest(&ns, "locall-api", "1.0.0", label, stages, "")).await;
    wait_phase(&client, &ns, "locall-api", "1.0.0", Phase::Succeeded).await;
    apply_yaml(&client, &ns, &manifest(&ns, "locall-api", "2.0.0", label, stages, "")).await;
    let v2 = wait_weight(&client, &ns, "locall-api", "2.0.0", 25).await;

    let log = Arc::new(Mutex::new(Vec::new()));
    let routes = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &locall_operator::traffic::gateway::httproute_resource());
    let watches = [
        record(routes, "HTTPRoute", route_backends, log.clone()).await,
        record(Api::<Deployment>::namespaced(client.clone(), &ns), "Deployment", |_| vec![], log.clone()).await,
    ];

    apply_yaml(&client, &ns, &manifest(&ns, "locall-api", "3.0.0", label, stages, "")).await;
    wait_status(&client, &ns, "locall-api", "3.0.0 at 25% or further", 90, |st| {
        st.candidate_version == "3.0.0"
            && (st.phase == Phase::Production && st.weight >= 25 && st.step_started_at.is_some()
                || matches!(st.phase, Phase::GoLive | Phase::Succeeded))
    })
    .await;
    // The superseded candidate's Deployment (version 2.0.0) and its revision, from its labels.
    let listed = log.lock().unwrap().iter().find(|s| s.kind == "Deployment" && s.version.as_deref() == Some("2.0.0")).cloned();
    let listed = listed.expect("the 2.0.0 Deployment when 3.0.0 was applied");
    let rev2 = listed.revision.clone().expect("the Deployment's locall.io/revision label");
    assert_eq!(rev2, v2.revision);
    let (dep2, svc2) = (listed.name.clone(), format!("locall-api-{rev2}"));
    let gone = wait_for(Duration::from_secs(20), &format!("the Deployment {dep2} deleted"), || async {
        let l = log.lock().unwrap();
        l.iter().find(|s| s.kind == "Deployment" && s.name == dep2 && (s.event == "DELETED" || s.deleting)).cloned()
    })
    .await;
    for w in watches {
        w.abort();
    }
    let mut events = log.lock().unwrap().clone();
    events.sort_by_key(|s| s.rv);
    for s in &events {
        println!("{:>8} {:<10} {:<8} {} {:?}{}", s.rv, s.kind, s.event, s.name, s.backends, if s.deleting { " (deleting)" } else { "" });
    }
    let route_versions: Vec<&Seen> = events.iter().filter(|s| s.kind == "HTTPRoute" && s.name == "locall-api").collect();
    assert!(route_versions.first().is_some_and(|r| r.names(&svc2)), "the route named {svc2} when 3.0.0 was applied: {route_versions:?}");
    let off = route_versions.iter().find(|r| !r.names(&svc2)).expect("a route version without the 2.0.0 Service");
    println!("route off {svc2} at {}, its Deployment going away at {}", off.rv, gone.rv);
    assert!(gone.rv > off.rv, "{dep2} was deleted (rv {}) before the route stopped naming {svc2} (rv {})", gone.rv, off.rv);
    // And at no moment after that did the route name it again.
    let later: Vec<_> = route_versions.iter().filter(|r| r.rv > off.rv && r.names(&svc2)).collect();
    assert!(later.is_empty(), "the route named {svc2} again after it was dropped: {later:?}");
    println!("supersede: {:.1} s", started.elapsed().as_secs_f64());
}
