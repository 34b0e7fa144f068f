//! Holding a request: the next request of an action that matches a
//! predicate waits at the proxy until the test releases it, and the test
//! learns when it arrived. That puts the test's own step (creating an
//! object, killing the operator) between two steps of the operator's,
//! deterministically: e.g. between the orphan collector's snapshot of its
//! Machine cache and the DescribeInstances that follows it.

use tokio::sync::oneshot;

use super::query::Ec2Request;

/// A hold waiting for its request (kept by the proxy).
pub struct Pending {
    action: &'static str,
    matches: fn(&Ec2Request) -> bool,
    arrived: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// The test's end of a hold ([`super::FaultProxy::hold_next`]).
pub struct Held {
    arrived: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

/// A new hold for the next request of `action` that `matches`.
pub fn hold(action: &'static str, matches: fn(&Ec2Request) -> bool) -> (Pending, Held) {
    let (arrived_tx, arrived_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    (
        Pending {
            action,
            matches,
            arrived: arrived_tx,
            release: release_rx,
        },
        Held {
            arrived: Some(arrived_rx),
            release: Some(release_tx),
        },
    )
}

impl Pending {
    pub fn matches(&self, ec2: &Ec2Request) -> bool {
        ec2.action == self.action && (self.matches)(ec2)
    }

    /// Says the request arrived and waits until the test releases it (or
    /// drops its end).
    pub async fn wait(self) {
        let _ = self.arrived.send(());
        let _ = self.release.await;
    }
}

impl Held {
    /// Waits until the request arrived and is held; false after `timeout`.
    pub async fn arrived(&mut self, timeout: std::time::Duration) -> bool {
        let Some(rx) = self.arrived.take() else {
            return true;
        };
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// Lets the request go on to EC2.
    pub fn release(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}
