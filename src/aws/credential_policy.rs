//! Which AWS identities a MachineClass may make the operator act as: the
//! guard against the operator being a confused deputy.
//!
//! Whoever may create a MachineClass and a Secret in a watched namespace
//! chooses the credentials its machines are launched with. Credentials the
//! Secret brings — static keys, or a web identity token of its own — belong
//! to whoever put them there; AWS decides what they may do. The operator's
//! *own* identity (its IRSA role, instance profile or environment keys) is
//! another matter: lending it to any class would let anyone with those
//! Kubernetes rights launch instances in the operator's account, or assume
//! any role the operator may assume. So the operator's identity is used for
//! a class only when the operator was started to allow it:
//!
//! | the class's Secret holds | used when |
//! |---|---|
//! | static keys (a `roleARN` beside them is ignored, as in MCM) | always |
//! | `workloadIdentityTokenFile` + `roleARN`, the token not the operator's | always (the token's issuer and the role's trust policy decide) |
//! | nothing (the default chain: the operator's own identity) | `--allow-operator-credentials` |
//! | only a `roleARN` (AssumeRole *from* the operator's identity) | `--allow-operator-credentials` **and** the ARN matches one of `--assume-role-arn-patterns` |
//! | a token file that is the operator's own (IRSA, EKS Pod Identity or its ServiceAccount token) + `roleARN` | as for a bare `roleARN`: it is the operator's identity assuming the role |
//!
//! The patterns guard what the operator's identity assumes; they do not
//! apply to roles assumed with a class's own token, which the operator's
//! identity plays no part in.
//!
//! A refused class is not launched (nor terminated, nor searched for
//! orphans): its Machines carry the [`Refusal`] — naming the Secrets and
//! the flag to set — in their status condition and a Warning Event.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use k8s_openapi::ByteString;

use super::credentials::CredentialSource;

/// Where a Kubernetes Pod finds its ServiceAccount token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where EKS mounts the IRSA token.
pub const IRSA_TOKEN: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";
/// Environment variables naming token files of the operator's own identity
/// (IRSA / web identity, EKS Pod Identity).
pub const TOKEN_FILE_VARIABLES: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// A glob over role ARNs, as `--assume-role-arn-patterns` takes it: `*`
/// matches any run of characters (`/` included, as in IAM policies), `?`
/// one character, everything else itself (case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArnPattern(String);

impl FromStr for ArnPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.starts_with("arn:") {
            return Err(format!(
                "{s:?} is not a role ARN pattern such as arn:aws:iam::123456789012:role/mcm-*"
            ));
        }
        Ok(ArnPattern(s.to_owned()))
    }
}

impl fmt::Display for ArnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ArnPattern {
    /// Whether `arn` matches the whole pattern.
    pub fn matches(&self, arn: &str) -> bool {
        glob_match(self.0.as_bytes(), arn.as_bytes())
    }
}

/// Classic wildcard matching with backtracking to the last `*`: linear in
/// practice, no allocation.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The rule (see the module documentation), built once from the flags.
#[derive(Clone, Debug, Default)]
pub struct CredentialPolicy {
    /// `--allow-operator-credentials`: classes without keys may use the
    /// operator's own identity.
    pub allow_operator_credentials: bool,
    /// `--assume-role-arn-patterns`: the roles the operator's identity may
    /// assume for a class.
    pub assume_role_arn_patterns: Vec<ArnPattern>,
    /// Token files that carry the operator's own identity.
    pub own_token_files: Vec<PathBuf>,
}

/// Why the credentials of a class are refused, with the Secrets that hold
/// them (`namespace/name`). Its `Display` is the message for the Machine's
/// status and Event: what was asked, the rule, and the flag to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The Secrets of the class, in merge order.
    pub secrets: Vec<String>,
    /// What the Secrets ask for.
    pub reason: RefusalReason,
}

/// What a refused Secret asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// No credentials: the operator's own identity, not allowed.
    OperatorIdentity,
    /// A role to assume with the operator's own identity (a bare `roleARN`,
    /// or the operator's own token file).
    AssumeRole {
        role_arn: String,
        /// Set when the role comes with the operator's own token file.
        own_token_file: Option<PathBuf>,
        /// Whether `--allow-operator-credentials` is set.
        operator_allowed: bool,
        /// The patterns in force, as given.
        patterns: Vec<String>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets = match self.secrets.as_slice() {
            [] => "The MachineClass references no Secret".to_owned(),
            [one] => format!("Secret {one}"),
            many => format!("Secrets {}", many.join(" + ")),
        };
        match &self.reason {
            RefusalReason::OperatorIdentity => write!(
                f,
                "{secrets} holds no AWS credentials (providerAccessKeyId + providerSecretAccessKey, \
                 or workloadIdentityTokenFile + roleARN), which would make the operator act with its \
                 own AWS identity; that is refused unless the operator runs with \
                 --allow-operator-credentials (chart value aws.allowOperatorCredentials=true)"
            ),
            RefusalReason::AssumeRole {
                role_arn,
                own_token_file,
                operator_allowed,
                patterns,
            } => {
                let how = match own_token_file {
                    Some(path) => format!(
                        "names the operator's own token file {} to assume role {role_arn}",
                        path.display()
                    ),
                    None => format!(
                        "has only a roleARN ({role_arn}), to be assumed with the operator's own AWS identity"
                    ),
                };
                let patterns = if patterns.is_empty() {
                    "none is set".to_owned()
                } else {
                    format!("it matches none of {}", patterns.join(","))
                };
                let mut needs = Vec::new();
                if !operator_allowed {
                    needs.push(
                        "--allow-operator-credentials (chart value aws.allowOperatorCredentials=true)"
                            .to_owned(),
                    );
                }
                needs.push(format!(
                    "a matching --assume-role-arn-patterns (chart value aws.assumeRoleArnPatterns; {patterns})"
                ));
                write!(
                    f,
                    "{secrets} {how}; that needs {}. Static keys or a token of the class's own need neither",
                    needs.join(" and ")
                )
            }
        }
    }
}

impl std::error::Error for Refusal {}

impl CredentialPolicy {
    /// The policy of a process: the flags, and the token files of the
    /// operator's identity from its environment (plus the well-known paths
    /// of the ServiceAccount and IRSA tokens).
    pub fn from_flags(
        allow_operator_credentials: bool,
        assume_role_arn_patterns: Vec<ArnPattern>,
    ) -> Self {
        let mut own_token_files: Vec<PathBuf> = TOKEN_FILE_VARIABLES
            .iter()
            .filter_map(std::env::var_os)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .collect();
        own_token_files.extend([SERVICE_ACCOUNT_TOKEN, IRSA_TOKEN].map(PathBuf::from));
        CredentialPolicy {
            allow_operator_credentials,
            assume_role_arn_patterns,
            own_token_files,
        }
    }

    /// The credentials of merged Secret data (see
    /// [`CredentialSource::from_secret_data`]), when this policy allows
    /// them; `secrets` (`namespace/name`) only name the Secrets in the
    /// refusal.
    pub fn credentials_for(
        &self,
        data: &BTreeMap<String, ByteString>,
        secrets: &[String],
    ) -> Result<CredentialSource, Refusal> {
        let source = CredentialSource::from_secret_data(data);
        match self.check(&source) {
            Ok(()) => Ok(source),
            Err(reason) => Err(Refusal {
                secrets: secrets.to_vec(),
                reason,
            }),
        }
    }

    /// Whether `source` may be used, and if not why.
    pub fn check(&self, source: &CredentialSource) -> Result<(), RefusalReason> {
        match source {
            CredentialSource::Static { .. } => Ok(()),
            CredentialSource::WebIdentity {
                token_file,
                role_arn,
            } => match self.own_token_file(token_file) {
                Some(own) => self.assume(role_arn, Some(own)),
                None => Ok(()),
            },
            CredentialSource::AssumeRole { role_arn } => self.assume(role_arn, None),
            CredentialSource::DefaultChain if self.allow_operator_credentials => Ok(()),
            CredentialSource::DefaultChain => Err(RefusalReason::OperatorIdentity),
        }
    }

    /// The operator's identity assuming `role_arn`.
    fn assume(&self, role_arn: &str, own_token_file: Option<PathBuf>) -> Result<(), RefusalReason> {
        let listed = self
            .assume_role_arn_patterns
            .iter()
            .any(|p| p.matches(role_arn));
        if self.allow_operator_credentials && listed {
            return Ok(());
        }
        Err(RefusalReason::AssumeRole {
            role_arn: role_arn.to_owned(),
            own_token_file,
            operator_allowed: self.allow_operator_credentials,
            patterns: self
                .assume_role_arn_patterns
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
    }

    /// `path`, when it is one of the operator's own token files (compared
    /// after resolving symlinks: projected volumes are links into a
    /// `..data` directory, and any route to the same file is the same
    /// token).
    fn own_token_file(&self, path: &Path) -> Option<PathBuf> {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let wanted = real(path);
        self.own_token_files
            .iter()
            .any(|own| own == path || real(own) == wanted)
            .then(|| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::credentials::SecretString;

    const ROLE: &str = "arn:aws:iam::123456789012:role/mcm-machines";

    fn policy(allow: bool, patterns: &[&str]) -> CredentialPolicy {
        CredentialPolicy {
            allow_operator_credentials: allow,
            assume_role_arn_patterns: patterns.iter().map(|p| p.parse().unwrap()).collect(),
            own_token_files: vec![PathBuf::from(IRSA_TOKEN)],
        }
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn secrets() -> Vec<String> {
        vec!["team-a/aws".to_owned()]
    }

    #[test]
    fn patterns_are_whole_arn_globs() {
        let p: ArnPattern = "arn:aws:iam::123456789012:role/mcm-*".parse().unwrap();
        assert!(p.matches(ROLE));
        assert!(p.matches("arn:aws:iam::123456789012:role/mcm-"));
        assert!(
            p.matches("arn:aws:iam::123456789012:role/mcm-a/b"),
            "* spans /"
        );
        assert!(!p.matches("arn:aws:iam::999999999999:role/mcm-machines"));
        assert!(!p.matches("arn:aws:iam::123456789012:role/MCM-machines"));
        assert!(!p.matches("xarn:aws:iam::123456789012:role/mcm-machines"));
        let any_account: ArnPattern = "arn:aws:iam::*:role/mcm-?".parse().unwrap();
        assert!(any_account.matches("arn:aws:iam::1:role/mcm-x"));
        assert!(!any_account.matches("arn:aws:iam::1:role/mcm-xy"));
        let exact: ArnPattern = ROLE.parse().unwrap();
        assert!(exact.matches(ROLE));
        assert!(!exact.matches(&format!("{ROLE}2")));
        assert!("mcm-*".parse::<ArnPattern>().is_err());
        assert!("".parse::<ArnPattern>().is_err());
    }

    #[test]
    fn keys_and_a_token_of_the_class_are_always_allowed() {
        let strict = policy(false, &[]);
        let keys = data(&[
            ("providerAccessKeyId", "AKIA"),
            ("providerSecretAccessKey", "s"),
            ("roleARN", "arn:aws:iam::999999999999:role/anything"),
        ]);
        assert!(matches!(
            strict.credentials_for(&keys, &secrets()),
            Ok(CredentialSource::Static { .. })
        ));
        let web = data(&[
            (
                "workloadIdentityTokenFile",
                "/var/run/secrets/gardener/token",
            ),
            ("roleARN", "arn:aws:iam::999999999999:role/anything"),
        ]);
        assert!(matches!(
            strict.credentials_for(&web, &secrets()),
            Ok(CredentialSource::WebIdentity { .. })
        ));
    }

    #[test]
    fn the_operators_own_identity_is_refused_by_default() {
        let refusal = policy(false, &[])
            .credentials_for(&data(&[("userData", "x")]), &secrets())
            .unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::OperatorIdentity);
        let message = refusal.to_string();
        assert!(
            message.starts_with("Secret team-a/aws holds no AWS credentials"),
            "{message}"
        );
        assert!(
            message.contains("--allow-operator-credentials"),
            "{message}"
        );
        assert!(
            message.contains("aws.allowOperatorCredentials=true"),
            "{message}"
        );
        assert_eq!(
            policy(true, &[]).check(&CredentialSource::DefaultChain),
            Ok(())
        );
    }

    #[test]
    fn a_bare_role_needs_the_flag_and_a_matching_pattern() {
        let bare = CredentialSource::AssumeRole {
            role_arn: ROLE.into(),
        };
        let mcm = ["arn:aws:iam::123456789012:role/mcm-*"];
        assert_eq!(policy(true, &mcm).check(&bare), Ok(()));
        for (allow, patterns) in [
            (false, &mcm[..]),
            (true, &[][..]),
            (true, &["arn:aws:iam::123456789012:role/other-*"][..]),
            (false, &[][..]),
        ] {
            let refusal = policy(allow, patterns)
                .credentials_for(&data(&[("roleARN", ROLE)]), &secrets())
                .unwrap_err();
            let message = refusal.to_string();
            assert!(message.contains(ROLE), "{message}");
            assert!(message.contains("--assume-role-arn-patterns"), "{message}");
            assert_eq!(
                message.contains("--allow-operator-credentials"),
                !allow,
                "{message}"
            );
            if patterns.is_empty() {
                assert!(message.contains("none is set"), "{message}");
            } else {
                assert!(message.contains("matches none of"), "{message}");
            }
        }
    }

    #[test]
    fn the_operators_own_token_file_counts_as_its_identity() {
        let own = data(&[("workloadIdentityTokenFile", IRSA_TOKEN), ("roleARN", ROLE)]);
        let refusal = policy(false, &[])
            .credentials_for(&own, &["team-a/aws".into(), "team-a/creds".into()])
            .unwrap_err();
        let message = refusal.to_string();
        assert!(
            message.starts_with("Secrets team-a/aws + team-a/creds"),
            "{message}"
        );
        assert!(message.contains("operator's own token file"), "{message}");
        let mcm = ["arn:aws:iam::123456789012:role/mcm-*"];
        assert!(policy(true, &mcm).credentials_for(&own, &secrets()).is_ok());

        // Another route to the same file is the same token.
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "jwt").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&token, &link).unwrap();
        let p = CredentialPolicy {
            own_token_files: vec![token.clone()],
            ..policy(false, &[])
        };
        let via_link = CredentialSource::WebIdentity {
            token_file: link,
            role_arn: ROLE.into(),
        };
        assert!(p.check(&via_link).is_err());
        let elsewhere = CredentialSource::WebIdentity {
            token_file: dir.path().join("other"),
            role_arn: ROLE.into(),
        };
        assert_eq!(p.check(&elsewhere), Ok(()));
    }

    #[test]
    fn from_flags_knows_the_well_known_token_paths() {
        let p = CredentialPolicy::from_flags(false, vec![]);
        assert!(
            p.own_token_files
                .contains(&PathBuf::from(SERVICE_ACCOUNT_TOKEN))
        );
        assert!(p.own_token_files.contains(&PathBuf::from(IRSA_TOKEN)));
        let keys = CredentialSource::Static {
            access_key_id: "AKIA".into(),
            secret_access_key: SecretString::new("s"),
        };
        assert_eq!(p.check(&keys), Ok(()));
    }
}
