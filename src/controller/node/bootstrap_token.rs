//! The bootstrap token of a machine whose user data asks for one
//! (`<<BOOTSTRAP_TOKEN>>`, see `aws::user_data`): a Secret
//! `bootstrap-token-<id>` in the target cluster's `kube-system`, in the
//! format the API server's bootstrap token authenticator reads (type
//! `bootstrap.kubernetes.io/token`; `token-id`, `token-secret`,
//! `usage-bootstrap-authentication`, `usage-bootstrap-signing`,
//! `expiration`, `auth-extra-groups`, `description`). The token the user
//! data carries is `<id>.<secret>`.
//!
//! Exactly once, across retries and crashes:
//! - the ID is derived from the Machine's UID ([`token_id`]), so a process
//!   that died after creating the Secret finds it again; the Secret is
//!   labelled with the UID ([`MACHINE_UID_LABEL`]) and a Secret of another
//!   machine under a derived ID is never used (the next derived ID is);
//! - the ID is recorded in the Machine's launch record before RunInstances,
//!   and a retry with the same ClientToken reuses that Secret, so it sends
//!   the same user data;
//! - a Secret gone before the launch (deleted, or removed by the API
//!   server's token cleaner after it expired) is created again under the
//!   same ID with a new secret: the launch record then moves to a new
//!   attempt, since the user data changed (see `machine::create`);
//! - an expired Secret still there is extended, keeping its token.
//!
//! MCM derives the ID from the last characters of the machine name; names of
//! one pool share their prefix and differ in five random characters, of
//! which MCM keeps three, so two machines can collide. A hash of the UID
//! does not share that weakness.
//!
//! The token secret comes from the OS's random source and is never logged:
//! it lives in a [`SecretString`] and in the Secret only.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::api::machine::Machine;
use crate::aws::credentials::SecretString;
use crate::controller::context::Context;
use crate::controller::error::{Error, Result};

/// Where bootstrap tokens live.
pub const NAMESPACE: &str = "kube-system";
/// The Secret type the authenticator reads.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Label on the Secret naming the Machine (by UID) it was made for.
pub const MACHINE_UID_LABEL: &str = "machine.sapcloud.io/machine-uid";

const TOKEN_ID: &str = "token-id";
const TOKEN_SECRET: &str = "token-secret";
const EXPIRATION: &str = "expiration";
const AUTH_EXTRA_GROUPS: &str = "auth-extra-groups";
const DESCRIPTION: &str = "description";
const USAGE_AUTHENTICATION: &str = "usage-bootstrap-authentication";
const USAGE_SIGNING: &str = "usage-bootstrap-signing";

/// Token IDs and secrets are made of these (`[a-z0-9]`).
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
/// Derived IDs tried before giving up (each a 1 in 2·10⁹ chance of being taken).
const CANDIDATES: u32 = 8;

/// The bootstrap token of a machine, ready for its user data.
#[derive(Clone, Debug)]
pub struct MachineToken {
    /// The public half, `[a-z0-9]{6}`; the Secret is `bootstrap-token-<id>`.
    pub id: String,
    /// `<id>.<secret>`, as the user data carries it.
    pub token: SecretString,
    /// Whether this call wrote a new secret (the Secret was missing or
    /// unusable): user data built with it differs from any built before.
    pub created: bool,
}

/// Name of the Secret of token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// The `n`th candidate token ID of the Machine with UID `uid`.
pub fn token_id(uid: &str, n: u32) -> String {
    let digest = Sha256::digest(format!("mcm-provider-aws/bootstrap-token/{uid}/{n}"));
    let mut x = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (0..ID_LEN)
        .map(|_| {
            let c = ALPHABET[(x % 36) as usize];
            x /= 36;
            char::from(c)
        })
        .collect()
}

/// Whether `s` is a bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn is_token(s: &str) -> bool {
    let ok =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| ALPHABET.contains(&b));
    s.split_once('.')
        .is_some_and(|(id, secret)| ok(id, ID_LEN) && ok(secret, SECRET_LEN))
}

/// 16 random characters of `[a-z0-9]`, unbiased (bytes ≥ 252 are drawn again).
fn random_secret() -> Result<SecretString> {
    let mut out = String::with_capacity(SECRET_LEN);
    let mut buf = [0u8; 32];
    while out.len() < SECRET_LEN {
        getrandom::fill(&mut buf).map_err(|e| Error::Waiting {
            what: format!("the OS random source failed: {e}"),
            retry_after: Duration::from_secs(5),
        })?;
        for b in buf {
            if b < 252 && out.len() < SECRET_LEN {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    Ok(SecretString::new(out))
}

/// The Secret's `data` for token `id` with `secret` (pure).
fn secret_data(
    id: &str,
    secret: &SecretString,
    machine: &str,
    expiration: Timestamp,
    extra_groups: &str,
) -> BTreeMap<String, ByteString> {
    let mut data: BTreeMap<String, ByteString> = [
        (TOKEN_ID, id.to_string()),
        (TOKEN_SECRET, secret.expose().to_string()),
        (EXPIRATION, expiration_value(expiration)),
        (USAGE_AUTHENTICATION, "true".into()),
        (USAGE_SIGNING, "true".into()),
        (
            DESCRIPTION,
            format!("A bootstrap token for machine {machine:?} generated by mcm-provider-aws."),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    // Empty (MCM's default): the authenticator's own group only.
    if !extra_groups.is_empty() {
        data.insert(
            AUTH_EXTRA_GROUPS.into(),
            ByteString(extra_groups.as_bytes().to_vec()),
        );
    }
    data
}

/// RFC 3339, whole seconds, as the authenticator parses it.
fn expiration_value(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn text<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|v| std::str::from_utf8(&v.0).ok())
}

fn owned_by(s: &Secret, uid: &str) -> bool {
    s.labels().get(MACHINE_UID_LABEL).map(String::as_str) == Some(uid)
}

/// The token in a Secret of ours, if it holds a well-formed one for `id`.
fn token_of(s: &Secret, id: &str) -> Option<SecretString> {
    let token = format!("{}.{}", text(s, TOKEN_ID)?, text(s, TOKEN_SECRET)?);
    (text(s, TOKEN_ID) == Some(id) && is_token(&token)).then(|| SecretString::new(token))
}

/// Whether a token expiring at the Secret's `expiration` must be extended:
/// it is unreadable, or ends before `needed_until`.
fn needs_extension(s: &Secret, needed_until: Timestamp) -> bool {
    text(s, EXPIRATION)
        .and_then(|e| e.parse::<Timestamp>().ok())
        .is_none_or(|e| e < needed_until)
}

/// The candidate IDs in order: the recorded one first, then the derived ones.
fn candidates(uid: &str, recorded: Option<&str>) -> Vec<String> {
    let mut ids: Vec<String> = recorded.map(str::to_string).into_iter().collect();
    for n in 0..CANDIDATES {
        let id = token_id(uid, n);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

fn secrets(ctx: &Context) -> Api<Secret> {
    Api::namespaced(ctx.target.clone(), NAMESPACE)
}

fn machine_ref(m: &Machine) -> String {
    format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())
}

/// The Machine's bootstrap token: the Secret under `recorded` (the ID its
/// launch record names) or a derived ID when it is ours, else a new one.
/// The token stays valid at least until the machine's creation deadline
/// (creation + `creation_timeout`); new ones until now + `creation_timeout`.
pub async fn ensure(
    ctx: &Context,
    m: &Machine,
    recorded: Option<&str>,
    creation_timeout: Duration,
) -> Result<MachineToken> {
    let uid = m.uid().unwrap_or_default();
    let api = secrets(ctx);
    let now = Timestamp::now();
    let later = |t: Timestamp, d: Duration| t.checked_add(d).unwrap_or(Timestamp::MAX);
    let expiration = later(now, creation_timeout);
    let deadline = m
        .creation_timestamp()
        .map_or(expiration, |t| later(t.0, creation_timeout))
        .max(later(now, Duration::from_secs(60)));
    let groups = ctx.config.bootstrap_token_auth_extra_groups.join(",");
    for id in candidates(&uid, recorded) {
        let name = secret_name(&id);
        let existing = api.get_opt(&name).await?;
        match existing {
            Some(s) if !owned_by(&s, &uid) => continue,
            Some(s) => {
                if let Some(token) = token_of(&s, &id) {
                    if needs_extension(&s, deadline) {
                        let patch =
                            json!({"stringData": {EXPIRATION: expiration_value(expiration)}});
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await?;
                        info!(machine = %m.name_any(), secret = %name, "extended the bootstrap token");
                    }
                    return Ok(MachineToken {
                        id,
                        token,
                        created: false,
                    });
                }
                // Ours but not a token any more (edited by hand): a new secret.
                let secret = random_secret()?;
                let data = secret_data(&id, &secret, &machine_ref(m), expiration, &groups);
                let patch = json!({"type": SECRET_TYPE, "data": data});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                warn!(machine = %m.name_any(), secret = %name, "rewrote a malformed bootstrap token");
                return Ok(MachineToken {
                    token: SecretString::new(format!("{id}.{}", secret.expose())),
                    id,
                    created: true,
                });
            }
            None => {
                let secret = random_secret()?;
                let object = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(NAMESPACE.into()),
                        labels: Some(BTreeMap::from([(MACHINE_UID_LABEL.into(), uid.clone())])),
                        ..ObjectMeta::default()
                    },
                    type_: Some(SECRET_TYPE.into()),
                    data: Some(secret_data(
                        &id,
                        &secret,
                        &machine_ref(m),
                        expiration,
                        &groups,
                    )),
                    ..Secret::default()
                };
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => {
                        info!(machine = %m.name_any(), secret = %name, "created the bootstrap token");
                        return Ok(MachineToken {
                            token: SecretString::new(format!("{id}.{}", secret.expose())),
                            id,
                            created: true,
                        });
                    }
                    // Another pass (a process before a restart) won the race:
                    // look again.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        return Err(Error::Waiting {
                            what: format!("Secret {NAMESPACE}/{name} appeared meanwhile"),
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(Error::Invalid(format!(
        "every candidate bootstrap token ID of machine {} is taken by another machine's Secret in {NAMESPACE}",
        machine_ref(m)
    )))
}

/// Deletes the Machine's bootstrap token Secret, if there is one: the one
/// `recorded` names, or one under a derived ID (a process may have died
/// between creating it and recording it). Secrets of other machines stay.
pub async fn delete(ctx: &Context, m: &Machine, recorded: Option<&str>) -> Result<()> {
    let uid = m.uid().unwrap_or_default();
    let api = secrets(ctx);
    for (i, id) in candidates(&uid, recorded).into_iter().enumerate() {
        let name = secret_name(&id);
        match api.get_opt(&name).await? {
            Some(s) if owned_by(&s, &uid) => {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: s.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => {
                        info!(machine = %m.name_any(), secret = %name, "deleted the bootstrap token")
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(());
            }
            Some(_) => {}
            // Derived IDs are taken in order: past the first free one,
            // none can be ours. (The recorded one may be anywhere.)
            None if recorded.is_none() || i > 0 => return Ok(()),
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_derived_stable_and_of_the_format() {
        let uid = "6f1c2a9e-3b1d-4c8e-9a57-0d2b6c1e4f70";
        let id = token_id(uid, 0);
        assert_eq!(id, token_id(uid, 0), "the same after a restart");
        assert_ne!(id, token_id(uid, 1));
        assert_ne!(id, token_id("another-uid", 0));
        assert!(is_token(&format!("{id}.0123456789abcdef")), "{id}");
        assert_eq!(secret_name("abc123"), "bootstrap-token-abc123");
        // Across many UIDs, IDs spread over the alphabet.
        let ids: std::collections::BTreeSet<String> = (0..2000)
            .map(|i| token_id(&format!("uid-{i}"), 0))
            .collect();
        assert_eq!(ids.len(), 2000, "no collision among 2000 machines");
    }

    #[test]
    fn secrets_are_random_and_of_the_format() {
        let a = random_secret().unwrap();
        let b = random_secret().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(
            is_token(&format!("abc123.{}", a.expose())),
            "{}",
            a.expose()
        );
        assert!(!format!("{a:?}").contains(a.expose()), "never in Debug");
    }

    #[test]
    fn token_format_is_checked() {
        assert!(is_token("abc123.0123456789abcdef"));
        assert!(!is_token("ABC123.0123456789abcdef"), "lower case only");
        assert!(!is_token("abc12.0123456789abcdef"));
        assert!(!is_token("abc123.0123456789abcde"));
        assert!(!is_token("abc1230123456789abcdef"));
    }

    #[test]
    fn the_secret_has_the_authenticators_format() {
        let secret = SecretString::new("0123456789abcdef");
        let at = Timestamp::from_second(1_767_225_600).unwrap();
        let data = secret_data(
            "abc123",
            &secret,
            "ns/m1",
            at,
            "system:bootstrappers:workers",
        );
        let get = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(get(TOKEN_ID), "abc123");
        assert_eq!(get(TOKEN_SECRET), "0123456789abcdef");
        assert_eq!(get(EXPIRATION), "2026-01-01T00:00:00Z");
        assert_eq!(get(USAGE_AUTHENTICATION), "true");
        assert_eq!(get(USAGE_SIGNING), "true");
        assert_eq!(get(AUTH_EXTRA_GROUPS), "system:bootstrappers:workers");
        assert!(get(DESCRIPTION).contains("\"ns/m1\""));
        let without = secret_data("abc123", &secret, "ns/m1", at, "");
        assert!(
            !without.contains_key(AUTH_EXTRA_GROUPS),
            "MCM's default: none"
        );
    }

    #[test]
    fn a_token_is_read_only_from_a_well_formed_secret_of_its_id() {
        let secret = SecretString::new("0123456789abcdef");
        let at = Timestamp::from_second(1_767_225_600).unwrap();
        let s = Secret {
            data: Some(secret_data("abc123", &secret, "ns/m1", at, "")),
            ..Secret::default()
        };
        assert_eq!(
            token_of(&s, "abc123").map(|t| t.expose().to_string()),
            Some("abc123.0123456789abcdef".into())
        );
        assert!(token_of(&s, "zzz999").is_none());
        let before = Timestamp::from_second(1_767_225_599).unwrap();
        let after = Timestamp::from_second(1_767_225_601).unwrap();
        assert!(!needs_extension(&s, before));
        assert!(needs_extension(&s, after));
        assert!(needs_extension(&Secret::default(), before), "unreadable");
    }

    #[test]
    fn the_recorded_id_comes_first_and_once() {
        let uid = "u";
        let derived = token_id(uid, 0);
        let c = candidates(uid, Some("rec123"));
        assert_eq!(c[0], "rec123");
        assert_eq!(c[1], derived);
        let c = candidates(uid, Some(&derived));
        assert_eq!(c.iter().filter(|i| **i == derived).count(), 1);
        assert_eq!(c.len(), CANDIDATES as usize);
    }
}
