//! Metric gates, go-live windows, rollback verification and notifications: the checklist's
//! "Success criteria" and "Rollback plan".

use super::{
    duration::{at_least, Dur},
    spec::{HookJob, NAME_PATTERN},
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The shortest measurement interval: the analysis's, a metric's, a go-live window's.
pub const MIN_INTERVAL: Dur = Dur::from_secs(1);
/// The shortest go-live window.
pub const MIN_WINDOW: Dur = Dur::from_secs(1);

/// Metric gates evaluated from Prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = at_least("interval", MIN_INTERVAL))]
pub struct Analysis {
    /// Prometheus base URL, http or https with a host; defaults to the operator's
    /// `--prometheus-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = crate::api::validation::http_url_rule())]
    pub prometheus: Option<String>,
    /// How often each metric is measured, unless the metric says otherwise (at least 1s).
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// The metrics, names unique. Placeholders in queries: `{{namespace}}` (the stage namespace),
    /// `{{service}}` (the release name), `{{version}}` (the version measured), `{{stage}}`.
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Vec<Metric>,
    /// Report verdicts without acting on them: never hold, never roll back.
    #[serde(default)]
    pub dry_run: bool,
}

fn default_interval() -> Dur {
    Dur::from_secs(30)
}

/// One metric: a PromQL query with a success criterion and a rollback trigger.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.success) || has(self.rollback)").message("a metric needs a success criterion, a rollback trigger, or both"))]
#[x_kube(validation = Rule::new(r"self.query.matches('\\S')").message("must not be empty or whitespace only").field_path(".query"))]
#[x_kube(validation = Rule::new(r"!has(self.sampleQuery) || self.sampleQuery.matches('\\S')").message("must not be empty or whitespace only").field_path(".sampleQuery"))]
#[x_kube(validation = at_least("interval", MIN_INTERVAL))]
pub struct Metric {
    /// Short name, unique among the metrics: lowercase words joined by single hyphens.
    #[schemars(length(min = 1, max = 40), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// PromQL returning one number (the first sample of a vector is used).
    #[schemars(length(min = 1, max = 4000))]
    pub query: String,
    /// Promotion requires this to hold, e.g. `{op: "<", value: 0.001}` for error rate < 0.1%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<Threshold>,
    /// A rollback starts when this holds `consecutive` times in a row, e.g. error rate > 5%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Threshold>,
    /// Measurements in a row that must breach the rollback trigger ("consistently").
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub consecutive: u32,
    /// PromQL for the sample size (e.g. request count over the window); below `minSample` the
    /// measurement counts as no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4000))]
    pub sample_query: Option<String>,
    /// Minimum sample before judging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_sample: Option<f64>,
    /// What no data means: Hold (wait, never promote), Fail (counts as a breach), Pass.
    #[serde(default)]
    pub no_data: Policy,
    /// What an unreachable Prometheus or a query error means (same choices, default Hold).
    #[serde(default)]
    pub on_error: Policy,
    /// Overrides the analysis interval for this metric (at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// Who cares about this metric in notifications: technical or business.
    #[serde(default)]
    pub audience: Audience,
    /// In a multi-component release, the component this metric gates (its `{{service}}` and
    /// `{{component}}` are that component's). Unset: a query naming `{{component}}` or
    /// `{{service}}` gates every component, each measured on its own; any other is shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub component: Option<String>,
}

fn one() -> u32 {
    1
}

/// A comparison against a number.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// One of `<`, `<=`, `>`, `>=`.
    #[schemars(regex(pattern = r"^(<|<=|>|>=)$"))]
    pub op: String,
    /// The number compared against.
    pub value: f64,
}

impl Threshold {
    pub fn holds(&self, v: f64) -> bool {
        match self.op.as_str() {
            "<" => v < self.value,
            "<=" => v <= self.value,
            ">" => v > self.value,
            ">=" => v >= self.value,
            _ => false,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.op, self.value)
    }
}

/// What to do without a usable measurement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum Policy {
    /// Wait: never promote, never roll back on it.
    #[default]
    Hold,
    /// Count it as a breach of the rollback trigger.
    Fail,
    /// Count it as a pass.
    Pass,
}

/// Who a metric or a notification is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum Audience {
    #[default]
    Technical,
    Business,
}

/// Watching after 100%: named windows, each with its duration and measurement interval. The
/// previous version stays deployed and ready until the last window passes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoLive {
    /// The windows, in order, names unique. Empty means the checklist's: 0-15m every 1m, 15m-2h
    /// every 5m, 2h-24h every 15m.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub windows: Vec<Window>,
}

/// One go-live window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = at_least("duration", MIN_WINDOW))]
#[x_kube(validation = at_least("interval", MIN_INTERVAL))]
pub struct Window {
    /// Its name, e.g. `0-15m`, unique among the windows.
    #[schemars(length(min = 1, max = 40))]
    pub name: String,
    /// How long it lasts (at least 1s).
    pub duration: Dur,
    /// How often metrics are measured in it (at least 1s).
    pub interval: Dur,
}

impl GoLive {
    /// The windows in force (the checklist's by default).
    pub fn effective(&self) -> Vec<Window> {
        if !self.windows.is_empty() {
            return self.windows.clone();
        }
        let w = |name: &str, d: u64, i: u64| Window { name: name.into(), duration: Dur::from_secs(d), interval: Dur::from_secs(i) };
        vec![w("0-15m", 15 * 60, 60), w("15m-2h", 105 * 60, 300), w("2h-24h", 22 * 3600, 900)]
    }
}

/// The rollback plan beyond traffic and database: verification after the rollback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPlan {
    /// Jobs that verify the restored version, run in order after traffic (and the database)
    /// are back, names unique. The metric gates are evaluated on the restored version too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub verify: Vec<HookJob>,
}

/// Where to send notifications.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Name of this target, unique among the notifications.
    #[schemars(length(min = 1, max = 40))]
    pub name: String,
    /// Payload format.
    pub format: NotifyFormat,
    /// The Secret (in the release's namespace) and key holding the URL.
    pub url_secret: SecretKeyRef,
    /// Events sent to this target (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NotifyEvent>,
    /// Audience of this target: business targets get a short, non-technical message.
    #[serde(default)]
    pub audience: Audience,
}

/// A Secret key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Payload formats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum NotifyFormat {
    /// Slack-compatible incoming webhook (`{"text": ...}`).
    Slack,
    /// Microsoft Teams Workflows (an Adaptive Card message).
    Teams,
    /// Generic JSON.
    Webhook,
    /// CloudEvents 1.0, structured JSON.
    CloudEvents,
}

/// Events worth a notification.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum NotifyEvent {
    RolledBack,
    Failed,
    AwaitingApproval,
    Succeeded,
}
