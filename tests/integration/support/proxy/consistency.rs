//! EC2's eventual consistency for new instances: for a while after
//! RunInstances returns, other calls may not know the instances yet
//! ("Eventual consistency in the Amazon EC2 API", EC2 Developer Guide).
//!
//! The proxy remembers, for each instance it saw launched while the switch
//! was on, until when it stays unknown. Until then DescribeInstances lists
//! leave it out, and any call naming it (`InstanceId`, `InstanceId.N`, the
//! `i-` values of `ResourceId.N`) fails as a whole with
//! `InvalidInstanceID.NotFound` — EC2 rejects the whole call when one of
//! the IDs it names is unknown.

use std::collections::HashMap;
use std::time::Instant;

use super::http::Response;

/// Instances that other calls do not know yet, with the time they will.
#[derive(Default)]
pub struct Unseen {
    until: HashMap<String, Instant>,
}

impl Unseen {
    /// `ids` were just launched and stay unknown until `until`.
    pub fn launched(&mut self, ids: &[String], until: Instant) {
        for id in ids {
            self.until.insert(id.clone(), until);
        }
    }

    pub fn is_unseen(&self, id: &str, now: Instant) -> bool {
        self.until.get(id).is_some_and(|until| now < *until)
    }

    /// Those of `ids` that are still unknown at `now`, in order.
    pub fn unknown<'a>(&self, ids: &[&'a str], now: Instant) -> Vec<&'a str> {
        ids.iter()
            .copied()
            .filter(|id| self.is_unseen(id, now))
            .collect()
    }

    /// Forgets instances that everybody knows by now.
    pub fn prune(&mut self, now: Instant) {
        self.until.retain(|_, until| now < *until);
    }
}

/// EC2's answer to a call naming unknown instances.
pub fn not_found(ids: &[&str]) -> Response {
    let message = match ids {
        [id] => format!("The instance ID '{id}' does not exist"),
        ids => format!("The instance IDs '{}' do not exist", ids.join(", ")),
    };
    Response::ec2_error(400, "Bad Request", "InvalidInstanceID.NotFound", &message)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instances_are_unknown_until_their_window_ends() {
        let t0 = Instant::now();
        let mut unseen = Unseen::default();
        unseen.launched(&["i-1".into(), "i-2".into()], t0 + Duration::from_secs(4));
        assert_eq!(unseen.unknown(&["i-0", "i-2", "i-1"], t0), ["i-2", "i-1"]);
        let later = t0 + Duration::from_secs(4);
        assert!(unseen.unknown(&["i-1", "i-2"], later).is_empty());
        unseen.prune(later);
        assert!(unseen.until.is_empty());
    }

    #[test]
    fn the_error_reads_like_ec2s() {
        let one = not_found(&["i-1"]);
        assert_eq!(one.status, 400);
        assert!(one.body_text().contains(
            "<Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1' does not exist"
        ));
        assert!(
            not_found(&["i-1", "i-2"])
                .body_text()
                .contains("The instance IDs 'i-1, i-2' do not exist")
        );
    }
}
