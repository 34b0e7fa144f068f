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
    pub fn caught_up<K: Resource>(
        &self,
        owner: &str,
        cached: impl Fn(&str) -> Option<Arc<K>>,
    ) -> bool {
        self.caught_up_at(owner, cached, Instant::now())
    }

    fn caught_up_at<K: Resource>(
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

/// The objects of namespace `ns` under `selector` in `store`.
pub fn cached_under<K>(store: &Store<K>, ns: &str, selector: &Selector) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|o| o.namespace().as_deref() == Some(ns) && selector.matches(o.labels()))
        .map(|o| (**o).clone())
        .collect()
}

/// The objects of `ns` under `selector` that `owner` decides from: from
/// `store` (synced) when it shows every write of `owner`, else listed live.
pub async fn owned_under<K>(
    expectations: &Expectations,
    store: &Store<K>,
    owner: &str,
    ns: &str,
    selector: &Selector,
    api: &Api<K>,
) -> Result<Vec<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + 'static,
{
    if expectations.caught_up(owner, |name| store.get(&ObjectRef::new(name).within(ns))) {
        return Ok(cached_under(store, ns, selector));
    }
    let query = ListParams::default().labels(&selector.to_string());
    Ok(api.list(&query).await?.items)
}

/// Whether `cached` (the cache's copy of the object, if any) shows `write`.
fn shown<K: Resource>(owner: &str, write: &Write, cached: Option<&K>) -> bool {
    let meta = cached.map(Resource::meta);
    match write {
        Write::Created => meta.is_some(),
        Write::Deleted => meta.is_none_or(|m| m.deletion_timestamp.is_some()),
        Write::Generation(g) => meta.is_none_or(|m| m.generation.unwrap_or_default() >= *g),
        Write::Adopted => meta.is_none_or(|m| ownership::controller_uid(m) == Some(owner)),
        Write::Released => meta.is_none_or(|m| ownership::controller_uid(m) != Some(owner)),
        Write::Annotated(key, value) => {
            meta.is_none_or(|m| m.annotations.as_ref().and_then(|a| a.get(key)) == Some(value))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::machine::Machine;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use serde_json::json;

    fn machine(generation: i64) -> Arc<Machine> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "machine.sapcloud.io/v1alpha1", "kind": "Machine",
                "metadata": {"name": "m-1", "namespace": "ns", "generation": generation},
                "spec": {"class": {"name": "c"}}
            }))
            .unwrap(),
        )
    }

    fn none(_: &str) -> Option<Arc<Machine>> {
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
        let mut going = (*machine(1)).clone();
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(e.caught_up("set", |_| Some(Arc::new(going.clone()))));
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
        let mut owned = (*machine(1)).clone();
        owned.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "machine.sapcloud.io/v1alpha1".into(),
            kind: "MachineSet".into(),
            name: "set".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        assert!(e.caught_up("uid-1", |_| Some(Arc::new(owned.clone()))));
    }

    #[test]
    fn an_annotation_is_awaited_until_its_value_shows() {
        let e = Expectations::default();
        e.wrote("set", "m-1", Write::Annotated("k".into(), "v".into()));
        assert!(!e.caught_up("set", |_| Some(machine(1))));
        let mut marked = (*machine(1)).clone();
        marked
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("k".into(), "v".into());
        assert!(e.caught_up("set", |_| Some(Arc::new(marked.clone()))));
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
