//! Preflight checks: stage namespaces exist, referenced Secrets and ConfigMaps exist with their keys in every stage
//! namespace, and TLS certificates stay valid long enough. Each result names the spec field.

use crate::api::{CheckResult, LocallRelease};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeSet;

/// Runs every check of the spec; API errors other than NotFound are returned as errors.
pub async fn run(client: &Client, lr: &LocallRelease, now: DateTime<Utc>) -> Result<Vec<CheckResult>, kube::Error> {
    let release_ns = lr.namespace().unwrap_or_default();
    let mut out = Vec::new();
    // A stage in a namespace that does not exist could never be deployed.
    let all: Api<Namespace> = Api::all(client.clone());
    for (i, stage) in lr.spec.stages.iter().enumerate() {
        let Some(ns) = stage.namespace.as_deref().filter(|ns| *ns != release_ns) else { continue };
        let found = all.get_opt(ns).await?;
        out.push(CheckResult {
            name: format!("Namespace {ns}"),
            passed: found.is_some(),
            message: match found {
                Some(_) => format!("spec.stages[{i}].namespace: Namespace {ns} exists"),
                None => format!("spec.stages[{i}].namespace: Namespace {ns} not found"),
            },
        });
    }
    if out.iter().any(|c| !c.passed) {
        return Ok(out);
    }
    let Some(p) = &lr.spec.preflight else { return Ok(out) };
    let namespaces: BTreeSet<String> = (0..lr.spec.stages.len()).map(|i| lr.spec.stage_namespace(i, &release_ns).to_string()).collect();
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
