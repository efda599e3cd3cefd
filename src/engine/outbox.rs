//! The notifications a release owes (pure): recorded in status in the same write as the change
//! they announce, delivered at least once with a stable idempotency key, retried with backoff
//! for as long as the operator is told to, and every final failure said in an Event.

use super::EventOut;
use crate::api::{LocallReleaseSpec, LocallReleaseStatus, NotifyEvent, Owed};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Duration;

/// At most this many notifications wait in a release's status; beyond it the oldest is given
/// up (with an Event), so a receiver down for days cannot grow the object without bound.
pub const MAX_OWED: usize = 64;

/// The wait after `attempts` failed deliveries: 5 s, doubled each time, at most a minute.
pub fn backoff(attempts: u32) -> TimeDelta {
    TimeDelta::seconds(5 << attempts.saturating_sub(1).min(4)).min(TimeDelta::seconds(60))
}

/// Records what `notify` announces as owed to every target that wants it.
pub fn owe(
    st: &mut LocallReleaseStatus,
    spec: &LocallReleaseSpec,
    notify: &[(NotifyEvent, String)],
    now: DateTime<Utc>,
    events: &mut Vec<EventOut>,
) {
    for (event, message) in notify {
        for n in spec.notifications.iter().filter(|n| n.events.is_empty() || n.events.contains(event)) {
            st.notices += 1;
            st.outbox.push(Owed {
                id: format!("{}-{}", st.sequence, st.notices),
                target: n.name.clone(),
                event: *event,
                version: st.candidate_version.clone(),
                stable_version: st.stable.as_ref().map(|s| s.version.clone()),
                phase: st.phase,
                message: message.clone(),
                since: now,
                attempts: 0,
                next_attempt: None,
                last_error: String::new(),
            });
        }
    }
    while st.outbox.len() > MAX_OWED {
        let gone = st.outbox.remove(0);
        events.push(EventOut {
            warning: true,
            reason: "NotificationFailed".into(),
            message: format!("gave up the {:?} notification to {}: {} newer ones are waiting", gone.event, gone.target, MAX_OWED),
        });
    }
}

/// Which owed notifications are due now.
pub fn due(st: &LocallReleaseStatus, now: DateTime<Utc>) -> Vec<Owed> {
    st.outbox.iter().filter(|o| o.next_attempt.is_none_or(|t| t <= now)).cloned().collect()
}

/// When the next owed notification is due, from `now`.
pub fn next_due(st: &LocallReleaseStatus, now: DateTime<Utc>) -> Option<Duration> {
    st.outbox.iter().map(|o| o.next_attempt.map_or(Duration::ZERO, |t| (t - now).to_std().unwrap_or_default())).min()
}

/// The result of one delivery attempt: `Ok` or why not (no secret in it).
pub type Attempt = (String, Result<(), String>);

/// Applies delivery results (by owed id): delivered ones leave the outbox; failed ones wait for
/// their backoff, or, owed for longer than `retry_for`, are given up with an Event naming the
/// target and the release's version.
pub fn settle(st: &mut LocallReleaseStatus, results: &[Attempt], retry_for: Duration, now: DateTime<Utc>) -> Vec<EventOut> {
    let mut events = vec![];
    let limit = TimeDelta::from_std(retry_for).unwrap_or(TimeDelta::MAX);
    st.outbox.retain_mut(|o| {
        let Some((_, result)) = results.iter().find(|(id, _)| *id == o.id) else { return true };
        match result {
            Ok(()) => false,
            Err(why) => {
                o.attempts += 1;
                o.last_error = why.clone();
                if now.signed_duration_since(o.since) >= limit {
                    events.push(EventOut {
                        warning: true,
                        reason: "NotificationFailed".into(),
                        message: format!(
                            "gave up the {:?} notification of {} to {} after {} attempts over {}: {why}",
                            o.event,
                            o.version,
                            o.target,
                            o.attempts,
                            humantime(now.signed_duration_since(o.since))
                        ),
                    });
                    return false;
                }
                o.next_attempt = Some(super::machine::add(now, backoff(o.attempts)));
                true
            }
        }
    });
    events
}

/// The condition saying whether notifications get through: it appears once a delivery failed,
/// `False` naming the target and why while any is failing, `True` once all were delivered.
pub const DELIVERED: &str = "NotificationsDelivered";

/// Sets [`DELIVERED`] after delivery `results` were settled (`given_up`: the Events of those
/// given up): `False` while any is failing or once one was given up, `True` once deliveries go
/// through again; unchanged when nothing was attempted.
pub fn condition(st: &mut LocallReleaseStatus, results: &[Attempt], given_up: &[EventOut], generation: Option<i64>, now: DateTime<Utc>) {
    use crate::api::conditions;
    let failing: Vec<String> = st
        .outbox
        .iter()
        .filter(|o| o.attempts > 0)
        .map(|o| format!("{} ({:?}, {} attempts): {}", o.target, o.event, o.attempts, o.last_error))
        .collect();
    let c = if !failing.is_empty() {
        conditions::upsert(&st.conditions, DELIVERED, false, "Retrying", &failing.join("; "), generation, now)
    } else if !given_up.is_empty() {
        let what: Vec<&str> = given_up.iter().map(|e| e.message.as_str()).collect();
        conditions::upsert(&st.conditions, DELIVERED, false, "GaveUp", &what.join("; "), generation, now)
    } else if results.iter().any(|(_, r)| r.is_ok()) && st.conditions.iter().any(|c| c.type_ == DELIVERED) {
        conditions::upsert(&st.conditions, DELIVERED, true, "Delivered", "the notifications owed were delivered", generation, now)
    } else {
        return;
    };
    conditions::set(&mut st.conditions, c);
}

fn humantime(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    if s >= 3600 {
        format!("{}h{}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LocallReleaseSpec {
        serde_yaml::from_str(
            r#"
version: "2"
template: {spec: {containers: [{name: a, image: a}]}}
stages: [{name: production}]
notifications:
- {name: oncall, format: Slack, urlSecret: {name: s, key: url}}
- {name: business, format: Webhook, urlSecret: {name: s, key: biz}, events: [Succeeded]}
"#,
        )
        .unwrap()
    }

    #[test]
    fn an_owed_notification_is_retried_until_delivered_and_given_up_only_after_retry_for() {
        let t0 = DateTime::parse_from_rfc3339("2026-11-30T10:00:00Z").unwrap().with_timezone(&Utc);
        let mut st = LocallReleaseStatus { sequence: 3, ..Default::default() };
        let mut ev = vec![];
        owe(&mut st, &spec(), &[(NotifyEvent::RolledBack, "error-rate > 0.05".into())], t0, &mut ev);
        assert_eq!(st.outbox.len(), 1, "only the target that wants RolledBack");
        let id = st.outbox[0].id.clone();
        assert_eq!(id, "3-1");
        assert_eq!(due(&st, t0).len(), 1);
        // Down for two minutes: every attempt fails, none is lost.
        let mut now = t0;
        let mut attempts = 0;
        while now < t0 + TimeDelta::minutes(2) {
            if !due(&st, now).is_empty() {
                attempts += 1;
                let evs = settle(&mut st, &[(id.clone(), Err("HTTP 500".into()))], Duration::from_secs(6 * 3600), now);
                assert!(evs.is_empty());
            }
            now += TimeDelta::seconds(1);
        }
        assert!((4..=8).contains(&attempts), "{attempts} attempts in two minutes");
        assert_eq!(st.outbox.len(), 1);
        assert_eq!(st.outbox[0].id, id, "the key does not change between attempts");
        let wait = next_due(&st, now).unwrap();
        assert!(wait <= Duration::from_secs(60));
        let evs = settle(&mut st, &[(id.clone(), Ok(()))], Duration::from_secs(6 * 3600), now + TimeDelta::from_std(wait).unwrap());
        assert!(evs.is_empty() && st.outbox.is_empty(), "delivered once, then gone");
        // Past retry_for: given up, with an Event naming the target.
        owe(&mut st, &spec(), &[(NotifyEvent::Succeeded, "live".into())], t0, &mut ev);
        assert_eq!(st.outbox.len(), 2);
        assert_eq!((st.outbox[0].id.as_str(), st.outbox[1].id.as_str()), ("3-2", "3-3"), "every notice its own key");
        let ids: Vec<Attempt> = st.outbox.iter().map(|o| (o.id.clone(), Err("Secret demo/s not found".to_string()))).collect();
        let evs = settle(&mut st, &ids, Duration::from_secs(3600), t0 + TimeDelta::hours(2));
        assert!(st.outbox.is_empty());
        assert_eq!(evs.len(), 2);
        assert!(evs[0].message.contains("oncall") && evs[0].message.contains("Secret demo/s not found"), "{}", evs[0].message);
    }

    #[test]
    fn the_outbox_is_bounded_and_says_what_it_gave_up() {
        let t0 = Utc::now();
        let mut st = LocallReleaseStatus::default();
        let mut ev = vec![];
        for _ in 0..MAX_OWED + 3 {
            owe(&mut st, &spec(), &[(NotifyEvent::Failed, "m".into())], t0, &mut ev);
        }
        assert_eq!(st.outbox.len(), MAX_OWED);
        assert_eq!(ev.len(), 3);
    }
}
