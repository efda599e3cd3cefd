//! `kubectl-locall` against the local cluster: a real release, the shared test operator, the
//! plugin binary run as a user would.

mod support;

use kube::{api::Api, Client};
use locall_operator::api::{LocallRelease, Phase};
use std::{process::Command, time::Duration};
use support::*;

/// A release of `version` into `<ns>-stg` (staging) and `<ns>` (production, with approval).
fn manifest(ns: &str, version: &str, first_pause: &str) -> String {
    format!(
        r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: {ns}}}
spec:
  version: "{version}"
  replicas: 2
  service: {{port: 8080}}
  template:
    spec: {{containers: [{{name: api, image: "locall/api:{version}"}}]}}
  preflight:
    secrets: [{{name: locall-db, keys: [url]}}]
  hooks:
    preDeploy: [{{name: tests}}]
    migration:
      changesSchema: true
      backup: {{command: [backup]}}
      migrate: {{command: [migrate]}}
      restore: {{command: [restore]}}
  stages:
  - {{name: staging, namespace: {ns}-stg, replicas: 1, verify: [{{name: e2e}}], steps: [{{weight: 100}}]}}
  - {{name: production, approval: true, steps: [{{weight: 10, pause: {first_pause}}}, {{weight: 50, pause: 2s}}, {{weight: 100}}]}}
  traffic: {{method: GatewayAPI, gateway: {{name: public}}}}
"#
    )
}

async fn setup(prefix: &str) -> (Client, String) {
    let client = client().await;
    install_crd().await;
    let ns = namespace(&client, prefix).await;
    let stg = format!("{ns}-stg");
    stage_namespace(&stg, &ns);
    for n in [&ns, &stg] {
        let (ok, _, err) = kubectl(&["-n", n, "create", "secret", "generic", "locall-db", "--from-literal=url=postgres://db"]);
        assert!(ok, "{err}");
    }
    (client, ns)
}

/// Runs the plugin; returns (exit code, stdout, stderr).
fn plugin(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-locall"))
        .arg("--kubeconfig")
        .arg(&cluster().kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl-locall");
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("$ kubectl locall {}\n{}{}(exit {})", args.join(" "), r.1, r.2, r.0);
    r
}

async fn release(client: &Client, ns: &str) -> Option<LocallRelease> {
    Api::<LocallRelease>::namespaced(client.clone(), ns).get_opt("locall-api").await.ok().flatten()
}

async fn wait_phase(client: &Client, ns: &str, version: &str, phase: Phase, secs: u64) -> LocallRelease {
    wait_for(Duration::from_secs(secs), &format!("{ns}/locall-api {version} to reach {phase}"), || async {
        let lr = release(client, ns).await?;
        let st = lr.status.as_ref()?;
        (st.phase == phase && st.candidate_version == version && st.observed_generation == lr.metadata.generation).then_some(lr)
    })
    .await
}

#[tokio::test]
async fn the_plugin_shows_approves_waits_and_rolls_back_a_release() {
    shared_operator();
    let (client, ns) = setup("plugin").await;

    // Errors are clear and non-zero.
    let (code, _, err) = plugin(&["-n", &ns, "get", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("locallrelease {ns}/nope not found")), "{err}");
    let (code, _, err) = plugin(&["-n", &ns, "status", "nope", "--timeout", "5s"]);
    assert_eq!(code, 2, "{err}");

    // 1.0.0 waits for the production approval.
    apply_yaml(&client, &ns, &manifest(&ns, "1.0.0", "2s")).await;
    wait_phase(&client, &ns, "1.0.0", Phase::AwaitingApproval, 120).await;
    let (code, out, _) = plugin(&["-n", &ns, "get", "locall-api"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("locall-api ({ns})  1.0.0  AwaitingApproval  weight ")), "{out}");
    assert!(out.contains(&format!("✔ staging ({ns}-stg)  100%")), "{out}");
    assert!(out.contains(&format!("⏸ production ({ns})  awaiting approval")), "{out}");
    assert!(out.contains("├─ jobs\n") && out.contains("✔ migrate"), "{out}");
    // Two referenced objects and the staging namespace.
    assert!(out.contains("preflight: 3/3 passed"), "{out}");

    let (code, out, _) = plugin(&["-A", "list"]);
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.starts_with(&format!("{ns} "))).unwrap_or_else(|| panic!("{ns} listed: {out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..7], [ns.as_str(), "locall-api", "1.0.0", "<none>", "AwaitingApproval", "production", "0%"], "{row}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAMESPACE", "NAME", "VERSION", "STABLE", "PHASE", "STAGE", "WEIGHT", "AGE"]);

    // A status that cannot finish in time: exit 2.
    let (code, out, err) = plugin(&["-n", &ns, "status", "locall-api", "--timeout", "2s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("timed out"), "{err}");

    // approve: the stage defaults to the one waiting.
    let (code, out, _) = plugin(&["-n", &ns, "approve", "locall-api", "--by", "alice@locall.io"]);
    assert_eq!(code, 0);
    assert!(out.contains("approved stage production"), "{out}");
    let (code, out, err) = plugin(&["-n", &ns, "status", "locall-api", "--timeout", "3m"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("{ns}/locall-api 1.0.0 Succeeded")), "{out}");
    let st = release(&client, &ns).await.unwrap().status.unwrap();
    let a = &st.approvals[0];
    assert_eq!((a.stage.as_str(), a.by.as_str(), a.source.as_str()), ("production", "alice@locall.io", "annotation"));
    let (_, out, _) = plugin(&["-n", &ns, "get", "locall-api"]);
    assert!(out.contains("approvals: production by alice@locall.io (annotation)"), "{out}");
    assert!(out.contains("steps: 10% (2s) ✔ → 50% (2s) ✔ → 100% ✔"), "{out}");
    // get -w on a finished release prints it once and exits 0.
    let (code, out, _) = plugin(&["-n", &ns, "get", "locall-api", "-w"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("locall-api (").count(), 1, "{out}");

    // 2.0.0 holds 10 minutes at 10%: roll it back from the plugin.
    apply_yaml(&client, &ns, &manifest(&ns, "2.0.0", "10m")).await;
    // The new generation is not terminal yet, even while status still says Succeeded.
    wait_phase(&client, &ns, "2.0.0", Phase::AwaitingApproval, 120).await;
    let (code, _, _) = plugin(&["-n", &ns, "approve", "locall-api", "--stage", "production", "--by", "bob"]);
    assert_eq!(code, 0);
    wait_for(Duration::from_secs(120), "2.0.0 at 10% in production", || async {
        let st = release(&client, &ns).await?.status?;
        (st.candidate_version == "2.0.0" && st.phase == Phase::Production && st.weight == 10 && st.step_started_at.is_some()).then_some(())
    })
    .await;
    let (_, out, _) = plugin(&["-n", &ns, "get", "locall-api"]);
    assert!(out.contains(&format!("▶ production ({ns})  step 1/3  10%  holding until ")), "{out}");
    assert!(out.contains("steps: 10% (10m) ▶ → 50% (2s) → 100%"), "{out}");
    assert!(out.contains("stable 1.0.0"), "{out}");

    let (code, out, _) = plugin(&["-n", &ns, "rollback", "locall-api", "--by", "oncall@locall.io"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("requested rollback of {ns}/locall-api 2.0.0 by oncall@locall.io")), "{out}");
    let (code, out, err) = plugin(&["-n", &ns, "status", "locall-api", "--timeout", "2m"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with(&format!("{ns}/locall-api 2.0.0 RolledBack")), "{out}");
    let (_, out, _) = plugin(&["-n", &ns, "get", "locall-api"]);
    assert!(out.contains("RolledBack  weight 0%  Ready=False"), "{out}");
    assert!(out.contains("├─ rollback\n"), "{out}");
    assert!(out.contains("reason: ManualRollback"), "{out}");
    assert!(out.contains("oncall@locall.io"), "{out}");
    assert!(out.contains("traffic restored to 1.0.0 at "), "{out}");
    assert!(out.contains("database restored at "), "{out}");
    let lr = release(&client, &ns).await.unwrap();
    assert_eq!(lr.spec.version, "2.0.0", "the plugin never touches the spec");

    // A request that does not apply any more is still sent, with a warning.
    let (code, _, err) = plugin(&["-n", &ns, "pause", "locall-api"]);
    assert_eq!(code, 0);
    assert!(err.contains("does not apply in phase RolledBack"), "{err}");
}
