//! The annotations `kubectl locall` writes (pure): `locall.io/approve` and `locall.io/request`,
//! always as a merge patch on metadata only. The operator reads them in `controller::observe`.

use crate::api::{labels, LocallRelease, Phase};
use kube::ResourceExt;
use serde_json::{json, Value};

/// An imperative request the operator handles once per id (see `engine::machine::handle_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    PromoteFull,
    Abort,
    Retry,
    Pause,
    Resume,
    Rollback,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::PromoteFull => "promote-full",
            Action::Abort => "abort",
            Action::Retry => "retry",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Rollback => "rollback",
        }
    }

    /// Why the operator would ignore this request in the release's current state, if it would
    /// (mirrors `handle_request`).
    pub fn ignored_because(self, lr: &LocallRelease) -> Option<String> {
        let st = lr.status.clone().unwrap_or_default();
        let active = !st.phase.is_terminal();
        let applies = match self {
            Action::Rollback | Action::Abort | Action::Pause | Action::Promote | Action::PromoteFull => active,
            Action::Retry => matches!(st.phase, Phase::Failed | Phase::RolledBack),
            Action::Resume => st.paused,
        };
        if applies {
            return None;
        }
        Some(match self {
            Action::Resume => "the release is not paused".into(),
            _ => format!("{} does not apply in phase {}", self.as_str(), st.phase),
        })
    }
}

/// A request id unique enough for one release: unix milliseconds and 32 random bits.
pub fn request_id(unix_millis: i64, random: u32) -> String {
    format!("{unix_millis}-{random:08x}")
}

/// The `locall.io/request` annotation's value.
pub fn request_value(action: Action, id: &str, by: &str) -> String {
    json!({"action": action.as_str(), "id": id, "by": by}).to_string()
}

/// The `locall.io/approve` annotation's value.
pub fn approve_value(stage: &str, version: &str, by: &str) -> String {
    json!({"stage": stage, "version": version, "by": by}).to_string()
}

/// A merge patch setting one annotation, touching nothing else.
pub fn annotation_patch(key: &str, value: &str) -> Value {
    json!({"metadata": {"annotations": {key: value}}})
}

pub fn request_patch(action: Action, id: &str, by: &str) -> Value {
    annotation_patch(labels::REQUEST, &request_value(action, id, by))
}

pub fn approve_patch(stage: &str, version: &str, by: &str) -> Value {
    annotation_patch(labels::APPROVE, &approve_value(stage, version, by))
}

/// The stage to approve: the one asked for (which must be a stage of the release), else the
/// stage the release is waiting in.
pub fn approve_stage(lr: &LocallRelease, asked: Option<&str>) -> Result<String, String> {
    let key = format!("{}/{}", lr.namespace().unwrap_or_default(), lr.name_any());
    if let Some(s) = asked {
        if !lr.spec.stages.iter().any(|t| t.name == s) {
            let names: Vec<&str> = lr.spec.stages.iter().map(|t| t.name.as_str()).collect();
            return Err(format!("locallrelease {key} has no stage {s:?} (stages: {})", names.join(", ")));
        }
        return Ok(s.to_string());
    }
    let st = lr.status.clone().unwrap_or_default();
    if st.phase == Phase::AwaitingApproval && !st.stage.is_empty() {
        return Ok(st.stage);
    }
    Err(format!("locallrelease {key} is not awaiting approval (phase {}); name the stage with --stage", st.phase))
}

/// Who signs an approval or a request: `--by` when given (the chart's approval policy refuses
/// anyone but the caller), else the caller as the API server authenticates them
/// (SelfSubjectReview), which is what the policy requires; only when the API server cannot say,
/// `$USER`, else the kubeconfig user, else `kubectl-locall`.
pub fn signer(asked: Option<String>, authenticated: Option<String>, user_env: Option<String>, kubeconfig_user: Option<String>) -> String {
    [asked, authenticated, user_env, kubeconfig_user]
        .into_iter()
        .flatten()
        .find(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "kubectl-locall".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::observe;

    fn release(phase: &str, extra: &str) -> LocallRelease {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {{name: locall-api, namespace: demo, generation: 1}}
spec:
  version: 2.0.0
  template: {{spec: {{containers: [{{name: api, image: x}}]}}}}
  stages: [{{name: staging}}, {{name: production, approval: true}}]
status: {{phase: {phase}, stage: production, stageIndex: 1{extra}}}
"#
        ))
        .unwrap()
    }

    #[test]
    fn request_payload_is_what_the_operator_parses() {
        let id = request_id(1_764_000_000_123, 0xbeef);
        assert_eq!(id, "1764000000123-0000beef");
        let patch = request_patch(Action::PromoteFull, &id, "alice");
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {"locall.io/request": r#"{"action":"promote-full","by":"alice","id":"1764000000123-0000beef"}"#}}})
        );
        let mut lr = release("Production", "");
        lr.metadata.annotations = Some([(labels::REQUEST.to_string(), request_value(Action::Rollback, "r1", "bob"))].into());
        let req = observe::request(&lr).unwrap().unwrap();
        assert_eq!((req.action.as_str(), req.id.as_str(), req.by.as_str()), ("rollback", "r1", "bob"));
        assert_eq!(patch.as_object().unwrap().keys().collect::<Vec<_>>(), ["metadata"], "metadata only");
    }

    #[test]
    fn approve_payload_is_what_the_operator_parses() {
        let mut lr = release("AwaitingApproval", "");
        let stage = approve_stage(&lr, None).unwrap();
        assert_eq!(stage, "production");
        let patch = approve_patch(&stage, &lr.spec.version, "alice@locall.io");
        let v = patch["metadata"]["annotations"]["locall.io/approve"].as_str().unwrap().to_string();
        lr.metadata.annotations = Some([(labels::APPROVE.to_string(), v)].into());
        let a = observe::annotation_approval(&lr).unwrap().unwrap();
        assert_eq!((a.stage.as_str(), a.version.as_str(), a.by.as_str()), ("production", "2.0.0", "alice@locall.io"));
    }

    #[test]
    fn approve_stage_needs_a_known_stage_or_a_waiting_release() {
        let lr = release("Production", "");
        assert!(approve_stage(&lr, None).unwrap_err().contains("not awaiting approval (phase Production)"));
        assert_eq!(approve_stage(&lr, Some("staging")).unwrap(), "staging");
        assert!(approve_stage(&lr, Some("prod")).unwrap_err().contains("demo/locall-api has no stage \"prod\""));
    }

    #[test]
    fn hints_mirror_the_engine() {
        assert_eq!(Action::Rollback.ignored_because(&release("Production", "")), None);
        assert!(Action::Rollback.ignored_because(&release("Succeeded", "")).unwrap().contains("phase Succeeded"));
        assert_eq!(Action::Retry.ignored_because(&release("RolledBack", "")), None);
        assert!(Action::Resume.ignored_because(&release("Production", "")).is_some());
        assert_eq!(Action::Resume.ignored_because(&release("Production", ", paused: true")), None);
    }

    #[test]
    fn the_signer_is_the_caller_as_the_api_server_knows_them() {
        let s = |asked: Option<&str>, authenticated: Option<&str>, user: Option<&str>, kubeconfig: Option<&str>| {
            signer(asked.map(Into::into), authenticated.map(Into::into), user.map(Into::into), kubeconfig.map(Into::into))
        };
        // $USER is whatever the caller's shell says; the API server's name wins over it.
        assert_eq!(s(None, Some("alice@locall.io"), Some("root"), Some("admin")), "alice@locall.io");
        // --by is sent as asked, even someone else (the policy refuses it, naming the caller).
        assert_eq!(s(Some("bob"), Some("alice@locall.io"), Some("root"), None), "bob");
        assert_eq!(s(Some(" "), Some("alice@locall.io"), None, None), "alice@locall.io");
        // The API server cannot say (no SelfSubjectReview): as before, $USER, the kubeconfig user.
        assert_eq!(s(None, None, Some("alice"), Some("admin")), "alice");
        assert_eq!(s(None, Some(""), Some(" "), Some("admin")), "admin");
        assert_eq!(s(None, None, None, None), "kubectl-locall");
    }
}
