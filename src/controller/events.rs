//! Kubernetes Events (events.k8s.io/v1) that tell each release's own story.
//!
//! kube-runtime's `Recorder` folds every Event with the same reason and action into one series
//! that keeps the first message, so a second version's `JobCreated` read the first version's Job
//! name. Here only an Event identical in reason *and* message (within [`TTL`]) joins a series;
//! a different message is a new Event.

use super::cache::Slim;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    Client, Resource,
};
use std::{collections::HashMap, sync::Mutex, time::Duration};

/// How long an Event can be continued as a series rather than created anew.
pub const TTL: Duration = Duration::from_secs(600);

/// One Event to publish about a release.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// Series key: the object (uid), type, reason and message.
type Key = (String, bool, String, String);

pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    /// Events published lately: their name, namespace, count and when last seen.
    recent: Mutex<HashMap<Key, (String, String, i32, k8s_openapi::jiff::Timestamp)>>,
    /// When `recent` was last rid of what expired: once a minute, not on every publish (which
    /// cost O(Events of the last 10 minutes) per Event).
    pruned: Mutex<std::time::Instant>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        let instance = instance.unwrap_or_else(|| format!("{controller}-{}", std::process::id()));
        Recorder {
            client,
            controller: controller.into(),
            instance,
            recent: Default::default(),
            pruned: Mutex::new(std::time::Instant::now()),
        }
    }

    /// Publishes `note` about `regarding`: a new Event, or the next count of the same one.
    pub async fn publish(&self, note: &Note, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let ns = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let key: Key = (regarding.uid.clone().unwrap_or_default(), note.warning, note.reason.clone(), note.message.clone());
        let seen = {
            let mut recent = self.recent.lock().unwrap();
            let ttl = k8s_openapi::jiff::SignedDuration::try_from(TTL).unwrap_or_default();
            let live = |at: &k8s_openapi::jiff::Timestamp| at.saturating_add(ttl).is_ok_and(|t| t > now);
            let mut pruned = self.pruned.lock().unwrap();
            if pruned.elapsed() >= Duration::from_secs(60) {
                recent.retain(|_, (_, _, _, at)| live(at));
                *pruned = std::time::Instant::now();
            }
            recent.get(&key).filter(|(_, _, _, at)| live(at)).cloned()
        };
        // The answers are not read (the Event's name is ours): parsed as metadata alone.
        let api: Api<Slim<Event>> = Api::namespaced(self.client.clone(), &ns);
        let (name, count) = match seen {
            Some((name, _, count, _)) => {
                let patch = serde_json::json!({"series": {"count": count + 1, "lastObservedTime": MicroTime(now)}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                (name, count + 1)
            }
            None => {
                let ev = Event {
                    metadata: ObjectMeta {
                        // `<object>.<random hex>`, as client-go names them (a generateName may not end in a dot).
                        name: Some(format!("{}.{:016x}", regarding.name.clone().unwrap_or_default(), rand::random::<u64>())),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    },
                    action: Some("Release".into()),
                    reason: Some(note.reason.clone()),
                    note: Some(note.message.chars().take(1000).collect()),
                    regarding: Some(regarding.clone()),
                    event_time: Some(MicroTime(now)),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(if note.warning { "Warning" } else { "Normal" }.into()),
                    ..Default::default()
                };
                let body = serde_json::to_vec(&ev).map_err(kube::Error::SerdeError)?;
                let request = kube::core::Request::new(Event::url_path(&(), Some(&ns)))
                    .create(&PostParams::default(), body)
                    .map_err(kube::Error::BuildRequest)?;
                let created: Slim<Event> = self.client.request(request).await?;
                (created.metadata.name.or(ev.metadata.name).unwrap_or_default(), 1)
            }
        };
        self.recent.lock().unwrap().insert(key, (name, ns, count, now));
        Ok(())
    }
}
