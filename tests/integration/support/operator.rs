//! The operator under test, run as the real `machine-controller` binary in a
//! child process against the test environment, watching one namespace.
//!
//! Its stdout and stderr go to `<MCM_TEST_DIR>/operator-<ns>.log` (appended
//! across restarts), which [`Operator::log`] returns for assertion messages.
//! The process dies with the `Operator` value; on Linux it is also started
//! under `setpriv --pdeathsig KILL`, so that it dies with the test thread
//! that started it even when the test binary is killed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::ec2::REGION;
use super::env;

/// The operator binary Cargo built for this test run.
const BINARY: &str = env!("CARGO_BIN_EXE_machine-controller");
/// Runs a program with a parent-death signal (util-linux).
const SETPRIV: &str = "/usr/bin/setpriv";

/// A running (or killed) operator process; see the module docs.
pub struct Operator {
    ns: String,
    extra_args: Vec<String>,
    log_path: PathBuf,
    /// EC2 endpoint the operator talks to (moto, or a fault proxy before it).
    ec2_endpoint: String,
    child: Option<Child>,
}

impl Operator {
    /// Starts the operator with `--namespace <ns>` and `extra_args`, against
    /// the test environment's API server and moto.
    pub fn start(ns: &str, extra_args: &[&str]) -> Operator {
        Self::start_with_endpoint(ns, extra_args, env().var("AWS_ENDPOINT_URL_EC2"))
    }

    /// Like [`Operator::start`], with EC2 reached at `ec2_endpoint` (e.g. a
    /// [`super::proxy::FaultProxy`]).
    pub fn start_with_endpoint(ns: &str, extra_args: &[&str], ec2_endpoint: &str) -> Operator {
        let log_path = Path::new(env().var("MCM_TEST_DIR")).join(format!("operator-{ns}.log"));
        let mut operator = Operator {
            ns: ns.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            log_path,
            ec2_endpoint: ec2_endpoint.to_string(),
            child: None,
        };
        operator.spawn();
        operator
    }

    fn spawn(&mut self) {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let mut args = vec!["--namespace".to_string(), self.ns.clone()];
        args.extend(self.extra_args.iter().cloned());
        let _ = writeln!(
            log,
            "=== test harness: starting {BINARY} {}",
            args.join(" ")
        );
        let mut cmd = if Path::new(SETPRIV).exists() {
            let mut cmd = Command::new(SETPRIV);
            cmd.args(["--pdeathsig", "KILL", "--", BINARY]);
            cmd
        } else {
            Command::new(BINARY)
        };
        let test_env = env();
        cmd.args(&args)
            .env("KUBECONFIG", test_env.kubeconfig())
            .env("AWS_ENDPOINT_URL_EC2", &self.ec2_endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info,mcm_provider_aws=debug")
            .env("RUST_BACKTRACE", "1")
            // Whatever the developer's shell has must not leak into the test.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("MCM_NAMESPACE")
            .env_remove("MCM_TARGET_KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(clone(&log)))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {BINARY}: {e}"));
        self.child = Some(child);
    }

    /// Kills the operator with SIGKILL — no chance to clean up, like a
    /// crashed or OOM-killed pod — and reaps it. A no-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(Some(status)) = child.try_wait() {
                self.note(&format!("the operator had already exited: {status}"));
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            self.note("killed with SIGKILL");
        }
    }

    /// Kills the operator (if it still runs) and starts it again with the
    /// same arguments, appending to the same log.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process ID, while started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the operator logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Where the log is.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn note(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(log, "=== test harness: {what}");
        }
    }
}

fn clone(log: &File) -> File {
    log.try_clone().expect("duplicate the operator log handle")
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
