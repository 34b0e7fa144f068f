//! What a set or deployment wrote and its cache has not shown yet — the
//! "expectations" of Kubernetes' ReplicaSet controller.
//!
//! Sets and deployments decide from the shared Machine and MachineSet
//! caches rather than a LIST per reconcile. A cache may lag the owner's own
//! writes: a set that created three machines a moment ago and counted from
//! a cache not showing them yet would create three more. So every create,
//! delete, spec change and adoption is recorded here, and until the cache
//! shows each of them the owner reads live instead. A record not seen within
//! [`EXPIRY`] is dropped (a lost watch event must not force live reads
//! forever).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::machine::Machine;
use crate::api::machine_set::MachineSet;
use crate::controller::cached_machine::CachedMachine;
use crate::controller::error::Result;
use crate::controller::ownership;

/// How long a write may stay unseen before it is no longer waited for.
pub const EXPIRY: Duration = Duration::from_secs(300);

/// One write, as the cache will show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// The object was created: the cache shows it.
    Created,
    /// The object was deleted: the cache shows it gone or being deleted.
    Deleted,
    /// The object's spec changed: the cache shows this generation (or
    /// later), or the object gone.
    Generation(i64),
    /// The object was adopted by the owner: the cache shows that (or the
    /// object gone).
    Adopted,
    /// The owner let the object go: the cache shows another controller or
    /// none (or the object gone).
    Released,
    /// The owner set annotation `.0` to `.1`: the cache shows that value (or
    /// the object gone).
    Annotated(String, String),
}

/// One owner's writes not yet seen, by object name, with when.
type Pending = HashMap<String, (Write, Instant)>;

/// Writes per owner (by UID); see the module docs.
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

impl Default for Expectations {
    fn default() -> Self {
        Self {
            owners: Mutex::new(HashMap::new()),
        }
    }
}

impl Expectations {
    /// Records that `owner` made `write` to object `name`.
    pub fn wrote(&self, owner: &str, name: &str, write: Write) {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owner.to_string())
            .or_default()
            .insert(name.to_string(), (write, Instant::now()));
    }

    /// Whether the cache (`cached` looks an object up by name) shows every
    /// write of `owner`; writes it shows, and expired ones, are forgotten.
    pub fn caught_up<K: Cached>(
        &self,
        owner: &str,
        cached: impl Fn(&str) -> Option<Arc<K>>,
    ) -> bool {
        self.caught_up_at(owner, cached, Instant::now())
    }

    fn caught_up_at<K: Cached>(
        &self,
        owner: &str,
        cached: impl Fn(&str) -> Option<Arc<K>>,
        now: Instant,
    ) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        let Some(writes) = owners.get_mut(owner) else {
            return true;
        };
        writes.retain(|name, (write, at)| {
            now.saturating_duration_since(*at) < EXPIRY
                && !shown(owner, write, cached(name).as_deref())
        });
        let done = writes.is_empty();
        if done {
            owners.remove(owner);
        }
        done
    }

    /// Forgets `owner` (it was deleted).
    pub fn forget(&self, owner: &str) {
        self.owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(owner);
    }
}

/// An object as a cache holds it: the API type itself, or a compact form of
/// it whose labels and annotations `ResourceExt` does not see (see
/// [`CachedMachine`]).
pub trait Cached: Resource<DynamicType = ()> + Clone + 'static {
    /// The API type.
    type Full: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug;
    /// The object as the API type.
    fn full(&self) -> Self::Full;
    /// The value of annotation `key`.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// Whether the object's labels match `selector`.
    fn selected_by(&self, selector: &Selector) -> bool;
}

impl Cached for MachineSet {
    type Full = MachineSet;
    fn full(&self) -> MachineSet {
        self.clone()
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().get(key).map(String::as_str)
    }
    fn selected_by(&self, selector: &Selector) -> bool {
        selector.matches(self.labels())
    }
}

impl Cached for CachedMachine {
    type Full = Machine;
    fn full(&self) -> Machine {
        self.to_machine()
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().get(key)
    }
    fn selected_by(&self, selector: &Selector) -> bool {
        self.matches(selector)
    }
}

/// The objects of namespace `ns` under `selector` in `store`.
pub fn cached_under<K: Cached>(store: &Store<K>, ns: &str, selector: &Selector) -> Vec<K::Full> {
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns) && o.selected_by(selector))
        .map(|o| o.full())
        .collect()
}

/// The objects of `ns` under `selector` that `owner` decides from: from
/// `store` (synced) when it shows every write of `owner`, else listed live.
pub async fn owned_under<K: Cached>(
    expectations: &Expectations,
    store: &Store<K>,
    owner: &str,
    ns: &str,
    selector: &Selector,
    api: &Api<K::Full>,
) -> Result<Vec<K::Full>> {
    if expectations.caught_up(owner, |name| store.get(&ObjectRef::new(name).within(ns))) {
        return Ok(cached_under(store, ns, selector));
    }
    let query = ListParams::default().labels(&selector.to_string());
    Ok(api.list(&query).await?.items)
}

/// Whether `cached` (the cache's copy of the object, if any) shows `write`.
fn shown<K: Cached>(owner: &str, write: &Write, cached: Option<&K>) -> bool {
    let meta = cached.map(Resource::meta);
    match write {
        Write::Created => meta.is_some(),
        Write::Deleted => meta.is_none_or(|m| m.deletion_timestamp.is_some()),
        Write::Generation(g) => meta.is_none_or(|m| m.generation.unwrap_or_default() >= *g),
        Write::Adopted => meta.is_none_or(|m| ownership::controller_uid(m) == Some(owner)),
        Write::Released => meta.is_none_or(|m| ownership::controller_uid(m) != Some(owner)),
        Write::Annotated(key, value) => {
            cached.is_none_or(|o| o.annotation(key) == Some(value.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::json;

    fn full(generation: i64) -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m-1", "namespace": "ns", "generation": generation},
            "spec": {"class": {"name": "c"}}
        }))
        .unwrap()
    }

    /// The machine as the cache holds it.
    fn cached(m: Machine) -> Arc<CachedMachine> {
        Arc::new(m.into())
    }

    fn machine(generation: i64) -> Arc<CachedMachine> {
        cached(full(generation))
    }

    fn none(_: &str) -> Option<Arc<CachedMachine>> {
        None
    }

    #[test]
    fn an_owner_without_writes_is_caught_up() {
        let e = Expectations::default();
        assert!(e.caught_up("set", none));
    }

    #[test]
    fn a_creation_is_awaited_until_the_cache_shows_it() {
        let e = Expectations::default();
        e.wrote("set", "m-1", Write::Created);
        assert!(!e.caught_up("set", none));
        assert!(e.caught_up("set", |_| Some(machine(1))));
        // Seen once, forgotten: the machine going later is not a lag.
        assert!(e.caught_up("set", none));
    }

    #[test]
    fn a_deletion_is_awaited_until_the_cache_shows_it_going_or_gone() {
        let e = Expectations::default();
        e.wrote("set", "m-1", Write::Deleted);
        assert!(!e.caught_up("set", |_| Some(machine(1))));
        let mut going = full(1);
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(e.caught_up("set", |_| Some(cached(going.clone()))));
        e.wrote("set", "m-1", Write::Deleted);
        assert!(e.caught_up("set", none));
    }

    #[test]
    fn a_spec_change_is_awaited_until_its_generation_shows() {
        let e = Expectations::default();
        e.wrote("deployment", "m-1", Write::Generation(3));
        assert!(!e.caught_up("deployment", |_| Some(machine(2))));
        assert!(e.caught_up("deployment", |_| Some(machine(3))));
    }

    #[test]
    fn an_adoption_is_awaited_until_the_owner_reference_shows() {
        let e = Expectations::default();
        e.wrote("uid-1", "m-1", Write::Adopted);
        assert!(!e.caught_up("uid-1", |_| Some(machine(1))));
        let mut owned = full(1);
        owned.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "machine.sapcloud.io/v1alpha1".into(),
            kind: "MachineSet".into(),
            name: "set".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert!(e.caught_up("uid-1", |_| Some(cached(owned.clone()))));
    }

    #[test]
    fn an_annotation_is_awaited_until_its_value_shows() {
        let e = Expectations::default();
        e.wrote("set", "m-1", Write::Annotated("k".into(), "v".into()));
        assert!(!e.caught_up("set", |_| Some(machine(1))));
        let mut marked = full(1);
        marked
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("k".into(), "v".into());
        assert!(e.caught_up("set", |_| Some(cached(marked.clone()))));
    }

    #[test]
    fn a_release_is_awaited_until_the_owner_reference_is_gone() {
        let e = Expectations::default();
        e.wrote("uid-1", "m-1", Write::Released);
        assert!(e.caught_up("uid-1", |_| Some(machine(1))));
    }

    #[test]
    fn owners_are_independent() {
        let e = Expectations::default();
        e.wrote("a", "m-1", Write::Created);
        assert!(e.caught_up("b", none));
        assert!(!e.caught_up("a", none));
    }

    #[test]
    fn an_unseen_write_expires() {
        let e = Expectations::default();
        e.wrote("set", "m-1", Write::Created);
        let later = Instant::now() + EXPIRY + Duration::from_secs(1);
        assert!(e.caught_up_at("set", none, later));
    }

    #[test]
    fn forget_drops_everything_of_an_owner() {
        let e = Expectations::default();
        e.wrote("set", "m-1", Write::Created);
        e.forget("set");
        assert!(e.caught_up("set", none));
    }
}
