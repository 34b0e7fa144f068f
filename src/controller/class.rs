//! Protection of MachineClasses and their Secrets: while a Machine references
//! a class, the class carries the finalizer
//! `machine.sapcloud.io/machine-controller-manager` and every Secret it
//! references carries `machine.sapcloud.io/machine-controller`, so neither can
//! disappear under a running machine. Both are released when nothing uses them.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::context::Context;
use super::error::{Error, Result};
use super::index;
use super::machine::FINALIZER;
use super::reads::SecretMeta;
use crate::api::machine::Machine;
use crate::api::machine_class::MachineClass;

/// Finalizer on Secrets referenced by a class in use, as MCM names it.
pub const SECRET_FINALIZER: &str = "machine.sapcloud.io/machine-controller";

/// Names of the classes the Machines of one namespace reference: from the
/// cache to decide, and read live (once per reconcile) before a finalizer is
/// released — the cache may not show a Machine created a moment ago.
struct ClassUse<'a> {
    ctx: &'a Context,
    ns: &'a str,
    live: Option<BTreeSet<String>>,
}

impl<'a> ClassUse<'a> {
    fn new(ctx: &'a Context, ns: &'a str) -> Self {
        Self {
            ctx,
            ns,
            live: None,
        }
    }

    /// Whether the cache shows a Machine of `ns` referencing `class`.
    fn cached(&self, class: &str) -> bool {
        !self
            .ctx
            .machine_index
            .get(index::Key::Class {
                ns: self.ns,
                name: class,
            })
            .is_empty()
    }

    /// Whether `class` is in use: confirmed live when releasing would follow
    /// (`protected`), from the cache otherwise.
    async fn in_use(&mut self, class: &str, protected: bool) -> Result<bool> {
        if protected {
            self.confirmed(class).await
        } else {
            Ok(self.cached(class))
        }
    }

    /// Whether a Machine of `ns` references `class`, confirmed by a live
    /// list when the cache says no.
    async fn confirmed(&mut self, class: &str) -> Result<bool> {
        if self.cached(class) {
            return Ok(true);
        }
        if self.live.is_none() {
            let machines = Api::<Machine>::namespaced(self.ctx.client.clone(), self.ns)
                .list(&Default::default())
                .await?;
            self.live = Some(
                machines
                    .items
                    .into_iter()
                    .map(|m| m.spec.class.name.clone())
                    .collect(),
            );
        }
        Ok(self.live.as_ref().is_some_and(|l| l.contains(class)))
    }
}

/// `namespace/name` of every Secret a class references.
fn secrets_of(class: &MachineClass) -> BTreeSet<(String, String)> {
    super::fleet::drift::secret_ref_pairs(class)
        .into_iter()
        .collect()
}

/// Whether a class of `classes` that references Secret `key` is in use (a
/// live check for each when the Secret is `protected`).
async fn used_by_any(
    usage: &mut ClassUse<'_>,
    protected: bool,
    classes: &[impl Borrow<MachineClass> + Sync],
    key: &(String, String),
) -> Result<bool> {
    for c in classes
        .iter()
        .map(Borrow::borrow)
        .filter(|c: &&MachineClass| secrets_of(c).contains(key))
    {
        if usage.in_use(&c.name_any(), protected).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reconciles one class: finalizers on it and its Secrets follow its use.
pub async fn reconcile(class: Arc<MachineClass>, ctx: Arc<Context>) -> Result<Action> {
    let ns = class
        .namespace()
        .ok_or_else(|| Error::Invalid("MachineClass has no namespace".into()))?;
    let name = class.name_any();
    ctx.caches_synced().await?;
    let mut usage = ClassUse::new(&ctx, &ns);
    let has = class.finalizers().iter().any(|f| f == FINALIZER);
    let in_use = usage.in_use(&name, has).await?;
    let api = Api::<MachineClass>::namespaced(ctx.client.clone(), &ns);
    if in_use && !has && class.meta().deletion_timestamp.is_none() {
        set_finalizers(&api, &class, with(class.finalizers(), FINALIZER)).await?;
        info!(class = %name, "class in use: protected");
    } else if !in_use && has {
        set_finalizers(&api, &class, without(class.finalizers(), FINALIZER)).await?;
        info!(class = %name, "class no longer in use: released");
    }

    // Secrets: protected while some class in use references them — decided
    // from the class cache, and confirmed by a live list of classes before a
    // finalizer is released (the cache may lag a class created a moment ago).
    let cached: Vec<Arc<MachineClass>> = ctx
        .reads
        .classes()
        .state()
        .into_iter()
        .filter(|c| c.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let mut live: Option<Vec<MachineClass>> = None;
    for (secret_ns, secret_name) in secrets_of(&class) {
        let Some(secret) = ctx.reads.secret_meta(&secret_ns, &secret_name).await? else {
            continue;
        };
        let key = (secret_ns.clone(), secret_name.clone());
        let has = secret.finalizers().iter().any(|f| f == SECRET_FINALIZER);
        let mut needed = used_by_any(&mut usage, has, &cached, &key).await?;
        if !needed && has {
            if live.is_none() {
                live = Some(
                    Api::<MachineClass>::namespaced(ctx.client.clone(), &ns)
                        .list(&Default::default())
                        .await?
                        .items,
                );
            }
            needed =
                used_by_any(&mut usage, has, live.as_deref().unwrap_or_default(), &key).await?;
        }
        let secrets = Api::<SecretMeta>::namespaced(ctx.client.clone(), &secret_ns);
        if needed && !has && secret.meta().deletion_timestamp.is_none() {
            set_finalizers(
                &secrets,
                &secret,
                with(secret.finalizers(), SECRET_FINALIZER),
            )
            .await?;
        } else if !needed && has {
            set_finalizers(
                &secrets,
                &secret,
                without(secret.finalizers(), SECRET_FINALIZER),
            )
            .await?;
        }
    }
    // Classes are re-checked when their Machines change; a slow resync guards
    // against missed events. A class being deleted while still in use looks
    // again soon: the event of its last Machine going can arrive before the
    // Machine cache has dropped it, and the release must not wait 10 minutes.
    if in_use && class.meta().deletion_timestamp.is_some() {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

pub fn error_policy(_class: Arc<MachineClass>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(10))
}

fn with(current: &[String], f: &str) -> Vec<String> {
    let mut out = current.to_vec();
    out.push(f.to_string());
    out
}

fn without(current: &[String], f: &str) -> Vec<String> {
    current.iter().filter(|x| *x != f).cloned().collect()
}

/// Replaces the finalizer list (guarded by the resourceVersion we read).
async fn set_finalizers<K>(api: &Api<K>, obj: &K, finalizers: Vec<String>) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    super::ownership::patch_metadata_guarded(api, obj, "finalizers", json!(finalizers)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::SecretReference;

    #[test]
    fn secrets_of_a_class_default_to_its_namespace() {
        let mut class = MachineClass::new("c", Default::default());
        class.metadata.namespace = Some("ns".into());
        class.secret_ref = Some(SecretReference {
            name: Some("a".into()),
            namespace: None,
        });
        class.credentials_secret_ref = Some(SecretReference {
            name: Some("b".into()),
            namespace: Some("other".into()),
        });
        let got: Vec<_> = secrets_of(&class).into_iter().collect();
        assert_eq!(
            got,
            [
                ("ns".to_string(), "a".to_string()),
                ("other".to_string(), "b".to_string())
            ]
        );
    }

    #[test]
    fn finalizer_lists_add_and_remove_one_entry() {
        let list = vec!["x".to_string()];
        assert_eq!(with(&list, "y"), ["x", "y"]);
        assert_eq!(without(&with(&list, "y"), "y"), ["x"]);
    }
}
