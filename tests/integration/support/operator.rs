//! The operator under test, run as the real `machine-controller` binary in a
//! child process against the test environment, watching one namespace.
//!
//! Its stdout and stderr go to `<MCM_TEST_DIR>/operator-<ns>.log` (appended
//! across restarts), which [`Operator::log`] returns for assertion messages.
//! The process dies with the `Operator` value; on Linux it is also started
//! under `setpriv --pdeathsig KILL`, so that it dies with the test thread
//! that started it even when the test binary is killed.
//!
//! Its metrics and health endpoints listen on one free loopback port
//! (`127.0.0.1:0`), which [`Operator::admin_address`] reads from the log;
//! [`Launch`] runs it with another kubeconfig (e.g. a ServiceAccount token)
//! or under another log name (several operators for one namespace).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ec2::REGION;
use super::{child_command, env};

/// The operator binary Cargo built for this test run.
const BUILT: &str = env!("CARGO_BIN_EXE_machine-controller");

/// The operator binary to run: `MCM_OPERATOR_BINARY` when set (`make bench`
/// measures the release build with it), else the one built for the tests.
fn binary() -> String {
    std::env::var("MCM_OPERATOR_BINARY").unwrap_or_else(|_| BUILT.to_string())
}

/// A running (or killed) operator process; see the module docs.
pub struct Operator {
    ns: String,
    extra_args: Vec<String>,
    log_path: PathBuf,
    /// EC2 endpoint the operator talks to (moto, or a fault proxy before it).
    ec2_endpoint: String,
    /// STS endpoint the operator talks to.
    sts_endpoint: String,
    /// Environment variables set on top of the defaults.
    extra_env: Vec<(String, String)>,
    /// Kubeconfig of the control cluster.
    kubeconfig: PathBuf,
    child: Option<Child>,
}

/// Options of [`Operator::launch`] beyond the namespace and flags.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Kubeconfig of the control cluster (default: the environment's admin).
    pub kubeconfig: Option<PathBuf>,
    /// Log as `operator-<ns>-<name>.log` instead of `operator-<ns>.log`.
    pub name: Option<String>,
    /// EC2 endpoint (default: the environment's moto).
    pub ec2_endpoint: Option<String>,
    /// STS endpoint (default: the environment's moto).
    pub sts_endpoint: Option<String>,
    /// More environment variables of the process (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl Operator {
    /// Starts the operator with `--namespace <ns>` and `extra_args`, against
    /// the test environment's API server and moto.
    pub fn start(ns: &str, extra_args: &[&str]) -> Operator {
        Self::launch(ns, extra_args, Launch::default())
    }

    /// Like [`Operator::start`], with EC2 reached at `ec2_endpoint` (e.g. a
    /// [`super::proxy::FaultProxy`]).
    pub fn start_with_endpoint(ns: &str, extra_args: &[&str], ec2_endpoint: &str) -> Operator {
        let launch = Launch {
            ec2_endpoint: Some(ec2_endpoint.to_string()),
            ..Launch::default()
        };
        Self::launch(ns, extra_args, launch)
    }

    /// Like [`Operator::start`], with the options of `launch`.
    pub fn launch(ns: &str, extra_args: &[&str], launch: Launch) -> Operator {
        let log_name = match &launch.name {
            Some(name) => format!("operator-{ns}-{name}.log"),
            None => format!("operator-{ns}.log"),
        };
        let mut operator = Operator {
            ns: ns.to_string(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            log_path: Path::new(env().var("MCM_TEST_DIR")).join(log_name),
            ec2_endpoint: launch
                .ec2_endpoint
                .unwrap_or_else(|| env().var("AWS_ENDPOINT_URL_EC2").to_string()),
            sts_endpoint: launch
                .sts_endpoint
                .unwrap_or_else(|| env().var("MCM_TEST_MOTO_URL").to_string()),
            extra_env: launch.env,
            kubeconfig: launch
                .kubeconfig
                .unwrap_or_else(|| env().kubeconfig().to_path_buf()),
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
        // Many operators run side by side: one free loopback port each for
        // metrics and probes, unless the test chose.
        let mut args = Vec::new();
        if !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--metrics-bind-address"))
        {
            args.push("--metrics-bind-address=127.0.0.1:0".to_string());
        }
        if !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--health-bind-address"))
        {
            args.push("--health-bind-address=127.0.0.1:0".to_string());
        }
        args.extend(["--namespace".to_string(), self.ns.clone()]);
        args.extend(self.extra_args.iter().cloned());
        let _ = writeln!(
            log,
            "=== test harness: starting {} {}",
            binary(),
            args.join(" ")
        );
        let mut cmd = child_command(binary());
        cmd.args(&args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("AWS_ENDPOINT_URL_EC2", &self.ec2_endpoint)
            // STS (web identity, AssumeRole) is served by moto as well.
            .env("AWS_ENDPOINT_URL_STS", &self.sts_endpoint)
            .env("AWS_REGION", REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("RUST_LOG", "info,mcm_provider_aws=debug")
            .env("RUST_BACKTRACE", "1")
            // One malloc arena and a fixed mmap threshold, as
            // docs/operations.md#memory advises for glibc builds (the
            // image's musl ignores both): glibc's arena per thread added
            // ~10 MiB at 1,000 Machines, its sliding mmap threshold ~4 MiB
            // (DescribeInstances pages then stay in the heap once freed).
            // `MALLOC_ARENA_MAX=8 MCM_OPERATOR_BINARY=... make bench`
            // measures glibc's default.
            .env(
                "MALLOC_ARENA_MAX",
                std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "1".into()),
            )
            .env(
                "MALLOC_MMAP_THRESHOLD_",
                std::env::var("MALLOC_MMAP_THRESHOLD_").unwrap_or_else(|_| "262144".into()),
            )
            // Whatever the developer's shell has must not leak into the test.
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("MCM_NAMESPACE")
            .env_remove("MCM_TARGET_KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(clone(&log)))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary()));
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

    /// The address of the latest run's metrics and health listener, once
    /// it logged it (text or JSON logs).
    pub fn admin_address(&self) -> Option<SocketAddr> {
        let log = self.log();
        let run = log.rsplit("=== test harness: starting").next()?;
        run.lines()
            .filter(|l| l.contains("serving metrics"))
            .filter_map(|l| {
                let (_, rest) = l
                    .split_once("address=")
                    .or_else(|| l.split_once("\"address\":\""))?;
                rest.split(|c: char| c.is_whitespace() || c == '"')
                    .next()?
                    .parse()
                    .ok()
            })
            .next_back()
    }

    /// `GET path` on the operator's metrics/health listener: the status
    /// code and body, or `None` while it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.admin_address()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// Sends SIGTERM, as the kubelet does when a Pod stops, and waits up to
    /// `timeout` for the process to exit; its exit status, if it did.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.note(&format!("exited after SIGTERM: {status}"));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
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
