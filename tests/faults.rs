//! Faults around the operator, on the local cluster: the operator killed at each phase boundary,
//! status writes that conflict, and bad input only the running operator can see. Each test ends
//! with the release where it would be without the fault, nothing run twice, nothing lost.
//!
//! A Job pod labelled `hold.locall.io/running` keeps running until the test removes the label
//! (tests/cluster/build adds that to kwok's pod-complete stage), so the operator can be killed
//! while a migration, a verification or a database restore is in flight.

mod support;

use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use kube::{
    api::{Api, ListParams, Patch, PatchParams},
    Client, ResourceExt,
};
use locall_operator::api::{conditions, JobKind, JobState, LocallRelease, Phase};
use std::{collections::BTreeMap, time::Duration};
use support::*;

const HOLD: &str = "hold.locall.io/running";

/// Staging then production behind an approval, with a migration, metric gates, a go-live window
/// and a rollback plan. With `hold`, the migration, the staging e2e Job and the restore keep
/// running until the test lets them finish, and the go-live window lasts 10 minutes.
fn manifest(ns: &str, version: &str, label: &str, hold: bool) -> String {
    let held = if hold { format!(r#", podLabels: {{{HOLD}: "true"}}"#) } else { String::new() };
    // The held release is watched long enough after 100% to be killed and degraded meanwhile.
    let window = if hold { "10m" } else { "3s" };
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080, annotations: {{sim.locall.io/rps: "100"}}}}
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  hooks:
    preDeploy: [{{name: tests}}]
    migration:
      changesSchema: true
      backup: {{command: [backup]}}
      migrate: {{command: [migrate]{held}}}
      restore: {{command: [restore]{held}}}
  stages:
  - {{name: staging, namespace: {ns}-stg, replicas: 1, verify: [{{name: e2e{held}}}], steps: [{{weight: 100}}]}}
  - {{name: production, approval: true, steps: [{{weight: 20, pause: 6s}}, {{weight: 60, pause: 6s}}, {{weight: 100}}]}}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
  analysis:
    interval: 1s
    metrics:
    - name: error-rate
      query: '{ERROR_RATIO}'
      success: {{op: "<", value: 0.02}}
      rollback: {{op: ">", value: 0.05}}
      consecutive: 2
  rollback:
    verify: [{{name: smoke}}]
  goLive: {{windows: [{{name: 0-15m, duration: {window}, interval: 1s}}]}}
  notifications:
  - {{name: events, format: CloudEvents, urlSecret: {{name: hooks, key: url}}}}
"#
    )
}

async fn release(client: &Client, ns: &str) -> Option<LocallRelease> {
    Api::<LocallRelease>::namespaced(client.clone(), ns).get_opt("locall-api").await.ok().flatten()
}

/// Waits until `check` holds for the release's status of `version`.
async fn wait_status(
    client: &Client,
    ns: &str,
    version: &str,
    what: &str,
    check: impl Fn(&locall_operator::api::LocallReleaseStatus) -> bool,
) -> LocallRelease {
    wait_for(Duration::from_secs(120), &format!("{ns} {version}: {what}"), || async {
        let lr = release(client, ns).await?;
        let st = lr.status.as_ref()?;
        (st.candidate_version == version && check(st)).then_some(lr.clone())
    })
    .await
}

/// A namespace (and its staging namespace) holding the notification Secret.
async fn setup(client: &Client, prefix: &str, receiver: &Receiver) -> String {
    install_crd().await;
    let ns = namespace(client, prefix).await;
    stage_namespace(&format!("{ns}-stg"), &ns);
    let (ok, _, err) = kubectl(&["-n", &ns, "create", "secret", "generic", "hooks", &format!("--from-literal=url={}", receiver.url)]);
    assert!(ok, "{err}");
    ns
}

/// Every Job of the release, by namespace/name, with its uid.
async fn jobs(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let sel = format!("locall.io/release={ns}.locall-api");
    let list = Api::<Job>::all(client.clone()).list(&ListParams::default().labels(&sel)).await.unwrap();
    list.items.iter().map(|j| (format!("{}/{}", j.namespace().unwrap(), j.name_any()), j.uid().unwrap())).collect()
}

/// The held Job of `kind` once its pod is running: (namespace, Job name).
async fn running_held_job(client: &Client, ns: &str, version: &str, kind: JobKind) -> (String, String) {
    let lr = wait_status(client, ns, version, &format!("a running {kind:?} Job"), |st| {
        st.jobs.iter().any(|j| j.kind == kind && j.state == JobState::Running)
    })
    .await;
    let st = lr.status.unwrap();
    let rec = st.jobs.iter().find(|j| j.kind == kind && j.state == JobState::Running).unwrap().clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &rec.namespace);
    wait_for(Duration::from_secs(60), &format!("the pod of {}", rec.job_name), || async {
        let list = pods.list(&ListParams::default().labels(&format!("job-name={}", rec.job_name))).await.ok()?;
        let pod = list.items.into_iter().next()?;
        (pod.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    (rec.namespace, rec.job_name)
}

/// Lets a held Job's pod complete.
fn finish(job: &(String, String)) {
    let (ok, _, err) = kubectl(&["-n", &job.0, "label", "pod", "-l", &format!("job-name={}", job.1), &format!("{HOLD}-")]);
    assert!(ok, "{err}");
}

/// Kills the operator as a crash would and starts a new one; returns once the new one has
/// reconciled the release.
async fn crash_and_restart(op: &mut Operator, label: &str) {
    op.kill();
    *op = Operator::start(label, &format!("locall.io/operator={label}"));
    let addr = op.metrics_addr.clone();
    wait_for(Duration::from_secs(30), "the restarted operator's first reconcile", || async {
        (scrape(&addr, "controller_runtime_reconcile_total").await >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_operator_killed_at_every_phase_boundary_ends_the_release_as_it_would_have() {
    let client = client().await;
    let receiver = Receiver::start().await;
    let ns = setup(&client, "fault-kill", &receiver).await;
    let label = format!("kill-{ns}");
    let approve = |version: &str| {
        let json = format!(r#"{{"stage":"production","version":"{version}","by":"alice@locall.io"}}"#);
        let (ok, _, err) = kubectl(&["-n", &ns, "annotate", "--overwrite", "lr/locall-api", &format!("locall.io/approve={json}")]);
        assert!(ok, "{err}");
    };
    let mut op = Operator::start(&label, &format!("locall.io/operator={label}"));

    // v1, undisturbed, becomes the stable version.
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", &label, false)).await;
    wait_status(&client, &ns, "1.0.0", "awaiting approval", |st| st.phase == Phase::AwaitingApproval).await;
    approve("1.0.0");
    let v1 = wait_status(&client, &ns, "1.0.0", "Succeeded", |st| st.phase == Phase::Succeeded).await;
    let stable_rev = v1.status.unwrap().revision;

    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", &label, true)).await;
    let mut seen = BTreeMap::new();

    // Pre-deploy, with the migration running.
    let migrate = running_held_job(&client, &ns, "2.0.0", JobKind::Migrate).await;
    seen.extend(jobs(&client, &ns).await);
    crash_and_restart(&mut op, &label).await;
    let st = release(&client, &ns).await.unwrap().status.unwrap();
    assert_eq!(st.phase, Phase::PreDeploy, "still migrating after the restart: {}", st.message);
    finish(&migrate);

    // Staging, with the e2e verification running.
    let e2e = running_held_job(&client, &ns, "2.0.0", JobKind::Verify).await;
    seen.extend(jobs(&client, &ns).await);
    crash_and_restart(&mut op, &label).await;
    assert_eq!(release(&client, &ns).await.unwrap().status.unwrap().phase, Phase::Staging);
    finish(&e2e);

    // Awaiting approval: still waiting after the restart, and the approval is recorded once.
    wait_status(&client, &ns, "2.0.0", "awaiting approval", |st| st.phase == Phase::AwaitingApproval).await;
    crash_and_restart(&mut op, &label).await;
    assert_eq!(release(&client, &ns).await.unwrap().status.unwrap().phase, Phase::AwaitingApproval);
    approve("2.0.0");

    // Each traffic step: the step's start survives the restart (its pause is not started over).
    for weight in [20, 60] {
        let lr = wait_status(&client, &ns, "2.0.0", &format!("{weight}% in production"), |st| {
            st.phase == Phase::Production && st.weight == weight && st.step_started_at.is_some()
        })
        .await;
        let (step, started) = {
            let st = lr.status.unwrap();
            (st.step, st.step_started_at)
        };
        crash_and_restart(&mut op, &label).await;
        let st = release(&client, &ns).await.unwrap().status.unwrap();
        if st.step == step && st.phase == Phase::Production {
            assert_eq!(st.step_started_at, started, "the pause of step {step} kept its start");
        }
        let r = route_weights(&client, &ns).await;
        assert!(r.values().sum::<i64>() == 100, "{r:?}");
    }

    // The go-live window: still watching after the restart.
    wait_status(&client, &ns, "2.0.0", "in the go-live window", |st| st.phase == Phase::GoLive).await;
    crash_and_restart(&mut op, &label).await;
    assert_eq!(release(&client, &ns).await.unwrap().status.unwrap().phase, Phase::GoLive);
    assert_eq!(route_weights(&client, &ns).await.get(&format!("locall-api-{stable_rev}")), Some(&0));

    // The new version degrades: its pods start answering 20% errors.
    let rev = release(&client, &ns).await.unwrap().status.unwrap().revision;
    let (ok, _, err) =
        kubectl(&["-n", &ns, "annotate", "--overwrite", "pod", "-l", &format!("locall.io/revision={rev}"), "sim.locall.io/error-rate=0.2"]);
    assert!(ok, "{err}");

    // Mid-rollback, with the database restore running: traffic is already back on v1.
    let restore = running_held_job(&client, &ns, "2.0.0", JobKind::Restore).await;
    assert_eq!(release(&client, &ns).await.unwrap().status.unwrap().phase, Phase::RollingBack);
    seen.extend(jobs(&client, &ns).await);
    crash_and_restart(&mut op, &label).await;
    assert_eq!(route_weights(&client, &ns).await.get(&format!("locall-api-{stable_rev}")), Some(&100));
    finish(&restore);

    // Where it would have ended without the crashes.
    let lr = wait_status(&client, &ns, "2.0.0", "RolledBack", |st| st.phase == Phase::RolledBack).await;
    let st = lr.status.unwrap();
    let f = st.failure.clone().unwrap();
    assert!(f.metric.as_ref().unwrap().context.starts_with("go-live window"), "{:?}", f.metric);
    assert!(f.traffic_restored_at.is_some() && f.database_restored_at.is_some() && f.verified_at.is_some(), "{f:?}");
    assert!(conditions::is_true(&st.conditions, "RollbackVerified"));
    assert_eq!(st.stable.as_ref().unwrap().version, "1.0.0");
    let r = route_weights(&client, &ns).await;
    assert_eq!(r.get(&format!("locall-api-{stable_rev}")), Some(&100), "{r:?}");
    assert_eq!(st.approvals.iter().filter(|a| a.stage == "production").count(), 1, "{:?}", st.approvals);
    assert_eq!(st.approvals[0].by, "alice@locall.io");

    // Nothing ran twice: v2's Jobs are one of each, and every Job seen before a crash is the
    // same object (same uid) at the end.
    let mut kinds: Vec<_> = st.jobs.iter().map(|j| format!("{:?}/{}", j.kind, j.name)).collect();
    kinds.sort();
    assert_eq!(kinds, ["Backup/backup", "Migrate/migrate", "PreDeploy/tests", "Restore/restore", "Verify/e2e", "Verify/smoke"]);
    assert!(st.jobs.iter().all(|j| j.state == JobState::Succeeded), "{:?}", st.jobs);
    let end = jobs(&client, &ns).await;
    for (name, uid) in &seen {
        assert_eq!(end.get(name), Some(uid), "{name} was re-created");
    }
    assert_eq!(end.len(), 4 + 6, "v1: tests, backup, migrate, e2e; v2: those and restore, smoke: {end:?}");

    // Nothing lost: the rollback was announced.
    wait_for(Duration::from_secs(30), "the RolledBack CloudEvent", || async {
        let r = receiver.received.lock().unwrap().clone();
        r.iter().any(|b| b["type"] == "io.locall.release.rolledback").then_some(())
    })
    .await;
}

#[tokio::test]
async fn status_writes_that_conflict_are_retried_from_fresh_state() {
    let client = client().await;
    let receiver = Receiver::start().await;
    let ns = setup(&client, "fault-409", &receiver).await;
    let label = format!("conflict-{ns}");
    let op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let m = manifest(&ns, "1.0.0", &label, false).replace("approval: true, ", "");
    apply_yaml(&client, &ns, &m).await;

    // Someone else keeps changing the release (a label, as GitOps tools and kubectl do) while
    // the operator works: each change moves its resourceVersion, so status writes computed from
    // the previous one are refused with 409 Conflict.
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let mut i = 0u32;
    let lr = loop {
        i += 1;
        let patch = serde_json::json!({"metadata": {"labels": {"touched": i.to_string()}}});
        api.patch("locall-api", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let lr = api.get("locall-api").await.unwrap();
        if lr.status.as_ref().is_some_and(|s| s.phase.is_terminal()) {
            break lr;
        }
        assert!(i < 3000, "the release did not finish while being changed: {:?}", lr.status.map(|s| s.message));
        tokio::time::sleep(Duration::from_millis(20 + u64::from(i % 7) * 10)).await;
    };
    let conflicts = scrape(&op.metrics_addr, r#"controller_runtime_reconcile_total{result="conflict"}"#).await;
    assert!(conflicts >= 1.0, "the changes caused conflicts ({conflicts}); this test did not test anything");
    let st = lr.status.unwrap();
    assert_eq!(st.phase, Phase::Succeeded, "{}", st.message);
    assert!(conditions::is_true(&st.conditions, "Ready"));
    // Retried from fresh state: every Job once, every transition recorded once.
    let mut kinds: Vec<_> = st.jobs.iter().map(|j| format!("{:?}/{}", j.kind, j.name)).collect();
    kinds.sort();
    assert_eq!(kinds, ["Backup/backup", "Migrate/migrate", "PreDeploy/tests", "Verify/e2e"]);
    assert_eq!(jobs(&client, &ns).await.len(), 4);
    let succeeded = wait_for(Duration::from_secs(30), "the Succeeded CloudEvent", || async {
        let r = receiver.received.lock().unwrap().clone();
        let n = r.iter().filter(|b| b["type"] == "io.locall.release.succeeded").count();
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(succeeded, 1, "announced once, not once per retried write");
}

/// A release the API server accepts but the operator cannot carry out as written.
fn bad(ns: &str, name: &str, label: &str, annotations: &str, spec: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: {name}, namespace: {ns}, labels: {{locall.io/operator: {label}}}, annotations: {{{annotations}}}}}
spec:
  version: "1.0.0"
  replicas: 1
  template:
    spec: {{containers: [{{name: api, image: "locall/api:1.0.0"}}]}}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
{spec}
"#
    )
}

const STAGES: &str = "  stages: [{name: production, steps: [{weight: 50, pause: 1s}, {weight: 100}]}]";

fn gate(query: &str) -> String {
    format!("{STAGES}\n  analysis: {{interval: 1s, metrics: [{{name: errors, query: '{query}', success: {{op: \"<\", value: 0.02}}}}]}}")
}

#[tokio::test]
async fn bad_input_only_the_operator_can_see_is_reported_naming_the_field_without_a_hot_loop() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "fault-input").await;
    let label = format!("input-{ns}");
    for args in [
        vec!["create", "secret", "generic", "locall-db", "--from-literal=url=postgres://db"],
        vec!["create", "secret", "generic", "not-a-cert", "--from-literal=tls.crt=hello", "--from-literal=tls.key=x"],
        vec!["create", "configmap", "flags", "--from-literal=a=1"],
    ] {
        let mut a = vec!["-n", ns.as_str()];
        a.extend(args);
        let (ok, _, err) = kubectl(&a);
        assert!(ok, "{err}");
    }
    // (name, annotations, spec, what the operator must say)
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("no-secret", "", format!("  preflight: {{secrets: [{{name: locall-dbx, keys: [url]}}]}}\n{STAGES}"), "spec.preflight.secrets[0]"),
        (
            "no-key",
            "",
            format!("  preflight: {{secrets: [{{name: locall-db, keys: [url, password]}}]}}\n{STAGES}"),
            "spec.preflight.secrets[0]",
        ),
        ("no-configmap", "", format!("  preflight: {{configMaps: [{{name: flagz}}]}}\n{STAGES}"), "spec.preflight.configMaps[0]"),
        ("no-cm-key", "", format!("  preflight: {{configMaps: [{{name: flags, keys: [b]}}]}}\n{STAGES}"), "spec.preflight.configMaps[0]"),
        ("no-tls", "", format!("  preflight: {{tls: [{{secretName: locall-tls, minValidity: 24h}}]}}\n{STAGES}"), "spec.preflight.tls[0]"),
        ("bad-tls", "", format!("  preflight: {{tls: [{{secretName: not-a-cert, minValidity: 24h}}]}}\n{STAGES}"), "spec.preflight.tls[0]"),
        (
            "no-namespace",
            "",
            "  stages: [{name: production, namespace: nowhere-at-all, steps: [{weight: 100}]}]".into(),
            "spec.stages[0].namespace",
        ),
        ("bad-promql", "", gate("sum(rate(http_requests_total[1m]"), "spec.analysis.metrics[0].query"),
        ("unknown-metric", "", gate("locall_metric_nobody_exports"), "spec.analysis.metrics[0].query"),
        ("bad-approve", r#"locall.io/approve: "yes please""#, STAGES.into(), "metadata.annotations[locall.io/approve]"),
        ("bad-request", r#"locall.io/request: "{\"action\":\"explode\"}""#, STAGES.into(), "metadata.annotations[locall.io/request]"),
    ];
    let mut op = Operator::start(&label, &format!("locall.io/operator={label}"));
    for (name, ann, spec, _) in &cases {
        apply_yaml(&client, &ns, &bad(&ns, name, &label, ann, spec)).await;
    }
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    for (name, _, _, field) in &cases {
        let said = wait_for(Duration::from_secs(60), &format!("{name} to name {field}"), || async {
            let lr = api.get(name).await.ok()?;
            let st = lr.status?;
            let text =
                std::iter::once(st.message.clone()).chain(st.conditions.iter().map(|c| c.message.clone())).collect::<Vec<_>>().join("\n");
            text.contains(field).then_some(format!("{} {}", st.phase, st.message))
        })
        .await;
        println!("{name}: {said}");
    }

    // Then it settles: what ended stays untouched, what holds on a gate polls at the gate's
    // interval (1s), and nothing reconciles in a loop.
    let rv = |lr: &LocallRelease| lr.resource_version().unwrap();
    let before: BTreeMap<String, String> =
        api.list(&ListParams::default()).await.unwrap().items.iter().map(|l| (l.name_any(), rv(l))).collect();
    let reconciles = || scrape(&op.metrics_addr, "controller_runtime_reconcile_total");
    let r0 = reconciles().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = reconciles().await - r0;
    let after = api.list(&ListParams::default()).await.unwrap();
    let mut holding = 0;
    for lr in &after.items {
        let st = lr.status.as_ref().unwrap();
        if st.phase.is_terminal() {
            assert_eq!(
                Some(&rv(lr)),
                before.get(&lr.name_any()),
                "{} ({}) was written again while nothing changed",
                lr.name_any(),
                st.phase
            );
        } else {
            holding += 1;
            // A first release has no previous version to share traffic with: it waits at 100%
            // for its gates, never declared good.
            assert_eq!(st.phase, Phase::Production, "{} holds, never promoted: {}", lr.name_any(), st.message);
        }
    }
    assert_eq!(holding, 2, "the two releases whose gate cannot be measured hold");
    // Each poll writes its measurement to status, and that write comes back once as a watch
    // event: two reconciles per interval per holding release, plus slack for a slow tick.
    println!("{during} reconciles in 10 s ({holding} releases polling every 1 s)");
    assert!(during <= (holding * 24) as f64, "{during} reconciles in 10 s: a hot loop");
    assert!(op.child.try_wait().unwrap().is_none(), "the operator is still running");

    // A fixed annotation clears its condition.
    let (ok, _, err) = kubectl(&["-n", &ns, "annotate", "lr/bad-approve", "locall.io/approve-"]);
    assert!(ok, "{err}");
    wait_for(Duration::from_secs(30), "AnnotationsValid=True once the annotation is removed", || async {
        let st = api.get("bad-approve").await.ok()?.status?;
        conditions::is_true(&st.conditions, "AnnotationsValid").then_some(())
    })
    .await;
}
