//! Which namespaces the operator serves (`--watch-namespaces`): all of them through one
//! cluster-wide watch per kind, or a list through one watch per namespace and kind, merged into
//! one stream for one cache. With the list the operator needs Roles in those namespaces only.
//!
//! A reflector takes one watch: its `Init`..`InitDone` replaces the whole cache, which would
//! drop the other namespaces' objects whenever one namespace's watch lists again. So the merged
//! stream lists once (`Init`, every namespace's objects, `InitDone` once all have listed: the
//! controller waits for that), then carries only `Apply` and `Delete`: a namespace's relist
//! becomes `Apply` of what it lists and `Delete` of what it held before and no longer lists.

use futures::{stream, Stream, StreamExt};
use kube::{
    runtime::watcher::{self, Event},
    Api, Resource, ResourceExt,
};
use std::collections::{BTreeMap, BTreeSet};

/// The served namespaces; empty means all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope(pub Vec<String>);

impl Scope {
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    pub fn serves(&self, ns: &str) -> bool {
        self.is_all() || self.0.iter().any(|n| n == ns)
    }

    /// One Api per served namespace, or one cluster-wide.
    pub fn apis<K>(&self, all: impl Fn() -> Api<K>, namespaced: impl Fn(&str) -> Api<K>) -> Vec<Api<K>> {
        if self.is_all() {
            vec![all()]
        } else {
            self.0.iter().map(|ns| namespaced(ns)).collect()
        }
    }
}

type Item<K> = Result<Event<K>, watcher::Error>;

/// The watch of `apis` as one stream. One Api: its watcher as is. Several: merged as above,
/// each with `backoff` applied to it.
pub fn watch<K, B>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
    backoff: impl Fn() -> B,
) -> std::pin::Pin<Box<dyn Stream<Item = Item<K>> + Send>>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    B: kube::runtime::utils::Backoff + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    if apis.len() == 1 {
        let api = apis.into_iter().next().unwrap();
        return kube::runtime::watcher(api, config).backoff(backoff()).boxed();
    }
    let n = apis.len();
    let streams = apis
        .into_iter()
        .enumerate()
        .map(|(i, api)| flatten(kube::runtime::watcher(api, config.clone()).backoff(backoff())).map(move |o| (i, o)).boxed());
    let mut first = FirstList::<K>::new(n);
    stream::select_all(streams).flat_map(move |(i, o)| stream::iter(first.next(i, o))).boxed()
}

/// What one namespace's watch says, flattened.
pub enum Out<K> {
    Event(Event<K>),
    /// It finished a (re)list.
    Listed,
    Error(watcher::Error),
}

/// Holds everything back until every namespace has listed once, then lists it as one.
struct FirstList<K> {
    waiting: BTreeSet<usize>,
    buffer: Option<BTreeMap<String, K>>,
}

impl<K: Resource + Clone> FirstList<K> {
    fn new(n: usize) -> Self {
        FirstList { waiting: (0..n).collect(), buffer: Some(BTreeMap::new()) }
    }

    fn next(&mut self, i: usize, o: Out<K>) -> Vec<Item<K>> {
        let Some(buffer) = self.buffer.as_mut() else {
            return match o {
                Out::Event(e) => vec![Ok(e)],
                Out::Listed => vec![],
                Out::Error(e) => vec![Err(e)],
            };
        };
        match o {
            Out::Event(Event::Apply(obj)) => {
                buffer.insert(key(&obj), obj);
            }
            Out::Event(Event::Delete(obj)) => {
                buffer.remove(&key(&obj));
            }
            Out::Event(_) => {}
            Out::Error(e) => return vec![Err(e)],
            Out::Listed => {
                self.waiting.remove(&i);
                if self.waiting.is_empty() {
                    let listed = self.buffer.take().unwrap_or_default();
                    let mut out = vec![Ok(Event::Init)];
                    out.extend(listed.into_values().map(|o| Ok(Event::InitApply(o))));
                    out.push(Ok(Event::InitDone));
                    return out;
                }
            }
        }
        vec![]
    }
}

/// One namespace's watch as `Apply`/`Delete` and `Listed`.
pub fn flatten<K, S>(inner: S) -> impl Stream<Item = Out<K>> + Send
where
    K: Resource + Clone + Send + 'static,
    S: Stream<Item = Item<K>> + Send + 'static,
{
    let state = (Box::pin(inner), Relist::<K>::default());
    stream::unfold(state, |(mut inner, mut relist)| async move {
        loop {
            let item = inner.next().await?;
            let out = match item {
                Err(e) => vec![Out::Error(e)],
                Ok(Event::InitDone) => {
                    let mut out: Vec<Out<K>> = relist.event(Event::InitDone).into_iter().map(Out::Event).collect();
                    out.push(Out::Listed);
                    out
                }
                Ok(ev) => relist.event(ev).into_iter().map(Out::Event).collect(),
            };
            if !out.is_empty() {
                return Some((stream::iter(out), (inner, relist)));
            }
        }
    })
    .flatten()
}

/// What one namespace's watch holds, to turn its lists into `Apply` and `Delete`.
struct Relist<K> {
    held: BTreeMap<String, K>,
    listing: Option<BTreeSet<String>>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist { held: BTreeMap::new(), listing: None }
    }
}

impl<K: Resource + Clone> Relist<K> {
    fn event(&mut self, ev: Event<K>) -> Vec<Event<K>> {
        match ev {
            Event::Init => {
                self.listing = Some(BTreeSet::new());
                vec![]
            }
            Event::InitApply(o) | Event::Apply(o) => {
                let key = key(&o);
                if let Some(l) = self.listing.as_mut() {
                    l.insert(key.clone());
                }
                self.held.insert(key, o.clone());
                vec![Event::Apply(o)]
            }
            Event::Delete(o) => {
                self.held.remove(&key(&o));
                vec![Event::Delete(o)]
            }
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<String> = self.held.keys().filter(|k| !listed.contains(*k)).cloned().collect();
                gone.into_iter().filter_map(|k| self.held.remove(&k)).map(Event::Delete).collect()
            }
        }
    }
}

fn key<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some(ns.into());
        c
    }

    fn names(evs: &[Event<ConfigMap>]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                Event::Apply(o) => format!("+{}", o.name_any()),
                Event::Delete(o) => format!("-{}", o.name_any()),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn a_relist_applies_what_it_lists_and_deletes_what_it_no_longer_holds() {
        let mut r = Relist::default();
        let mut out = vec![];
        for ev in [Event::Init, Event::InitApply(cm("a", "x")), Event::InitApply(cm("a", "y")), Event::InitDone, Event::Apply(cm("a", "z"))]
        {
            out.extend(r.event(ev));
        }
        assert_eq!(names(&out), ["+x", "+y", "+z"]);
        // The watch broke and lists again: y went away meanwhile.
        let mut out = vec![];
        for ev in [Event::Init, Event::InitApply(cm("a", "x")), Event::InitApply(cm("a", "z")), Event::InitDone] {
            out.extend(r.event(ev));
        }
        assert_eq!(names(&out), ["+x", "+z", "-y"]);
        assert_eq!(names(&r.event(Event::Delete(cm("a", "x")))), ["-x"]);
        assert_eq!(r.held.len(), 1);
    }

    #[test]
    fn nothing_is_listed_until_every_namespace_has_listed_then_all_at_once() {
        let mut f = FirstList::new(2);
        assert!(f.next(0, Out::Event(Event::Apply(cm("a", "x")))).is_empty());
        assert!(f.next(0, Out::Event(Event::Apply(cm("a", "gone")))).is_empty());
        assert!(f.next(0, Out::Event(Event::Delete(cm("a", "gone")))).is_empty());
        assert!(f.next(0, Out::Listed).is_empty(), "b has not listed yet");
        assert!(f.next(1, Out::Event(Event::Apply(cm("b", "y")))).is_empty());
        let out: Vec<_> = f.next(1, Out::Listed).into_iter().map(|r| r.unwrap()).collect();
        let shape: Vec<String> = out
            .iter()
            .map(|e| match e {
                Event::Init => "init".into(),
                Event::InitApply(o) => o.name_any(),
                Event::InitDone => "done".into(),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(shape, ["init", "x", "y", "done"]);
        // From then on, events pass through.
        let out = f.next(0, Out::Event(Event::Apply(cm("a", "z"))));
        assert!(matches!(out.as_slice(), [Ok(Event::Apply(o))] if o.name_any() == "z"));
        assert!(f.next(1, Out::Listed).is_empty());
    }

    #[test]
    fn a_scope_serves_all_or_its_list() {
        assert!(Scope::default().serves("anything"));
        let s = Scope(vec!["a".into(), "b".into()]);
        assert!(s.serves("a") && !s.serves("c"));
    }
}
