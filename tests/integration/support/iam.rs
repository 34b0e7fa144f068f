//! IAM in moto: the query-protocol calls the tests need (there is no IAM SDK
//! among our crates; curl speaks the protocol and signs with SigV4), and a
//! second moto server that *enforces* IAM, for the least-privilege tests.
//!
//! The environment's shared moto stays unauthenticated. [`IamMoto`] is a
//! moto of its own per test, started from the same virtualenv binary with
//! `INITIAL_NO_AUTH_ACTION_COUNT=3`: its first three calls create an
//! administrator (user, policy `*` on `*`, access key) and from then on
//! moto authorizes every call against the IAM policies created in it — the
//! test's own setup included, which therefore runs as that administrator.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{child_command, env};

/// The account moto puts every IAM user and role in.
pub const ACCOUNT_ID: &str = "123456789012";
/// moto's first unauthenticated calls: CreateUser, PutUserPolicy and
/// CreateAccessKey of the administrator.
const BOOTSTRAP_CALLS: &str = "3";

/// An access key pair.
#[derive(Clone, Debug)]
pub struct Keys {
    pub id: String,
    pub secret: String,
}

/// One IAM query-protocol call (`Action` plus `params`) against the moto at
/// `url`, signed with `keys` (unsigned without: moto then only reads the
/// region and service from a dummy `Authorization` header). Returns moto's
/// XML answer; panics, with the answer, when the call fails.
pub fn iam_call(url: &str, keys: Option<&Keys>, action: &str, params: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-X",
        "POST",
        &format!("{url}/"),
        "-w",
        "\n%{http_code}",
    ]);
    match keys {
        Some(k) => {
            cmd.args(["--aws-sigv4", "aws:amz:us-east-1:iam", "--user"])
                .arg(format!("{}:{}", k.id, k.secret));
        }
        None => {
            cmd.args([
                "-H",
                "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            ]);
        }
    }
    cmd.args(["-d", &format!("Action={action}&Version=2010-05-08")]);
    for (key, value) in params {
        cmd.args(["--data-urlencode", &format!("{key}={value}")]);
    }
    let out = cmd.output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    assert!(
        out.status.success() && code == "200",
        "IAM {action} {params:?} at {url} failed (HTTP {code}): {body}"
    );
    body.to_string()
}

/// The text of the first `<tag>` element in `xml`.
pub fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + len])
}

/// A moto server enforcing IAM, killed on drop; see the module docs.
pub struct IamMoto {
    /// `http://127.0.0.1:<port>`: EC2, STS and IAM alike.
    pub url: String,
    /// Keys of the administrator (policy `*` on `*`).
    pub admin: Keys,
    child: Child,
}

impl IamMoto {
    /// Starts the server under log name `name` and creates its administrator.
    pub fn start(name: &str) -> IamMoto {
        let server = env().var("MCM_TEST_MOTO_SERVER").to_string();
        let log = Path::new(env().var("MCM_TEST_DIR")).join(format!("moto-iam-{name}.log"));
        let port = free_port();
        let log_file = std::fs::File::create(&log).expect("create moto log");
        let child = child_command(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", BOOTSTRAP_CALLS)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("log handle")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("start {server}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let mut moto = IamMoto {
            url,
            admin: Keys {
                id: String::new(),
                secret: String::new(),
            },
            child,
        };
        moto.wait_until_up(&log);
        let all = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
        iam_call(&moto.url, None, "CreateUser", &[("UserName", "admin")]);
        iam_call(
            &moto.url,
            None,
            "PutUserPolicy",
            &[
                ("UserName", "admin"),
                ("PolicyName", "all"),
                ("PolicyDocument", all),
            ],
        );
        moto.admin = access_key(&iam_call(
            &moto.url,
            None,
            "CreateAccessKey",
            &[("UserName", "admin")],
        ));
        moto
    }

    fn wait_until_up(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = std::process::Command::new("curl")
                .args(["-sf", &format!("{}/moto-api/", self.url)])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if up {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the IAM-enforcing moto exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the IAM-enforcing moto did not answer within 60s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An IAM call as the administrator.
    pub fn iam(&self, action: &str, params: &[(&str, &str)]) -> String {
        iam_call(&self.url, Some(&self.admin), action, params)
    }

    /// A user `name` bound to the inline policy `policy` (JSON) only, and
    /// an access key of it.
    pub fn user_with_policy(&self, name: &str, policy: &str) -> Keys {
        self.iam("CreateUser", &[("UserName", name)]);
        self.set_user_policy(name, policy);
        access_key(&self.iam("CreateAccessKey", &[("UserName", name)]))
    }

    /// Replaces user `name`'s inline policy (IAM is immediately consistent
    /// in moto).
    pub fn set_user_policy(&self, name: &str, policy: &str) {
        self.iam(
            "PutUserPolicy",
            &[
                ("UserName", name),
                ("PolicyName", "mcm-provider-aws"),
                ("PolicyDocument", policy),
            ],
        );
    }
}

impl Drop for IamMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn access_key(xml: &str) -> Keys {
    Keys {
        id: xml_value(xml, "AccessKeyId")
            .unwrap_or_else(|| panic!("no AccessKeyId in {xml}"))
            .to_string(),
        secret: xml_value(xml, "SecretAccessKey")
            .unwrap_or_else(|| panic!("no SecretAccessKey in {xml}"))
            .to_string(),
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
