//! Just enough of a W3C WebDriver client to drive Debian's headless Chromium through
//! ChromeDriver over loopback, for the admin page's end-to-end tests.
//!
//! Written here rather than taken from `fantoccini`: that crate's URL stack brings proc macros
//! that turn on more `syn` features, and `bindgen` (the rocksdb crate's build dependency)
//! rebuilt with them makes `cargo test` and `cargo build` compile RocksDB's C++ twice.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hyper::Method;
use redrain::client::Conn;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a wait for the page lasts before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    conn: Conn,
    session: String,
    artifacts: PathBuf,
    shots: u32,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and a headless Chromium (1280×900) under
    /// it; screenshots go to `artifacts`.
    pub async fn launch(artifacts: PathBuf) -> Browser {
        std::fs::create_dir_all(&artifacts).unwrap();
        let mut driver = Command::new("chromedriver")
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test.sh installs it)");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port: u16 = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse().unwrap();
                }
            }
            panic!("chromedriver exited before it listened");
        })
        .await
        .expect("chromedriver did not start");
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut conn = Conn::connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let v = call(&mut conn, Method::POST, "/session", &caps)
            .await
            .unwrap();
        let session = v["sessionId"].as_str().expect("a session id").to_string();
        Browser {
            driver,
            conn,
            session,
            artifacts,
            shots: 0,
            _profile: profile,
        }
    }

    async fn cmd(&mut self, method: Method, path: &str, body: &Value) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        call(&mut self.conn, method, &path, body).await
    }

    /// Opens `url`.
    pub async fn goto(&mut self, url: &str) {
        self.cmd(Method::POST, "/url", &json!({ "url": url }))
            .await
            .unwrap();
    }

    /// The first element matching `css`, once there is one.
    pub async fn find(&mut self, css: &str) -> String {
        let body = json!({"using": "css selector", "value": css});
        let deadline = Instant::now() + WAIT;
        loop {
            match self.cmd(Method::POST, "/element", &body).await {
                Ok(v) => {
                    return v[ELEMENT]
                        .as_str()
                        .unwrap_or_else(|| panic!("find {css}: {v}"))
                        .to_string()
                }
                Err(e) if Instant::now() > deadline => panic!("no element {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&mut self, css: &str) {
        let el = self.find(css).await;
        self.cmd(Method::POST, &format!("/element/{el}/click"), &json!({}))
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the text of the input matching `css` (as typed: input events fire).
    pub async fn fill(&mut self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.cmd(Method::POST, &format!("/element/{el}/clear"), &json!({}))
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        self.cmd(
            Method::POST,
            &format!("/element/{el}/value"),
            &json!({ "text": text }),
        )
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The rendered text of the element matching `css`.
    pub async fn text(&mut self, css: &str) -> String {
        let el = self.find(css).await;
        let v = self
            .cmd(Method::GET, &format!("/element/{el}/text"), &Value::Null)
            .await
            .unwrap();
        v.as_str().unwrap_or_default().to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its result.
    pub async fn js(&mut self, script: &str, args: Value) -> Value {
        self.cmd(
            Method::POST,
            "/execute/sync",
            &json!({"script": script, "args": args}),
        )
        .await
        .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Waits until `script` (a function body returning a boolean) is true in the page,
    /// checking it every 25 ms; fails the test after [`WAIT`], saying what it waited for.
    pub async fn wait_until(&mut self, what: &str, script: &str, args: Value) {
        let deadline = Instant::now() + WAIT;
        while self.js(script, args.clone()).await != json!(true) {
            if Instant::now() > deadline {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("timed out waiting until {what}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the text of `css` contains `needle`.
    pub async fn wait_text(&mut self, css: &str, needle: &str) {
        let script = "const e = document.querySelector(arguments[0]); \
                      return !!e && e.textContent.includes(arguments[1]);";
        self.wait_until(
            &format!("{css} shows {needle}"),
            script,
            json!([css, needle]),
        )
        .await;
    }

    /// Saves a PNG of the window as `NN-name.png` in the artifacts dir.
    pub async fn screenshot(&mut self, name: &str) {
        use base64::Engine;
        let v = self
            .cmd(Method::GET, "/screenshot", &Value::Null)
            .await
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        self.shots += 1;
        let path = self.artifacts.join(format!("{:02}-{name}.png", self.shots));
        std::fs::write(&path, png).unwrap();
    }

    /// Ends the session and stops ChromeDriver.
    pub async fn quit(mut self) {
        let _ = self.cmd(Method::DELETE, "", &Value::Null).await;
        let _ = self.driver.kill().await;
    }
}

/// One WebDriver command: its `value`, or the error's message.
async fn call(conn: &mut Conn, method: Method, path: &str, body: &Value) -> Result<Value, String> {
    let bytes = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    let r = conn
        .send(
            method,
            path,
            &[("content-type", "application/json; charset=utf-8")],
            bytes,
        )
        .await
        .map_err(|e| e.0)?;
    let v = r.json();
    if r.status == 200 {
        Ok(v["value"].clone())
    } else {
        Err(format!("{} {}", r.status, v["value"]["message"]))
    }
}
