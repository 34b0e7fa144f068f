//! EC2's `shutting-down`: a terminated instance does not turn `terminated`
//! at once; for a while (seconds to minutes, sometimes far longer) EC2
//! reports it `shutting-down` (code 32) while it releases its volumes and
//! addresses. moto turns it `terminated` (code 48) at once.
//!
//! With the switch on ([`super::ProxyBehaviour::shutting_down`]), the proxy
//! remembers each instance a successful TerminateInstances named and, for
//! the configured time after it, rewrites that instance's `instanceState`
//! in DescribeInstances responses to `shutting-down`. Only the state is
//! rewritten: filters by state are still moto's (`instance-state-name=
//! shutting-down` finds nothing), which the operator does not use.

use std::collections::HashMap;
use std::time::Instant;

use super::http::Response;
use super::query::Ec2Request;
use super::xml;

/// Instances that still report `shutting-down`, with the time they turn
/// `terminated`.
#[derive(Default)]
pub struct ShuttingDown {
    until: HashMap<String, Instant>,
}

impl ShuttingDown {
    /// `ids` were terminated and show `shutting-down` until `until`. A
    /// repeated TerminateInstances does not extend the time.
    pub fn terminated(&mut self, ids: &[&str], until: Instant) {
        for id in ids {
            self.until.entry(id.to_string()).or_insert(until);
        }
    }

    pub fn is_shutting_down(&self, id: &str, now: Instant) -> bool {
        self.until.get(id).is_some_and(|until| now < *until)
    }

    /// How many instances report `shutting-down` at `now`.
    pub fn count(&self, now: Instant) -> usize {
        self.until.values().filter(|until| now < **until).count()
    }

    /// Learns from a successful `TerminateInstances` and rewrites a
    /// DescribeInstances `response`; other responses pass unchanged.
    pub fn view(
        &mut self,
        ec2: &Ec2Request,
        response: Response,
        until: Instant,
        now: Instant,
    ) -> Response {
        if !response.is_success() {
            return response;
        }
        match ec2.action.as_str() {
            "TerminateInstances" => {
                self.terminated(&ec2.named_instances(), until);
                response
            }
            "DescribeInstances" if self.count(now) > 0 => {
                let body = response.body_text();
                match xml::with_state(
                    &body,
                    |id| self.is_shutting_down(id, now),
                    32,
                    "shutting-down",
                ) {
                    Some((body, n)) if n > 0 => response.with_body(body),
                    Some(_) => response,
                    None => {
                        eprintln!("fault proxy: cannot read a DescribeInstances response");
                        response
                    }
                }
            }
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn terminated_instances_shut_down_for_a_while_and_a_repeat_does_not_extend_it() {
        let t0 = Instant::now();
        let mut s = ShuttingDown::default();
        s.terminated(&["i-1"], t0 + Duration::from_secs(5));
        s.terminated(&["i-1"], t0 + Duration::from_secs(50));
        assert!(s.is_shutting_down("i-1", t0));
        assert!(!s.is_shutting_down("i-2", t0));
        assert!(!s.is_shutting_down("i-1", t0 + Duration::from_secs(5)));
        assert_eq!(s.count(t0), 1);
    }
}
