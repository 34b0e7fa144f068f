//! Polling: wait until something the operator (or the kubelet stand-in) does
//! in the background has become true, and fail with a message saying what was
//! awaited when it never does.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(200);

/// Calls `f` until it returns `Some`, and returns that value. Panics, naming
/// `what` and `timeout`, when `timeout` passes first.
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_or(what, timeout, f, String::new).await
}

/// Like [`eventually`], but on timeout the panic message also carries
/// `context()` — e.g. `|| operator.log()` — evaluated only then.
pub async fn eventually_or<F, Fut, T, C>(what: &str, timeout: Duration, mut f: F, context: C) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
    C: FnOnce() -> String,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if Instant::now() >= deadline {
            let context = context();
            if context.is_empty() {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            panic!("timed out after {timeout:?} waiting for {what}\n--- context ---\n{context}");
        }
        sleep(POLL).await;
    }
}
