//! Driving the page in a real headless Chromium (Debian's `chromium` and `chromium-driver`)
//! through WebDriver (`fantoccini`): for the end-to-end tests and `mathcoder bench view`.
//! Only built with the `browser` feature.

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The flags the browser runs with: headless, no sandbox (containers), and nothing that
/// reaches the network on its own.
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];

/// Errors starting or driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{0} is not installed (apt-get install -y chromium chromium-driver)")]
    Missing(&'static str),
    #[error("starting {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("chromedriver did not listen on port {0} within 20 s")]
    DriverTimeout(u16),
    #[error("opening a WebDriver session: {0}")]
    Session(String),
    #[error("WebDriver: {0}")]
    Command(String),
}

impl From<fantoccini::error::CmdError> for BrowserError {
    fn from(e: fantoccini::error::CmdError) -> Self {
        BrowserError::Command(e.to_string())
    }
}

/// Why the browser cannot run here, if it cannot (the tests print it and skip).
pub fn unavailable() -> Option<String> {
    for (p, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        if !Path::new(p).exists() {
            return Some(format!(
                "{p} not found ({what}; apt-get install -y chromium chromium-driver)"
            ));
        }
    }
    None
}

/// A chromedriver process, a fresh profile directory and a WebDriver session.
pub struct Browser {
    pub client: Client,
    driver: Driver,
    profile: PathBuf,
}

/// The chromedriver process, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, BrowserError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| BrowserError::Spawn {
        what: "a port for chromedriver".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| BrowserError::Spawn {
            what: "a port for chromedriver".into(),
            source,
        })
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with [`FLAGS`] and a fresh
    /// `--user-data-dir` under `scratch`.
    pub async fn start(scratch: &Path) -> Result<Browser, BrowserError> {
        if !Path::new(CHROMIUM).exists() {
            return Err(BrowserError::Missing(CHROMIUM));
        }
        if !Path::new(CHROMEDRIVER).exists() {
            return Err(BrowserError::Missing(CHROMEDRIVER));
        }
        let port = free_port()?;
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|source| BrowserError::Spawn {
                    what: CHROMEDRIVER.into(),
                    source,
                })?,
        );
        let profile = scratch.join(format!("chromium-profile-{port}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(BrowserError::DriverTimeout(port));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"binary": CHROMIUM, "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| BrowserError::Session(e.to_string()))?;
        Ok(Browser {
            client,
            driver,
            profile,
        })
    }

    /// Waits until `script` (a function body returning a value) returns something truthy, and
    /// returns it.
    pub async fn wait_for(
        &self,
        script: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.client.execute(script, vec![]).await?;
            let truthy = !matches!(v, serde_json::Value::Null | serde_json::Value::Bool(false))
                && v != serde_json::json!(0)
                && v != serde_json::json!("");
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Command(format!(
                    "timed out after {timeout:?} waiting for: {script}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Navigates to `url` and waits until the page has recorded `count` timings in total
    /// (`window.viewTimings`, one per view or list it rendered); returns the last one's ms.
    pub async fn goto_and_time(
        &self,
        url: &str,
        count: usize,
    ) -> Result<(f64, String), BrowserError> {
        self.client.goto(url).await?;
        self.last_timing(count).await
    }

    /// Waits until `window.viewTimings` has `count` entries and returns the last `(ms, label)`.
    pub async fn last_timing(&self, count: usize) -> Result<(f64, String), BrowserError> {
        let v = self
            .wait_for(
                &format!(
                    "return (window.viewTimings && window.viewTimings.length >= {count}) ? window.viewTimings[window.viewTimings.length - 1] : null;"
                ),
                Duration::from_secs(30),
            )
            .await?;
        Ok((
            v["ms"].as_f64().unwrap_or(f64::NAN),
            v["label"].as_str().unwrap_or_default().to_string(),
        ))
    }

    /// Saves a PNG screenshot.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let png = self.client.screenshot().await?;
        std::fs::write(path, png).map_err(|source| BrowserError::Spawn {
            what: format!("writing {}", path.display()),
            source,
        })
    }

    /// Ends the session, then the driver, and removes the profile.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        drop(self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
