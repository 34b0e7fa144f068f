//! The log filter: `RUST_LOG` or `--log-level`, with the few AWS SDK
//! targets that print credentials or request bodies held below the level
//! where they do.
//!
//! At `debug`, the SDK's endpoint resolution prints its parameters, the
//! resolved identity among them (an access key ID in the clear) and
//! aws-config prints the access key ID of assumed-role credentials; at
//! `trace` the orchestrator prints whole requests (the `Authorization`
//! header, the base64 user data of RunInstances) and SigV4 the canonical
//! request (with a session token). Those targets stay at `info` whatever
//! the filter asks, so that `--log-level=debug` (or `trace`) never writes a
//! secret into the log.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

/// Targets held at `info`, and why (see the module docs).
pub const REDACTED_TARGETS: &[&str] = &[
    // Endpoint parameters with the identity (debug); requests, responses
    // and identities (trace).
    "aws_smithy_runtime::client::orchestrator",
    // Canonical requests and signing parameters (trace).
    "aws_sigv4",
    // Access key IDs of assumed-role credentials (debug).
    "aws_config::sts",
];

/// The filter of `rust_log` (the `RUST_LOG` value, when set and valid),
/// else of `level`, with [`REDACTED_TARGETS`] held at `info`.
pub fn filter(rust_log: Option<&str>, level: &str) -> EnvFilter {
    let base = rust_log
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    REDACTED_TARGETS.iter().fold(base, |filter, target| {
        filter.add_directive(
            format!("{target}=info")
                .parse::<Directive>()
                .expect("a valid directive"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Everything written through a subscriber with `filter`.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(filter: EnvFilter) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "aws_smithy_runtime::client::orchestrator::endpoints", "identity AKIA-debug");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "request AKIA-trace");
            tracing::trace!(target: "aws_sigv4::http_request::sign", "canonical AKIA-sigv4");
            tracing::debug!(target: "aws_config::sts::assume_role", "assumed ASIA-debug");
            tracing::info!(target: "aws_smithy_runtime::client::orchestrator", "info stays");
            tracing::debug!(target: "mcm_provider_aws::controller", "our debug");
            tracing::debug!(target: "aws_smithy_runtime::client::retries", "sdk debug");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn debug_and_trace_never_reach_the_credential_printing_targets() {
        for (rust_log, level) in [
            (Some("trace"), "info"),
            (Some("debug"), "info"),
            (None, "trace"),
            (
                Some("aws_smithy_runtime=trace,aws_sigv4=trace,aws_config=trace"),
                "info",
            ),
        ] {
            let text = logged(filter(rust_log, level));
            for leak in ["AKIA-debug", "AKIA-trace", "AKIA-sigv4", "ASIA-debug"] {
                assert!(!text.contains(leak), "{rust_log:?}/{level}: {text}");
            }
            assert!(text.contains("info stays"), "{rust_log:?}/{level}: {text}");
        }
        let debug = logged(filter(Some("debug"), "info"));
        assert!(
            debug.contains("our debug") && debug.contains("sdk debug"),
            "{debug}"
        );
        // An invalid RUST_LOG falls back to the level.
        let fallback = logged(filter(Some("=="), "debug"));
        assert!(fallback.contains("our debug"), "{fallback}");
    }
}
