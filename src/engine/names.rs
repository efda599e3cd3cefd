//! Deterministic names: the same release revision always gives the same Deployment, Service and
//! Job names, which is what makes a restarted operator never create a Job twice.

use crate::api::LocallReleaseSpec;
use sha2::{Digest, Sha256};

/// Revision of a spec: a short hash of what defines a release (its version and pod template).
/// Changing either starts a new release; other spec edits apply to the release in progress.
pub fn revision(spec: &LocallReleaseSpec) -> String {
    let mut h = Sha256::new();
    h.update(spec.version.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&spec.template).unwrap_or_default());
    // A release of one template hashes as it always has (no restart on upgrade).
    for c in &spec.components {
        h.update([0]);
        h.update(c.name.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(&c.template).unwrap_or_default());
    }
    hex8(&h.finalize())
}

/// What a part's object names start with: the release's name for a release of one template,
/// `<release>-<component>` for a component.
pub fn base(release: &str, component: Option<&str>) -> String {
    match component {
        None => release.to_string(),
        Some(c) => format!("{release}-{c}"),
    }
}

/// The key of a part's observed traffic share: the namespace, or `<namespace>/<component>`.
pub fn traffic_key(namespace: &str, component: Option<&str>) -> String {
    match component {
        None => namespace.to_string(),
        Some(c) => format!("{namespace}/{c}"),
    }
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A DNS-1123 label of at most `max` characters built from `parts`: when too long, the release
/// part is cut and a hash of the whole name keeps it unique.
fn label(parts: &[&str], max: usize) -> String {
    let full = parts.join("-");
    if full.len() <= max {
        return full;
    }
    let mut h = Sha256::new();
    h.update(full.as_bytes());
    let suffix = hex8(&h.finalize());
    let keep = max - suffix.len() - 1;
    let cut: String = full.chars().take(keep).collect();
    format!("{}-{suffix}", cut.trim_end_matches('-'))
}

/// The Deployment of one revision of a release (in each stage namespace).
pub fn deployment(release: &str, revision: &str) -> String {
    label(&[release, revision], 63)
}

/// The Service that selects one revision's pods (Gateway API backends).
pub fn revision_service(release: &str, revision: &str) -> String {
    label(&[release, revision], 63)
}

/// Whether `name` is the name of one of the release's revision Services (revisions are eight
/// hex digits; a name cut to 63 characters ends in a hash and is recognised by its prefix).
pub fn is_revision_service(release: &str, name: &str) -> bool {
    let hex8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match name.strip_prefix(release).and_then(|r| r.strip_prefix('-')) {
        Some(rest) => hex8(rest),
        None => name.len() == 63 && release.get(..54).is_some_and(|p| name.starts_with(p)) && name.get(55..).is_some_and(hex8),
    }
}

/// The Service (and HTTPRoute) that is the release's entry point in a stage.
pub fn entry_service(release: &str) -> String {
    label(&[release], 63)
}

/// A Job of this release. Job names become a pod label, hence at most 63 characters.
/// `attempt` is `<revision>-<sequence>`: every release attempt (a new version, a revert, a
/// retry) has Jobs of its own.
pub fn job(release: &str, attempt: &str, suffix: &str) -> String {
    label(&[release, attempt, suffix], 63)
}

/// The attempt part of Job names and backup ids.
pub fn attempt(revision: &str, sequence: u64) -> String {
    format!("{revision}-{sequence}")
}

/// What a Job is for: its suffix in the Job name. Each kind has its own first word, and stage
/// and hook names cannot contain `--` (admission refuses it), so two slots never share a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot<'a> {
    PreDeploy(&'a str),
    Backup,
    Migrate,
    Verify { stage: &'a str, name: &'a str },
    PostDeploy(&'a str),
    Restore,
    RollbackVerify(&'a str),
}

impl Slot<'_> {
    pub fn suffix(&self) -> String {
        match self {
            Slot::PreDeploy(n) => format!("pre-{n}"),
            Slot::Backup => "backup".into(),
            Slot::Migrate => "migrate".into(),
            Slot::Verify { stage, name } => format!("verify-{stage}--{name}"),
            Slot::PostDeploy(n) => format!("post-{n}"),
            Slot::Restore => "restore".into(),
            Slot::RollbackVerify(n) => format!("rollback-{n}"),
        }
    }
}

/// The value of the `locall.io/release` label on every child: `<namespace>.<name>`.
pub fn release_label(namespace: &str, name: &str) -> String {
    let v = format!("{namespace}.{name}");
    if v.len() <= 63 {
        v
    } else {
        label(&[namespace, name], 63)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_bounded() {
        assert_eq!(job("locall-api", "0a1b2c3d-1", "migrate"), "locall-api-0a1b2c3d-1-migrate");
        let long = "x".repeat(80);
        let n = job(&long, "0a1b2c3d", "verify-e2e");
        assert!(n.len() <= 63, "{n}");
        assert_eq!(n, job(&long, "0a1b2c3d", "verify-e2e"));
        assert_ne!(n, job(&long, "0a1b2c3d", "verify-e2f"));
    }

    #[test]
    fn a_stage_named_rollback_does_not_share_job_names_with_the_rollback_plan() {
        let stage = Slot::Verify { stage: "rollback", name: "smoke" }.suffix();
        let plan = Slot::RollbackVerify("smoke").suffix();
        assert_ne!(job("api", "abcd-1", &stage), job("api", "abcd-1", &plan));
        // A stage "a-b" with Job "c" and a stage "a" with Job "b-c".
        let x = Slot::Verify { stage: "a-b", name: "c" }.suffix();
        let y = Slot::Verify { stage: "a", name: "b-c" }.suffix();
        assert_ne!(x, y);
        // A pre-deploy hook named like a stage verification.
        assert_ne!(Slot::PreDeploy("verify-x").suffix(), Slot::Verify { stage: "x", name: "y" }.suffix());
    }
}
