//! The LocallRelease API, declared once; `crdgen` writes `crds/locallreleases.yaml` from it.

pub mod analysis;
pub mod conditions;
pub mod crd;
pub mod duration;
pub mod spec;
pub mod status;
pub mod validation;

pub use analysis::*;
pub use duration::Dur;
pub use spec::*;
pub use status::*;

/// Labels and annotations the operator reads and writes.
pub mod labels {
    /// The application (release) name, on every owned object and pod.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// The version of a pod (read by the traffic simulator).
    pub const VERSION: &str = "app.kubernetes.io/version";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGER: &str = "locall-operator";
    /// `<namespace>.<name>` of the owning release: children may live in other namespaces.
    pub const RELEASE: &str = "locall.io/release";
    /// The component of a multi-component release an object or pod belongs to.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The revision (hash of version and pod template) of a Deployment's pods.
    pub const REVISION: &str = "locall.io/revision";
    /// The stage an object belongs to.
    pub const STAGE: &str = "locall.io/stage";
    /// What a Job is for.
    pub const JOB_KIND: &str = "locall.io/job-kind";
    /// Annotation granting an approval: `{"stage":"production","version":"2.0.0","by":"alice"}`.
    pub const APPROVE: &str = "locall.io/approve";
    /// Annotations the chart's admission policy sets when `spec.version` changes: the
    /// authenticated user who changed it, and the version they changed it to.
    pub const REQUESTED_BY: &str = "locall.io/requested-by";
    pub const REQUESTED_VERSION: &str = "locall.io/requested-version";
    /// Annotation carrying an imperative request, handled once per id:
    /// `{"action":"rollback","id":"<unique>","by":"alice"}`; actions: rollback, abort, retry,
    /// pause, resume, promote, promote-full.
    pub const REQUEST: &str = "locall.io/request";
}
