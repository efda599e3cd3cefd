//! Notifications: Slack-compatible, Teams Workflows, generic JSON and CloudEvents 1.0 payloads
//! (pure builders), delivered in the background with retries, so a slow or failing receiver
//! never delays a rollback.

use crate::api::{Audience, LocallRelease, LocallReleaseStatus, Notification, NotifyEvent, NotifyFormat};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::time::Duration;
use tracing::{info, warn};

/// Delivery attempts before giving up, and the first backoff (doubled each time).
pub const ATTEMPTS: u32 = 6;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

fn event_name(e: NotifyEvent) -> &'static str {
    match e {
        NotifyEvent::RolledBack => "RolledBack",
        NotifyEvent::Failed => "Failed",
        NotifyEvent::AwaitingApproval => "AwaitingApproval",
        NotifyEvent::Succeeded => "Succeeded",
    }
}

/// The one-line story, for people (business audience gets no metric details).
pub fn summary(lr: &LocallRelease, st: &LocallReleaseStatus, e: NotifyEvent, audience: Audience, message: &str) -> String {
    let name = lr.name_any();
    let v = &st.candidate_version;
    let stable = st.stable.as_ref().map(|s| s.version.clone()).unwrap_or_else(|| "the previous version".into());
    match (e, audience) {
        (NotifyEvent::RolledBack, Audience::Business) => {
            format!("{name} {v} was rolled back automatically; customers are on {stable} again.")
        }
        (NotifyEvent::Failed, Audience::Business) => format!("{name} {v} was not released; nothing changed for customers."),
        (NotifyEvent::AwaitingApproval, Audience::Business) => format!("{name} {v} is ready for production and waits for approval."),
        (NotifyEvent::Succeeded, Audience::Business) => format!("{name} {v} is live."),
        (_, Audience::Technical) => format!("{}/{name} {v}: {} — {message}", lr.namespace().unwrap_or_default(), event_name(e)),
    }
}

/// The payload for a target (pure).
pub fn payload(n: &Notification, lr: &LocallRelease, st: &LocallReleaseStatus, e: NotifyEvent, message: &str, now: DateTime<Utc>) -> Value {
    let text = summary(lr, st, e, n.audience, message);
    let ns = lr.namespace().unwrap_or_default();
    let name = lr.name_any();
    let data = json!({
        "release": name,
        "namespace": ns,
        "event": event_name(e),
        "version": st.candidate_version,
        "stableVersion": st.stable.as_ref().map(|s| s.version.clone()),
        "phase": st.phase.as_str(),
        "message": text,
        "failure": if n.audience == Audience::Technical { serde_json::to_value(&st.failure).unwrap_or(Value::Null) } else { Value::Null },
    });
    match n.format {
        NotifyFormat::Slack => json!({"text": text}),
        NotifyFormat::Teams => json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": format!("{name} {}: {}", st.candidate_version, event_name(e)), "weight": "Bolder", "size": "Medium"},
                        {"type": "TextBlock", "text": text, "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Namespace", "value": ns},
                            {"title": "Phase", "value": st.phase.as_str()},
                        ]},
                    ],
                },
            }],
        }),
        NotifyFormat::Webhook => data,
        NotifyFormat::CloudEvents => json!({
            "specversion": "1.0",
            "id": format!("{}-{}-{}", lr.uid().unwrap_or_default(), st.revision, event_name(e)),
            "source": format!("/apis/locall.io/v1alpha1/namespaces/{ns}/locallreleases/{name}"),
            "type": format!("io.locall.release.{}", event_name(e).to_lowercase()),
            "subject": name,
            "time": now.to_rfc3339(),
            "datacontenttype": "application/json",
            "data": data,
        }),
    }
}

/// Sends every notification the decision asked for, each in its own background task.
pub fn dispatch(
    client: &Client,
    lr: &LocallRelease,
    st: &LocallReleaseStatus,
    events: &[(NotifyEvent, String)],
    metrics: std::sync::Arc<crate::telemetry::Metrics>,
) {
    for (e, message) in events {
        for n in lr.spec.notifications.iter().filter(|n| n.events.is_empty() || n.events.contains(e)) {
            let body = payload(n, lr, st, *e, message, Utc::now());
            let (client, n, ns, metrics) = (client.clone(), n.clone(), lr.namespace().unwrap_or_default(), metrics.clone());
            tokio::spawn(async move {
                let ok = deliver(&client, &ns, &n, &body).await;
                metrics.notification(ok);
            });
        }
    }
}

/// Reads the target's URL from its Secret and POSTs, retrying with exponential backoff.
async fn deliver(client: &Client, ns: &str, n: &Notification, body: &Value) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => {
            warn!(target_name = %n.name, error = %e, "cannot build HTTP client");
            return false;
        }
    };
    let content_type = if n.format == NotifyFormat::CloudEvents { "application/cloudevents+json" } else { "application/json" };
    for attempt in 1..=ATTEMPTS {
        let result = async {
            let secret = Api::<Secret>::namespaced(client.clone(), ns).get(&n.url_secret.name).await.map_err(|e| e.to_string())?;
            let url = secret
                .data
                .and_then(|d| d.get(&n.url_secret.key).map(|b| String::from_utf8_lossy(&b.0).trim().to_string()))
                .ok_or_else(|| format!("Secret {ns}/{} has no key {}", n.url_secret.name, n.url_secret.key))?;
            let resp =
                http.post(&url).header("content-type", content_type).body(body.to_string()).send().await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", resp.status()))
            }
        }
        .await;
        match result {
            Ok(()) => {
                info!(target_name = %n.name, attempt, "notification delivered");
                return true;
            }
            Err(e) => {
                warn!(target_name = %n.name, attempt, error = %e, "notification not delivered");
                if attempt < ATTEMPTS {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_has_its_shape_and_business_gets_no_metrics() {
        let lr: LocallRelease = serde_yaml::from_str(
            r#"
apiVersion: locall.io/v1alpha1
kind: LocallRelease
metadata: {name: locall-api, namespace: demo, uid: u1}
spec:
  version: "3.0.0"
  template: {spec: {containers: [{name: a, image: a}]}}
  stages: [{name: production}]
"#,
        )
        .unwrap();
        let st: LocallReleaseStatus = serde_json::from_value(
            json!({"phase": "RolledBack", "candidateVersion": "3.0.0", "revision": "r3", "stable": {"version": "2.0.0", "revision": "r2"}}),
        )
        .unwrap();
        let target = |format: NotifyFormat, audience: Audience| Notification {
            name: "t".into(),
            format,
            url_secret: crate::api::SecretKeyRef { name: "s".into(), key: "url".into() },
            events: vec![],
            audience,
        };
        let now = Utc::now();
        let e = NotifyEvent::RolledBack;
        let slack = payload(&target(NotifyFormat::Slack, Audience::Technical), &lr, &st, e, "error-rate > 0.05", now);
        assert!(slack["text"].as_str().unwrap().contains("error-rate > 0.05"));
        let ce = payload(&target(NotifyFormat::CloudEvents, Audience::Technical), &lr, &st, e, "m", now);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "io.locall.release.rolledback");
        assert_eq!(ce["data"]["stableVersion"], "2.0.0");
        let teams = payload(&target(NotifyFormat::Teams, Audience::Technical), &lr, &st, e, "m", now);
        assert_eq!(teams["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
        let biz = payload(&target(NotifyFormat::Webhook, Audience::Business), &lr, &st, e, "error-rate > 0.05", now);
        assert_eq!(biz["message"], "locall-api 3.0.0 was rolled back automatically; customers are on 2.0.0 again.");
        assert!(biz["failure"].is_null());
    }
}
