//! Notifications: Slack-compatible, Teams Workflows, generic JSON and CloudEvents 1.0 payloads
//! (pure builders), and one delivery attempt for each notification a release owes
//! (`status.outbox`, see `engine::outbox`): the status write that records a change records what
//! is owed for it, delivery comes after, and its result goes back into status. A slow receiver
//! delays nothing: traffic has moved before any notification is sent.
//!
//! Webhook URLs are credentials (Slack and Teams put the token in the path): they are read from
//! the Secret at each attempt and never printed; errors name the scheme and host only.

use crate::api::{Audience, LocallRelease, Notification, NotifyEvent, NotifyFormat, Owed};
use crate::engine::outbox::Attempt;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use std::time::Duration;
use tracing::{info, warn};

/// How long one delivery attempt may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

fn event_name(e: NotifyEvent) -> &'static str {
    match e {
        NotifyEvent::RolledBack => "RolledBack",
        NotifyEvent::Failed => "Failed",
        NotifyEvent::AwaitingApproval => "AwaitingApproval",
        NotifyEvent::Succeeded => "Succeeded",
    }
}

/// The one-line story, for people (business audience gets no metric details).
pub fn summary(lr: &LocallRelease, o: &Owed, audience: Audience) -> String {
    let (e, message) = (o.event, &o.message);
    let name = lr.name_any();
    let v = &o.version;
    let stable = o.stable_version.clone().unwrap_or_else(|| "the previous version".into());
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

/// The idempotency key of an owed notification: unique per release object (its uid) and per
/// notice, the same on every attempt and after a restart.
pub fn key(lr: &LocallRelease, o: &Owed) -> String {
    key_of(lr, &o.id)
}

fn key_of(lr: &LocallRelease, id: &str) -> String {
    format!("{}-{id}", lr.uid().unwrap_or_default())
}

/// The payload for a target (pure).
pub fn payload(n: &Notification, lr: &LocallRelease, o: &Owed) -> Value {
    let e = o.event;
    let text = summary(lr, o, n.audience);
    let ns = lr.namespace().unwrap_or_default();
    let name = lr.name_any();
    let data = json!({
        "id": key(lr, o),
        "release": name,
        "namespace": ns,
        "event": event_name(e),
        "version": o.version,
        "stableVersion": o.stable_version,
        "phase": o.phase.as_str(),
        "message": text,
        "detail": if n.audience == Audience::Technical { Value::String(o.message.clone()) } else { Value::Null },
        "at": o.since.to_rfc3339(),
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
                        {"type": "TextBlock", "text": format!("{name} {}: {}", o.version, event_name(e)), "weight": "Bolder", "size": "Medium"},
                        {"type": "TextBlock", "text": text, "wrap": true},
                        {"type": "FactSet", "facts": [
                            {"title": "Namespace", "value": ns},
                            {"title": "Phase", "value": o.phase.as_str()},
                        ]},
                    ],
                },
            }],
        }),
        NotifyFormat::Webhook => data,
        NotifyFormat::CloudEvents => json!({
            "specversion": "1.0",
            "id": key(lr, o),
            "source": format!("/apis/locall.io/v1alpha1/namespaces/{ns}/locallreleases/{name}"),
            "type": format!("io.locall.release.{}", event_name(e).to_lowercase()),
            "subject": name,
            "time": o.since.to_rfc3339(),
            "datacontenttype": "application/json",
            "data": data,
        }),
    }
}

/// `scheme://host` of a URL, or a placeholder: all of a webhook URL that may be printed.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "<unparsable URL>".into(),
    }
}

/// One attempt for each owed notification, all at once, each bounded by [`TIMEOUT`].
pub async fn deliver(client: &Client, lr: &LocallRelease, owed: &[Owed], metrics: &crate::telemetry::Metrics) -> Vec<Attempt> {
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().map_err(|e| e.without_url().to_string());
    let attempts = owed.iter().map(|o| {
        let http = http.as_ref().map_err(Clone::clone);
        async move {
            let result = match (http, lr.spec.notifications.iter().position(|n| n.name == o.target)) {
                (Err(e), _) => Err(format!("cannot build an HTTP client: {e}")),
                (_, None) => Err(format!("spec.notifications has no target {} any more", o.target)),
                (Ok(http), Some(i)) => attempt(client, http, lr, i, o).await,
            };
            match &result {
                Ok(()) => info!(target_name = %o.target, id = %o.id, attempt = o.attempts + 1, "notification delivered"),
                Err(e) => warn!(target_name = %o.target, id = %o.id, attempt = o.attempts + 1, error = %e, "notification not delivered"),
            }
            metrics.notification(&o.target, result.is_ok());
            (o.id.clone(), result)
        }
    });
    futures::future::join_all(attempts).await
}

/// Deliveries this process made, by idempotency key: a reconcile that still sees one owed (the
/// status write settling it conflicted or failed, or the watch cache has not caught up with
/// it) settles it without posting again. A hint, not state: after a restart the outbox is the
/// truth, and a delivery whose status write was lost is sent once more with the same
/// idempotency key (at least once).
#[derive(Default)]
pub struct Delivered(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

/// How long a delivery is remembered: far longer than a watch cache lags or a conflicting
/// write is retried, and the memory stays bounded.
const REMEMBER_FOR: Duration = Duration::from_secs(3600);

impl Delivered {
    /// Splits what is due into what must be posted and what was already delivered (its results).
    pub fn split(&self, lr: &LocallRelease, due: Vec<Owed>) -> (Vec<Owed>, Vec<Attempt>) {
        let known = self.0.lock().unwrap();
        let (done, send): (Vec<Owed>, Vec<Owed>) = due.into_iter().partition(|o| known.contains_key(&key(lr, o)));
        (send, done.into_iter().map(|o| (o.id, Ok(()))).collect())
    }

    /// Remembers the deliveries that went through.
    pub fn remember(&self, lr: &LocallRelease, results: &[Attempt]) {
        let now = std::time::Instant::now();
        let mut known = self.0.lock().unwrap();
        known.retain(|_, at| now.duration_since(*at) < REMEMBER_FOR);
        for (id, _) in results.iter().filter(|(_, r)| r.is_ok()) {
            known.insert(key_of(lr, id), now);
        }
    }
}

/// Reads the target's URL from its Secret and POSTs once.
async fn attempt(client: &Client, http: &reqwest::Client, lr: &LocallRelease, i: usize, o: &Owed) -> Result<(), String> {
    let n = &lr.spec.notifications[i];
    let ns = lr.namespace().unwrap_or_default();
    let field = format!("spec.notifications[{i}].urlSecret");
    let secret = match Api::<Secret>::namespaced(client.clone(), &ns).get_opt(&n.url_secret.name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(format!("Secret {ns}/{} not found ({field}.name)", n.url_secret.name)),
        Err(e) => return Err(format!("cannot read Secret {ns}/{} ({field}): {e}", n.url_secret.name)),
    };
    let url = secret
        .data
        .and_then(|d| d.get(&n.url_secret.key).map(|b| String::from_utf8_lossy(&b.0).trim().to_string()))
        .ok_or_else(|| format!("Secret {ns}/{} has no key {} ({field}.key)", n.url_secret.name, n.url_secret.key))?;
    let content_type = if n.format == NotifyFormat::CloudEvents { "application/cloudevents+json" } else { "application/json" };
    let body = payload(n, lr, o);
    let resp = http
        .post(&url)
        .header("content-type", content_type)
        .header("idempotency-key", key(lr, o))
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{}: {}", redact(&url), e.without_url()))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{} answered HTTP {}", redact(&url), resp.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_not_posted_again_while_its_settling_write_is_retried() {
        let release = |uid: &str| -> LocallRelease {
            let mut lr: LocallRelease = serde_yaml::from_str(
                "apiVersion: locall.io/v1alpha1\nkind: LocallRelease\nmetadata: {name: a, namespace: n}\nspec: {version: '1', template: {}, stages: [{name: p}]}",
            )
            .unwrap();
            lr.metadata.uid = Some(uid.into());
            lr
        };
        let owed = |id: &str| -> Owed {
            serde_json::from_value(json!({"id": id, "target": "t", "event": "Succeeded", "phase": "Succeeded",
                "version": "1", "message": "", "since": "2026-11-30T10:00:00Z"}))
            .unwrap()
        };
        let memory = Delivered::default();
        let lr = release("u1");
        let (send, known) = memory.split(&lr, vec![owed("1-1"), owed("1-2")]);
        assert_eq!((send.len(), known.len()), (2, 0), "nothing delivered yet");
        memory.remember(&lr, &[("1-1".into(), Ok(())), ("1-2".into(), Err("HTTP 500".into()))]);
        let (send, known) = memory.split(&lr, vec![owed("1-1"), owed("1-2")]);
        assert_eq!(send.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["1-2"], "only the failed one is posted again");
        assert_eq!(known, [("1-1".to_string(), Ok(()))], "the delivered one is settled without a post");
        let (send, _) = memory.split(&release("u2"), vec![owed("1-1")]);
        assert_eq!(send.len(), 1, "another release (or a re-created one) has its own keys");
    }

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
        let st: Owed = serde_json::from_value(json!({"id": "4-1", "target": "t", "event": "RolledBack", "phase": "RolledBack",
            "version": "3.0.0", "stableVersion": "2.0.0", "message": "error-rate > 0.05", "since": "2026-11-30T10:00:00Z"}))
        .unwrap();
        let target = |format: NotifyFormat, audience: Audience| Notification {
            name: "t".into(),
            format,
            url_secret: crate::api::SecretKeyRef { name: "s".into(), key: "url".into() },
            events: vec![],
            audience,
        };
        let slack = payload(&target(NotifyFormat::Slack, Audience::Technical), &lr, &st);
        assert!(slack["text"].as_str().unwrap().contains("error-rate > 0.05"));
        let ce = payload(&target(NotifyFormat::CloudEvents, Audience::Technical), &lr, &st);
        assert_eq!(ce["id"], "u1-4-1", "the idempotency key: the release's uid and the notice");
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "io.locall.release.rolledback");
        assert_eq!(ce["data"]["stableVersion"], "2.0.0");
        let teams = payload(&target(NotifyFormat::Teams, Audience::Technical), &lr, &st);
        assert_eq!(teams["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
        let biz = payload(&target(NotifyFormat::Webhook, Audience::Business), &lr, &st);
        assert_eq!(biz["message"], "locall-api 3.0.0 was rolled back automatically; customers are on 2.0.0 again.");
        assert!(biz["detail"].is_null());
        assert_eq!(biz["id"], "u1-4-1");
    }

    #[test]
    fn a_webhook_url_is_printed_as_scheme_and_host_only() {
        assert_eq!(redact("https://hooks.slack.com/services/T000/B000/XXXXSECRET"), "https://hooks.slack.com");
        assert_eq!(redact("http://user:pass@127.0.0.1:9999/path?token=abc"), "http://127.0.0.1");
        assert_eq!(redact("not a url with a secret"), "<unparsable URL>");
    }
}
