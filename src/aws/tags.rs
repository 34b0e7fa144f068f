//! Tag keys this operator puts on the EC2 resources it creates, and the
//! idempotency token derived from a Machine.

/// Tag carrying the UID of the Machine an instance belongs to. With it, a
/// crash between RunInstances and the status write never leads to a second
/// instance: before creating, the operator looks for an instance with it.
pub const MACHINE_UID_TAG: &str = "machine.sapcloud.io/machine-uid";
/// Tag carrying `<namespace>/<name>` of the Machine, for humans.
pub const MACHINE_NAME_TAG: &str = "machine.sapcloud.io/machine";
/// Tag carrying the Machine's name, shown by the EC2 console.
pub const NAME_TAG: &str = "Name";
/// Tag naming the batched launch an instance came from,
/// `<namespace>/<launch token>` (see `aws::batch`): until the per-machine
/// tags follow, it and the instance's `AmiLaunchIndex` say whose it is.
pub const LAUNCH_TAG: &str = "machine.sapcloud.io/launch";

/// The tags that say which Machine an instance is: [`NAME_TAG`],
/// [`MACHINE_UID_TAG`] and [`MACHINE_NAME_TAG`].
pub fn machine_tags(name: &str, namespace: &str, uid: &str) -> [(&'static str, String); 3] {
    [
        (NAME_TAG, name.to_owned()),
        (MACHINE_UID_TAG, uid.to_owned()),
        (MACHINE_NAME_TAG, format!("{namespace}/{name}")),
    ]
}

/// The RunInstances `ClientToken` for a Machine: EC2 returns the instance of
/// the first call for every retry with the same token (tokens are at most 64
/// ASCII characters; a UID is 36).
pub fn client_token(machine_uid: &str) -> String {
    machine_uid.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_token_is_stable_and_fits_ec2_limit() {
        let uid = "6f1c2a9e-3b1d-4c8e-9a57-0d2b6c1e4f70";
        assert_eq!(client_token(uid), client_token(uid));
        assert_eq!(client_token(uid), uid);
        assert!(client_token(&"x".repeat(100)).len() <= 64);
    }
}
