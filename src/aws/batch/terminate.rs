//! Batched terminations: machines being deleted at the same time are
//! terminated with one TerminateInstances per credentials + Region (up to
//! 1000 IDs a call), gathered over [`TERMINATE_WINDOW`]. Each caller waits
//! for the call that carried its IDs and gets its outcome.
//!
//! EC2 refuses a whole call when one of its IDs is unknown
//! (`InvalidInstanceID.NotFound`, e.g. an instance too new to be visible);
//! the batch then falls back to one call per caller, so that one caller's
//! ID never fails another's termination.

use std::time::Duration;

use tokio::sync::oneshot;
use tracing::debug;

use super::gather::{Gather, Window};
use crate::aws::clients::{ClientKey, Ec2Handle};
use crate::aws::errors::{Ec2Error, ErrorClass};

/// Terminations are gathered until none came for 0.5 s, for 2 s at most.
pub const TERMINATE_WINDOW: Window = Window {
    idle: Duration::from_millis(500),
    max: Duration::from_secs(2),
    cap: 1000,
};

/// EC2 takes at most this many IDs per TerminateInstances.
pub const MAX_IDS: usize = 1000;

struct Request {
    ids: Vec<String>,
    done: oneshot::Sender<Result<(), Ec2Error>>,
}

/// See the module docs.
#[derive(Clone)]
pub struct Terminations {
    gather: Gather<ClientKey, Request>,
}

impl Default for Terminations {
    fn default() -> Self {
        Terminations {
            gather: Gather::new(TERMINATE_WINDOW),
        }
    }
}

impl Terminations {
    /// Terminates `ids` (of `handle`'s credentials and Region) together with
    /// whatever other terminations come in the same window. Unknown IDs
    /// count as terminated.
    pub async fn terminate(&self, handle: &Ec2Handle, ids: Vec<String>) -> Result<(), Ec2Error> {
        let (done, outcome) = oneshot::channel();
        if let Some(closer) = self.gather.join(handle.key.clone(), Request { ids, done }) {
            let handle = handle.clone();
            tokio::spawn(async move { run(&handle, closer.await).await });
        }
        outcome.await.unwrap_or_else(|_| {
            Err(Ec2Error::new(
                "TerminateInstances",
                ErrorClass::Transient,
                None,
                "the batched termination was dropped",
            ))
        })
    }
}

async fn run(handle: &Ec2Handle, requests: Vec<Request>) {
    let mut ids: Vec<String> = requests.iter().flat_map(|r| r.ids.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut failure = None;
    for chunk in ids.chunks(MAX_IDS) {
        if let Err(e) = call(handle, chunk.to_vec()).await {
            failure = Some(e);
            break;
        }
    }
    match failure {
        None => {
            for r in requests {
                let _ = r.done.send(Ok(()));
            }
        }
        Some(e) if e.class == ErrorClass::NotFound && requests.len() > 1 => {
            debug!(error = %e, "a batched termination named an unknown instance; terminating one caller at a time");
            for r in requests {
                let _ = r.done.send(call(handle, r.ids).await);
            }
        }
        Some(e) => {
            for r in requests {
                let _ = r.done.send(Err(copy(&e)));
            }
        }
    }
}

/// One TerminateInstances; unknown instances count as terminated when the
/// call named them alone.
async fn call(handle: &Ec2Handle, ids: Vec<String>) -> Result<(), Ec2Error> {
    let n = ids.len();
    let req = handle
        .client
        .terminate_instances()
        .set_instance_ids(Some(ids));
    handle
        .call_instances("TerminateInstances", n, req.send())
        .await
        .map(|_| ())
}

fn copy(e: &Ec2Error) -> Ec2Error {
    Ec2Error::new(e.operation, e.class, e.code.clone(), e.message.clone())
}
