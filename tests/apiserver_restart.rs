//! The API server killed in the middle of a release and started again: the operator's watches
//! reconnect, it resumes from status, the release finishes and no Job is created twice. (Its own
//! test binary: it takes the shared API server away for a few seconds.)

mod support;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};
use locall_operator::api::{LocallRelease, Phase};
use std::time::Duration;
use support::*;

fn manifest(ns: &str, version: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 2
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  hooks:
    preDeploy: [{{name: tests}}]
    migration: {{changesSchema: true, backup: {{command: [backup]}}, migrate: {{command: [migrate]}}, restore: {{command: [restore]}}}}
  stages: [{{name: production, steps: [{{weight: 20, pause: 3s}}, {{weight: 60, pause: 3s}}, {{weight: 100}}]}}]
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
"#
    )
}

#[tokio::test]
async fn a_release_survives_an_api_server_restart() {
    shared_operator();
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, "apiserver").await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0")).await;
    wait_for(Duration::from_secs(120), "1.0.0 Succeeded", || async {
        api.get_opt("locall-api").await.ok()??.status.filter(|s| s.phase == Phase::Succeeded).map(|_| ())
    })
    .await;
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0")).await;
    wait_for(Duration::from_secs(120), "2.0.0 at its first production step", || async {
        api.get_opt("locall-api")
            .await
            .ok()??
            .status
            .filter(|s| s.candidate_version == "2.0.0" && s.weight == 20 && s.step_started_at.is_some())
            .map(|_| ())
    })
    .await;

    let pid: i32 = std::fs::read_to_string(cluster().dir.join("pids/kube-apiserver")).unwrap().trim().parse().unwrap();
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
    // Down for 20 s, as a control-plane upgrade or a crash loop would keep it: long enough for
    // client-go-style watch backoff to reach tens of seconds.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let up = std::process::Command::new(repo().join("tests/cluster/up")).env("LOCALL_CLUSTER_DIR", &cluster().dir).status().unwrap();
    assert!(up.success(), "the API server restarts");

    let client = support::client().await;
    let api: Api<LocallRelease> = Api::namespaced(client.clone(), &ns);
    // How soon the operator acts again: a request made the moment the API server is back is
    // handled once its watches are back.
    let back = std::time::Instant::now();
    request(&ns, "resume", "after-restart", "test");
    wait_for(Duration::from_secs(120), "the request handled after the restart", || async {
        api.get_opt("locall-api").await.ok()??.status.filter(|s| s.handled_request == "after-restart").map(|_| ())
    })
    .await;
    let took = back.elapsed();
    println!("reconciling again {:.1} s after the API server was back", took.as_secs_f64());
    assert!(took < Duration::from_secs(30), "the operator was blind for {took:?} after the API server restart");
    let st = wait_for(Duration::from_secs(180), "2.0.0 Succeeded after the restart", || async {
        api.get_opt("locall-api").await.ok()??.status.filter(|s| s.candidate_version == "2.0.0" && s.phase == Phase::Succeeded)
    })
    .await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap();
    for rec in &st.jobs {
        let n = jobs.items.iter().filter(|j| j.metadata.name.as_deref() == Some(rec.job_name.as_str())).count();
        assert_eq!(n, 1, "Job {} exists once", rec.job_name);
    }
    assert_eq!(jobs.items.len(), 6, "3 Jobs for 1.0.0 and 3 for 2.0.0, no more");
}
