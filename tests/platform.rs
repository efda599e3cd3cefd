//! One release of several components on the local cluster: the api and the webhooks take
//! traffic (each its own HTTPRoute, their weights stepping together), the worker and the web are
//! replaced once Ready; a bad worker rolls every component back as one, the database restored
//! once. A bad version is a manifest (the worker pods' annotation), not test code.

mod support;

use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    api::{Api, DynamicObject, ListParams},
    Client,
};
use locall_operator::api::{conditions, LocallRelease, Phase};
use std::{collections::BTreeMap, time::Duration};
use support::*;

const FAILURES: &str = r#"sum(rate(locall_integration_requests_total{namespace="{{namespace}}",service="{{service}}",version="{{version}}",result="failure"}[10s])) / sum(rate(locall_integration_requests_total{namespace="{{namespace}}",service="{{service}}",version="{{version}}"}[10s]))"#;

/// The platform at `version`; `worker` is the worker pods' extra annotations (its behaviour).
fn manifest(ns: &str, version: &str, worker: &str) -> String {
    let stg = format!("{ns}-stg");
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: platform, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 2
  components:
  - name: api
    service: {{port: 8080, annotations: {{sim.locall.io/rps: "100"}}}}
    template: {{spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}}}
  - name: webhooks
    replicas: 1
    service: {{port: 8080, annotations: {{sim.locall.io/rps: "50"}}}}
    template: {{spec: {{containers: [{{name: webhooks, image: "locall/webhooks:{version}"}}]}}}}
  - name: worker
    after: [api]
    template:
      metadata: {{annotations: {{sim.locall.io/worker-rps: "100"{worker}}}}}
      spec: {{containers: [{{name: worker, image: "locall/worker:{version}"}}]}}
  - name: web
    replicas: 1
    after: [api, webhooks, worker]
    template: {{spec: {{containers: [{{name: web, image: "locall/web:{version}"}}]}}}}
  hooks:
    migration: {{changesSchema: true, backup: {{command: [backup]}}, migrate: {{command: [migrate]}}, restore: {{command: [restore]}}}}
  stages:
  - {{name: staging, namespace: {stg}, replicas: 1, steps: [{{weight: 100, pause: 3s}}]}}
  - {{name: production, steps: [{{weight: 20, pause: 4s}}, {{weight: 100}}]}}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
  analysis:
    interval: 2s
    metrics:
    - name: error-rate
      query: '{ERROR_RATIO}'
      success: {{op: "<", value: 0.02}}
      rollback: {{op: ">", value: 0.05}}
      consecutive: 2
      component: api
    - name: sync-failures
      component: worker
      query: '{FAILURES}'
      success: {{op: "<", value: 0.02}}
      rollback: {{op: ">", value: 0.1}}
      consecutive: 2
  rollback:
    verify: [{{name: smoke}}]
  notifications:
  - {{name: oncall, format: Slack, urlSecret: {{name: hooks, key: slack}}, events: [RolledBack]}}
"#
    )
}

async fn wait_phase(client: &Client, ns: &str, version: &str, phase: Phase, secs: u64) -> LocallRelease {
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), ns);
    wait_for(Duration::from_secs(secs), &format!("{ns} {version} to reach {phase}"), || async {
        let lr = api.get_opt("platform").await.ok()??;
        let st = lr.status.as_ref()?;
        assert!(
            !(st.candidate_version == version && st.phase.is_terminal() && st.phase != phase),
            "{ns} {version} ended {}: {}",
            st.phase,
            st.message
        );
        (st.phase == phase && st.candidate_version == version).then_some(lr)
    })
    .await
}

/// A component's HTTPRoute backends: (Service, weight).
async fn route(client: &Client, ns: &str, component: &str) -> BTreeMap<String, i64> {
    let ar = locall_operator::traffic::gateway::httproute_resource();
    let Ok(r) = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get(&format!("platform-{component}")).await else {
        return BTreeMap::new();
    };
    r.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| (b["name"].as_str().unwrap_or_default().to_string(), b["weight"].as_i64().unwrap_or(0)))
        .collect()
}

/// (replicas wanted, Ready) of a component's Deployment of a revision, if it exists.
async fn deployment(client: &Client, ns: &str, component: &str, rev: &str) -> Option<(i32, i32)> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns).get_opt(&format!("platform-{component}-{rev}")).await.unwrap()?;
    Some((d.spec.and_then(|s| s.replicas).unwrap_or(0), d.status.and_then(|s| s.ready_replicas).unwrap_or(0)))
}

#[tokio::test]
async fn the_platform_is_released_and_rolled_back_as_one() {
    let receiver = Receiver::start().await;
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "platform").await;
    let stg = format!("{ns}-stg");
    stage_namespace(&stg, &ns);
    let (ok, _, err) = kubectl(&["-n", &ns, "create", "secret", "generic", "hooks", &format!("--from-literal=slack={}", receiver.url)]);
    assert!(ok, "{err}");

    // 1.0.0, then 2.0.0: every component replaced, the HTTP ones stepping together.
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "")).await;
    let v1 = wait_phase(&client, &ns, "1.0.0", Phase::Succeeded, 180).await;
    let rev1 = v1.status.unwrap().revision;
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "")).await;
    // While 2.0.0 moves through production, sample both routes: the api and the webhooks
    // each reach the 20% step, and the release never shifts one past the other's step.
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    let mut seen: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let v2 = loop {
        let lr = api.get("platform").await.unwrap();
        let st = lr.status.clone().unwrap_or_default();
        if st.candidate_version == "2.0.0" && st.phase == Phase::Succeeded {
            break lr;
        }
        assert!(!(st.candidate_version == "2.0.0" && st.phase.is_terminal()), "2.0.0 ended {}: {}", st.phase, st.message);
        if st.candidate_version == "2.0.0" && st.stage == "production" && st.step_started_at.is_some() {
            for c in ["api", "webhooks"] {
                let w = route(&client, &ns, c).await;
                let cand = w.iter().filter(|(k, _)| !k.ends_with(&rev1)).map(|(_, v)| *v).sum::<i64>();
                seen.entry(c).or_default().push(cand);
            }
            // A step counts as taken only when every HTTP component's route carries it.
            assert!(
                seen["api"].last() >= Some(&(st.weight as i64)) && seen["webhooks"].last() >= Some(&(st.weight as i64)),
                "{seen:?} at {}%",
                st.weight
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for c in ["api", "webhooks"] {
        assert!(seen.get(c).is_some_and(|w| w.contains(&20)), "{c} held 20%: {seen:?}");
    }
    let st2 = v2.status.unwrap();
    let rev2 = st2.revision.clone();
    assert_eq!(st2.components_ready.as_deref(), Some("4/4"));
    // What a user types.
    let (ok, out, err) = kubectl(&["-n", &ns, "get", "lr", "platform"]);
    assert!(ok, "{err}");
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], ["platform", "2.0.0", "production", "Succeeded", "100", "4/4", "True"], "{out}");
    for c in ["api", "webhooks", "worker", "web"] {
        assert_eq!(deployment(&client, &ns, c, &rev2).await.map(|d| d.0), Some(if matches!(c, "api" | "worker") { 2 } else { 1 }), "{c}");
        assert_eq!(deployment(&client, &ns, c, &rev1).await, None, "{c} 1.0.0 replaced");
    }
    // The order: the worker's new version came after the api's was Ready, the web last.
    let created = |c: &'static str| {
        let (client, ns, rev) = (client.clone(), ns.clone(), rev2.clone());
        async move {
            let d = Api::<Deployment>::namespaced(client, &ns).get(&format!("platform-{c}-{rev}")).await.unwrap();
            d.metadata.creation_timestamp.unwrap().0
        }
    };
    assert!(created("worker").await >= created("api").await && created("web").await >= created("worker").await);

    // 3.0.0 with a bad worker: half its integration calls fail. Everything goes back.
    apply_yaml(&client, &ns, &manifest(&ns, "3.0.0", r#", sim.locall.io/payments-failure-rate: "0.5""#)).await;
    let lr = wait_phase(&client, &ns, "3.0.0", Phase::RolledBack, 240).await;
    let st = lr.status.unwrap();
    let f = st.failure.clone().unwrap();
    println!("{}", serde_json::to_string_pretty(&f).unwrap());
    assert_eq!(f.component.as_deref(), Some("worker"), "{}", f.message);
    assert_eq!(f.metric.as_ref().map(|m| m.metric.as_str()), Some("worker/sync-failures"));
    let rev3 = st.revision.clone();
    for n in [&ns, &stg] {
        for c in ["api", "webhooks"] {
            let w = route(&client, n, c).await;
            assert_eq!(w.get(&format!("platform-{c}-{rev2}")), Some(&100), "{n} {c}: {w:?}");
            assert_eq!(w.values().sum::<i64>(), 100, "{n} {c}: {w:?}");
        }
    }
    // Every component of 2.0.0 Ready again where 3.0.0 went, 3.0.0 at zero.
    let reached: Vec<String> = st.reached.iter().map(|s| s.namespace.clone()).collect();
    for n in &reached {
        for c in ["api", "webhooks", "worker", "web"] {
            let (want, ready) = deployment(&client, n, c, &rev2).await.expect("2.0.0 kept");
            assert!(want > 0 && ready == want, "{n} {c} 2.0.0: {ready}/{want}");
            let cand = wait_for(Duration::from_secs(30), "3.0.0 scaled to zero", || async {
                match deployment(&client, n, c, &rev3).await {
                    None => Some((0, 0)),
                    Some(d) if d.0 == 0 => Some(d),
                    Some(_) => None,
                }
            })
            .await;
            assert_eq!(cand.0, 0, "{n} {c} 3.0.0");
        }
    }
    // One restore, from this attempt's own backup; the rollback verified for every component.
    let restores =
        Api::<Job>::namespaced(client.clone(), &ns).list(&ListParams::default().labels("locall.io/job-kind=Restore")).await.unwrap();
    assert_eq!(restores.items.len(), 1);
    assert!(f.database_restored_at.is_some() && f.traffic_restored_at.is_some());
    assert!(conditions::is_true(&st.conditions, "RollbackVerified"), "{:?}", st.conditions);
    assert_eq!(st.stable.unwrap().version, "2.0.0");
    // The notification names the component that failed.
    wait_for(Duration::from_secs(20), "the RolledBack notification", || async {
        let r = receiver.received.lock().unwrap().clone();
        r.iter().find(|b| b["text"].as_str().is_some_and(|t| t.contains("RolledBack") && t.contains("worker"))).cloned()
    })
    .await;
}
