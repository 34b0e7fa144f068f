//! One shutdown signal for the whole process: SIGTERM or SIGINT (or a call
//! to [`Shutdown::trigger`]) stops the leader election wait, the controllers
//! and the HTTP servers together.

use tokio::sync::watch;
use tracing::info;

/// A cloneable shutdown signal; see the module docs.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A signal that nothing has triggered yet.
    pub fn new() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }

    /// A signal triggered by the first SIGTERM or SIGINT. Must be called
    /// inside a tokio runtime.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let signal = terminated().await;
            info!(signal, "shutting down");
            trigger.trigger();
        });
        shutdown
    }

    /// Triggers the shutdown.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the shutdown has been triggered.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // The sender lives in `self` and its clones; if all of them are
            // gone nobody can trigger any more, which also means: stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Waits for SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C).
async fn terminated() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let done = tokio::spawn(waiter.triggered());
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        done.await.unwrap();
        assert!(shutdown.is_triggered());
        // Already triggered: resolves at once.
        shutdown.clone().triggered().await;
    }
}
