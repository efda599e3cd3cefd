//! The thin I/O layer: watch -> observe -> `engine::decide` -> act -> status.

pub mod act;
pub mod build;
pub mod cleanup;
pub mod observe;
pub mod preflight;

use crate::{
    api::{LocallRelease, LocallReleaseStatus, Phase},
    engine::{self, Observed, Release, StageDesired, TrafficTarget},
    telemetry::Metrics,
    traffic::{Router, MANAGER},
};
use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, batch::v1::Job};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType, Recorder, Reporter},
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
    pub deployments: Store<Deployment>,
    pub jobs: Store<Job>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Prometheus for metric gates, unless a release names its own.
    pub prometheus_url: Option<String>,
    /// What the Services and HTTPRoutes the operator applied carry (watch caches).
    pub applied: crate::traffic::Applied,
    /// Releases whose last status write conflicted: their next reconcile reads them from the
    /// API server rather than the watch cache (a hint for freshness, not state).
    pub fresh_read: std::sync::Mutex<std::collections::HashSet<ObjectRef<LocallRelease>>>,
}

/// How the operator is configured.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Only reconcile releases matching this label selector.
    pub release_selector: Option<String>,
    /// Default Prometheus URL for metric gates.
    pub prometheus_url: Option<String>,
    /// Releases reconciled at the same time (0: no limit).
    pub concurrency: u16,
}

/// Each step of a reconcile fails with its own variant, so an error says where it happened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("observe: {0}")]
    Observe(&'static str, #[source] kube::Error),
    #[error("act ({0}): {1}")]
    Act(&'static str, #[source] kube::Error),
    #[error("write status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The engine panicked on this release: a bug, reported and retried with backoff, and
    /// contained to this one release (the others go on being reconciled).
    #[error("engine: {0}")]
    Engine(String),
}

impl Error {
    /// A write refused because the object changed meanwhile: retry from fresh state, soon.
    pub fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Status(kube::Error::Api(e)) => e.code == 409,
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
    let (deployments, dep_writer) = reflector::store::<Deployment>();
    let (jobs, job_writer) = reflector::store::<Job>();
    let applied = watch_applied(&client, &selector);
    // The caches keep only what observe and act read: no managedFields, no pod templates.
    let dep_stream = watcher(Api::<Deployment>::all(client.clone()), selector.clone())
        .modify(slim_deployment)
        .default_backoff()
        .reflect(dep_writer)
        .applied_objects();
    let job_stream =
        watcher(Api::<Job>::all(client.clone()), selector).modify(slim_job).default_backoff().reflect(job_writer).applied_objects();
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        deployments,
        jobs,
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        prometheus_url: config.prometheus_url.clone(),
        applied,
        fresh_read: Default::default(),
    });
    let releases = Api::<LocallRelease>::all(client.clone());
    let mut wc = watcher::Config::default().any_semantic();
    if let Some(sel) = config.release_selector.as_deref().filter(|s| !s.is_empty()) {
        wc = wc.labels(sel);
    }
    let (release_store, release_writer) = reflector::store::<LocallRelease>();
    // Our own status writes come back as watch events: they change nothing a reconcile reads
    // that it did not just write, so only spec, metadata and deletion trigger a reconcile.
    let release_stream = watcher(releases, wc)
        .modify(|lr| lr.managed_fields_mut().clear())
        .default_backoff()
        .reflect(release_writer)
        .applied_objects()
        .predicate_filter(release_trigger, Default::default());
    Controller::for_stream(release_stream, release_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .watches_stream(dep_stream, owner_of)
        .watches_stream(job_stream, owner_of)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                // A child whose release this operator does not manage (another selector): not ours.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => tracing::debug!(%obj, "not a release of this operator"),
                Err(e) => warn!(error = %e, "reconcile failed"),
                Ok(_) => {}
            }
        })
        .await;
}

/// Metadata-only watch caches of the operator's Services and HTTPRoutes, kept up to date in the
/// background. A cluster without the HTTPRoute CRD just leaves that cache empty (and the
/// Gateway router, unused there, would ask the API server).
fn watch_applied(client: &Client, selector: &watcher::Config) -> crate::traffic::Applied {
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{DynamicObject, PartialObjectMeta};
    let (services, svc_writer) = reflector::store::<PartialObjectMeta<Service>>();
    let svc_stream = watcher(Api::<PartialObjectMeta<Service>>::all(client.clone()), selector.clone())
        .modify(|m| m.managed_fields_mut().clear())
        .default_backoff()
        .reflect(svc_writer);
    let ar = crate::traffic::gateway::httproute_resource();
    let route_writer = reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(ar.clone());
    let routes = route_writer.as_reader();
    let route_stream = watcher(Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), &ar), selector.clone())
        .modify(|m| m.managed_fields_mut().clear())
        .default_backoff()
        .reflect(route_writer);
    tokio::spawn(svc_stream.for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "Service metadata watch");
        }
    }));
    tokio::spawn(route_stream.for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "HTTPRoute metadata watch");
        }
    }));
    crate::traffic::Applied { services: Some(services), routes: Some(routes) }
}

/// What makes a release worth reconciling again: its spec (generation), labels, annotations
/// (approvals, requests), finalizers and deletion. Not its status.
fn release_trigger(lr: &LocallRelease) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lr.metadata.generation.hash(&mut h);
    lr.labels().hash(&mut h);
    lr.annotations().hash(&mut h);
    lr.finalizers().hash(&mut h);
    lr.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn slim_deployment(d: &mut Deployment) {
    d.managed_fields_mut().clear();
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

fn slim_job(j: &mut Job) {
    j.managed_fields_mut().clear();
    if let Some(spec) = j.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// Maps a labelled child (in any namespace) back to its release.
fn owner_of<K: Resource>(child: K) -> Option<ObjectRef<LocallRelease>> {
    let v = child.meta().labels.as_ref()?.get(crate::api::labels::RELEASE)?;
    let (ns, name) = v.split_once('.')?;
    Some(ObjectRef::new(name).within(ns))
}

fn error_policy(_lr: Arc<LocallRelease>, err: &Error, _ctx: Arc<Context>) -> Action {
    if matches!(err, Error::Engine(_)) {
        return Action::requeue(Duration::from_secs(60));
    }
    if err.is_conflict() {
        // Usually our own previous write, not yet seen by the watch: it arrives within ms.
        Action::requeue(Duration::from_millis(50))
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

#[instrument(skip_all, fields(release = %format!("{}/{}", lr.namespace().unwrap_or_default(), lr.name_any())))]
async fn reconcile(lr: Arc<LocallRelease>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<LocallRelease> = Api::namespaced(ctx.client.clone(), &lr.namespace().unwrap_or_default());
    // After a conflict, the watch cache may be what is behind (a watch that hangs after an API
    // server restart stays stale for minutes): the retry reads the release from the API server.
    let key = ObjectRef::from_obj(&*lr);
    let stale = ctx.fresh_read.lock().unwrap().remove(&key);
    let lr = if stale {
        match api.get_opt(&key.name).await {
            Ok(Some(fresh)) => Arc::new(fresh),
            _ => lr,
        }
    } else {
        lr
    };
    let res = finalizer(&api, FINALIZER, lr, |event| async {
        match event {
            Finalizer::Apply(lr) => reconcile_release(&lr, &ctx).await,
            Finalizer::Cleanup(lr) => cleanup::children(&ctx.client, &lr).await.map(|_| Action::await_change()),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    let result = match &res {
        Ok(_) => "success",
        Err(e) if e.is_conflict() => {
            ctx.fresh_read.lock().unwrap().insert(key);
            "conflict"
        }
        Err(_) => "error",
    };
    ctx.metrics.reconcile_done(started.elapsed(), result);
    res
}

async fn reconcile_release(lr: &LocallRelease, ctx: &Context) -> Result<Action, Error> {
    let router = Router::for_method(lr.spec.traffic.method);
    let original = lr.status.clone().unwrap_or_default();
    let mut status = original.clone();
    let mut events = Vec::new();
    let mut notify = Vec::new();
    let mut decision;
    let mut pass = 0;
    loop {
        pass += 1;
        let obs = observe(ctx, lr, &status, router).await?;
        let r = Release {
            name: &lr.name_any(),
            namespace: &lr.namespace().unwrap_or_default(),
            generation: lr.metadata.generation,
            spec: &lr.spec,
            status: &status,
        };
        // `decide` is total (the model-based tests hold it to that); should it ever panic, the
        // panic stays with this release instead of taking the operator down for every tenant.
        decision = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine::decide(r, &obs, Utc::now()))).map_err(|p| {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            Error::Engine(format!("panicked: {what}"))
        })?;
        let traffic_writes = act::act(ctx, lr, &decision, router).await?;
        events.append(&mut decision.events);
        notify.append(&mut decision.notify);
        status = decision.status.clone();
        // Traffic moved: read it back at once, so the engine verifies it in this reconcile.
        if traffic_writes == 0 || pass >= 3 || status.phase.is_terminal() {
            break;
        }
    }
    // An Event when an annotation becomes unusable (or differently so), not on every reconcile.
    let invalid = |st: &crate::api::LocallReleaseStatus| {
        st.conditions.iter().find(|c| c.type_ == engine::ANNOTATIONS_VALID && c.status == "False").map(|c| c.message.clone())
    };
    if let Some(message) = invalid(&status).filter(|m| Some(m) != invalid(&original).as_ref()) {
        events.push(engine::EventOut { warning: true, reason: "InvalidAnnotation".into(), message });
    }
    if status != original {
        write_status(ctx, lr, &status).await?;
    }
    publish(ctx, lr, &events).await;
    crate::notify::dispatch(&ctx.client, lr, &status, &notify, ctx.metrics.clone());
    ctx.metrics.observe_release(lr, &status);
    if original.phase != status.phase {
        info!(from = %original.phase, to = %status.phase, message = %status.message, "phase changed");
    }
    Ok(match decision.next_look() {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// The engine's snapshot for this release.
async fn observe(ctx: &Context, lr: &LocallRelease, status: &LocallReleaseStatus, router: Router) -> Result<Observed, Error> {
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
        deployments: observe::deployments(&ctx.deployments, lr),
        jobs: observe::jobs(&ctx.jobs, lr),
        annotation_approval: approval,
        request,
        annotation_errors,
        ..Default::default()
    };
    let (name, release_ns) = (lr.name_any(), lr.namespace().unwrap_or_default());
    let r = Release { name: &name, namespace: &release_ns, generation: lr.metadata.generation, spec: &lr.spec, status };
    let revision = engine::candidate_revision(&lr.spec, status);
    let new_release = status.revision != revision;
    if new_release || matches!(status.phase, Phase::Pending | Phase::PreDeploy) {
        obs.preflight = Some(preflight::run(&ctx.client, lr, Utc::now()).await.map_err(|e| Error::Observe("preflight", e))?);
    }
    if !status.phase.is_terminal() || new_release {
        let stable = status.stable.as_ref().map(|s| s.revision.clone()).filter(|s| *s != revision);
        for (i, (name, namespace, _, _)) in engine::stages_in_play(&r).into_iter().enumerate() {
            let stage = StageDesired {
                index: i,
                name,
                namespace,
                replicas: 0,
                deployments: vec![],
                traffic: Some(TrafficTarget {
                    stable: stable.clone(),
                    candidate: Some(revision.clone()),
                    weight: 0,
                    stable_replicas: 0,
                    candidate_replicas: 0,
                }),
            };
            if let Some(w) = router.observe(&ctx.client, lr, &stage, &obs).await.map_err(|e| Error::Observe("traffic", e))? {
                obs.traffic.insert(stage.namespace.clone(), w);
            }
        }
    }
    // Metric gates: measure what is due for the current target.
    if let Some((t, due)) = engine::measurements_due(&r, Utc::now()) {
        let url = lr.spec.analysis.as_ref().and_then(|a| a.prometheus.clone()).or_else(|| ctx.prometheus_url.clone()).unwrap_or_default();
        obs.measurements = crate::metrics::measure(&url, &due).await;
        obs.measured_target = Some(t.key());
    }
    Ok(obs)
}

/// Writes status by server-side apply, guarded by the resourceVersion it was computed from:
/// a concurrent change makes it fail with 409 and the reconcile runs again on fresh state.
async fn write_status(ctx: &Context, lr: &LocallRelease, status: &LocallReleaseStatus) -> Result<(), Error> {
    let api: Api<LocallRelease> = Api::namespaced(ctx.client.clone(), &lr.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "locall.io/v1alpha1",
        "kind": "LocallRelease",
        "metadata": {"name": lr.name_any(), "resourceVersion": lr.resource_version()},
        "status": status,
    });
    api.patch_status(&lr.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await.map_err(Error::Status)?;
    ctx.metrics.writes.inc();
    Ok(())
}

async fn publish(ctx: &Context, lr: &LocallRelease, events: &[engine::EventOut]) {
    let reference = lr.object_ref(&());
    for e in events {
        let ev = Event {
            type_: if e.warning { EventType::Warning } else { EventType::Normal },
            reason: e.reason.clone(),
            note: Some(e.message.chars().take(1000).collect()),
            action: "Release".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(error = %err, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;
    use kube::runtime::finalizer::Error as F;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, ..Default::default() }))
    }

    #[test]
    fn a_refused_write_is_a_conflict_even_inside_the_finalizer_wrapper() {
        assert!(Error::Status(api(409)).is_conflict());
        assert!(Error::Finalizer(Box::new(F::ApplyFailed(Error::Status(api(409))))).is_conflict());
        assert!(Error::Finalizer(Box::new(F::AddFinalizer(api(422)))).is_conflict());
        assert!(!Error::Finalizer(Box::new(F::ApplyFailed(Error::Status(api(500))))).is_conflict());
        assert!(!Error::Finalizer(Box::new(F::ApplyFailed(Error::Act("create Job", api(409))))).is_conflict());
    }
}
