//! Preflight checks: stage namespaces exist and accept the release, the pod template's
//! ServiceAccount is one each namespace allows, a Prometheus the release names is one the
//! operator allows, referenced Secrets and ConfigMaps exist with their keys in every stage
//! namespace, and TLS certificates stay valid long enough. Each result names the spec field.
//!
//! Tenant safety: the operator can write anywhere, its users cannot. A release in namespace A
//! may act in namespace B only when B says so (annotation [`ACCEPT`] naming A, or `*`): otherwise
//! nothing is created there and nothing in B is read (no Secret, ConfigMap or certificate, so a
//! release cannot learn what B holds). In a namespace other than its own, its pods (and its
//! Jobs, which run under the same account) may name a ServiceAccount other than `default` only
//! when that namespace lists it (annotation [`SERVICE_ACCOUNTS`]): accepting someone's releases
//! is not lending them your accounts. In its own namespace a release may name any account there,
//! as its owner could in a pod of their own, unless that namespace carries the same annotation:
//! then only the accounts it lists (for teams whose members may edit releases but not run pods).

use crate::api::{CheckResult, LocallRelease};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeSet;

/// The annotation by which a namespace accepts releases from other namespaces: a
/// comma-separated list of namespaces, or `*`.
pub const ACCEPT: &str = "locall.io/accept-releases-from";
/// The annotation listing the ServiceAccounts (comma-separated) that releases from other
/// namespaces may run their pods under in this namespace.
pub const SERVICE_ACCOUNTS: &str = "locall.io/service-accounts";

/// What the operator's installer allows (flags and chart values).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// The URLs a release may name as its own Prometheus (`spec.analysis.prometheus`), each
    /// with the paths under it (see [`Policy::allows_provider`]).
    pub provider_urls: Vec<String>,
    /// The namespaces the operator serves (`--watch-namespaces`; all when empty).
    pub scope: super::scope::Scope,
}

impl Policy {
    /// Whether a release may have the operator call `url`: one of the allowed URLs has the same
    /// scheme, host and port (a default port written or not), and `url`'s path is its path or
    /// below it, on a `/` boundary. Both are parsed, never compared as text: as text,
    /// `http://prom:9090@169.254.169.254/` starts with `http://prom:9090` but calls
    /// 169.254.169.254, and `http://prom.evil.com` starts with `http://prom`. A URL carrying a
    /// user or password is refused outright.
    pub fn allows_provider(&self, url: &str) -> bool {
        let Some(url) = provider_url(url) else { return false };
        self.provider_urls.iter().filter_map(|p| provider_url(p)).any(|p| {
            (p.scheme(), p.host(), p.port_or_known_default()) == (url.scheme(), url.host(), url.port_or_known_default())
                && under(url.path(), p.path())
        })
    }
}

/// A provider URL as the operator would call it: parsed, with a host and no user or password.
fn provider_url(text: &str) -> Option<reqwest::Url> {
    let u = reqwest::Url::parse(text).ok()?;
    (u.host().is_some() && u.username().is_empty() && u.password().is_none()).then_some(u)
}

/// Whether `path` is `base` or below it: `/prom` holds `/prom` and `/prom/x`, not `/prometheus`.
fn under(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a namespace's annotations accept releases from `from` (pure).
pub fn accepts(annotations: Option<&std::collections::BTreeMap<String, String>>, from: &str) -> bool {
    annotations.and_then(|a| a.get(ACCEPT)).is_some_and(|v| v.split(',').map(str::trim).any(|n| n == "*" || n == from))
}

/// Whether a namespace's annotations let foreign releases use ServiceAccount `sa` (pure).
pub fn lends(annotations: Option<&std::collections::BTreeMap<String, String>>, sa: &str) -> bool {
    annotations.and_then(|a| a.get(SERVICE_ACCOUNTS)).is_some_and(|v| v.split(',').map(str::trim).any(|n| n == sa))
}

/// Runs every check of the spec; API errors other than NotFound are returned as errors.
pub async fn run(client: &Client, lr: &LocallRelease, now: DateTime<Utc>, policy: &Policy) -> Result<Vec<CheckResult>, kube::Error> {
    let release_ns = lr.namespace().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(url) = lr.spec.analysis.as_ref().and_then(|a| a.prometheus.as_deref()) {
        let shown = crate::notify::redact(url);
        out.push(if policy.allows_provider(url) {
            CheckResult { name: "Prometheus".into(), passed: true, message: format!("spec.analysis.prometheus: {shown} is allowed") }
        } else {
            CheckResult {
                name: "Prometheus".into(),
                passed: false,
                message: format!(
                    "spec.analysis.prometheus: {shown} is not among the Prometheus URLs the operator allows (--allowed-provider-urls); leave it out to use the operator's"
                ),
            }
        });
    }
    // Every pod template's account (the release's, or each component's), with its field.
    let templates = std::iter::once(("spec.template".to_string(), &lr.spec.template))
        .chain(lr.spec.components.iter().enumerate().map(|(i, c)| (format!("spec.components[{i}].template"), &c.template)));
    let accounts: Vec<(String, String)> = templates
        .filter_map(|(field, t)| {
            let p = t.spec.as_ref()?;
            let sa = p.service_account_name.clone().or_else(|| p.service_account.clone()).filter(|a| a != "default")?;
            Some((format!("{field}.spec.serviceAccountName"), sa))
        })
        .collect();
    // A stage in a namespace that does not exist, or does not accept this release, is never
    // deployed, nor is anything in it read.
    let all: Api<Namespace> = Api::all(client.clone());
    for (i, stage) in lr.spec.stages.iter().enumerate() {
        let Some(ns) = stage.namespace.as_deref().filter(|ns| *ns != release_ns) else { continue };
        if !policy.scope.serves(ns) {
            let message = format!(
                "spec.stages[{i}].namespace: the operator serves only namespaces {} (--watch-namespaces), not {ns}",
                policy.scope.0.join(", ")
            );
            out.push(CheckResult { name: format!("Namespace {ns}"), passed: false, message });
            continue;
        }
        let found = all.get_opt(ns).await?;
        let annotations = found.as_ref().and_then(|n| n.metadata.annotations.as_ref());
        let (passed, message) = match &found {
            None => (false, format!("spec.stages[{i}].namespace: Namespace {ns} not found")),
            Some(_) if !accepts(annotations, &release_ns) => (
                false,
                format!("spec.stages[{i}].namespace: Namespace {ns} does not accept releases from namespace {release_ns} (its annotation {ACCEPT} must name it)"),
            ),
            Some(_) => (true, format!("spec.stages[{i}].namespace: Namespace {ns} accepts releases from {release_ns}")),
        };
        out.push(CheckResult { name: format!("Namespace {ns}"), passed, message });
        for (field, sa) in accounts.iter().filter(|_| passed) {
            if !lends(annotations, sa) {
                out.push(CheckResult {
                    name: format!("ServiceAccount {ns}/{sa}"),
                    passed: false,
                    message: format!(
                        "{field}: Namespace {ns} does not let releases from other namespaces run as ServiceAccount {sa} (its annotation {SERVICE_ACCOUNTS} must list it)"
                    ),
                });
            }
        }
    }
    // The release's own namespace restricts its accounts too when it lists them.
    if !accounts.is_empty() {
        let own = all.get_opt(&release_ns).await?;
        let annotations = own.as_ref().and_then(|n| n.metadata.annotations.as_ref());
        if annotations.is_some_and(|a| a.contains_key(SERVICE_ACCOUNTS)) {
            for (field, sa) in accounts.iter().filter(|(_, sa)| !lends(annotations, sa)) {
                out.push(CheckResult {
                    name: format!("ServiceAccount {release_ns}/{sa}"),
                    passed: false,
                    message: format!(
                        "{field}: Namespace {release_ns} lets releases run only as the ServiceAccounts its annotation {SERVICE_ACCOUNTS} lists, not {sa}"
                    ),
                });
            }
        }
    }
    if out.iter().any(|c| !c.passed) {
        return Ok(out);
    }
    let namespaces: BTreeSet<String> = (0..lr.spec.stages.len()).map(|i| lr.spec.stage_namespace(i, &release_ns).to_string()).collect();
    // The account the pods and Jobs run as must exist wherever they run (the release's namespace,
    // for its Jobs, and every stage's): the API server refuses their pods otherwise, and the
    // release would wait for a Job whose pod is never created.
    if !accounts.is_empty() {
        let mut checked = BTreeSet::new();
        for (field, sa) in &accounts {
            for ns in namespaces.iter().chain(std::iter::once(&release_ns)).collect::<BTreeSet<_>>() {
                if !checked.insert((ns.clone(), sa.clone())) {
                    continue;
                }
                let found = Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(sa).await?;
                out.push(CheckResult {
                    name: format!("ServiceAccount {ns}/{sa}"),
                    passed: found.is_some(),
                    message: match found {
                        Some(_) => format!("{field}: ServiceAccount {ns}/{sa} exists"),
                        None => format!("{field}: ServiceAccount {ns}/{sa} not found (the release's pods and Jobs in {ns} run as it)"),
                    },
                });
            }
        }
        if out.iter().any(|c| !c.passed) {
            return Ok(out);
        }
    }
    let Some(p) = &lr.spec.preflight else { return Ok(out) };
    for ns in &namespaces {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        for (i, s) in p.secrets.iter().enumerate() {
            let field = format!("spec.preflight.secrets[{i}]");
            let found = secrets.get_opt(&s.name).await?;
            let keys = found.map(|x| secret_keys(&x));
            out.push(keys_result(&field, "Secret", ns, &s.name, keys, &s.keys));
        }
        for (i, c) in p.config_maps.iter().enumerate() {
            let field = format!("spec.preflight.configMaps[{i}]");
            let found = cms.get_opt(&c.name).await?;
            let keys = found.map(|x| {
                let mut k: BTreeSet<String> = x.data.unwrap_or_default().into_keys().collect();
                k.extend(x.binary_data.unwrap_or_default().into_keys());
                k
            });
            out.push(keys_result(&field, "ConfigMap", ns, &c.name, keys, &c.keys));
        }
        for (i, t) in p.tls.iter().enumerate() {
            let field = format!("spec.preflight.tls[{i}]");
            let name = format!("TLS {ns}/{}", t.secret_name);
            let result = match secrets.get_opt(&t.secret_name).await? {
                None => Err(format!("Secret {ns}/{} not found", t.secret_name)),
                Some(s) => match s.data.as_ref().and_then(|d| d.get("tls.crt")) {
                    None => Err(format!("Secret {ns}/{} has no tls.crt", t.secret_name)),
                    Some(crt) => cert_validity(&crt.0, now, t.min_validity.chrono()),
                },
            };
            out.push(match result {
                Ok(msg) => CheckResult { name, passed: true, message: format!("{field}: {msg}") },
                Err(msg) => CheckResult { name, passed: false, message: format!("{field}: {msg}") },
            });
        }
    }
    Ok(out)
}

fn secret_keys(s: &Secret) -> BTreeSet<String> {
    let mut k: BTreeSet<String> = s.data.clone().unwrap_or_default().into_keys().collect();
    k.extend(s.string_data.clone().unwrap_or_default().into_keys());
    k
}

fn keys_result(field: &str, kind: &str, ns: &str, name: &str, found: Option<BTreeSet<String>>, want: &[String]) -> CheckResult {
    let check = format!("{kind} {ns}/{name}");
    match found {
        None => CheckResult { name: check, passed: false, message: format!("{field}: {kind} {ns}/{name} not found") },
        Some(keys) => {
            let missing: Vec<_> = want.iter().filter(|k| !keys.contains(*k)).cloned().collect();
            if missing.is_empty() {
                CheckResult { name: check, passed: true, message: format!("{field}: {kind} {ns}/{name} has every key") }
            } else {
                CheckResult {
                    name: check,
                    passed: false,
                    message: format!("{field}: {kind} {ns}/{name} lacks key(s) {}", missing.join(", ")),
                }
            }
        }
    }
}

/// Whether the first certificate of a PEM bundle stays valid for `min` from `now` (pure).
pub fn cert_validity(pem: &[u8], now: DateTime<Utc>, min: chrono::Duration) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("tls.crt is not an X.509 certificate: {e}"))?;
    let not_after = DateTime::<Utc>::from_timestamp(cert.validity().not_after.timestamp(), 0).ok_or("bad notAfter")?;
    let left = not_after - now;
    if left < min {
        return Err(format!(
            "certificate expires {} ({} days left), less than the {} days required",
            not_after.format("%Y-%m-%d"),
            left.num_days(),
            min.num_days()
        ));
    }
    Ok(format!("certificate valid until {} ({} days left)", not_after.format("%Y-%m-%d"), left.num_days()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_namespace_accepts_only_the_namespaces_it_names_and_lends_only_the_accounts_it_lists() {
        let a = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        assert!(!accepts(None, "team-a"), "no annotation: nobody");
        assert!(accepts(Some(&a(&[(ACCEPT, "team-b, team-a")])), "team-a"));
        assert!(!accepts(Some(&a(&[(ACCEPT, "team-ab")])), "team-a"), "whole names only");
        assert!(accepts(Some(&a(&[(ACCEPT, "*")])), "anyone"));
        assert!(!lends(Some(&a(&[(ACCEPT, "*")])), "deployer"), "accepting releases lends no account");
        assert!(lends(Some(&a(&[(SERVICE_ACCOUNTS, "app,deployer")])), "deployer"));
    }

    fn allowing(urls: &[&str]) -> Policy {
        Policy { provider_urls: urls.iter().map(|u| u.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn a_provider_url_is_allowed_only_on_the_same_scheme_host_and_port() {
        let p = allowing(&["http://prometheus.monitoring:9090"]);
        assert!(p.allows_provider("http://prometheus.monitoring:9090"));
        assert!(p.allows_provider("http://prometheus.monitoring:9090/api"));
        assert!(!p.allows_provider("http://169.254.169.254/latest"));
        assert!(!p.allows_provider("https://prometheus.monitoring:9090"), "another scheme");
        assert!(!p.allows_provider("http://prometheus.monitoring:9091"), "another port");
        assert!(!p.allows_provider("http://prometheus.monitoring/"), "port 80 is not 9090");
        assert!(!p.allows_provider("not a url"));
        assert!(!Policy::default().allows_provider("http://anything"), "nothing allowed unless said");
        assert!(!allowing(&["", "not a url"]).allows_provider("http://anything"), "an unparsable entry allows nothing");
    }

    #[test]
    fn userinfo_does_not_smuggle_another_host_past_the_allow_list() {
        // As text this starts with the allowed URL, but it calls 169.254.169.254 as user
        // "prometheus.monitoring" with password "9090".
        let p = allowing(&["http://prometheus.monitoring:9090"]);
        assert!(!p.allows_provider("http://prometheus.monitoring:9090@169.254.169.254/"));
        assert!(!p.allows_provider("http://prometheus.monitoring:9090@169.254.169.254:80/latest/meta-data"));
        // Nor is any user or password sent to an allowed host.
        assert!(!p.allows_provider("http://alice@prometheus.monitoring:9090/"));
        assert!(!p.allows_provider("http://alice:secret@prometheus.monitoring:9090/"));
        assert!(!p.allows_provider("http://:secret@prometheus.monitoring:9090/"));
        // An allowed entry with a user in it allows nothing.
        assert!(!allowing(&["http://alice@prometheus.monitoring:9090"]).allows_provider("http://prometheus.monitoring:9090/"));
    }

    #[test]
    fn a_longer_host_is_another_host() {
        let p = allowing(&["http://prometheus"]);
        assert!(p.allows_provider("http://prometheus/api"));
        assert!(!p.allows_provider("http://prometheus.evil.com"));
        assert!(!p.allows_provider("http://prometheus.evil.com/"));
        assert!(!p.allows_provider("http://prometheus-evil/"));
    }

    #[test]
    fn a_default_port_is_the_same_written_or_not() {
        assert!(allowing(&["http://prometheus"]).allows_provider("http://prometheus:80/api"));
        assert!(allowing(&["http://prometheus:80"]).allows_provider("http://prometheus/api"));
        assert!(allowing(&["https://prometheus"]).allows_provider("https://prometheus:443/"));
        assert!(allowing(&["https://prometheus:443/"]).allows_provider("https://prometheus"));
        assert!(!allowing(&["https://prometheus"]).allows_provider("https://prometheus:80/"));
        assert!(!allowing(&["http://prometheus"]).allows_provider("http://prometheus:443/"));
    }

    #[test]
    fn a_path_allows_itself_and_below_it_on_a_segment_boundary() {
        let p = allowing(&["http://gateway/prom"]);
        assert!(p.allows_provider("http://gateway/prom"));
        assert!(p.allows_provider("http://gateway/prom/"));
        assert!(p.allows_provider("http://gateway/prom/x"));
        assert!(!p.allows_provider("http://gateway/prometheus"), "not a segment boundary");
        assert!(!p.allows_provider("http://gateway/"));
        assert!(!p.allows_provider("http://gateway/other/prom"));
        // Dot segments are resolved before the comparison, as the client would send them.
        assert!(!p.allows_provider("http://gateway/prom/../admin"));
        assert!(!p.allows_provider("http://gateway/prom/%2e%2e/admin"));
        // A trailing slash in the allowed entry changes nothing.
        assert!(allowing(&["http://gateway/prom/"]).allows_provider("http://gateway/prom"));
        assert!(!allowing(&["http://gateway/prom/"]).allows_provider("http://gateway/prometheus"));
        // The root allows every path on that host.
        assert!(allowing(&["http://gateway/"]).allows_provider("http://gateway/any/where"));
    }

    #[test]
    fn host_and_scheme_compare_without_case() {
        let p = allowing(&["http://Prometheus.Monitoring:9090"]);
        assert!(p.allows_provider("HTTP://PROMETHEUS.monitoring:9090/api"));
        assert!(allowing(&["http://prometheus.monitoring:9090"]).allows_provider("http://PROMETHEUS.MONITORING:9090"));
        assert!(!p.allows_provider("http://PROMETHEUS.MONITORING.evil.com:9090"));
    }
}
