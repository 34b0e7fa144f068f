//! From the Secrets of a MachineClass to the AWS credentials to use.
//!
//! A MachineClass names up to two Secrets, `secretRef` and
//! `credentialsSecretRef`; their data is merged (the latter wins per key,
//! as in MCM's `getSecretData`) and the merged keys decide the
//! [`CredentialSource`] (DESIGN.md §1 "Secrets"):
//!
//! | keys present (non-empty after trimming) | source |
//! |---|---|
//! | `workloadIdentityTokenFile` (+ `roleARN`) | STS AssumeRoleWithWebIdentity |
//! | `providerAccessKeyId`/`accessKeyID` and/or `providerSecretAccessKey`/`secretAccessKey` | static keys |
//! | `roleARN` alone | STS AssumeRole, from the default chain |
//! | none of these | AWS default chain (env, IRSA, instance profile) |
//!
//! The checks that turn a half-configured Secret into a clear status
//! message live in [`crate::api::validation::validate_secret_data`]. This
//! module never falls back to the operator's *own* identity when a Secret
//! is incomplete: an access key without its secret stays a static source
//! that AWS rejects, so a typo cannot make the operator act in the wrong
//! account.
//!
//! Secret values never appear in `Debug`, `Display` or logs: they live in
//! [`SecretString`], and [`CredentialSource::fingerprint`] identifies
//! credentials for caching without revealing them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use crate::api::validation::secret_keys::{
    ACCESS_KEY_ID, ALT_ACCESS_KEY_ID, ALT_SECRET_ACCESS_KEY, ROLE_ARN, SECRET_ACCESS_KEY,
    USER_DATA, WORKLOAD_IDENTITY_TOKEN_FILE,
};

/// Merges the data of a class's `secretRef` and `credentialsSecretRef`;
/// `credentialsSecretRef` wins for keys present in both (MCM merges in this
/// order too).
///
/// Within one Secret, `stringData` is applied over `data`, which is what the
/// API server does on write. Secrets read from the API server only ever have
/// `data`; `stringData` matters for Secrets built in code (tests, fixtures).
pub fn merge_secret_data(
    secret_ref: Option<&Secret>,
    credentials_secret_ref: Option<&Secret>,
) -> BTreeMap<String, ByteString> {
    let mut merged = BTreeMap::new();
    for secret in [secret_ref, credentials_secret_ref].into_iter().flatten() {
        if let Some(data) = &secret.data {
            merged.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(string_data) = &secret.string_data {
            merged.extend(
                string_data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))),
            );
        }
    }
    merged
}

/// The instance user data from the merged Secret data (key `userData`), as
/// raw bytes; `None` when absent or empty.
///
/// The bytes are returned untouched: the request builder replaces MCM's
/// `<<MACHINE_NAME>>` placeholder with the Machine's name and base64-encodes
/// the result for RunInstances.
pub fn user_data(data: &BTreeMap<String, ByteString>) -> Option<Vec<u8>> {
    data.get(USER_DATA)
        .filter(|v| !v.0.is_empty())
        .map(|v| v.0.clone())
}

/// A secret value that never shows itself in `Debug` (and has no
/// `Display`). Use [`SecretString::expose`] only where the value is handed
/// to the AWS SDK.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }

    /// The secret itself; call only to pass it to the SDK.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// Where the EC2 client of a MachineClass gets its credentials from.
#[derive(Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Static access keys from the Secret.
    Static {
        /// The access key ID (an identifier, but still kept out of logs).
        access_key_id: String,
        /// The secret access key.
        secret_access_key: SecretString,
    },
    /// STS AssumeRoleWithWebIdentity with a projected token file (Gardener
    /// workload identity, IRSA-like setups). The file is re-read on every
    /// refresh, so token rotation needs no new client.
    WebIdentity {
        /// Path of the token file, as mounted into the operator's Pod.
        token_file: PathBuf,
        /// Role to assume.
        role_arn: String,
    },
    /// STS AssumeRole with credentials from the default chain: the operator's
    /// identity assumes a role, typically in another account.
    AssumeRole {
        /// Role to assume.
        role_arn: String,
    },
    /// The AWS default chain: environment, web identity from the
    /// environment (IRSA), profile, container and instance metadata.
    DefaultChain,
}

impl CredentialSource {
    /// Picks the credential source from merged Secret data (see the module
    /// documentation for the table). Values are trimmed of surrounding
    /// whitespace and newlines (MCM does the same), and a key whose value is
    /// empty after trimming counts as absent.
    ///
    /// Precedence follows MCM: a token file wins over static keys, and
    /// static keys win over a lone `roleARN` (which is then ignored, as in
    /// MCM; `validate_secret_data` accepts that combination). For the access
    /// key pair, the MCM name (`providerAccessKeyId`) wins over the
    /// alternative (`accessKeyID`) when both are set.
    pub fn from_secret_data(data: &BTreeMap<String, ByteString>) -> CredentialSource {
        let token_file = value(data, &[WORKLOAD_IDENTITY_TOKEN_FILE]);
        let role_arn = value(data, &[ROLE_ARN]);
        if let Some(token_file) = token_file {
            return CredentialSource::WebIdentity {
                token_file: PathBuf::from(token_file),
                // Missing role: STS rejects the call, and validation has
                // already said why. Never fall back to another identity.
                role_arn: role_arn.unwrap_or_default(),
            };
        }
        let access_key_id = value(data, &[ACCESS_KEY_ID, ALT_ACCESS_KEY_ID]);
        let secret_access_key = value(data, &[SECRET_ACCESS_KEY, ALT_SECRET_ACCESS_KEY]);
        if access_key_id.is_some() || secret_access_key.is_some() {
            // Half a pair stays static (and fails at AWS) rather than
            // silently becoming the operator's own identity.
            return CredentialSource::Static {
                access_key_id: access_key_id.unwrap_or_default(),
                secret_access_key: SecretString::new(secret_access_key.unwrap_or_default()),
            };
        }
        match role_arn {
            Some(role_arn) => CredentialSource::AssumeRole { role_arn },
            None => CredentialSource::DefaultChain,
        }
    }

    /// A short, stable name of the source kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSource::Static { .. } => "static",
            CredentialSource::WebIdentity { .. } => "web-identity",
            CredentialSource::AssumeRole { .. } => "assume-role",
            CredentialSource::DefaultChain => "default-chain",
        }
    }

    /// A stable key identifying these credentials, for caching clients and
    /// rate limiters: 32 hex digits (128 bits) of a SHA-256 over a
    /// length-prefixed, versioned encoding of the source.
    ///
    /// It changes whenever any credential value changes (a rotated key is a
    /// new client). It reveals nothing usable: secret access keys carry far
    /// too much entropy to be recovered from a hash, and the truncated hash
    /// is all that is ever shown.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(b"mcm-provider-aws/credentials/v1");
        field(self.kind().as_bytes());
        match self {
            CredentialSource::Static {
                access_key_id,
                secret_access_key,
            } => {
                field(access_key_id.as_bytes());
                field(secret_access_key.expose().as_bytes());
            }
            CredentialSource::WebIdentity {
                token_file,
                role_arn,
            } => {
                field(token_file.as_os_str().as_encoded_bytes());
                field(role_arn.as_bytes());
            }
            CredentialSource::AssumeRole { role_arn } => field(role_arn.as_bytes()),
            CredentialSource::DefaultChain => {}
        }
        hasher
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Debug shows the kind and the non-secret parts (role ARN, token path),
/// never the keys: not even the access key ID, which identifies the account
/// owner's IAM user.
impl fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Static { .. } => f
                .debug_struct("Static")
                .field("access_key_id", &"<redacted>")
                .field("secret_access_key", &"<redacted>")
                .finish(),
            CredentialSource::WebIdentity {
                token_file,
                role_arn,
            } => f
                .debug_struct("WebIdentity")
                .field("token_file", token_file)
                .field("role_arn", role_arn)
                .finish(),
            CredentialSource::AssumeRole { role_arn } => f
                .debug_struct("AssumeRole")
                .field("role_arn", role_arn)
                .finish(),
            CredentialSource::DefaultChain => f.write_str("DefaultChain"),
        }
    }
}

/// The first of `keys` with a non-empty value after trimming. Values that
/// are not UTF-8 are decoded lossily: they are wrong either way, and AWS
/// will say so.
fn value(data: &BTreeMap<String, ByteString>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .filter_map(|key| data.get(*key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
        .find(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(data(pairs)),
            ..Secret::default()
        }
    }

    fn static_keys(id: &str, secret: &str) -> CredentialSource {
        CredentialSource::Static {
            access_key_id: id.into(),
            secret_access_key: SecretString::new(secret),
        }
    }

    #[test]
    fn credentials_secret_ref_wins_per_key() {
        let class_secret = secret(&[("userData", "#!/bin/sh"), ("accessKeyID", "OLD")]);
        let creds_secret = secret(&[("accessKeyID", "NEW"), ("secretAccessKey", "s3cr3t")]);
        let merged = merge_secret_data(Some(&class_secret), Some(&creds_secret));
        assert_eq!(merged["accessKeyID"].0, b"NEW");
        assert_eq!(merged["secretAccessKey"].0, b"s3cr3t");
        assert_eq!(merged["userData"].0, b"#!/bin/sh");
    }

    #[test]
    fn merging_handles_missing_secrets_and_string_data() {
        assert!(merge_secret_data(None, None).is_empty());
        let only_creds = secret(&[("roleARN", "arn:aws:iam::1:role/r")]);
        assert_eq!(merge_secret_data(None, Some(&only_creds)).len(), 1);

        let mut built = secret(&[("userData", "from-data")]);
        built.string_data = Some([("userData".to_string(), "from-stringData".to_string())].into());
        let merged = merge_secret_data(Some(&built), None);
        assert_eq!(merged["userData"].0, b"from-stringData");
    }

    #[test]
    fn every_static_key_spelling_is_accepted_and_trimmed() {
        for (id_key, secret_key) in [
            ("providerAccessKeyId", "providerSecretAccessKey"),
            ("accessKeyID", "secretAccessKey"),
            ("providerAccessKeyId", "secretAccessKey"),
            ("accessKeyID", "providerSecretAccessKey"),
        ] {
            let source = CredentialSource::from_secret_data(&data(&[
                (id_key, " AKIAEXAMPLE\n"),
                (secret_key, "wJalrXUtnFEMI/K7MDENG\n"),
            ]));
            assert_eq!(
                source,
                static_keys("AKIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG"),
                "{id_key} + {secret_key}"
            );
        }
    }

    #[test]
    fn mcm_spelling_wins_over_the_alternative() {
        let source = CredentialSource::from_secret_data(&data(&[
            ("providerAccessKeyId", "PRIMARY"),
            ("accessKeyID", "ALTERNATIVE"),
            ("providerSecretAccessKey", "p"),
            ("secretAccessKey", "a"),
        ]));
        assert_eq!(source, static_keys("PRIMARY", "p"));
        // An empty primary value does not hide a set alternative.
        let source = CredentialSource::from_secret_data(&data(&[
            ("providerAccessKeyId", "  "),
            ("accessKeyID", "ALTERNATIVE"),
            ("secretAccessKey", "a"),
        ]));
        assert_eq!(source, static_keys("ALTERNATIVE", "a"));
    }

    #[test]
    fn each_source_is_chosen_from_its_keys() {
        let arn = "arn:aws:iam::123456789012:role/machines";
        assert_eq!(
            CredentialSource::from_secret_data(&data(&[
                ("workloadIdentityTokenFile", "/var/run/secrets/token\n"),
                ("roleARN", arn),
                // MCM ignores static keys when a token file is configured.
                ("accessKeyID", "AKIA"),
                ("secretAccessKey", "s"),
            ])),
            CredentialSource::WebIdentity {
                token_file: "/var/run/secrets/token".into(),
                role_arn: arn.into(),
            }
        );
        assert_eq!(
            CredentialSource::from_secret_data(&data(&[("roleARN", arn), ("userData", "x")])),
            CredentialSource::AssumeRole {
                role_arn: arn.into()
            }
        );
        assert_eq!(
            CredentialSource::from_secret_data(&data(&[("userData", "x")])),
            CredentialSource::DefaultChain
        );
        assert_eq!(
            CredentialSource::from_secret_data(&data(&[("roleARN", " \n")])),
            CredentialSource::DefaultChain
        );
    }

    #[test]
    fn incomplete_secrets_never_fall_back_to_the_default_chain() {
        let half = CredentialSource::from_secret_data(&data(&[("accessKeyID", "AKIA")]));
        assert_eq!(half, static_keys("AKIA", ""));
        let no_role =
            CredentialSource::from_secret_data(&data(&[("workloadIdentityTokenFile", "/token")]));
        assert_eq!(
            no_role,
            CredentialSource::WebIdentity {
                token_file: "/token".into(),
                role_arn: String::new()
            }
        );
    }

    #[test]
    fn debug_never_shows_keys() {
        let source = static_keys(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let shown = format!("{source:?} {source:#?}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("AKIAIOSFODNN7EXAMPLE"), "{shown}");
        assert!(shown.contains("Static"));
        let wrapped = format!("{:?}", SecretString::new("hunter2"));
        assert!(!wrapped.contains("hunter2"));
    }

    #[test]
    fn fingerprint_is_stable_opaque_and_follows_changes() {
        let a = static_keys(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let same = a.clone();
        let rotated = static_keys("AKIAIOSFODNN7EXAMPLE", "another-secret");
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert_ne!(a.fingerprint(), rotated.fingerprint());
        assert_eq!(a.fingerprint().len(), 32);
        assert!(a.fingerprint().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.fingerprint().contains("AKIA"));

        // Different kinds with the same text never collide.
        let role = "arn:aws:iam::1:role/r";
        let assume = CredentialSource::AssumeRole {
            role_arn: role.into(),
        };
        let web = CredentialSource::WebIdentity {
            token_file: "".into(),
            role_arn: role.into(),
        };
        assert_ne!(assume.fingerprint(), web.fingerprint());
        assert_ne!(
            CredentialSource::DefaultChain.fingerprint(),
            assume.fingerprint()
        );
        // Field boundaries matter: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            static_keys("ab", "c").fingerprint(),
            static_keys("a", "bc").fingerprint()
        );
    }

    #[test]
    fn user_data_is_raw_bytes_or_none() {
        let script = "#!/bin/bash\necho <<MACHINE_NAME>>\n";
        assert_eq!(
            user_data(&data(&[("userData", script)])),
            Some(script.as_bytes().to_vec())
        );
        assert_eq!(user_data(&data(&[("userData", "")])), None);
        assert_eq!(user_data(&data(&[])), None);
    }
}
