//! A headless Chromium driven over WebDriver (the system's `chromium` and `chromedriver`, as
//! Debian packages them), for the Integration page's tests.
//!
//! Without the two programs a test says so and passes, unless `REQUIRE_BROWSER=1` (as
//! `.ci/run` sets), which makes their absence a failure.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Generous: the first start of a browser on a small, loaded machine takes seconds.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// A running chromedriver with one browser session; both end when this is dropped.
pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` × `height`, or `None`
    /// (after saying why) when they are not installed and not required.
    pub(crate) async fn start(width: u32, height: u32) -> Option<Self> {
        let installed = [CHROMIUM, CHROMEDRIVER]
            .iter()
            .all(|path| std::path::Path::new(path).exists());
        if !installed {
            assert!(
                std::env::var_os("REQUIRE_BROWSER").is_none(),
                "REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "skipped: no {CHROMIUM} / {CHROMEDRIVER} (set REQUIRE_BROWSER=1 to fail instead)"
            );
            return None;
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let ready = tokio::time::timeout(PATIENCE, async {
            while tokio::net::TcpStream::connect(address).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "chromedriver did not listen on {address}");

        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://{address}"))
            .await
            .expect("a WebDriver session");
        Some(Self { client, driver })
    }
}

impl Browser {
    /// Ends the browser session, then the driver.
    pub(crate) async fn finish(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session goes with its driver; nothing is left running.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
