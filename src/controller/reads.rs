//! Reads of MachineClasses and Secrets from watch-backed caches instead of a
//! GET per reconcile.
//!
//! Classes come from the shared class store (the same watch that triggers
//! reconciles on class edits, so a reconcile woken by an edit reads the
//! edited class). Secrets are watched by metadata only — name, namespace,
//! resourceVersion and finalizers, nothing of their data, so a namespace
//! full of large Secrets costs little memory — and the data of the Secrets
//! classes actually reference is fetched once per resourceVersion and kept.
//!
//! A miss (an object created a moment ago, not yet delivered by its watch,
//! or a store not yet synced) falls back to a live GET: a missing class or
//! Secret is reported to users, so it must really be missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Client, ResourceExt};

use crate::api::machine_class::MachineClass;

/// Secret metadata as the cache keeps it.
pub type SecretMeta = PartialObjectMeta<Secret>;

/// Cached reads of classes and Secrets; see the module docs.
pub struct Reads {
    client: Client,
    classes: Store<MachineClass>,
    secret_meta: Store<SecretMeta>,
    /// Data of the Secrets read so far, with the resourceVersion read.
    secret_data: Mutex<HashMap<ObjectRef<Secret>, Arc<Secret>>>,
}

impl Reads {
    pub fn new(
        client: Client,
        classes: Store<MachineClass>,
        secret_meta: Store<SecretMeta>,
    ) -> Self {
        Self {
            client,
            classes,
            secret_meta,
            secret_data: Mutex::new(HashMap::new()),
        }
    }

    /// The class store (every class in scope).
    pub fn classes(&self) -> &Store<MachineClass> {
        &self.classes
    }

    /// Class `name` of namespace `ns`: from the cache, else read live.
    pub async fn class(&self, ns: &str, name: &str) -> kube::Result<Option<MachineClass>> {
        if let Some(class) = self.classes.get(&ObjectRef::new(name).within(ns)) {
            return Ok(Some((*class).clone()));
        }
        Api::<MachineClass>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
    }

    fn cached_meta(&self, ns: &str, name: &str) -> Option<Arc<SecretMeta>> {
        self.secret_meta.get(&ObjectRef::new(name).within(ns))
    }

    /// The metadata of Secret `ns/name` (finalizers, resourceVersion): from
    /// the cache, else read live.
    pub async fn secret_meta(&self, ns: &str, name: &str) -> kube::Result<Option<Arc<SecretMeta>>> {
        if let Some(meta) = self.cached_meta(ns, name) {
            return Ok(Some(meta));
        }
        Ok(Api::<SecretMeta>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?
            .map(Arc::new))
    }

    /// Secret `ns/name` with its data: the copy read before when the watch
    /// shows the same resourceVersion, else read live (and kept).
    pub async fn secret(&self, ns: &str, name: &str) -> kube::Result<Option<Secret>> {
        let key = ObjectRef::<Secret>::new(name).within(ns);
        let version = self
            .cached_meta(ns, name)
            .and_then(|m| m.resource_version());
        if let Some(version) = &version {
            let data = self.secret_data.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = data.get(&key)
                && s.resource_version().as_ref() == Some(version)
            {
                return Ok(Some((**s).clone()));
            }
        }
        let read = Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?;
        let mut data = self.secret_data.lock().unwrap_or_else(|p| p.into_inner());
        match &read {
            Some(s) => {
                data.insert(key, Arc::new(s.clone()));
            }
            None => {
                data.remove(&key);
            }
        }
        Ok(read)
    }

    /// Follows the Secret metadata watch (after the store saw the event):
    /// data of deleted Secrets is dropped.
    pub fn observe_secret(&self, event: &Event<SecretMeta>) {
        let mut data = self.secret_data.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Delete(meta) => {
                data.remove(
                    &ObjectRef::new(&meta.name_any()).within(&meta.namespace().unwrap_or_default()),
                );
            }
            Event::InitDone => {
                let meta = &self.secret_meta;
                data.retain(|key, _| {
                    let ns = key.namespace.as_deref().unwrap_or_default();
                    meta.get(&ObjectRef::new(&key.name).within(ns)).is_some()
                });
            }
            _ => {}
        }
    }
}

/// What the cache keeps of a Secret's metadata: identity, version and
/// finalizers (the class controller decides from them); labels,
/// annotations (`kubectl apply` leaves the whole Secret in one) and
/// managedFields are dropped.
pub fn trim_secret_meta(meta: &mut SecretMeta) {
    let m = &mut meta.metadata;
    m.annotations = None;
    m.labels = None;
    m.managed_fields = None;
    m.owner_references = None;
}
