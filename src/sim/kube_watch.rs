//! Reflectors keeping Pods, Services and HTTPRoutes of all namespaces in memory.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::model::Snapshot;
use super::snapshot::{build_snapshot, httproute_resource};

/// How long to wait before checking again whether the HTTPRoute CRD exists.
/// The label of real nodes (tests/cluster/node), whose pods the simulator leaves alone.
pub const REAL_NODE_LABEL: &str = "locall.io/real-node";

const ROUTE_DISCOVERY_RETRY: Duration = Duration::from_secs(30);

/// Running reflectors and read handles on their stores.
pub struct Watchers {
    pods: Store<Pod>,
    nodes: Store<Node>,
    services: Store<Service>,
    routes: Store<DynamicObject>,
    tasks: Vec<JoinHandle<()>>,
}

impl Watchers {
    /// Starts watching Pods, Services and HTTPRoutes in all namespaces.
    pub fn start(client: Client) -> Self {
        let (pods, pod_writer) = reflector::store();
        let (services, service_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        let route_writer = Writer::new(httproute_resource());
        let routes = route_writer.as_reader();
        let tasks = vec![
            tokio::spawn(reflect(Api::<Pod>::all(client.clone()), pod_writer)),
            tokio::spawn(reflect(Api::<Service>::all(client.clone()), service_writer)),
            tokio::spawn(reflect(Api::<Node>::all(client.clone()), node_writer)),
            tokio::spawn(watch_routes(client, route_writer)),
        ];
        Self { pods, nodes, services, routes, tasks }
    }

    /// The model snapshot of the stores' current contents.
    pub fn snapshot(&self) -> Snapshot {
        // Pods on a real node (tests/cluster/node) are real processes answering real requests
        // and exporting their own metrics: the simulator stands in only for the others.
        let real: std::collections::HashSet<String> = self
            .nodes
            .state()
            .iter()
            .filter(|n| n.metadata.labels.as_ref().is_some_and(|l| l.get(REAL_NODE_LABEL).is_some_and(|v| v == "true")))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let pods: Vec<_> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none_or(|n| !real.contains(n)))
            .collect();
        build_snapshot(&pods, &self.services.state(), &self.routes.state())
    }

    /// Stops the reflectors.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Drives a reflector for `api` forever, logging (and backing off on) errors.
async fn reflect<K>(api: Api<K>, writer: Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(|obj: &mut K| obj.meta_mut().managed_fields = None);
    let mut stream = std::pin::pin!(reflector::reflector(writer, stream));
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            warn!(%kind, error = %e, "watch error (retrying)");
        }
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s.is_not_found(),
        _ => false,
    }
}

/// Empties a store (as if the watch restarted and listed nothing).
fn clear(writer: &mut Writer<DynamicObject>) {
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// Watches HTTPRoutes while their CRD is installed; without it, logs once and
/// checks again every [`ROUTE_DISCOVERY_RETRY`] with an empty store.
async fn watch_routes(client: Client, mut writer: Writer<DynamicObject>) {
    let api: Api<DynamicObject> = Api::all_with(client, &httproute_resource());
    let mut reported_missing = false;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {
                if reported_missing {
                    info!("HTTPRoute CRD found; watching HTTPRoutes");
                    reported_missing = false;
                }
                let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => writer.apply_watcher_event(&event),
                        Err(e) if is_not_found(&e) => break,
                        Err(e) => warn!(kind = "HTTPRoute", error = %e, "watch error (retrying)"),
                    }
                }
                clear(&mut writer);
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                if !reported_missing {
                    info!("HTTPRoute CRD (gateway.networking.k8s.io/v1) not installed; continuing without routes");
                    reported_missing = true;
                }
                clear(&mut writer);
                tokio::time::sleep(ROUTE_DISCOVERY_RETRY).await;
            }
            Err(e) => {
                warn!(error = %e, "listing HTTPRoutes failed; retrying");
                tokio::time::sleep(ROUTE_DISCOVERY_RETRY).await;
            }
        }
    }
}
