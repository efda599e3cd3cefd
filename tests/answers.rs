//! Every input and every outage gets an answer, on the local cluster: a child the API server
//! refuses ends the release in a condition and an Event naming the object and the field (and no
//! write loop, and `kubectl get lr` never shows the refused version as Succeeded); Events tell
//! each version's own story; another team's rule in the release's HTTPRoute survives every
//! weight change and a rollback; a notification owed while its receiver is down arrives exactly
//! once, across an operator restart, and a final failure is an Event.

mod support;

use k8s_openapi::api::events::v1::Event;
use kube::{
    api::{Api, DynamicObject, ListParams, Patch, PatchParams},
    Client, ResourceExt,
};
use locall_operator::api::{conditions, FailureReason, LocallRelease, Phase};
use std::time::{Duration, Instant};
use support::*;

/// A one-stage release; `container` and `hook` are spliced into the container and the
/// preDeploy hook (to make them invalid in ways only the API server checks).
fn release(ns: &str, version: &str, container: &str, hook: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 1
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"{container}}}]}}
  hooks:
    preDeploy: [{{name: tests{hook}}}]
  stages: [{{name: production}}]
  traffic: {{method: ReplicaRatio}}
"#
    )
}

async fn wait_phase(api: &Api<LocallRelease>, version: &str, phase: Phase, secs: u64) -> LocallRelease {
    wait_for(Duration::from_secs(secs), &format!("{version} to reach {phase}"), || async {
        let lr = api.get_opt("locall-api").await.ok()??;
        let st = lr.status.as_ref()?;
        (st.phase == phase && st.candidate_version == version).then_some(lr)
    })
    .await
}

/// The notes of the release's Events with `reason`.
async fn notes(client: &Client, ns: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("locall-api") && e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn a_child_the_api_server_refuses_ends_the_release_naming_the_object_and_the_field() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "ans-refused").await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    apply_yaml(&client, &ns, &release(&ns, "1.0.0", "", "")).await;
    let v1 = wait_phase(&api, "1.0.0", Phase::Succeeded, 120).await.status.unwrap();

    // A port the CRD's pod template admits and the Deployment's validation refuses.
    apply_yaml(&client, &ns, &release(&ns, "2.0.0", ", ports: [{containerPort: 70000}]", "")).await;
    let started = Instant::now();
    let lr = wait_phase(&api, "2.0.0", Phase::Failed, 30).await;
    println!("refused Deployment: Failed after {:.1} s", started.elapsed().as_secs_f64());
    let st = lr.status.clone().unwrap();
    let failure = st.failure.clone().unwrap();
    assert_eq!(failure.reason, FailureReason::ChildRefused);
    for part in ["Deployment", &ns, "spec.template.spec.containers[0].ports[0].containerPort"] {
        assert!(st.message.contains(part), "the message names {part}: {}", st.message);
    }
    let ready = st.conditions.iter().find(|c| c.type_ == conditions::READY).unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("containerPort"), "{}", ready.message);
    // The Event follows the status write.
    wait_for(Duration::from_secs(10), "an Event naming the refused Deployment and the field", || async {
        let failed = notes(&client, &ns, "Failed").await;
        failed.iter().any(|n| n.contains("containerPort") && n.contains("Deployment")).then_some(())
    })
    .await;
    // `kubectl get lr` shows the version in flight as Failed, never as Succeeded.
    let (ok, out, err) = kubectl(&["-n", &ns, "get", "lr", "locall-api", "--no-headers"]);
    assert!(ok, "{err}");
    assert!(out.contains("2.0.0") && out.contains("Failed") && !out.contains("Succeeded"), "{out}");
    // Nothing was lost: 1.0.0 still runs.
    let deps = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    let stable = format!("locall-api-{}", v1.revision);
    let d = deps.items.iter().find(|d| d.name_any() == stable).expect("the stable Deployment stays");
    assert_eq!(d.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
    // No write loop: the status stays as it is.
    let rv = api.get("locall-api").await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(api.get("locall-api").await.unwrap().resource_version(), rv, "no status write while nothing changes");

    // A hook Job whose pod the API server refuses (an env var from a field pods do not have).
    apply_yaml(&client, &ns, &release(&ns, "3.0.0", "", ", env: [{name: WHERE, valueFrom: {fieldRef: {fieldPath: spec.bogus}}}]")).await;
    let lr = wait_phase(&api, "3.0.0", Phase::Failed, 30).await;
    let st = lr.status.unwrap();
    assert_eq!(st.failure.as_ref().unwrap().reason, FailureReason::ChildRefused);
    assert!(st.message.contains("Job") && st.message.contains("pre-tests"), "{}", st.message);
    assert!(st.jobs.is_empty(), "no record of a Job that was never created: {:?}", st.jobs);
    let created = notes(&client, &ns, "JobCreated").await;
    assert!(!created.iter().any(|n| n.contains(&st.revision)), "no Event claims the refused Job was created: {created:?}");

    // Fixed: the next version goes through, and the Events tell each version's own story.
    apply_yaml(&client, &ns, &release(&ns, "4.0.0", "", "")).await;
    let v4 = wait_phase(&api, "4.0.0", Phase::Succeeded, 120).await.status.unwrap();
    let created = notes(&client, &ns, "JobCreated").await;
    for job in v1.jobs.iter().chain(v4.jobs.iter()) {
        assert!(created.iter().any(|n| n.contains(&job.job_name)), "an Event for {}: {created:?}", job.job_name);
    }
}

/// Another team's `/admin` rule, added to the release's HTTPRoute with its own field manager.
fn admin_rule() -> serde_json::Value {
    serde_json::json!({
        "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
        "backendRefs": [{"kind": "Service", "name": "admin-console", "port": 80}],
    })
}

fn gateway_release(ns: &str, version: &str, steps: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 1
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  stages: [{{name: production, steps: {steps}}}]
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
"#
    )
}

#[tokio::test]
async fn another_teams_route_rule_survives_every_weight_change_and_the_rollback() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "ans-route").await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &locall_operator::traffic::gateway::httproute_resource());
    apply_yaml(&client, &ns, &gateway_release(&ns, "1.0.0", "[{weight: 100}]")).await;
    wait_phase(&api, "1.0.0", Phase::Succeeded, 120).await;
    let add = serde_json::json!([{"op": "add", "path": "/spec/rules/-", "value": admin_rule()}]);
    let pp = PatchParams { field_manager: Some("team-admin".into()), ..Default::default() };
    routes.patch("locall-api", &pp, &Patch::Json::<()>(serde_json::from_value(add).unwrap())).await.unwrap();
    let has_admin = |r: &DynamicObject| {
        r.data["spec"]["rules"].as_array().is_some_and(|rules| rules.iter().any(|x| x["matches"][0]["path"]["value"] == "/admin"))
    };

    // Three weight changes: each one seen on the route, with the /admin rule still there.
    apply_yaml(&client, &ns, &gateway_release(&ns, "2.0.0", "[{weight: 10, pause: 3s}, {weight: 50, pause: 3s}, {weight: 100}]")).await;
    let candidate = wait_for(Duration::from_secs(60), "2.0.0 in flight", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.candidate_version == "2.0.0" && !st.revision.is_empty()).then(|| format!("locall-api-{}", st.revision))
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 3 && Instant::now() < deadline {
        let r = routes.get("locall-api").await.unwrap();
        let w = r.data["spec"]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rule| rule["backendRefs"].as_array().cloned().unwrap_or_default())
            .find(|b| b["name"] == candidate.as_str())
            .and_then(|b| b["weight"].as_i64());
        if let Some(w @ (10 | 50 | 100)) = w {
            assert!(has_admin(&r), "the /admin rule survives the step to {w}%: {:#}", r.data["spec"]["rules"]);
            seen.insert(w);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![10, 50, 100], "each step seen on the route");
    wait_phase(&api, "2.0.0", Phase::Succeeded, 60).await;
    assert!(has_admin(&routes.get("locall-api").await.unwrap()));

    // A rollback of 3.0.0 from its first step: the rule is still there, the split back on 2.0.0.
    apply_yaml(&client, &ns, &gateway_release(&ns, "3.0.0", "[{weight: 20, pause: 1h}, {weight: 100}]")).await;
    wait_for(Duration::from_secs(60), "3.0.0 at 20%", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.candidate_version == "3.0.0" && st.weight == 20 && st.step_started_at.is_some()).then_some(())
    })
    .await;
    request(&ns, "rollback", "r1", "oncall@locall.io");
    wait_phase(&api, "3.0.0", Phase::RolledBack, 60).await;
    let r = routes.get("locall-api").await.unwrap();
    assert!(has_admin(&r), "the /admin rule survives the rollback: {:#}", r.data["spec"]["rules"]);
    let weights = route_weights(&client, &ns).await;
    assert_eq!(weights.get(&candidate).copied(), Some(100), "all of the release's traffic on 2.0.0 again: {weights:?}");
}

fn notified_release(ns: &str, label: &str, version: &str, steps: &str, notifications: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}, labels: {{locall.io/operator: {label}}}}}
spec:
  version: "{version}"
  replicas: 1
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  stages: [{{name: production, steps: {steps}}}]
  traffic: {{method: ReplicaRatio}}
  notifications: {notifications}
"#
    )
}

#[tokio::test]
async fn a_rollback_notification_owed_while_the_receiver_is_down_arrives_once_across_a_restart() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "ans-notify").await;
    let label = ns.clone();
    let mut op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let receiver = Receiver::start().await;
    receiver.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, _, err) = kubectl(&["-n", &ns, "create", "secret", "generic", "hooks", &format!("--from-literal=slack={}", receiver.url)]);
    assert!(ok, "{err}");
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let targets = "[{name: oncall, format: Slack, urlSecret: {name: hooks, key: slack}, events: [RolledBack]}]";
    apply_yaml(&client, &ns, &notified_release(&ns, &label, "1.0.0", "[{weight: 100}]", targets)).await;
    wait_phase(&api, "1.0.0", Phase::Succeeded, 120).await;
    apply_yaml(&client, &ns, &notified_release(&ns, &label, "2.0.0", "[{weight: 50, pause: 1h}, {weight: 100}]", targets)).await;
    wait_for(Duration::from_secs(60), "2.0.0 at 50%", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.candidate_version == "2.0.0" && st.weight == 50 && st.step_started_at.is_some()).then_some(())
    })
    .await;
    request(&ns, "rollback", "r1", "oncall@locall.io");
    wait_phase(&api, "2.0.0", Phase::RolledBack, 60).await;
    let down_since = Instant::now();
    // Owed, in status, and said in a condition naming the target.
    let st = wait_for(Duration::from_secs(30), "a failed attempt in status", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        st.conditions
            .iter()
            .any(|c| c.type_ == "NotificationsDelivered" && c.status == "False" && c.message.contains("oncall"))
            .then_some(st)
    })
    .await;
    assert_eq!(st.outbox.len(), 1, "{:?}", st.outbox);
    assert!(!st.outbox[0].last_error.contains("/hook"), "the URL's path is never printed: {}", st.outbox[0].last_error);
    // The operator restarts while the receiver is still down.
    tokio::time::sleep(Duration::from_secs(30)).await;
    op.kill();
    op = Operator::start(&label, &format!("locall.io/operator={label}"));
    let left = Duration::from_secs(120).saturating_sub(down_since.elapsed());
    tokio::time::sleep(left).await;
    assert!(receiver.received.lock().unwrap().is_empty());
    receiver.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let up = Instant::now();
    wait_for(Duration::from_secs(90), "the RolledBack notification", || async {
        (!receiver.received.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    println!("delivered {:.1} s after the receiver came back (down {:.0} s)", up.elapsed().as_secs_f64(), (up - down_since).as_secs_f64());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let got = receiver.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "exactly once: {got:?}");
    assert!(got[0]["text"].as_str().is_some_and(|t| t.contains("RolledBack")), "{got:?}");
    let uid = api.get("locall-api").await.unwrap().uid().unwrap();
    assert!(got[0]["_key"].as_str().is_some_and(|k| k.starts_with(&uid)), "an idempotency key: {got:?}");
    let st = api.get("locall-api").await.unwrap().status.unwrap();
    assert!(st.outbox.is_empty());
    assert!(st.conditions.iter().any(|c| c.type_ == "NotificationsDelivered" && c.status == "True"), "{:?}", st.conditions);
    drop(op);
}

#[tokio::test]
async fn a_notification_given_up_is_an_event_naming_the_target_and_why() {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "ans-giveup").await;
    let label = ns.clone();
    let _op = Operator::start_with(&label, &format!("locall.io/operator={label}"), &["--notify-retry-for", "10s"], &[]);
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    // The Secret does not exist.
    let targets = "[{name: business, format: Webhook, urlSecret: {name: nosuch, key: url}, events: [Succeeded]}]";
    apply_yaml(&client, &ns, &notified_release(&ns, &label, "1.0.0", "[{weight: 100}]", targets)).await;
    wait_phase(&api, "1.0.0", Phase::Succeeded, 120).await;
    let why = format!("Secret {ns}/nosuch not found (spec.notifications[0].urlSecret.name)");
    wait_for(Duration::from_secs(30), "a condition naming the missing Secret", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        st.conditions.iter().any(|c| c.type_ == "NotificationsDelivered" && c.status == "False" && c.message.contains(&why)).then_some(())
    })
    .await;
    let given_up = wait_for(Duration::from_secs(60), "a NotificationFailed Event", || async {
        let n = notes(&client, &ns, "NotificationFailed").await;
        (!n.is_empty()).then_some(n)
    })
    .await;
    assert!(given_up[0].contains("business") && given_up[0].contains(&why) && given_up[0].contains("1.0.0"), "{given_up:?}");
    let st = api.get("locall-api").await.unwrap().status.unwrap();
    assert!(st.outbox.is_empty(), "given up, not kept for ever: {:?}", st.outbox);
    let c = st.conditions.iter().find(|c| c.type_ == "NotificationsDelivered").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "GaveUp"), "never claimed delivered: {c:?}");
}
