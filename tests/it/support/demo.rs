//! Harness for the `demo` tests (and two-process ones): builds `examples/server/` once, runs it as a child
//! process on a loopback port, and talks to it over HTTP/1.1 and gRPC.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The admin token every server gets unless a test says otherwise.
pub(crate) const ADMIN_TOKEN: &str = "demo-admin-token-for-tests";
/// A fixed valid pepper, so startup doesn't warn unless a test wants it to.
pub(crate) const PEPPER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Generous: the first test may wait for the example to compile, and the machine is small.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Well under the server's default header read timeout, which also closes idle connections.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The environment variables the server reads; removed from the child's environment unless a
/// test sets them, so the developer's shell can't change a test's outcome.
const SERVER_VARS: [&str; 10] = [
    "ADDR",
    "LAST_USED_FLUSH_MS",
    "HEADER_READ_TIMEOUT_MS",
    "MAX_CONNECTIONS",
    "ADMIN_TOKEN",
    "TENANT_TOKENS",
    "TRUSTED_PROXIES",
    "API_KEY_PEPPER",
    "RUST_LOG",
    // CI exports it for the PostgreSQL tests; a demo test that wants a database says so.
    "DATABASE_URL",
];

// ===== building the example =====

/// Path of the compiled example, built once per test run with the features this test was
/// built with (`cargo test --features axum,admin` → `cargo build --features axum,admin`, no
/// rebuild).
pub(crate) fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_server)
}

fn build_server() -> PathBuf {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    // `cargo test` runs this binary with variables describing the package (CARGO_MANIFEST_DIR,
    // CARGO_PKG_NAME, ...). Build scripts that watch them (ring's does) would see them change
    // and rebuild their crate and everything above it: ~12 s, and again at the next `cargo
    // test`. Without them, the nested build finds what `cargo test` built and does nothing.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&name.as_ref())
        {
            cargo.env_remove(name.as_ref());
        }
    }
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--example",
            "server",
            "--features",
            &features().join(","),
        ])
        .args(["--message-format", "json-render-diagnostics"]);
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let output = cargo.output().expect("run cargo to build the example");
    assert!(
        output.status.success(),
        "building examples/server/ failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact"
                && message["target"]["name"] == "server"
                && message["target"]["kind"][0] == "example"
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo reports the example's executable")
}

/// The crate features this test binary was built with.
fn features() -> Vec<&'static str> {
    [
        ("axum", cfg!(feature = "axum")),
        ("metrics", cfg!(feature = "metrics")),
        ("admin", cfg!(feature = "admin")),
        ("sqlite", cfg!(feature = "sqlite")),
        ("postgres", cfg!(feature = "postgres")),
        ("redis", cfg!(feature = "redis")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

// ===== running it =====

/// How to start a server: arguments and environment on top of the defaults (admin token,
/// pepper and `--addr 127.0.0.1:0`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Launch {
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    default_addr: bool,
}

impl Launch {
    /// The defaults: `--addr 127.0.0.1:0`, `ADMIN_TOKEN` and a valid `API_KEY_PEPPER`.
    pub(crate) fn new() -> Self {
        Self {
            args: Vec::new(),
            env: vec![
                ("ADMIN_TOKEN".into(), Some(ADMIN_TOKEN.into())),
                ("API_KEY_PEPPER".into(), Some(PEPPER.into())),
            ],
            default_addr: true,
        }
    }

    pub(crate) fn arg(mut self, arg: &str) -> Self {
        if arg == "--addr" || arg.starts_with("--addr=") {
            self.default_addr = false;
        }
        self.args.push(arg.to_owned());
        self
    }

    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), Some(value.to_owned())));
        self
    }

    pub(crate) fn env_remove(mut self, name: &str) -> Self {
        self.env.push((name.to_owned(), None));
        self
    }

    /// Listen wherever `ADDR` or the default says, not on the test's `127.0.0.1:0`.
    pub(crate) fn without_addr_flag(mut self) -> Self {
        self.default_addr = false;
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(server_binary());
        if self.default_addr {
            command.args(["--addr", "127.0.0.1:0"]);
        }
        command.args(&self.args);
        for name in SERVER_VARS {
            command.env_remove(name);
        }
        for (name, value) in &self.env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Starts the server and waits until it prints its address.
    pub(crate) async fn start(self) -> DemoServer {
        let mut child = self.command().spawn().expect("spawn the demo server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_task = tokio::spawn(collect(
            child.stderr.take().expect("piped stderr"),
            Arc::clone(&stderr),
        ));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();

        let mut generated_admin_token = None;
        let addr = tokio::time::timeout(STARTUP_TIMEOUT, async {
            loop {
                // `None` at end of output: the server exited without listening.
                let line = stdout
                    .next_line()
                    .await
                    .expect("read the server's stdout")?;
                if let Some(token) = line.strip_prefix("admin token: ") {
                    generated_admin_token = Some(token.to_owned());
                } else if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some(addr.parse::<SocketAddr>().expect("a socket address"));
                }
            }
        })
        .await;
        let Ok(Some(addr)) = addr else {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), stderr_task).await;
            panic!(
                "the demo server did not print `listening on http://…` within \
                 {STARTUP_TIMEOUT:?}; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        // Keep reading stdout: a closed pipe would make the server's next print fail.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });

        DemoServer {
            child,
            addr,
            generated_admin_token,
            stderr,
            stderr_task: Some(stderr_task),
            // Idle connections are dropped before the server's header read timeout (10 s by
            // default) would close them, so a request never races that close.
            http: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(CLIENT_IDLE_TIMEOUT)
                .build_http(),
        }
    }

    /// Runs the server expecting it to stop by itself (a configuration error, `--help`).
    pub(crate) async fn run_to_exit(self) -> Output {
        let child = self.command().spawn().expect("spawn the demo server");
        tokio::time::timeout(STARTUP_TIMEOUT, child.wait_with_output())
            .await
            .expect("the server exits by itself")
            .expect("collect the server's output")
    }
}

async fn collect(stream: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut text = into.lock().unwrap();
        text.push_str(&line);
        text.push('\n');
    }
}

/// A running demo server. Dropping it kills the process, so a failed test leaves nothing
/// behind; the server's log is printed when the test is failing.
pub(crate) struct DemoServer {
    child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) generated_admin_token: Option<String>,
    stderr: Arc<Mutex<String>>,
    stderr_task: Option<JoinHandle<()>>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "--- demo server log ---\n{}",
                self.stderr.lock().unwrap_or_else(|e| e.into_inner())
            );
        }
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.text()))
    }

    pub(crate) fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .map_or("", |value| value.to_str().unwrap_or(""))
    }
}

impl DemoServer {
    /// Everything the server wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The log once it contains `needle` (it is read from a pipe, so a line the server wrote
    /// may arrive a moment later); panics if it doesn't within the startup timeout.
    pub(crate) async fn log_containing(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log never showed {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a request without a body; `headers` are `(name, value)` pairs.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.request_with_body(method, path, headers, "").await
    }

    /// Sends a request with `body`; `headers` are `(name, value)` pairs.
    pub(crate) async fn request_with_body(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(HeaderName::from_bytes(name.as_bytes()).unwrap(), *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap();
        let exchange = async {
            let response = self.http.request(request).await.expect("send the request");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.expect("read the body").to_bytes();
            Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} took over {REQUEST_TIMEOUT:?}"))
    }

    /// `GET path` without credentials.
    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[]).await
    }

    /// `GET path` with `X-API-KEY: key`.
    pub(crate) async fn get_with_key(&self, path: &str, key: &str) -> Reply {
        self.request(Method::GET, path, &[("x-api-key", key)]).await
    }

    /// An admin request with the right token.
    pub(crate) async fn admin(&self, method: Method, path: &str) -> Reply {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        self.request(method, path, &[(AUTHORIZATION.as_str(), &bearer)])
            .await
    }

    /// An admin request with the right token and a JSON body.
    pub(crate) async fn admin_json(&self, method: Method, path: &str, body: &str) -> Reply {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let headers = [
            (AUTHORIZATION.as_str(), bearer.as_str()),
            (CONTENT_TYPE.as_str(), "application/json"),
        ];
        self.request_with_body(method, path, &headers, body).await
    }

    /// Creates a key for `account` and returns the created-key object (201 asserted).
    pub(crate) async fn create_key(&self, account: &str) -> Value {
        let reply = self
            .admin(Method::POST, &format!("/admin/accounts/{account}/keys"))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// Creates a key for `account` with the JSON `body` and returns the created-key object
    /// (201 asserted).
    pub(crate) async fn create_key_with(&self, account: &str, body: &str) -> Value {
        let reply = self
            .admin_json(
                Method::POST,
                &format!("/admin/accounts/{account}/keys"),
                body,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }

    /// `POST /admin/accounts/{account}/keys/{id}/{action}`.
    pub(crate) async fn key_action(&self, account: &str, id: &str, action: &str) -> Reply {
        self.admin(
            Method::POST,
            &format!("/admin/accounts/{account}/keys/{id}/{action}"),
        )
        .await
    }

    /// The account's key records (200 asserted).
    pub(crate) async fn list_keys(&self, account: &str) -> Vec<Value> {
        let reply = self
            .admin(Method::GET, &format!("/admin/accounts/{account}/keys"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["keys"]
            .as_array()
            .expect("a `keys` array")
            .clone()
    }

    /// Opens `GET path` with `X-API-KEY: key` and returns the response once its head is in,
    /// its body still streaming.
    pub(crate) async fn open_stream(&self, path: &str, key: &str) -> OpenStream {
        let request = Request::get(format!("http://{}{path}", self.addr))
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .unwrap_or_else(|_| panic!("GET {path} took over {REQUEST_TIMEOUT:?}"))
            .expect("send the request");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        OpenStream {
            body: response.into_body(),
            text: String::new(),
        }
    }

    /// A gRPC health client over a fresh h2c channel to the server's one port.
    pub(crate) async fn health_client(&self) -> HealthClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .expect("open an h2c channel to the server");
        HealthClient::new(channel)
    }

    /// gRPC `grpc.health.v1.Health/Check` for the overall server, with the key (if any) in
    /// the `x-api-key` metadata. Returns the wire serving status.
    pub(crate) async fn grpc_health(&self, key: Option<&str>) -> Result<i32, tonic::Status> {
        self.health_client()
            .await
            .check(with_key(HealthCheckRequest::default(), key))
            .await
            .map(|response| response.into_inner().status)
    }

    /// Sends SIGTERM, as a service manager would.
    pub(crate) fn send_sigterm(&self) {
        let pid = self.child.id().expect("the server is running").to_string();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("query the server").is_none()
    }

    /// Waits up to `within` for the process to exit; returns its status and its whole log.
    pub(crate) async fn wait_for_exit(mut self, within: Duration) -> (ExitStatus, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {within:?}"))
            .expect("wait for the server");
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        (status, self.log())
    }
}

/// Two servers on one fresh PostgreSQL schema, each also given `args`, their connections
/// named `<schema>_<test>_a` and `…_b`; `None` without `DATABASE_URL` (after saying why). The
/// schema lives as long as the first element.
#[cfg(feature = "postgres")]
pub(crate) async fn two_servers(
    test: &str,
    args: &[&str],
) -> Option<(super::db::postgres::Schema, DemoServer, DemoServer)> {
    let schema = super::db::postgres::Schema::create().await?;
    let start = |name: &str| {
        let url = format!(
            "{}&application_name={}_{test}_{name}",
            schema.url_with_search_path(),
            schema.name
        );
        let mut launch = Launch::new().arg("--database-url").arg(&url);
        for arg in args {
            launch = launch.arg(arg);
        }
        launch.env("RUST_LOG", "info,sqlx=warn").start()
    };
    let a = start("a").await;
    let b = start("b").await;
    Some((schema, a, b))
}

/// A response body still streaming, read frame by frame.
pub(crate) struct OpenStream {
    body: hyper::body::Incoming,
    /// Everything received so far.
    pub(crate) text: String,
}

impl OpenStream {
    /// Reads until the text received so far contains `needle`; panics if the body ends or
    /// nothing more comes within 30 s.
    pub(crate) async fn read_until(&mut self, needle: &str) {
        while !self.text.contains(needle) {
            let frame = tokio::time::timeout(REQUEST_TIMEOUT, self.next_frame())
                .await
                .unwrap_or_else(|_| panic!("nothing within 30 s; got {:?}", self.text));
            match frame {
                Some(data) => self.text.push_str(&data),
                None => panic!("the stream ended before {needle:?}; got {:?}", self.text),
            }
        }
    }

    /// Reads until the body ends (`true`), or 30 s pass without an end (`false`).
    pub(crate) async fn ends(&mut self) -> bool {
        let end = async {
            while let Some(data) = self.next_frame().await {
                self.text.push_str(&data);
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, end).await.is_ok()
    }

    /// The next data frame's text; `None` at the end of the body (or an error ending it).
    async fn next_frame(&mut self) -> Option<String> {
        loop {
            match self.body.frame().await?.ok()?.into_data() {
                Ok(data) => return Some(String::from_utf8_lossy(&data).into_owned()),
                Err(_trailers) => continue,
            }
        }
    }
}

/// Reads until the server closes the connection (EOF or a reset); returns what it sent, or
/// `None` if it kept the connection open for the whole bound.
pub(crate) async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    bound: Duration,
) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(bound, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

/// A gRPC request carrying `key` (if any) in the `x-api-key` metadata.
pub(crate) fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("x-api-key", key.parse().expect("a metadata value"));
    }
    request
}
