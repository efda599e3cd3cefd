//! The thin I/O layer: watch -> observe -> `engine::decide` -> act -> status.

pub mod act;
pub mod build;
pub mod cache;
pub mod cleanup;
pub mod events;
pub mod observe;
pub mod preflight;
pub mod scope;

use crate::{
    api::{LocallRelease, LocallReleaseStatus, Phase},
    engine::{self, outbox, Observed, Release, StageDesired, TrafficTarget},
    telemetry::Metrics,
    traffic::{Router, Written, MANAGER},
};
use cache::{CachedRelease, SlimDeployment, SlimService};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        finalizer::{finalizer, Event as Finalizer},
        reflector::{self, ObjectRef, Store},
        watcher, WatchStreamExt,
    },
    Client, Resource, ResourceExt,
};
use std::{sync::Arc, time::Duration};
use tracing::{info, instrument, warn};

/// The finalizer that removes a release's children, wherever they live.
pub const FINALIZER: &str = "locall.io/cleanup";

/// What a reconcile needs: the client, the watch caches, the event recorder, the metrics.
pub struct Context {
    pub client: Client,
    pub deployments: Store<SlimDeployment>,
    pub jobs: Store<Job>,
    /// The Deployments' and Jobs' keys by release, kept beside their caches.
    pub deployment_index: observe::ByRelease,
    pub job_index: observe::ByRelease,
    /// True once the Deployment and Job caches have listed. (Not `Store::wait_until_ready` in
    /// each reconcile: kube-runtime 5.0 wakes only the last of several concurrent waiters, so
    /// the others hung for good.)
    pub children_listed: tokio::sync::watch::Receiver<bool>,
    pub recorder: events::Recorder,
    pub metrics: Arc<Metrics>,
    /// Prometheus for metric gates, unless a release names its own.
    pub prometheus_url: Option<String>,
    /// What the Services and HTTPRoutes the operator applied carry (watch caches).
    pub applied: crate::traffic::Applied,
    /// Releases whose last status write conflicted: their next reconcile reads them from the
    /// API server rather than the watch cache (a hint for freshness, not state).
    pub fresh_read: std::sync::Mutex<std::collections::HashSet<ObjectRef<LocallRelease>>>,
    /// How long an owed notification is retried before it is given up.
    pub notify_retry_for: Duration,
    /// What releases may ask of the operator beyond their namespace.
    pub policy: preflight::Policy,
    /// Namespaces' metadata (their opt-in annotations), kept by a watch.
    pub namespaces: Store<kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    /// Failed reconciles in a row per release: the retry backoff (a hint, not state).
    pub failures: std::sync::Mutex<std::collections::HashMap<ObjectRef<LocallRelease>, u32>>,
    /// Notifications delivered whose status write may not have landed (not sent twice).
    pub delivered: crate::notify::Delivered,
}

/// How the operator is configured.
#[derive(Clone, Debug)]
pub struct Config {
    /// Only reconcile releases matching this label selector.
    pub release_selector: Option<String>,
    /// Default Prometheus URL for metric gates.
    pub prometheus_url: Option<String>,
    /// Releases reconciled at the same time (0: no limit).
    pub concurrency: u16,
    /// How long an owed notification is retried before it is given up (with an Event).
    pub notify_retry_for: Duration,
    /// What releases may ask of the operator beyond their namespace (provider URLs).
    pub policy: preflight::Policy,
}

/// Each step of a reconcile fails with its own variant, so an error says where it happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("observe: {0}")]
    Observe(&'static str, #[source] kube::Error),
    #[error("{what} {object}: {source}")]
    Act {
        what: &'static str,
        /// The object, e.g. `Deployment prod/locall-api-5d8f`.
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("write status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The release's spec would have the operator act in a namespace that does not accept it.
    #[error("{0}")]
    NotAccepted(String),
    /// The engine panicked on this release: a bug, reported and retried with backoff, and
    /// contained to this one release (the others go on being reconciled).
    #[error("engine: {0}")]
    Engine(String),
    /// The release's spec or status does not parse as this operator's types (e.g. written
    /// under another version of the CRD): this release waits, the others go on.
    #[error(transparent)]
    Unreadable(#[from] cache::Unreadable),
}

/// The release's field behind a child's field the API server refused, where there is one.
pub fn spec_field(kind: &str, field: &str) -> Option<String> {
    let field = field.trim();
    match kind {
        // The Deployment's pod template is the release's.
        "Deployment" => field.strip_prefix("spec.template.").map(|rest| format!("spec.template.{rest}")),
        // A component's Deployment: `Deployment ns/name of spec.components[i]`.
        k if k.starts_with("Deployment of spec.components[") => {
            let i = k.trim_start_matches("Deployment of ");
            field.strip_prefix("spec.template.").map(|rest| format!("{i}.template.{rest}"))
        }
        "Service" if field.starts_with("metadata.annotations") => Some("spec.service.annotations".into()),
        "Service" if field.starts_with("spec.ports") => Some("spec.service.port".into()),
        "HTTPRoute" if field.starts_with("spec.parentRefs") => {
            Some(if field.ends_with(".namespace") { "spec.traffic.gateway.namespace" } else { "spec.traffic.gateway" }.into())
        }
        "HTTPRoute" if field.starts_with("metadata.annotations") => Some("spec.service.annotations".into()),
        _ => None,
    }
}

/// Tags a kube error from acting on `object` with what was being done.
pub fn act_err(what: &'static str, object: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Act { what, object, source }
}

impl From<crate::traffic::WriteError> for Error {
    fn from(e: crate::traffic::WriteError) -> Self {
        Error::Act { what: "route traffic to", object: e.object, source: e.source }
    }
}

impl Error {
    /// The API server refused, for good, a child the spec describes (400 Bad Request or 422
    /// Invalid): the message names the object and what the API server said, and, where the
    /// field maps to one, the release's own field.
    pub fn refusal(&self) -> Option<String> {
        if let Error::NotAccepted(why) = self {
            return Some(why.clone());
        }
        let Error::Act { what, object, source: kube::Error::Api(e) } = self else { return None };
        if e.code != 400 && e.code != 422 {
            return None;
        }
        let mut kind = object.split(' ').next().unwrap_or_default().to_string();
        if let Some((_, part)) = object.split_once(" of spec.components[") {
            kind = format!("{kind} of spec.components[{part}");
        }
        let kind = kind.as_str();
        let fields: Vec<String> = e
            .details
            .iter()
            .flat_map(|d| d.causes.iter())
            .filter_map(|c| spec_field(kind, &c.field))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let in_spec = if fields.is_empty() { String::new() } else { format!(" (in the release: {})", fields.join(", ")) };
        Some(format!("the API server refused to {what} {object}: {}{in_spec}", e.message))
    }

    /// A problem the API server reported (4xx other than a conflict) that may heal by itself or
    /// by someone else's hand (a namespace created, a permission granted): reported in a
    /// condition and an Event while the reconcile retries with backoff.
    pub fn blocked(&self) -> Option<String> {
        let (code, text) = match self {
            Error::Act { source: kube::Error::Api(e), .. } | Error::Observe(_, kube::Error::Api(e)) => (e.code, self.to_string()),
            _ => return None,
        };
        ((400..500).contains(&code) && code != 409 && code != 429).then_some(text)
    }

    /// A write refused because the object changed meanwhile: retry from fresh state, soon.
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Status(kube::Error::Api(e)) | Error::Act { source: kube::Error::Api(e), .. } => e.code == 409,
            Error::Finalizer(f) => match &**f {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
                // The finalizer patch tests the finalizers it read: 422 when they changed meanwhile.
                F::AddFinalizer(kube::Error::Api(e)) | F::RemoveFinalizer(kube::Error::Api(e)) => e.code == 409 || e.code == 422,
                _ => false,
            },
            _ => false,
        }
    }
}

/// Runs the controller until a shutdown signal.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let selector = watcher::Config::default().labels(&format!("{}={}", crate::api::labels::MANAGED_BY, crate::api::labels::MANAGER));
    let (deployments, dep_writer) = reflector::store::<SlimDeployment>();
    let (jobs, job_writer) = reflector::store::<Job>();
    let sc = config.policy.scope.clone();
    let applied = watch_applied(&client, &selector, &sc);
    let namespaces = watch_namespaces(&client, &sc).await;
    // The caches keep only what observe and act read: no managedFields, no pod templates.
    let c = client.clone();
    let deps = sc.apis(|| Api::<SlimDeployment>::all(c.clone()), |ns| Api::namespaced(c.clone(), ns));
    let (deployment_index, job_index) = (observe::ByRelease::default(), observe::ByRelease::default());
    let index = deployment_index.clone();
    let dep_stream = scope::watch(deps, selector.clone(), WatchBackoff::default)
        .modify(slim_deployment)
        .inspect_ok(move |e| index.apply(e))
        .reflect(dep_writer)
        .applied_objects();
    // Status updates that change nothing observe reads (availableReplicas, conditions) do not
    // reconcile the release again.
    let dep_stream =
        dep_stream.try_filter(|d| futures::future::ready(deployment_observed(d))).predicate_filter(deployment_trigger, Default::default());
    let jobs_apis = sc.apis(|| Api::<Job>::all(c.clone()), |ns| Api::namespaced(c.clone(), ns));
    let index = job_index.clone();
    let job_stream = scope::watch(jobs_apis, selector, WatchBackoff::default)
        .modify(slim_job)
        .inspect_ok(move |e| index.apply(e))
        .reflect(job_writer)
        .applied_objects();
    let (listed, children_listed) = tokio::sync::watch::channel(false);
    let (d, j) = (deployments.clone(), jobs.clone());
    tokio::spawn(async move {
        let _ = futures::future::join(d.wait_until_ready(), j.wait_until_ready()).await;
        let _ = listed.send(true);
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        deployments,
        jobs,
        deployment_index,
        job_index,
        children_listed,
        recorder: events::Recorder::new(client.clone(), MANAGER, std::env::var("POD_NAME").ok()),
        metrics: metrics.clone(),
        prometheus_url: config.prometheus_url.clone(),
        applied,
        fresh_read: Default::default(),
        failures: Default::default(),
        delivered: Default::default(),
        notify_retry_for: config.notify_retry_for,
        policy: config.policy.clone(),
        namespaces,
    });
    let releases = sc.apis(|| Api::<CachedRelease>::all(c.clone()), |ns| Api::namespaced(c.clone(), ns));
    let mut wc = watcher::Config::default().any_semantic();
    if let Some(sel) = config.release_selector.as_deref().filter(|s| !s.is_empty()) {
        wc = wc.labels(sel);
    }
    // The cache holds each release's spec and status as compact JSON (see `cache`).
    let (release_store, release_writer) = reflector::store::<CachedRelease>();
    // Our own status writes come back as watch events: they change nothing a reconcile reads
    // that it did not just write, so only spec, metadata and deletion trigger a reconcile.
    // (CachedRelease reads metadata without managedFields: nothing to clear.)
    let release_stream = scope::watch(releases, wc, WatchBackoff::default)
        .reflect(release_writer)
        .applied_objects()
        .predicate_filter(release_trigger, Default::default());
    Controller::for_stream(release_stream, release_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        // The controller backs off its trigger streams too, by default as client-go does.
        .trigger_backoff(WatchBackoff::default())
        .watches_stream(dep_stream, owner_of)
        .watches_stream(job_stream, owner_of)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                // A child whose release this operator does not manage (another selector): not ours.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => tracing::debug!(%obj, "not a release of this operator"),
                // Logged by `reconcile`, with the release named.
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller"),
                Ok(_) => {}
            }
        })
        .await;
}

/// The watches' retry policy: 200 ms, doubled, at most 2 s, with jitter. kube-runtime's default
/// (client-go's: up to 30 s, reset only after 2 minutes of calm) kept the operator blind for
/// about a minute after an API server restart, while its watches backed off past the moment it
/// came back; a few requests every 2 s from one operator cost an API server nothing.
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    pub const MIN: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(2);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // Up to a quarter more, so that many watches do not retry in step.
        let jitter = rand::random_range(0..=d.as_millis() as u64 / 4);
        Some(d + Duration::from_millis(jitter))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// A metadata-only watch cache of every Namespace: act reads their opt-in annotations from it
/// (a refusal is confirmed with the API server first, so a cache behind never refuses). Serving
/// a list of namespaces, the operator may not list Namespaces: the cache stays empty and each
/// check reads the Namespace by name.
async fn watch_namespaces(
    client: &Client,
    sc: &scope::Scope,
) -> Store<kube::api::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::PartialObjectMeta;
    let (store, writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    if !sc.is_all() {
        return store;
    }
    let stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
        .modify(|m| m.managed_fields_mut().clear())
        .backoff(WatchBackoff::default())
        .reflect(writer);
    tokio::spawn(stream.for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "Namespace metadata watch");
        }
    }));
    store
}

/// Watch caches of the operator's Services (metadata and selector) and HTTPRoutes (metadata),
/// kept up to date in the background. A cluster without the HTTPRoute CRD just leaves that cache
/// empty (and the Gateway router, unused there, would ask the API server).
fn watch_applied(client: &Client, selector: &watcher::Config, sc: &scope::Scope) -> crate::traffic::Applied {
    use kube::api::{DynamicObject, PartialObjectMeta};
    let (services, svc_writer) = reflector::store::<SlimService>();
    let c = client.clone();
    let ar = crate::traffic::gateway::httproute_resource();
    let route_writer = reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(ar.clone());
    let applied = crate::traffic::Applied::new(services.clone(), route_writer.as_reader(), Default::default());
    let apis = sc.apis(|| Api::<SlimService>::all(c.clone()), |ns| Api::namespaced(c.clone(), ns));
    // Once the cache holds what was learnt of a Service, that memory is let go.
    let a = applied.clone();
    let svc_stream = scope::watch(apis, selector.clone(), WatchBackoff::default)
        .modify(SlimService::slim)
        .reflect(svc_writer)
        .inspect_ok(move |e| a.caught_up(e));
    let listed = applied.services_listed.clone();
    tokio::spawn(async move {
        if services.wait_until_ready().await.is_ok() {
            listed.store(true, std::sync::atomic::Ordering::Release);
        }
    });
    let apis = sc.apis(|| Api::<PartialObjectMeta<DynamicObject>>::all_with(c.clone(), &ar), |ns| Api::namespaced_with(c.clone(), ns, &ar));
    let route_stream =
        scope::watch(apis, selector.clone(), WatchBackoff::default).modify(|m| m.managed_fields_mut().clear()).reflect(route_writer);
    tokio::spawn(svc_stream.for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "Service watch");
        }
    }));
    tokio::spawn(route_stream.for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "HTTPRoute metadata watch");
        }
    }));
    applied
}

/// What makes a release worth reconciling again: its spec (generation), labels, annotations
/// (approvals, requests), finalizers and deletion. Not its status.
fn release_trigger(lr: &CachedRelease) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lr.metadata.generation.hash(&mut h);
    lr.labels().hash(&mut h);
    lr.annotations().hash(&mut h);
    lr.finalizers().hash(&mut h);
    lr.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Keeps of a Deployment's metadata what observe and act read: name, namespace, uid,
/// generation, the release, revision and component labels and the applied hash (its spec and
/// status are already only `replicas` and three counters: [`SlimDeployment`]). A thousand
/// Deployments' other labels and annotations are not kept.
fn slim_deployment(d: &mut SlimDeployment) {
    use crate::api::labels::{COMPONENT, RELEASE, REVISION};
    let m = std::mem::take(&mut d.metadata);
    d.metadata = kube::api::ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        generation: m.generation,
        // The component too: which route to read back before a stale one is deleted.
        labels: kept(m.labels, &[RELEASE, REVISION, COMPONENT]),
        annotations: kept(m.annotations, &[build::APPLIED_HASH]),
        ..Default::default()
    };
}

/// The entries of `map` under `keys`.
pub(crate) fn kept(
    map: Option<std::collections::BTreeMap<String, String>>,
    keys: &[&str],
) -> Option<std::collections::BTreeMap<String, String>> {
    map.map(|m| m.into_iter().filter(|(k, _)| keys.contains(&k.as_str())).collect())
}

/// Whether the deployment controller has answered the Deployment's latest spec: until it has,
/// the event is the echo of a write (ours, mostly: a Deployment just created or resized) and
/// its status says nothing new, so it does not reconcile the release; the status that follows
/// does.
fn deployment_observed(d: &SlimDeployment) -> bool {
    let observed = d.status.as_ref().and_then(|s| s.observed_generation);
    observed.is_some() && observed >= d.metadata.generation
}

/// What of a (slimmed) Deployment makes its release worth reconciling again: what observe and
/// act read, not the status counters and conditions they do not.
fn deployment_trigger(d: &SlimDeployment) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    d.metadata.uid.hash(&mut h);
    d.metadata.generation.hash(&mut h);
    d.metadata.labels.hash(&mut h);
    d.metadata.annotations.hash(&mut h);
    d.spec.hash(&mut h);
    d.status.hash(&mut h);
    Some(h.finish())
}

fn slim_job(j: &mut Job) {
    j.managed_fields_mut().clear();
    if let Some(spec) = j.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// Maps a labelled child (in any namespace) back to its release.
fn owner_of<K: Resource>(child: K) -> Option<ObjectRef<CachedRelease>> {
    let v = child.meta().labels.as_ref()?.get(crate::api::labels::RELEASE)?;
    let (ns, name) = v.split_once('.')?;
    Some(ObjectRef::new(name).within(ns))
}

/// The key of a release in the operator's own per-release memories (retries, fresh reads).
fn key_of<K: Resource>(lr: &K) -> ObjectRef<LocallRelease> {
    ObjectRef::new(lr.meta().name.as_deref().unwrap_or_default()).within(lr.meta().namespace.as_deref().unwrap_or_default())
}

fn error_policy(lr: Arc<CachedRelease>, err: &Error, ctx: Arc<Context>) -> Action {
    if matches!(err, Error::Engine(_)) {
        return Action::requeue(Duration::from_secs(60));
    }
    if err.is_conflict() {
        // Usually our own previous write, not yet seen by the watch: it arrives within ms.
        return Action::requeue(Duration::from_millis(50));
    }
    let n = ctx.failures.lock().unwrap().get(&key_of(&*lr)).copied().unwrap_or(1);
    Action::requeue(retry_after(n))
}

/// The wait before retrying a reconcile that failed `n` times in a row: 5 s, doubled each time,
/// at most 5 minutes (a spec edit or a child's change still triggers one at once).
pub fn retry_after(n: u32) -> Duration {
    Duration::from_secs(5).saturating_mul(1 << n.saturating_sub(1).min(6)).min(Duration::from_secs(300))
}

#[instrument(skip_all, fields(release = %format!("{}/{}", cached.namespace().unwrap_or_default(), cached.name_any())))]
async fn reconcile(cached: Arc<CachedRelease>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The controller waits for the release cache only: the first reconciles after a start would
    // see empty child caches and apply every Deployment again (10 writes for 12 settled releases
    // in tests/restart.rs). Instant once both have listed.
    let _ = ctx.children_listed.clone().wait_for(|listed| *listed).await;
    let started = std::time::Instant::now();
    let key = key_of(&*cached);
    // The finalizer's patches are answered with the release, read as the cache reads it.
    let api: Api<CachedRelease> = Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    // After a conflict, the watch cache may be what is behind (a watch that hangs after an API
    // server restart stays stale for minutes): the retry reads the release from the API server.
    let stale = ctx.fresh_read.lock().unwrap().remove(&key);
    let cached = if stale {
        match api.get_opt(&key.name).await {
            Ok(Some(fresh)) => Arc::new(fresh),
            _ => cached,
        }
    } else {
        cached
    };
    let lr = match cached.release() {
        Ok(lr) => lr,
        Err(e) => {
            // Only this release waits (with backoff) for a spec the operator can read.
            let message = e.to_string();
            let note = events::Note { warning: true, reason: "Unreadable".into(), message: message.clone() };
            let _ = ctx.recorder.publish(&note, &cached.object_ref(&())).await;
            warn!(error = %message, "release cannot be read");
            *ctx.failures.lock().unwrap().entry(key).or_default() += 1;
            ctx.metrics.reconcile_done(started.elapsed(), "error");
            return Err(Error::Unreadable(e));
        }
    };
    let (lr, c) = (&lr, &*ctx);
    let res = finalizer(&api, FINALIZER, cached, |event| async move {
        match event {
            Finalizer::Apply(_) => reconcile_release(lr, c).await,
            Finalizer::Cleanup(_) => cleanup::children(c, lr).await.map(|_| Action::await_change()),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let result = match &res {
        Ok(_) => {
            ctx.failures.lock().unwrap().remove(&key);
            "success"
        }
        Err(e) if e.is_conflict() => {
            ctx.fresh_read.lock().unwrap().insert(key);
            "conflict"
        }
        Err(e) => {
            warn!(error = %e, "reconcile failed");
            *ctx.failures.lock().unwrap().entry(key).or_default() += 1;
            "error"
        }
    };
    ctx.metrics.reconcile_done(started.elapsed(), result);
    res
}

async fn reconcile_release(lr: &LocallRelease, ctx: &Context) -> Result<Action, Error> {
    let original = lr.status.clone().unwrap_or_default();
    let mut events = Vec::new();
    let mut notify = Vec::new();
    let (status, outcome) = advance(lr, ctx, &original, &mut events, &mut notify).await;
    let status = match &outcome {
        // The API server answered something that holds the release up (a namespace missing, a
        // permission, a refusal it cannot act on): said in the conditions, once, until it heals.
        Err(e) => match e.refusal().or_else(|| e.blocked()) {
            Some(problem) => engine::held(&status, &problem, lr.metadata.generation, Utc::now()),
            None => status,
        },
        Ok(_) => status,
    };
    let problem = |st: &LocallReleaseStatus| {
        st.conditions.iter().find(|c| c.type_ == crate::api::conditions::READY && c.reason == engine::HELD).map(|c| c.message.clone())
    };
    if let Some(message) = problem(&status).filter(|m| Some(m) != problem(&original).as_ref()) {
        events.push(engine::EventOut { warning: true, reason: engine::HELD.into(), message });
    }
    // An Event when an annotation becomes unusable (or differently so), not on every reconcile.
    let invalid = |st: &crate::api::LocallReleaseStatus| {
        st.conditions.iter().find(|c| c.type_ == engine::ANNOTATIONS_VALID && c.status == "False").map(|c| c.message.clone())
    };
    if let Some(message) = invalid(&status).filter(|m| Some(m) != invalid(&original).as_ref()) {
        events.push(engine::EventOut { warning: true, reason: "InvalidAnnotation".into(), message });
    }
    let mut version = lr.resource_version();
    if status != original {
        version = write_status(ctx, lr, version, &status).await?;
    }
    publish(ctx, lr, &events).await;
    if original.phase != status.phase {
        info!(from = %original.phase, to = %status.phase, message = %status.message, "phase changed");
    }
    // What is owed was recorded above: now it is delivered, and the result recorded in turn.
    let due = outbox::due(&status, Utc::now());
    let status = if due.is_empty() {
        status
    } else {
        // Delivered before by this process (the write settling it was refused, or the cache is behind): not again.
        let (send, mut results) = ctx.delivered.split(lr, due);
        let sent = crate::notify::deliver(&ctx.client, lr, &send, &ctx.metrics).await;
        ctx.delivered.remember(lr, &sent);
        results.extend(sent);
        let mut next = status.clone();
        let now = Utc::now();
        let given_up = outbox::settle(&mut next, &results, ctx.notify_retry_for, now);
        outbox::condition(&mut next, &results, &given_up, lr.metadata.generation, now);
        if next != status {
            write_status(ctx, lr, version, &next).await?;
        }
        publish(ctx, lr, &given_up).await;
        next
    };
    ctx.metrics.observe_release(lr, &status);
    let next = [outcome?, outbox::next_due(&status, Utc::now()).map(|d| d.max(Duration::from_millis(200)))].into_iter().flatten().min();
    Ok(match next {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Observe, decide, act, as far as this reconcile can take the release: returns the status
/// that what was carried out supports, and when to look again (or what stopped it).
///
/// A child the API server refuses for good (400/422) is an observation like any other: the
/// engine decides again knowing it, from the status the refused act was carrying out (minus the
/// Jobs that were never created), and fails the release (rolling back what had moved).
async fn advance(
    lr: &LocallRelease,
    ctx: &Context,
    original: &LocallReleaseStatus,
    events: &mut Vec<engine::EventOut>,
    notify: &mut Vec<(crate::api::NotifyEvent, String)>,
) -> (LocallReleaseStatus, Result<Option<Duration>, Error>) {
    let router = Router::for_method(lr.spec.traffic.method);
    let mut status = original.clone();
    let mut refused: Option<engine::Refusal> = None;
    let mut refusals = 0;
    let written = Written::over(ctx.applied.clone());
    for pass in 1.. {
        let mut obs = match observe(ctx, lr, &status, router, &written).await {
            Ok(obs) => obs,
            Err(e) => return (status, Err(e)),
        };
        obs.refused = refused.take();
        let r = Release {
            name: &lr.name_any(),
            namespace: &lr.namespace().unwrap_or_default(),
            generation: lr.metadata.generation,
            spec: &lr.spec,
            status: &status,
        };
        // `decide` is total (the model-based tests hold it to that); should it ever panic, the
        // panic stays with this release instead of taking the operator down for every tenant.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine::decide(r, &obs, Utc::now()))).map_err(|p| {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Error::Engine(format!("panicked: {what}"))
        });
        let mut decision = match decided {
            Ok(d) => d,
            Err(e) => return (status, Err(e)),
        };
        let traffic_writes = match act::act(ctx, lr, &decision, router, &written).await {
            Ok(n) => n,
            Err(e) => match e.refusal() {
                Some(why) if !decision.status.phase.is_terminal() && refusals < 3 => {
                    refusals += 1;
                    warn!(problem = %why, "child refused");
                    if let Error::Act { object, .. } = &e {
                        decision.job_refused(object);
                    }
                    let next = decision.status.clone();
                    // The candidate's own Deployment (of any of its parts): the new version cannot run.
                    let own: Vec<String> = engine::parts_of(&decision.status.components)
                        .iter()
                        .map(|p| format!("/{}", engine::names::deployment(&p.base(&lr.name_any()), &decision.status.revision)))
                        .collect();
                    let candidate = matches!(&e, Error::Act { object, .. } if object.starts_with("Deployment ")
                        && own.iter().any(|o| object.split(" of ").next().is_some_and(|x| x.ends_with(o.as_str()))));
                    events.append(&mut decision.events);
                    notify.append(&mut decision.notify);
                    status = next;
                    refused = Some(engine::Refusal { message: why, candidate });
                    continue;
                }
                _ => return (status, Err(e)),
            },
        };
        events.append(&mut decision.events);
        notify.append(&mut decision.notify);
        status = decision.status.clone();
        // Traffic moved: read it back at once, so the engine verifies it in this reconcile.
        if traffic_writes == 0 || pass >= 3 || status.phase.is_terminal() {
            return (status, Ok(decision.next_look()));
        }
    }
    unreachable!("the loop returns")
}

/// The engine's snapshot for this release.
async fn observe(
    ctx: &Context,
    lr: &LocallRelease,
    status: &LocallReleaseStatus,
    router: Router,
    written: &Written,
) -> Result<Observed, Error> {
    // Each annotation parsed once: a value, or the problem that goes into AnnotationsValid.
    let mut annotation_errors = vec![];
    let approval = observe::annotation_approval(lr).unwrap_or_else(|e| {
        annotation_errors.push(e);
        None
    });
    let request = observe::request(lr).unwrap_or_else(|e| {
        annotation_errors.push(e);
        None
    });
    let mut obs = Observed {
        deployments: observe::deployments(&ctx.deployments, &ctx.deployment_index, lr),
        jobs: observe::jobs(&ctx.jobs, &ctx.job_index, lr),
        annotation_approval: approval,
        requested: observe::requested(lr),
        request,
        annotation_errors,
        ..Default::default()
    };
    let (name, release_ns) = (lr.name_any(), lr.namespace().unwrap_or_default());
    let r = Release { name: &name, namespace: &release_ns, generation: lr.metadata.generation, spec: &lr.spec, status };
    let revision = engine::candidate_revision(&lr.spec, status);
    let new_release = status.revision != revision;
    if new_release || matches!(status.phase, Phase::Pending | Phase::PreDeploy) {
        obs.preflight = Some(preflight::run(&ctx.client, lr, Utc::now(), &ctx.policy).await.map_err(|e| Error::Observe("preflight", e))?);
    }
    if !status.phase.is_terminal() || new_release {
        let stable = status.stable.as_ref().filter(|s| s.revision != revision);
        // Every routed part of the candidate and of the stable version.
        let candidate = if new_release { engine::spec_components(&lr.spec) } else { status.components.clone() };
        let mut parts = engine::parts_of(&candidate);
        for p in stable.map(|s| engine::parts_of(&s.components)).unwrap_or_default() {
            if !parts.iter().any(|q| q.component == p.component) {
                parts.push(p);
            }
        }
        for (i, (name, namespace, _, _)) in engine::stages_in_play(&r).into_iter().enumerate() {
            for part in parts.iter().filter(|p| p.routed) {
                let stage = StageDesired {
                    index: i,
                    name: name.clone(),
                    namespace: namespace.clone(),
                    component: part.component.clone(),
                    replicas: 0,
                    deployments: vec![],
                    traffic: Some(TrafficTarget {
                        stable: stable.map(|s| s.revision.clone()),
                        candidate: Some(revision.clone()),
                        weight: 0,
                        stable_replicas: 0,
                        candidate_replicas: 0,
                    }),
                };
                if let Some(w) = router.observe(&ctx.client, lr, written, &stage, &obs).await.map_err(|e| Error::Observe("traffic", e))? {
                    obs.traffic.insert(part.key(&namespace), w);
                }
            }
        }
    }
    // Metric gates: measure what is due for the current target.
    if let Some((t, due)) = engine::measurements_due(&r, Utc::now()) {
        let own = lr.spec.analysis.as_ref().and_then(|a| a.prometheus.clone());
        obs.measurements = match own {
            // A Prometheus edited in mid-flight is checked here too: the operator never calls a
            // URL it was not allowed to (the gates see an error naming the field).
            Some(url) if !ctx.policy.allows_provider(&url) => {
                let why = format!("spec.analysis.prometheus: {} is not allowed by the operator", crate::notify::redact(&url));
                due.iter()
                    .map(|r| (r.metric.clone(), crate::engine::gates::Measurement { value: None, sample: None, error: Some(why.clone()) }))
                    .collect()
            }
            own => crate::metrics::measure(&own.or_else(|| ctx.prometheus_url.clone()).unwrap_or_default(), &due).await,
        };
        obs.measured_target = Some(t.key());
    }
    Ok(obs)
}

/// Writes status by server-side apply, guarded by the resourceVersion it was computed from:
/// a concurrent change makes it fail with 409 and the reconcile runs again on fresh state.
async fn write_status(
    ctx: &Context,
    lr: &LocallRelease,
    version: Option<String>,
    status: &LocallReleaseStatus,
) -> Result<Option<String>, Error> {
    // The answer is read for its resourceVersion only.
    let api: Api<cache::Slim<LocallRelease>> = Api::namespaced(ctx.client.clone(), &lr.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "locall.io/v1alpha1",
        "kind": "LocallRelease",
        "metadata": {"name": lr.name_any(), "resourceVersion": version},
        "status": status,
    });
    let written =
        api.patch_status(&lr.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.map_err(Error::Status)?;
    ctx.metrics.writes.inc();
    Ok(written.resource_version())
}

async fn publish(ctx: &Context, lr: &LocallRelease, events: &[engine::EventOut]) {
    let reference = lr.object_ref(&());
    for e in events {
        let ev = events::Note { warning: e.warning, reason: e.reason.clone(), message: e.message.clone() };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(error = %err, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;
    use kube::runtime::finalizer::Error as F;
    use std::time::Duration;

    /// The slimmed cache keeps what deciding whether a stale Deployment may go needs: its
    /// revision and its component (which route to read back), and drops the rest.
    #[test]
    fn the_slim_deployment_cache_keeps_revision_and_component() {
        use crate::api::labels::{COMPONENT, NAME, RELEASE, REVISION};
        let mut d: super::SlimDeployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-api-1a2b3c4d", "namespace": "prod", "labels": {
                NAME: "p", RELEASE: "prod.p", REVISION: "1a2b3c4d", COMPONENT: "api", "team": "calls"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}, "template": {}},
        }))
        .unwrap();
        super::slim_deployment(&mut d);
        let labels = d.metadata.labels.unwrap();
        assert_eq!(labels.keys().map(String::as_str).collect::<Vec<_>>(), [COMPONENT, RELEASE, REVISION]);
        assert_eq!(d.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn a_deployment_triggers_once_its_controller_has_answered_its_spec() {
        let d = |generation: i64, observed: Option<i64>| -> super::SlimDeployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p-1a2b", "namespace": "prod", "generation": generation},
                "spec": {"replicas": 1},
                "status": observed.map(|o| serde_json::json!({"observedGeneration": o})),
            }))
            .unwrap()
        };
        assert!(!super::deployment_observed(&d(1, None)), "just created: no status yet");
        assert!(!super::deployment_observed(&d(3, Some(2))), "resized: the status is of the spec before");
        assert!(super::deployment_observed(&d(3, Some(3))));
        assert!(super::deployment_observed(&d(3, Some(4))));
    }

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }))
    }

    #[test]
    fn watches_retry_within_two_and_a_half_seconds_and_start_over_after_a_success() {
        use kube::runtime::utils::Backoff;
        let mut b = super::WatchBackoff::default();
        let waits: Vec<_> = (&mut b).take(10).collect();
        assert!(waits[0] >= super::WatchBackoff::MIN && waits[0] <= super::WatchBackoff::MIN * 2);
        assert!(waits.iter().all(|w| *w <= super::WatchBackoff::MAX + super::WatchBackoff::MAX / 4), "{waits:?}");
        assert!(waits[9] >= super::WatchBackoff::MAX, "{waits:?}");
        b.reset();
        assert!(b.next().unwrap() < Duration::from_millis(300));
    }

    #[test]
    fn a_refusal_names_the_object_and_the_release_field() {
        let mut status = kube::core::Status { code: 422, message: "Deployment.apps \"api-1\" is invalid".into(), ..Default::default() };
        status.details = serde_json::from_value(serde_json::json!({
            "causes": [{"field": "spec.template.spec.containers[0].ports[0].containerPort", "reason": "FieldValueInvalid"}]
        }))
        .unwrap();
        let e = super::act_err("apply", "Deployment prod/api-1".into())(kube::Error::Api(Box::new(status)));
        let why = e.refusal().unwrap();
        assert!(why.contains("Deployment prod/api-1"), "{why}");
        assert!(why.contains("(in the release: spec.template.spec.containers[0].ports[0].containerPort)"), "{why}");
        assert!(e.blocked().is_some());
        let missing = super::act_err("apply", "Deployment gone/api-1".into())(api(404));
        assert!(missing.refusal().is_none() && missing.blocked().is_some(), "a missing namespace can heal");
        assert!(super::act_err("apply", "x".into())(api(500)).blocked().is_none(), "a server error is retried quietly");
        assert!(super::act_err("apply", "x".into())(api(409)).blocked().is_none());
    }

    #[test]
    fn a_refused_write_is_a_conflict_even_inside_the_finalizer_wrapper() {
        assert!(Error::Status(api(409)).is_conflict());
        assert!(Error::Finalizer(Box::new(F::ApplyFailed(Error::Status(api(409))))).is_conflict());
        assert!(Error::Finalizer(Box::new(F::AddFinalizer(api(422)))).is_conflict());
        assert!(!Error::Finalizer(Box::new(F::ApplyFailed(Error::Status(api(500))))).is_conflict());
        assert!(Error::Finalizer(Box::new(F::ApplyFailed(super::act_err("create", "Job a/b".into())(api(409))))).is_conflict());
        assert!(!Error::Finalizer(Box::new(F::ApplyFailed(super::act_err("create", "Job a/b".into())(api(422))))).is_conflict());
    }
}
