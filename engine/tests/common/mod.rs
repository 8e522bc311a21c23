//! Helpers shared by the engine's integration tests: an in-process server driven by a
//! [`ManualClock`], small HTTP helpers over [`redrain::client::Conn`], and config snippets.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use quota::clock::{Clock, ManualClock};
use quota::store::NodeShare;
use redrain::client::{Conn, Reply};
use redrain::server::{self, App, Settings};
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The admin token of every test server.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// The operators of every test server, as (name, role, password); sessions last an hour.
pub const OPERATORS: [(&str, &str, &str); 3] = [
    ("vic", "viewer", "vic-password"),
    ("eve", "editor", "eve-password"),
    ("pat", "publisher", "pat-password"),
];

/// [`OPERATORS`] as the engine reads them (hashed once per test binary: argon2 is slow).
pub fn operators() -> redrain::admin::Operators {
    static PARSED: std::sync::OnceLock<redrain::admin::Operators> = std::sync::OnceLock::new();
    PARSED
        .get_or_init(|| {
            let mut text = String::from("session_ttl_s = 3600\n");
            for (name, role, password) in OPERATORS {
                let hash = redrain::admin::hash_password(password);
                text += &format!(
                    "[[operators]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_hash = \"{hash}\"\n"
                );
            }
            redrain::admin::Operators::parse(&text).expect("test operators parse")
        })
        .clone()
}

/// A logged-in operator: the session cookie and CSRF token to send.
#[derive(Debug, Clone)]
pub struct Session {
    /// `redrain_session=...`.
    pub cookie: String,
    /// The CSRF token.
    pub csrf: String,
}

impl Session {
    /// Logs in `name` (one of [`OPERATORS`]).
    pub async fn login(c: &mut Conn, name: &str) -> Session {
        let (_, _, password) = OPERATORS
            .iter()
            .find(|o| o.0 == name)
            .expect("a test operator");
        let r = c
            .post_json(
                "/admin/api/login",
                &json!({"name": name, "password": password}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let set = r.headers["set-cookie"].to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        Session {
            cookie: set.split(';').next().unwrap().to_string(),
            csrf: r.json()["csrf"].as_str().unwrap().to_string(),
        }
    }

    /// Sends a request with the cookie, the CSRF token and a JSON body (none for null).
    pub async fn send(&self, c: &mut Conn, method: Method, path: &str, body: &Value) -> Reply {
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        self.send_raw(c, method, path, body).await
    }

    /// GETs `path` as this operator.
    pub async fn get(&self, c: &mut Conn, path: &str) -> Reply {
        self.send(c, Method::GET, path, &Value::Null).await
    }

    /// POSTs a JSON body to `path` as this operator.
    pub async fn post(&self, c: &mut Conn, path: &str, body: &Value) -> Reply {
        self.send(c, Method::POST, path, body).await
    }

    /// Sends a request with the cookie, the CSRF token and `body` as it is.
    pub async fn send_raw(
        &self,
        c: &mut Conn,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Reply {
        c.send(
            method,
            path,
            &[
                ("cookie", self.cookie.as_str()),
                ("x-csrf-token", self.csrf.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
        .unwrap()
    }
}

/// The seed of every in-process server.
pub const SEED: u64 = 7;

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn ms(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339(rfc3339)
        .expect("valid RFC 3339")
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A campaign spanning 2026..2036 with optional extra TOML lines (caps).
pub fn campaign(id: &str, extra: &str) -> String {
    format!(
        r#"
[[campaigns]]
id = "{id}"
starts_at = "2026-01-01T00:00:00Z"
ends_at = "2036-01-01T00:00:00Z"
{extra}
"#
    )
}

/// A wallet partner `wallet` and a coupon partner `coupons`, both paused (kill switch on): the
/// draw tests see every delivery stay `pending`, whatever listens on these ports.
/// `tests/delivery.rs` runs real partners.
pub const PARTNERS: &str = r#"
[[partners]]
id = "wallet"
kind = "wallet"
url = "http://127.0.0.1:9100/deliver"
rate_per_s = 100000
max_in_flight = 16
timeout_ms = 1000
paused = true

[[partners]]
id = "coupons"
kind = "coupon"
url = "http://127.0.0.1:9101/deliver"
rate_per_s = 1000
max_in_flight = 8
timeout_ms = 1000
paused = true
"#;

/// An always-live round (30-day occurrences from 2026-01-01, no stagger, a 30-day window).
pub fn live_round(id: &str, campaign: &str, max_wins_per_user: u32, no_win_weight: u32) -> String {
    format!(
        r#"
[[rounds]]
id = "{id}"
campaign = "{campaign}"
starts_at = "2026-01-01T00:00:00Z"
duration_s = 2592000
every_s = 2592000
participation_s = 2592000
max_wins_per_user = {max_wins_per_user}
no_win_weight = {no_win_weight}
"#
    )
}

/// A fixed-amount cash prize.
pub fn cash_prize(id: &str, amount_cents: u64, quota: u64, rate_per_s: u32, weight: u32) -> String {
    format!(
        r#"
[[rounds.prizes]]
id = "{id}"
kind = "cash"
amount_cents = {amount_cents}
partner = "wallet"
quota = {quota}
rate_per_s = {rate_per_s}
weight = {weight}
"#
    )
}

/// A coupon prize.
pub fn coupon_prize(id: &str, sku: &str, quota: u64, rate_per_s: u32, weight: u32) -> String {
    format!(
        r#"
[[rounds.prizes]]
id = "{id}"
kind = "coupon"
sku = "{sku}"
partner = "coupons"
quota = {quota}
rate_per_s = {rate_per_s}
weight = {weight}
"#
    )
}

/// A time inside every always-live round's occurrence (2030-01-01T00:00:00Z).
pub fn t0() -> u64 {
    ms("2030-01-01T00:00:00Z")
}

/// An engine served in-process on 127.0.0.1:0, with its time driven by a [`ManualClock`].
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    app: Option<Arc<App>>,
    /// The engine's clock.
    pub clock: Arc<ManualClock>,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its data dir.
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Writes `config` to `dir/config.toml` and serves a fresh engine on `dir/data`.
    pub async fn with_config(dir: &Path, config: &str, clock_ms: u64) -> Server {
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        Server::start(
            &config_path,
            &dir.join("data"),
            Arc::new(ManualClock::new(clock_ms)),
        )
        .await
    }

    /// Opens the data dir and serves it as the only node.
    pub async fn start(config_path: &Path, data_dir: &Path, clock: Arc<ManualClock>) -> Server {
        Server::start_with(config_path, data_dir, clock, NodeShare::default()).await
    }

    /// Opens the data dir and serves it as one node owning `share` of every quota and rate.
    pub async fn start_with(
        config_path: &Path,
        data_dir: &Path,
        clock: Arc<ManualClock>,
        share: NodeShare,
    ) -> Server {
        let settings = settings(config_path, data_dir, share);
        let app = Arc::new(open(&settings, clock.clone()).await);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(
            listener,
            app.clone(),
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        Server {
            addr,
            app: Some(app),
            clock,
            config_path: config_path.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The engine (for white-box looks; tests talk HTTP).
    pub fn app(&self) -> &Arc<App> {
        self.app.as_ref().unwrap()
    }

    /// A new keep-alive connection.
    pub async fn conn(&self) -> Conn {
        Conn::connect(self.addr).await.unwrap()
    }

    /// Signals shutdown and waits until the server has stopped and released the engine.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        // Connection tasks may drop their clones of the App a moment after `run` returns; the
        // reopen in `open` waits for the database to be released.
        drop(self.app.take());
    }

    /// Stops the server and serves the same data dir again (the same config file), at the
    /// clock's current time.
    pub async fn restart(self) -> Server {
        let (config_path, data_dir, clock, share) = (
            self.config_path.clone(),
            self.data_dir.clone(),
            self.clock.clone(),
            self.app().service.store.share(),
        );
        self.stop().await;
        Server::start_with(&config_path, &data_dir, clock, share).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The settings of every in-process test server, as node `share`.
pub fn settings(config_path: &Path, data_dir: &Path, share: NodeShare) -> Settings {
    Settings {
        config_path: config_path.to_path_buf(),
        data_dir: data_dir.to_path_buf(),
        admin_token: TOKEN.to_string(),
        share,
        seed: Some(SEED),
        delivery: Default::default(),
        reconcile_every: Duration::from_secs(3600),
        operators: operators(),
    }
}

/// [`try_open`] that must succeed.
async fn open(settings: &Settings, clock: Arc<ManualClock>) -> App {
    match try_open(settings, clock).await {
        Ok(app) => app,
        Err(e) => panic!("open failed: {e:#}"),
    }
}

/// `server::open`, retried while RocksDB still reports the previous instance's lock: after the
/// last `App` is dropped, the storage's group-commit thread closes the database on its own
/// time and exposes no signal for it, so a reopen right after a stop may briefly see the lock.
pub async fn try_open(settings: &Settings, clock: Arc<ManualClock>) -> anyhow::Result<App> {
    let clock: Arc<dyn Clock> = clock;
    let settings = settings.clone();
    retry_while_locked(move || server::open(&settings, clock.clone())).await
}

/// Runs `open` (of a data dir) on a blocking thread, again while it fails because a stopped
/// engine still holds the data dir's lock (see [`try_open`]).
pub async fn retry_while_locked<T: Send + 'static>(
    open: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
) -> anyhow::Result<T> {
    let open = Arc::new(open);
    let mut last = None;
    for _ in 0..200 {
        let o = open.clone();
        match tokio::task::spawn_blocking(move || o()).await.unwrap() {
            Err(e) if format!("{e:#}").to_lowercase().contains("lock") => {
                if last.is_none() {
                    eprintln!(
                        "the data dir is still locked by the stopped engine; retrying: {e:#}"
                    );
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            opened => return opened,
        }
    }
    panic!("the data dir stayed locked: {:#}", last.unwrap())
}

/// POSTs a draw.
pub async fn draw(c: &mut Conn, round: &str, user: &str, request_id: &str, shakes: u32) -> Reply {
    c.post_json(
        &format!("/v1/rounds/{round}/draw"),
        &json!({"user": user, "request_id": request_id, "shakes": shakes}),
    )
    .await
    .unwrap()
}

/// POSTs a draw that must answer 200; returns its JSON.
pub async fn draw_ok(
    c: &mut Conn,
    round: &str,
    user: &str,
    request_id: &str,
    shakes: u32,
) -> Value {
    let r = draw(c, round, user, request_id, shakes).await;
    assert_eq!(
        r.status,
        200,
        "draw {round}/{user}/{request_id}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// GET that must answer 200; returns its JSON.
pub async fn get_ok(c: &mut Conn, path: &str) -> Value {
    let r = c.get(path).await.unwrap();
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// `issued` of every prize of a round, by prize id.
pub async fn issued(c: &mut Conn, round: &str) -> BTreeMap<String, u64> {
    let v = get_ok(c, &format!("/v1/rounds/{round}")).await;
    v["prizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["issued"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A user's listed wins.
pub async fn wins_of(c: &mut Conn, user: &str) -> Vec<Value> {
    let v = get_ok(c, &format!("/v1/users/{user}/wins")).await;
    assert_eq!(v["truncated"], json!(false));
    v["wins"].as_array().unwrap().clone()
}

/// Every sample of /metrics, keyed by series (name with labels).
pub async fn metrics(c: &mut Conn) -> HashMap<String, f64> {
    let r = c.get("/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    redrain::metrics::parse(std::str::from_utf8(&r.body).unwrap())
}

/// One series of a metrics map (0 when absent).
pub fn metric(m: &HashMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// The counters a draw can move: draws by outcome, wins by prize, replays, refusals, config seq.
pub fn draw_counters(m: &HashMap<String, f64>) -> BTreeMap<String, u64> {
    m.iter()
        .filter(|(k, _)| {
            [
                "redrain_draws_total",
                "redrain_wins_total",
                "redrain_draw_replays_total",
                "redrain_slot_refusals_total",
                "redrain_quota_refusals_total",
                "redrain_config_seq",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), *v as u64))
        .collect()
}

/// Sum of `redrain_wins_total` over prizes.
pub fn total_wins(m: &HashMap<String, f64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("redrain_wins_total{"))
        .map(|(_, v)| *v as u64)
        .sum()
}

/// Sum of `redrain_draws_total` over outcomes.
pub fn total_draws(m: &HashMap<String, f64>) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("redrain_draws_total{"))
        .map(|(_, v)| *v as u64)
        .sum()
}

/// POSTs a config with a bearer token (`None`: no Authorization header).
pub async fn publish(c: &mut Conn, body: &str, content_type: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", content_type)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    c.send(
        Method::POST,
        "/admin/api/config",
        &headers,
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

/// The live config's seq, read through the admin API.
pub async fn config_seq(c: &mut Conn) -> u64 {
    let auth = format!("Bearer {TOKEN}");
    let r = c
        .send(
            Method::GET,
            "/admin/api/config",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["seq"].as_u64().unwrap()
}

/// The wins array of a draw response.
pub fn wins_in(v: &Value) -> Vec<Value> {
    v["wins"].as_array().cloned().unwrap_or_default()
}

/// The engine child process; SIGKILLed when dropped, so a failing test leaves nothing running.
pub struct Engine {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Engine {
    /// Starts `redrain serve` on 127.0.0.1:0 (stderr to `log`) and waits until it listens.
    pub async fn start(config: &Path, data: &Path, log: &Path) -> Engine {
        Engine::start_with(config, data, log, &[]).await
    }

    /// [`Engine::start`] with more `serve` flags.
    pub async fn start_with(config: &Path, data: &Path, log: &Path, extra: &[&str]) -> Engine {
        Engine::spawn(config, data, log, extra, None).await
    }

    /// [`Engine::start`] in a process whose files may not grow past `max_file_bytes`
    /// (`ulimit -f`, with `SIGXFSZ` ignored): a write past it fails with `EFBIG`, as a
    /// full disk fails a write.
    pub async fn start_with_file_limit(
        config: &Path,
        data: &Path,
        log: &Path,
        max_file_bytes: u64,
    ) -> Engine {
        Engine::spawn(config, data, log, &[], Some(max_file_bytes)).await
    }

    async fn spawn(
        config: &Path,
        data: &Path,
        log: &Path,
        extra: &[&str],
        max_file_bytes: Option<u64>,
    ) -> Engine {
        let log_file = std::fs::File::create(log).unwrap();
        let binary = env!("CARGO_BIN_EXE_redrain");
        let mut command = match max_file_bytes {
            None => Command::new(binary),
            Some(bytes) => {
                // The shell ignores SIGXFSZ (an ignored signal stays ignored across exec), sets
                // the limit in KiB and becomes the engine.
                let mut c = Command::new("bash");
                c.args(["-c", r#"trap '' XFSZ && ulimit -f "$0" && exec "$@""#])
                    .arg((bytes / 1024).to_string())
                    .arg(binary);
                c
            }
        };
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-token",
                TOKEN,
                "--seed",
                "1",
                "--threads",
                "2",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redrain");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // The binary prints one line once it listens; a deadline only guards against a hang.
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await.unwrap() == 0 {
                    return None;
                }
                if let Some(rest) = line.trim().strip_prefix("redrain listening on http://") {
                    return Some(rest.parse::<SocketAddr>().unwrap());
                }
            }
        })
        .await;
        match addr {
            Ok(Some(addr)) => Engine {
                child,
                addr,
                _stdout: stdout,
            },
            other => {
                let _ = child.start_kill();
                panic!(
                    "redrain did not start ({other:?}); its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            }
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// An admin API request without a body, with a bearer token (`None`: no Authorization header).
pub async fn admin(c: &mut Conn, method: Method, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    c.send(method, path, &headers, Bytes::new()).await.unwrap()
}
