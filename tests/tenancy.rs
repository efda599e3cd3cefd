//! Tenant safety on the local cluster: a release acts only where its owner may. A stage
//! namespace that has not opted in gets nothing (and nothing in it is read); an opted-in
//! namespace lends no ServiceAccount it does not list; a release's own Prometheus URL must be one
//! the operator allows. Each ends `Failed` naming the field, and the same release succeeds once
//! the namespace says yes.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job, core::v1::Service};
use kube::{
    api::{Api, ListParams},
    Client,
};
use locall_operator::api::{FailureReason, LocallRelease, Phase};
use std::time::Duration;
use support::*;

fn release(ns: &str, target: &str, account: &str, analysis: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "1.0.0"
  replicas: 1
  template:
    spec: {{{account}containers: [{{name: api, image: "locall/api:1.0.0"}}]}}
  hooks:
    preDeploy: [{{name: tests}}]
  preflight:
    secrets: [{{name: locall-db, keys: [url]}}]
  stages: [{{name: production, namespace: {target}}}]
  traffic: {{method: ReplicaRatio}}{analysis}
"#
    )
}

async fn failed(api: &Api<LocallRelease>) -> String {
    wait_for(Duration::from_secs(30), "the release to fail", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.phase == Phase::Failed).then_some(st)
    })
    .await
    .message
}

async fn nothing_of_ours_in(client: &Client, ns: &str) {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=locall-operator");
    assert!(Api::<Deployment>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items.is_empty(), "no Deployment in {ns}");
    assert!(Api::<Service>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items.is_empty(), "no Service in {ns}");
    assert!(Api::<Job>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items.is_empty(), "no Job in {ns}");
}

#[tokio::test]
async fn a_release_acts_only_in_namespaces_that_accept_it_and_only_as_accounts_they_lend() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "tenant").await;
    // Someone else's namespace, with a Secret and a privileged account of its own.
    let theirs = namespace(&client, "tenant-theirs").await;
    let (ok, _, err) = kubectl(&["-n", &theirs, "create", "secret", "generic", "locall-db", "--from-literal=url=postgres://theirs"]);
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(&["-n", &theirs, "create", "serviceaccount", "deployer"]);
    assert!(ok, "{err}");
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);

    // 1. Not opted in: Failed naming the field, nothing created there, nothing read there.
    apply_yaml(&client, &ns, &release(&ns, &theirs, "serviceAccountName: deployer, ", "")).await;
    let message = failed(&api).await;
    assert!(message.contains("spec.stages[0].namespace") && message.contains("does not accept releases"), "{message}");
    let st = api.get("locall-api").await.unwrap().status.unwrap();
    assert_eq!(st.failure.as_ref().unwrap().reason, FailureReason::PreflightFailed);
    assert!(!st.preflight.iter().any(|c| c.name.contains("Secret")), "nothing in {theirs} is read: {:?}", st.preflight);
    nothing_of_ours_in(&client, &theirs).await;

    // 2. It accepts releases from this namespace, but lends no account: Failed naming the field.
    let (ok, _, err) = kubectl(&["annotate", "namespace", &theirs, &format!("locall.io/accept-releases-from={ns}")]);
    assert!(ok, "{err}");
    request(&ns, "retry", "r1", "dev@locall.io");
    wait_for(Duration::from_secs(30), "the retry to fail on the account", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.phase == Phase::Failed && st.message.contains("spec.template.spec.serviceAccountName")).then_some(())
    })
    .await;
    nothing_of_ours_in(&client, &theirs).await;

    // 3. It lends the account, but the release's own Jobs (pre-deploy, migration) run in its
    // namespace as that account too, and it does not exist there: Failed naming the field, not a
    // wait for a Job whose pod the API server refuses.
    let (ok, _, err) = kubectl(&["annotate", "namespace", &theirs, "locall.io/service-accounts=deployer"]);
    assert!(ok, "{err}");
    request(&ns, "retry", "r2", "dev@locall.io");
    let missing = format!("spec.template.spec.serviceAccountName: ServiceAccount {ns}/deployer not found");
    wait_for(Duration::from_secs(30), "the retry to fail on the missing account", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.phase == Phase::Failed && st.message.contains(&missing)).then_some(())
    })
    .await;
    nothing_of_ours_in(&client, &theirs).await;

    // 4. The release's own namespace lists the accounts its releases may use, not this one:
    // Failed naming the field, though the account now exists there.
    let (ok, _, err) = kubectl(&["-n", &ns, "create", "serviceaccount", "deployer"]);
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(&["annotate", "namespace", &ns, "locall.io/service-accounts=app"]);
    assert!(ok, "{err}");
    request(&ns, "retry", "r3", "dev@locall.io");
    let own = format!("spec.template.spec.serviceAccountName: Namespace {ns} lets releases run only as the ServiceAccounts");
    wait_for(Duration::from_secs(30), "the retry to fail on the account its own namespace does not list", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.phase == Phase::Failed && st.message.contains(&own)).then_some(())
    })
    .await;
    nothing_of_ours_in(&client, &theirs).await;

    // 5. With the account in both namespaces, listed by both, the same release goes through.
    let (ok, _, err) = kubectl(&["annotate", "--overwrite", "namespace", &ns, "locall.io/service-accounts=app,deployer"]);
    assert!(ok, "{err}");
    request(&ns, "retry", "r4", "dev@locall.io");
    wait_for(Duration::from_secs(120), "1.0.0 Succeeded", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.phase == Phase::Succeeded).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_prometheus_the_operator_does_not_allow_is_refused_naming_the_field_and_never_called() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    // The metadata address itself, and the same behind the operator's own Prometheus URL as
    // userinfo: as text that one starts with an allowed URL, but it calls 169.254.169.254.
    let bypass = format!("{}@169.254.169.254:80/latest/meta-data", cluster().prometheus_url);
    for url in ["http://169.254.169.254:80/latest/meta-data", bypass.as_str()] {
        let ns = namespace(&client, "tenant-prom").await;
        let (ok, _, err) = kubectl(&["-n", &ns, "create", "secret", "generic", "locall-db", "--from-literal=url=postgres://db"]);
        assert!(ok, "{err}");
        let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
        let analysis = format!(
            "\n  analysis:\n    prometheus: {url}\n    metrics: [{{name: e, query: 'vector(0)', success: {{op: \"<\", value: 1}}}}]"
        );
        apply_yaml(&client, &ns, &release(&ns, &ns, "", &analysis)).await;
        let message = failed(&api).await;
        assert!(message.contains("spec.analysis.prometheus") && message.contains("not among the Prometheus URLs"), "{url}: {message}");
        assert!(!message.contains("/latest/meta-data"), "only scheme and host are printed: {message}");
        assert!(!message.contains('@'), "no userinfo is printed: {message}");
        nothing_of_ours_in(&client, &ns).await;
    }
}

#[tokio::test]
async fn a_stage_added_in_flight_in_a_namespace_that_does_not_accept_it_holds_and_gets_nothing() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "tenant-late").await;
    let theirs = namespace(&client, "tenant-late-theirs").await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let spec = |version: &str, extra: &str| {
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
  stages: [{{name: production, steps: [{{weight: 50, pause: 1h}}, {{weight: 100}}]}}{extra}]
  traffic: {{method: ReplicaRatio}}
"#
        )
    };
    apply_yaml(&client, &ns, &spec("1.0.0", "")).await;
    wait_for(Duration::from_secs(120), "1.0.0 Succeeded", || async {
        (api.get_opt("locall-api").await.ok()??.status?.phase == Phase::Succeeded).then_some(())
    })
    .await;
    apply_yaml(&client, &ns, &spec("2.0.0", "")).await;
    wait_for(Duration::from_secs(60), "2.0.0 at 50%", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.candidate_version == "2.0.0" && st.weight == 50 && st.step_started_at.is_some()).then_some(())
    })
    .await;
    // Mid-flight (preflight is behind it): a later stage in someone else's namespace, then promote.
    apply_yaml(&client, &ns, &spec("2.0.0", &format!(", {{name: eu, namespace: {theirs}}}"))).await;
    request(&ns, "promote", "p1", "dev@locall.io");
    let st = wait_for(Duration::from_secs(60), "a hold naming the stage's namespace", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        st.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True" && c.message.contains("spec.stages[1].namespace"))
            .then_some(st)
    })
    .await;
    assert_ne!(st.phase, Phase::RollingBack, "an edit never rolls back a healthy release: {}", st.message);
    nothing_of_ours_in(&client, &theirs).await;
}

#[tokio::test]
async fn recognisable_fake_secrets_appear_nowhere_in_log_events_or_status() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "tenant-secrets").await;
    let receiver = Receiver::start().await;
    // A webhook URL whose path and query are the credential, as Slack's and Teams' are; the
    // receiver answers 404 there, so every attempt fails and is reported.
    let hook = receiver.url.replace("/hook", "/services/T0FAKESECRET1/B0FAKESECRET2?sig=FAKESECRET3");
    let (ok, _, err) = kubectl(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "hooks",
        &format!("--from-literal=slack={hook}"),
        "--from-literal=password=FAKESECRET4",
    ]);
    assert!(ok, "{err}");
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let manifest = format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "1.0.0"
  replicas: 1
  template:
    spec: {{containers: [{{name: api, image: "locall/api:1.0.0"}}]}}
  preflight:
    secrets: [{{name: hooks, keys: [password, missing]}}]
  stages: [{{name: production}}]
  traffic: {{method: ReplicaRatio}}
  analysis:
    prometheus: "http://admin:FAKESECRET5@prometheus.internal:9090/"
    metrics: [{{name: e, query: 'vector(0)', success: {{op: "<", value: 1}}}}]
  notifications:
  - {{name: oncall, format: Slack, urlSecret: {{name: hooks, key: slack}}}}
"#
    );
    apply_yaml(&client, &ns, &manifest).await;
    wait_for(Duration::from_secs(60), "a failed delivery recorded", || async {
        let st = api.get_opt("locall-api").await.ok()??.status?;
        (st.phase == Phase::Failed && st.outbox.iter().any(|o| o.attempts > 0)).then_some(())
    })
    .await;
    let status = serde_json::to_string(&api.get("locall-api").await.unwrap().status).unwrap();
    let (ok, events, err) = kubectl(&["-n", &ns, "get", "events.events.k8s.io", "-o", "json"]);
    assert!(ok, "{err}");
    let log = std::fs::read_to_string(cluster().dir.join("logs/operator-shared.log")).unwrap();
    for (what, text) in [("status", &status), ("Events", &events), ("operator log", &log)] {
        assert!(!text.contains("FAKESECRET"), "a secret in the {what}: {}", &text[text.find("FAKESECRET").unwrap().saturating_sub(200)..]);
    }
    assert!(status.contains("prometheus.internal"), "the host is named, the credential is not: {status}");
}
