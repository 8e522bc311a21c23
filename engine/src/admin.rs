//! Who may use the admin page and API, and the record of what they did.
//!
//! Operators come from the operators file (argon2id password hashes, one role each) and log in
//! to a session: a random cookie the browser sends by itself, plus a CSRF token the page must
//! echo in `X-CSRF-Token` on every change, so a foreign page cannot act through the cookie.
//! Sessions live in memory and expire. Scripts use the bearer token instead and act as the
//! publisher `api-token`. Every change is written to the audit log in RocksDB (meta
//! `audit/...`), in the same commit as the change where there is one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use quota::config::RawConfig;
use serde::{Deserialize, Serialize};
use warp::http::{header, HeaderMap, StatusCode};
use warp::Filter;

use crate::delivery::WindowLimiter;
use crate::error::ApiError;
use crate::storage::{Cf, Op, Storage, StorageError};

/// The session cookie.
pub const SESSION_COOKIE: &str = "redrain_session";
/// The header carrying the session's CSRF token on changes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts when the operators file does not say.
pub const DEFAULT_SESSION_TTL_S: u64 = 8 * 3600;
/// Most sessions held at once; a login past it ends the one closest to expiring.
pub const MAX_SESSIONS: usize = 10_000;
/// Most operators in the file.
pub const MAX_OPERATORS: usize = 1000;
/// Login attempts allowed per operator name and minute.
pub const MAX_LOGINS_PER_MIN: u32 = 10;
/// Most bytes of audit entries one listing answers.
pub const MAX_AUDIT_BYTES: usize = 4 << 20;
/// Walks over drop points running at once.
pub const MAX_SCANS: usize = 2;
/// Logins waiting for their password check at once.
pub const MAX_LOGINS_WAITING: usize = 16;
/// The name bearer-token requests act under.
pub const TOKEN_OPERATOR: &str = "api-token";
/// Who the audit log names for a config file published at start-up.
pub const FILE_OPERATOR: &str = "config-file";
/// Most audit entries one request lists.
pub const MAX_AUDIT_LISTED: usize = 1000;

/// What an operator may do; each role may do all that the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also edits the draft and uploads point files.
    Editor,
    /// Also publishes, flips kill switches and re-drives deliveries.
    Publisher,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Publisher => "publisher",
        }
    }
}

/// The operators file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperators {
    #[serde(default)]
    session_ttl_s: Option<u64>,
    #[serde(default)]
    operators: Vec<RawOperator>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    name: String,
    role: Role,
    password_hash: String,
}

/// The operators who may log in, validated.
#[derive(Debug, Clone, Default)]
pub struct Operators {
    /// name → (role, argon2 PHC string).
    by_name: HashMap<String, (Role, String)>,
    /// How long a session lasts.
    pub session_ttl_ms: u64,
}

impl Operators {
    /// Parses an operators file; every problem names its field (`operators[1].password_hash`).
    pub fn parse(text: &str) -> Result<Operators, Vec<String>> {
        let raw: RawOperators = toml::from_str(text).map_err(|e| vec![e.message().to_string()])?;
        let mut problems = Vec::new();
        let mut by_name = HashMap::new();
        if raw.operators.len() > MAX_OPERATORS {
            problems.push(format!("operators: at most {MAX_OPERATORS}"));
        }
        for (i, op) in raw.operators.into_iter().enumerate() {
            if let Err(e) = quota::ids::check_id(&op.name) {
                problems.push(format!("operators[{i}].name: {e}"));
            } else if op.name == TOKEN_OPERATOR {
                problems.push(format!("operators[{i}].name: {TOKEN_OPERATOR} is reserved"));
            }
            if PasswordHash::new(&op.password_hash).is_err() {
                problems.push(format!(
                    "operators[{i}].password_hash: not an argon2 hash (make one with `redrain hash-password`)"
                ));
            }
            if by_name
                .insert(op.name.clone(), (op.role, op.password_hash))
                .is_some()
            {
                problems.push(format!(
                    "operators[{i}].name: {:?} is listed twice",
                    op.name
                ));
            }
        }
        let ttl_s = raw.session_ttl_s.unwrap_or(DEFAULT_SESSION_TTL_S);
        if !(60..=30 * 86_400).contains(&ttl_s) {
            problems.push("session_ttl_s: must be from 60 to 2592000 (30 days)".into());
        }
        if problems.is_empty() {
            Ok(Operators {
                by_name,
                session_ttl_ms: ttl_s * 1000,
            })
        } else {
            Err(problems)
        }
    }

    /// Reads and parses the operators file.
    pub fn load(path: &Path) -> anyhow::Result<Operators> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading operators {}: {e}", path.display()))?;
        Operators::parse(&text).map_err(|problems| {
            anyhow::anyhow!(
                "operators file {} is invalid:\n  {}",
                path.display(),
                problems.join("\n  ")
            )
        })
    }

    /// The operator's role if the password is theirs. Slow on purpose (argon2): call it off
    /// the async workers. An unknown name costs a hash too, so timing does not tell names.
    fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let (role, phc) = match self.by_name.get(name) {
            Some((role, phc)) => (Some(*role), phc.as_str()),
            None => (None, dummy_hash()),
        };
        let hash = PasswordHash::new(phc).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        role.filter(|_| ok)
    }
}

fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password of anyone"))
}

/// An argon2id PHC string for `password`, with a random salt (`redrain hash-password`).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// Who made a request.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// Operator name (`api-token` for the bearer token).
    pub name: String,
    /// Their role.
    pub role: Role,
}

/// What a request presented: the bearer token, the session cookie and the CSRF header.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    bearer: Option<String>,
    session: Option<String>,
    csrf: Option<String>,
    /// The method changes something (anything but GET and HEAD).
    mutates: bool,
    /// A credential header (or the session cookie) that is not printable ASCII: the request is
    /// refused naming it, whatever else it carries.
    unreadable: Option<&'static str>,
}

/// Extracts a request's [`Credentials`]. It never rejects: a header it cannot read is
/// refused, naming it, once the route is known (a rejection would let the request fall
/// through to other routes and end as a 404 or 405).
pub fn credentials(
) -> impl Filter<Extract = (Credentials,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().and(warp::method()).map(
        |headers: HeaderMap, method: warp::http::Method| {
            Credentials::from_headers(&headers, &method)
        },
    )
}

impl Credentials {
    fn from_headers(headers: &HeaderMap, method: &warp::http::Method) -> Self {
        let mut unreadable = None;
        let mut text = |name: &'static str, value: Result<Option<String>, ()>| {
            value.unwrap_or_else(|()| {
                unreadable.get_or_insert(name);
                None
            })
        };
        let auth = text("authorization", header_text(headers, header::AUTHORIZATION));
        let csrf = text(CSRF_HEADER, header_text(headers, CSRF_HEADER));
        let session = text("cookie", session_cookie(headers));
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        let bearer = auth
            .as_deref()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_string());
        Credentials {
            bearer,
            session,
            csrf,
            // (`server::serve` hands every HEAD to the routes as a GET.)
            mutates: *method != warp::http::Method::GET,
            unreadable,
        }
    }

    /// 400 naming the credential header that could not be read, if there is one.
    fn readable(&self) -> Result<(), ApiError> {
        match self.unreadable {
            Some(name) => Err(ApiError::header(
                name,
                "credentials must be printable ASCII",
            )),
            None => Ok(()),
        }
    }
}

/// A header's value as text (`Err` when it is not printable ASCII).
fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Result<Option<String>, ()> {
    headers
        .get(name)
        .map(|v| v.to_str().map(String::from).map_err(|_| ()))
        .transpose()
}

/// The session cookie's value (`Err` when it is not printable ASCII). The other cookies are
/// skipped unread: other pages on the host may set cookies of any bytes, and those must not
/// lock an operator out.
fn session_cookie(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let pairs = headers
        .get_all(header::COOKIE)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'));
    for pair in pairs {
        let value = pair
            .trim_ascii()
            .strip_prefix(SESSION_COOKIE.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"="));
        if let Some(value) = value {
            return match std::str::from_utf8(value) {
                Ok(v) if v.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(v.to_string())),
                _ => Err(()),
            };
        }
    }
    Ok(None)
}

#[derive(Debug, Clone)]
struct Session {
    name: String,
    role: Role,
    csrf: String,
    expires_at_ms: u64,
}

/// A session as the page sees it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    /// Operator name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The token to send in `X-CSRF-Token`.
    pub csrf: String,
    /// RFC 3339.
    pub expires_at: String,
}

impl Session {
    fn view(&self) -> SessionView {
        SessionView {
            name: self.name.clone(),
            role: self.role,
            csrf: self.csrf.clone(),
            expires_at: quota::config::format_ms(self.expires_at_ms),
        }
    }
}

/// A login's turn at the password check ([`Admin::login_turn`]).
pub struct LoginTurn<'a> {
    _queued: tokio::sync::SemaphorePermit<'a>,
    _checking: tokio::sync::SemaphorePermit<'a>,
}

/// Operators, their sessions and the bearer token.
#[derive(Debug)]
pub struct Admin {
    operators: Operators,
    token: String,
    sessions: parking_lot::Mutex<HashMap<String, Session>>,
    logins: WindowLimiter,
    /// Logins admitted to wait for a password check; past it a login is refused (429).
    waiting: tokio::sync::Semaphore,
    /// Password checks running at once: each costs a core for tens of milliseconds, so a flood
    /// of logins (under many names) waits here instead of taking the draws' cores.
    checking: tokio::sync::Semaphore,
    /// Held while the draft is saved, discarded or published, so a publish makes exactly the
    /// draft its caller reviewed.
    pub drafts: tokio::sync::Mutex<()>,
    /// Uploads read and parsed at once (each up to 64 MiB).
    pub uploads: tokio::sync::Semaphore,
    /// Walks over drop points (the map, the task list) at once: each may read millions.
    pub scans: tokio::sync::Semaphore,
    /// Tells apart audit entries written in the same millisecond.
    audit_n: AtomicU32,
}

impl Admin {
    /// Operators from the file, and the bearer token of scripts.
    pub fn new(operators: Operators, token: String) -> Admin {
        Admin {
            operators,
            token,
            sessions: Default::default(),
            logins: WindowLimiter::new(MAX_LOGINS_PER_MIN, 60_000),
            waiting: tokio::sync::Semaphore::new(MAX_LOGINS_WAITING),
            checking: tokio::sync::Semaphore::new(1),
            drafts: Default::default(),
            uploads: tokio::sync::Semaphore::new(1),
            scans: tokio::sync::Semaphore::new(MAX_SCANS),
            audit_n: AtomicU32::new(0),
        }
    }

    /// Admits a login attempt for `name` to the password check: at most
    /// [`MAX_LOGINS_PER_MIN`] attempts a minute per name (each attempt counts, so guesses sent
    /// in parallel cannot slip past), then a turn in a bounded queue; checks run one at a
    /// time. Hold the answer while calling [`Admin::login`].
    pub async fn login_turn(&self, name: &str, now_ms: u64) -> Result<LoginTurn<'_>, ApiError> {
        if !self.logins.allow(name, now_ms) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_logins",
                format!("at most {MAX_LOGINS_PER_MIN} login attempts a minute per name"),
            ));
        }
        let busy = || {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "login_busy",
                format!("{MAX_LOGINS_WAITING} logins are already waiting; try again"),
            )
        };
        let queued = self.waiting.try_acquire().map_err(|_| busy())?;
        let checking = self.checking.acquire().await.map_err(|_| busy())?;
        Ok(LoginTurn {
            _queued: queued,
            _checking: checking,
        })
    }

    /// Checks a name and password (slow: argon2) and opens a session; returns its cookie value.
    /// Call it holding a [`LoginTurn`].
    pub fn login(
        &self,
        name: &str,
        password: &str,
        now_ms: u64,
    ) -> Result<(String, SessionView), ApiError> {
        let role = self.operators.verify(name, password).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "unknown operator or wrong password",
            )
        })?;
        let session = Session {
            name: name.to_string(),
            role,
            csrf: random_token(),
            expires_at_ms: now_ms + self.operators.session_ttl_ms,
        };
        let view = session.view();
        let token = random_token();
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires_at_ms > now_ms);
        }
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                sessions.remove(&k);
            }
        }
        sessions.insert(token.clone(), session);
        Ok((token, view))
    }

    /// Ends the session the credentials carry, if any.
    pub fn logout(&self, creds: &Credentials) {
        if let Some(token) = &creds.session {
            self.sessions.lock().remove(token);
        }
    }

    /// How long a new session lasts, in seconds (the cookie's `Max-Age`).
    pub fn session_ttl_s(&self) -> u64 {
        self.operators.session_ttl_ms / 1000
    }

    /// The live session the credentials carry.
    pub fn session(&self, creds: &Credentials, now_ms: u64) -> Result<SessionView, ApiError> {
        creds.readable()?;
        let token = creds.session.as_deref().ok_or_else(unauthorized)?;
        let mut sessions = self.sessions.lock();
        match sessions.get(token) {
            Some(s) if s.expires_at_ms > now_ms => Ok(s.view()),
            Some(_) => {
                sessions.remove(token);
                Err(unauthorized())
            }
            None => Err(unauthorized()),
        }
    }

    /// Who is asking, if they may do what needs `need`: 401 without valid credentials, 403 for
    /// a role too low or a session change without its CSRF token.
    pub fn require(
        &self,
        creds: &Credentials,
        need: Role,
        now_ms: u64,
    ) -> Result<Principal, ApiError> {
        creds.readable()?;
        let who = match &creds.bearer {
            Some(token) if constant_time_eq(token.as_bytes(), self.token.as_bytes()) => Principal {
                name: TOKEN_OPERATOR.into(),
                role: Role::Publisher,
            },
            Some(_) => return Err(unauthorized()),
            None => {
                let s = self.session(creds, now_ms)?;
                let csrf_ok = creds
                    .csrf
                    .as_deref()
                    .is_some_and(|c| constant_time_eq(c.as_bytes(), s.csrf.as_bytes()));
                if creds.mutates && !csrf_ok {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf",
                        "a change needs the session's token in the X-CSRF-Token header",
                    ));
                }
                Principal {
                    name: s.name,
                    role: s.role,
                }
            }
        };
        if who.role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; {} is a {}",
                    need.name(),
                    who.name,
                    who.role.name()
                ),
            ));
        }
        Ok(who)
    }

    /// The audit log write for one action by `who`, leaving the live config at `seq`.
    pub fn audit(
        &self,
        who: &Principal,
        action: &'static str,
        seq: u64,
        changes: Vec<String>,
        now_ms: u64,
    ) -> Op {
        let entry = AuditEntry {
            at: quota::config::format_ms(now_ms),
            who: who.name.clone(),
            role: who.role,
            action: action.into(),
            seq,
            changes,
        };
        // Newest first in key order: the time and a per-process counter, both inverted.
        let n = self.audit_n.fetch_add(1, Relaxed);
        let key = format!(
            "{AUDIT_PREFIX}{:020}{:010}",
            u64::MAX - now_ms,
            u32::MAX - n
        );
        Op::Put(
            Cf::Meta,
            key.into_bytes(),
            serde_json::to_vec(&entry).expect("an audit entry serializes"),
        )
    }
}

/// What a publish of `new` over `old` changed, for its audit entry.
pub fn publish_changes(old: &RawConfig, new: &RawConfig) -> Vec<String> {
    quota::diff::changes(&config_value(old), &config_value(new))
}

/// A raw config as the JSON document the draft, the review and the audit compare.
pub fn config_value(raw: &RawConfig) -> serde_json::Value {
    serde_json::to_value(raw).expect("a raw config serializes")
}

const AUDIT_PREFIX: &str = "audit/";

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// RFC 3339.
    pub at: String,
    /// Operator name.
    pub who: String,
    /// Their role then.
    pub role: Role,
    /// What they did: `published`, `kill_switch`, `draft_saved`, …
    pub action: String,
    /// The live SeqNo after it.
    pub seq: u64,
    /// What changed.
    pub changes: Vec<String>,
}

/// The newest `limit` audit entries, newest first, stopping before [`MAX_AUDIT_BYTES`] (an entry
/// lists up to 500 changes; the first entry is always listed).
pub fn audit_log(storage: &Storage, limit: usize) -> Result<Vec<AuditEntry>, StorageError> {
    let rows = storage.scan_prefix(Cf::Meta, AUDIT_PREFIX.as_bytes(), limit)?;
    let mut bytes = 0;
    Ok(rows
        .into_iter()
        .take_while(|(_, v)| {
            bytes += v.len();
            bytes <= MAX_AUDIT_BYTES || bytes == v.len()
        })
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "log in at /admin/, or send `Authorization: Bearer <token>`",
    )
}

/// 32 random bytes from the OS, hex.
fn random_token() -> String {
    use argon2::password_hash::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && !b.is_empty()
        && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let text = format!(
            "session_ttl_s = 60\n[[operators]]\nname = \"vic\"\nrole = \"viewer\"\npassword_hash = \"{}\"\n[[operators]]\nname = \"pat\"\nrole = \"publisher\"\npassword_hash = \"{}\"\n",
            hash_password("vic-pass"),
            hash_password("pat-pass")
        );
        Admin::new(Operators::parse(&text).unwrap(), "t".repeat(20))
    }

    fn creds(session: Option<&str>, csrf: Option<&str>, mutates: bool) -> Credentials {
        Credentials {
            bearer: None,
            session: session.map(String::from),
            csrf: csrf.map(String::from),
            mutates,
            unreadable: None,
        }
    }

    /// Another page's cookie of any bytes must not lock an operator out; the session cookie
    /// itself must be text.
    #[test]
    fn only_the_session_cookie_is_read() {
        let with = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::COOKIE, header::HeaderValue::from_bytes(v).unwrap());
            }
            session_cookie(&h)
        };
        assert_eq!(with(&[]), Ok(None));
        assert_eq!(with(&[b"theme=dark"]), Ok(None));
        let ours = Ok(Some("ab12".to_string()));
        assert_eq!(with(&[b"theme=\xff\xfe; redrain_session=ab12"]), ours);
        assert_eq!(with(&[b"theme=\xff", b"redrain_session=ab12;x=1"]), ours);
        assert_eq!(with(&[b"redrain_sessionx=1; redrain_session=ab12"]), ours);
        assert_eq!(with(&[b"redrain_session=\xc3\xa9"]), Err(()));
    }

    #[test]
    fn sessions_check_password_role_csrf_and_expiry() {
        let a = admin();
        assert_eq!(a.login("vic", "wrong", 0).unwrap_err().status, 401);
        assert_eq!(a.login("nobody", "vic-pass", 0).unwrap_err().status, 401);
        let (cookie, view) = a.login("pat", "pat-pass", 1_000).unwrap();
        assert_eq!(view.role, Role::Publisher);
        let read = creds(Some(&cookie), None, false);
        assert_eq!(
            a.require(&read, Role::Publisher, 2_000).unwrap().name,
            "pat"
        );
        let change = creds(Some(&cookie), None, true);
        assert_eq!(
            a.require(&change, Role::Viewer, 2_000).unwrap_err().code,
            "csrf"
        );
        let forged = creds(Some(&cookie), Some("not-it"), true);
        assert_eq!(
            a.require(&forged, Role::Viewer, 2_000).unwrap_err().code,
            "csrf"
        );
        let change = creds(Some(&cookie), Some(&view.csrf), true);
        assert!(a.require(&change, Role::Publisher, 2_000).is_ok());
        // The session ends 60 s after login.
        assert_eq!(
            a.require(&read, Role::Viewer, 61_000).unwrap_err().status,
            401
        );

        let (cookie, view) = a.login("vic", "vic-pass", 0).unwrap();
        let change = creds(Some(&cookie), Some(&view.csrf), true);
        let e = a.require(&change, Role::Editor, 1).unwrap_err();
        assert_eq!((e.status, e.code), (403, "forbidden"));
        a.logout(&change);
        assert_eq!(a.require(&change, Role::Viewer, 1).unwrap_err().status, 401);
    }

    #[tokio::test]
    async fn logins_are_limited_per_name() {
        let a = admin();
        for _ in 0..MAX_LOGINS_PER_MIN {
            let _turn = a.login_turn("vic", 0).await.unwrap();
            assert_eq!(a.login("vic", "wrong", 0).unwrap_err().status, 401);
        }
        let refused = a.login_turn("vic", 1).await.err().unwrap();
        assert_eq!(refused.code, "too_many_logins");
        assert!(a.login_turn("eve", 1).await.is_ok());
        let _turn = a.login_turn("vic", 60_000).await.unwrap();
        assert!(a.login("vic", "vic-pass", 60_000).is_ok());
    }

    #[tokio::test]
    async fn logins_waiting_are_bounded() {
        let a = admin();
        let first = a.login_turn("n0", 0).await.unwrap();
        let mut waiting = Vec::new();
        for i in 1..MAX_LOGINS_WAITING {
            let a = &a;
            waiting.push(Box::pin(
                async move { a.login_turn(&format!("n{i}"), 0).await },
            ));
        }
        // Each waiter takes its place in the queue when first polled.
        for w in &mut waiting {
            assert!(futures_util::poll!(w.as_mut()).is_pending());
        }
        let refused = a.login_turn("late", 0).await.err().unwrap();
        assert_eq!(refused.code, "login_busy");
        drop(first);
        assert!(waiting.remove(0).await.is_ok());
    }

    #[test]
    fn operator_file_problems_name_their_field() {
        let e = Operators::parse(
            "[[operators]]\nname = \"a b\"\nrole = \"viewer\"\npassword_hash = \"x\"\n",
        )
        .unwrap_err();
        assert!(e[0].starts_with("operators[0].name:"), "{e:?}");
        assert!(e[1].starts_with("operators[0].password_hash:"), "{e:?}");
        assert!(Operators::parse(
            "[[operators]]\nname = \"a\"\nrole = \"boss\"\npassword_hash = \"x\"\n"
        )
        .is_err());
    }
}
