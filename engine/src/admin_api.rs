//! The admin API under `/admin/api/` and the admin page's files under `/admin/`
//! (`docs/admin-api.md`): login, the config and its draft, review and publish, kill switches,
//! point uploads, the live dashboard, the drop map, deliveries, reconciliation and the audit
//! log. Every route names the role it needs; see [`crate::admin`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quota::config::{format_ms, Config, FieldError, RawConfig};
use quota::ids::SeqNo;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{header, Response, StatusCode};
use warp::Filter;

use crate::admin::{config_value, credentials, Credentials, Principal, Role, SESSION_COOKIE};
use crate::api::Segment;
use crate::api::{
    count_param, delivery_error, delivery_id, error_reply, json_ok, pending_body, raw_query,
    PendingBody, Reply,
};
use crate::error::{malformed, malformed_json, malformed_toml, parse_json, parse_query, ApiError};
use crate::server::{App, PublishFailure};
use crate::storage::{Cf, Op};
use quota::store::PublishError;

/// Largest config or draft body.
pub const MAX_CONFIG_BODY: usize = 1 << 20;
/// Largest login or kill switch body.
pub const MAX_SMALL_BODY: usize = 4 << 10;
/// Largest uploaded point or zone file.
pub const MAX_UPLOAD: usize = 64 << 20;
/// Most drops the map answers one by one; past it, a density grid.
pub const MAX_MAP_POINTS: usize = 20_000;
/// The density grid's side.
pub const MAP_GRID: usize = 64;

const DRAFT_KEY: &[u8] = b"draft";

/// The page's Content-Security-Policy: its own files only, no inline script or style.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Every `/admin` route.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Reply,)> {
    let with_app = warp::any().map(move || app.clone());
    let api = warp::path("admin")
        .and(warp::path("api"))
        .and(credentials())
        .and(with_app.clone());
    // A GET with nothing but the caller: `handler(app, who)` answers it.
    macro_rules! read {
        ($path:expr, $role:ident, $handler:expr) => {
            api.clone()
                .and($path)
                .and(warp::get())
                .then(|creds, app| answer(app, creds, Role::$role, $handler))
        };
    }
    // A change whose JSON (or TOML) body of at most `limit` bytes goes to `handler`.
    macro_rules! with_body {
        ($method:ident, $path:expr, $role:ident, $limit:expr, $handler:expr) => {
            api.clone()
                .and($path)
                .and(warp::$method())
                .and(pending_body())
                .then(|creds, app, body: PendingBody| {
                    answer(app, creds, Role::$role, |app, who| async move {
                        $handler(app, who, body.read($limit).await?).await
                    })
                })
        };
    }

    // Behind a TLS proxy (nginx sets `X-Forwarded-Proto: https`) the cookie is also `Secure`.
    let https = || {
        warp::header::optional::<String>("x-forwarded-proto")
            .map(|proto: Option<String>| proto.is_some_and(|p| p.eq_ignore_ascii_case("https")))
    };
    let login = warp::path!("admin" / "api" / "login")
        .and(warp::post())
        .and(with_app)
        .and(https())
        .and(pending_body())
        .then(|app: Arc<App>, https: bool, body: PendingBody| async move {
            timed(&app, login(app.clone(), https, body)).await
        });
    let logout = api
        .clone()
        .and(warp::path!("logout"))
        .and(warp::post())
        .and(https())
        .then(|creds: Credentials, app: Arc<App>, https: bool| {
            answer(app, creds.clone(), Role::Viewer, move |app, _| async move {
                app.admin.logout(&creds);
                Ok(with_cookie(json_ok(&json!({"ok": true})), "", 0, https))
            })
        });
    let session = api
        .clone()
        .and(warp::path!("session"))
        .and(warp::get())
        .map(|creds: Credentials, app: Arc<App>| {
            app.admin
                .session(&creds, now(&app))
                .and_then(|s| json_ok(&s))
                .unwrap_or_else(|e| error_reply(&e))
        });

    let config = read!(
        warp::path!("config"),
        Viewer,
        |app: Arc<App>, _| async move {
            let snap = app.service.snapshot();
            json_ok(&json!({"seq": snap.seq.0, "config": snap.config.raw}))
        }
    );
    let post_config = with_body!(
        post,
        warp::path!("config"),
        Publisher,
        MAX_CONFIG_BODY,
        publish_document
    );
    let draft = read!(warp::path!("draft"), Viewer, |app, _| async move {
        json_ok(&blocking(app, |app| draft_view(&app)).await?)
    });
    let save_draft = with_body!(
        put,
        warp::path!("draft"),
        Editor,
        MAX_CONFIG_BODY,
        save_draft
    );
    let discard_draft = with_body!(
        delete,
        warp::path!("draft"),
        Editor,
        MAX_SMALL_BODY,
        discard_draft
    );
    let publish_draft = with_body!(
        post,
        warp::path!("draft" / "publish"),
        Publisher,
        MAX_SMALL_BODY,
        publish_draft
    );
    let kill = with_body!(
        post,
        warp::path!("kill"),
        Publisher,
        MAX_SMALL_BODY,
        kill_switch
    );
    let upload = api
        .clone()
        .and(warp::path!("uploads"))
        .and(warp::post())
        .and(raw_query())
        .and(pending_body())
        .then(|creds, app, q, body| {
            answer(app, creds, Role::Editor, |app, who| {
                upload(app, who, q, body)
            })
        });
    let live = read!(warp::path!("live"), Viewer, |app: Arc<App>, _| async move {
        json_ok(&live(&app))
    });
    let audit = api
        .clone()
        .and(warp::path!("audit"))
        .and(warp::get())
        .and(raw_query())
        .then(|creds, app, q: String| {
            answer(app, creds, Role::Viewer, |app, _| async move {
                let q: AuditQuery = parse_query(&q)?;
                let limit = count_param("limit", q.limit, 200, crate::admin::MAX_AUDIT_LISTED)?;
                let entries = crate::admin::audit_log(&app.service.storage, limit)
                    .map_err(ApiError::unavailable)?;
                json_ok(&json!({ "entries": entries }))
            })
        });
    let drops = read!(warp::path!("drops"), Viewer, |app, _| {
        scan(app, |app| json_ok(&drop_tasks(&app)))
    });
    let map = api
        .clone()
        .and(warp::path!("drops" / Segment / "map"))
        .and(warp::get())
        .and(raw_query())
        .then(|creds, app, Segment(task): Segment, q: String| {
            answer(app, creds, Role::Viewer, |app, _| {
                scan(app, move |app| drop_map(&app, &task, &q))
            })
        });

    let delivery = read!(
        warp::path!("delivery"),
        Viewer,
        |app: Arc<App>, _| async move {
            let (ready, later) = redrain_delivery::queue::LaneQueue::bytes_per_id();
            json_ok(&json!({
                "lanes": app.service.deliveries.stats(),
                "queued_bytes_per_delivery": {"ready": ready, "retrying": later},
            }))
        }
    );
    let redrive_one = api
        .clone()
        .and(warp::path!("delivery" / Segment / "redrive"))
        .and(warp::post())
        .then(|creds, app, Segment(id): Segment| {
            answer(app, creds, Role::Publisher, |app, who| async move {
                let did = delivery_id(&id)?;
                let rec = app
                    .service
                    .deliveries
                    .redrive(did, None)
                    .await
                    .map_err(delivery_error)?;
                record(&app, &who, "redrive", vec![format!("delivery {id}")]).await?;
                json_ok(&rec)
            })
        });
    let redrive_dead = api
        .clone()
        .and(warp::path!(
            "delivery" / "partners" / Segment / "redrive-dead"
        ))
        .and(warp::post())
        .then(|creds, app, Segment(partner): Segment| {
            answer(app, creds, Role::Publisher, |app, who| async move {
                let n = app
                    .service
                    .deliveries
                    .redrive_dead(&partner)
                    .await
                    .map_err(delivery_error)?;
                let what = format!("{n} dead deliveries of partner {partner}");
                record(&app, &who, "redrive", vec![what]).await?;
                json_ok(&json!({"partner": partner, "redriven": n}))
            })
        });
    let reconciliation = api
        .clone()
        .and(warp::path!("reconciliation"))
        .and(warp::get())
        .and(raw_query())
        .then(|creds, app, q: String| {
            answer(app, creds, Role::Viewer, |app, _| async move {
                let q: ReconciliationQuery = parse_query(&q)?;
                let latest = app.reconciliation.lock().clone();
                let report = match latest {
                    Some(r) if !q.run => r,
                    _ => reconcile_now(&app).await?,
                };
                json_ok(&*report)
            })
        });
    let reconcile_redrive = api
        .clone()
        .and(warp::path!("reconciliation" / "redrive"))
        .and(warp::post())
        .then(|creds, app| {
            answer(app, creds, Role::Publisher, |app, who| async move {
                let (created, redriven) = redrive_mismatches(&app, &who).await?;
                json_ok(&json!({"created": created, "redriven": redriven}))
            })
        });

    let page = warp::path("admin")
        .and(warp::path::full())
        .and(warp::path::tail())
        .and(warp::get())
        .map(|full: warp::path::FullPath, tail: warp::path::Tail| {
            if full.as_str() == "/admin" {
                // The page's links are relative to `/admin/`.
                return Response::builder()
                    .status(StatusCode::PERMANENT_REDIRECT)
                    .header(header::LOCATION, "/admin/")
                    .body(Bytes::new())
                    .expect("static headers are valid");
            }
            page(tail.as_str())
        });

    // Boxed in groups: one long chain of `or`s overflows the compiler's type recursion limit.
    let sessions = login.or(logout).unify().or(session).unify().boxed();
    let configs = config
        .or(post_config)
        .unify()
        .or(draft)
        .unify()
        .or(save_draft)
        .unify()
        .or(discard_draft)
        .unify()
        .or(publish_draft)
        .unify()
        .or(kill)
        .unify()
        .or(upload)
        .unify()
        .boxed();
    let views = live
        .or(audit)
        .unify()
        .or(drops)
        .unify()
        .or(map)
        .unify()
        .boxed();
    let operations = delivery
        .or(redrive_one)
        .unify()
        .or(redrive_dead)
        .unify()
        .or(reconciliation)
        .unify()
        .or(reconcile_redrive)
        .unify()
        .boxed();
    sessions
        .or(configs)
        .unify()
        .or(views)
        .unify()
        .or(operations)
        .unify()
        .or(page)
        .unify()
        .boxed()
}

/// A `GET /admin/api/audit` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Most entries, newest first.
    limit: Option<usize>,
}

/// A `GET /admin/api/reconciliation` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconciliationQuery {
    /// Reconcile now rather than answer the latest report.
    #[serde(default)]
    run: bool,
}

fn now(app: &App) -> u64 {
    app.service.clock.now_ms()
}

/// Answers a request once its caller has `role`. A body is read inside `handler`, so only
/// after the check.
async fn answer<F, Fut>(app: Arc<App>, creds: Credentials, role: Role, handler: F) -> Reply
where
    F: FnOnce(Arc<App>, Principal) -> Fut,
    Fut: std::future::Future<Output = Result<Reply, ApiError>>,
{
    timed(&app.clone(), async move {
        let who = app.admin.require(&creds, role, now(&app))?;
        handler(app, who).await
    })
    .await
}

/// Awaits `reply` into a response, counted in the latency histogram like the engine's other
/// routes.
async fn timed(
    app: &App,
    reply: impl std::future::Future<Output = Result<Reply, ApiError>>,
) -> Reply {
    let started = Instant::now();
    let reply = reply.await.unwrap_or_else(|e| error_reply(&e));
    app.service.metrics.other_latency.observe(started.elapsed());
    reply
}

/// Runs `f` off the async workers (argon2, file parsing, walking millions of drops).
async fn blocking<T: Send + 'static>(
    app: Arc<App>,
    f: impl FnOnce(Arc<App>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(app))
        .await
        .map_err(ApiError::internal)?
}

/// Runs a walk over drop points off the async workers, at most [`crate::admin::MAX_SCANS`] at
/// once (others wait their turn).
async fn scan<T: Send + 'static>(
    app: Arc<App>,
    f: impl FnOnce(Arc<App>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _turn = turn(&app.admin.scans).await?;
    blocking(app.clone(), f).await
}

/// A place under one of the admin's bounds (uploads, scans); waits for one to free up.
async fn turn(
    bound: &tokio::sync::Semaphore,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    bound.acquire().await.map_err(ApiError::internal)
}

/// Writes one audit entry for an action that changed no config.
async fn record(
    app: &App,
    who: &Principal,
    action: &'static str,
    changes: Vec<String>,
) -> Result<(), ApiError> {
    let seq = app.service.snapshot().seq.0;
    let op = app.admin.audit(who, action, seq, changes, now(app));
    app.service
        .storage
        .commit(vec![op])
        .await
        .map_err(ApiError::unavailable)
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    name: String,
    password: String,
}

async fn login(app: Arc<App>, https: bool, body: PendingBody) -> Result<Reply, ApiError> {
    let req: LoginRequest = parse_json(&body.read(MAX_SMALL_BODY).await?)?;
    let at = now(&app);
    let _turn = app.admin.login_turn(&req.name, at).await?;
    let (cookie, view) = blocking(app.clone(), move |app| {
        app.admin.login(&req.name, &req.password, at)
    })
    .await?;
    tracing::info!(operator = %view.name, role = ?view.role, "operator logged in");
    Ok(with_cookie(
        json_ok(&view),
        &cookie,
        app.admin.session_ttl_s(),
        https,
    ))
}

/// Sets (or, with `max_age_s` 0, clears) the session cookie on a reply; `Secure` when the page
/// was reached over https.
fn with_cookie(reply: Result<Reply, ApiError>, value: &str, max_age_s: u64, https: bool) -> Reply {
    let mut reply = reply.unwrap_or_else(|e| error_reply(&e));
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    );
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        reply.headers_mut().insert(header::SET_COOKIE, v);
    }
    reply
}

// ---------------------------------------------------------------------------------------------
// Config, draft, review, publish, kill switches
// ---------------------------------------------------------------------------------------------

/// A publish's failure as an API error naming the field at fault.
pub fn publish_error(e: PublishFailure) -> ApiError {
    let field = |field: &str, status, code, message: String| ApiError {
        field: Some(field.to_string()),
        ..ApiError::new(status, code, message)
    };
    match e {
        PublishFailure::Store(PublishError::QuotaBelowIssued { field: ref f, .. }) => {
            field(f, StatusCode::CONFLICT, "quota_below_issued", e.to_string())
        }
        PublishFailure::Store(PublishError::Persist(_)) => ApiError::unavailable(e),
        PublishFailure::Stale { .. } => {
            ApiError::new(StatusCode::CONFLICT, "stale_review", e.to_string())
        }
        PublishFailure::Partner { field: ref f, .. } => field(
            f,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_partner",
            e.to_string(),
        ),
        PublishFailure::Drops(d) => field(
            &d.field,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_drops",
            d.to_string(),
        ),
    }
}

fn invalid_config(e: quota::config::ConfigErrors) -> ApiError {
    ApiError {
        errors: e.errors.clone(),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e.to_string(),
        )
    }
}

/// Publishes `config` on behalf of `who` (off the async workers: drop tasks may be millions of
/// points), with the audit entry and `also` in the same commit. The outer error is the blocking
/// task's; the inner one is why the publish was refused, for callers that act on it.
async fn publish_as(
    app: Arc<App>,
    who: Principal,
    config: Config,
    expect: Option<SeqNo>,
    action: &'static str,
    also: Vec<Op>,
) -> Result<Result<u64, PublishFailure>, ApiError> {
    blocking(app, move |app| {
        let at = now(&app);
        let extra = |seq: SeqNo, old: &RawConfig, new: &RawConfig| {
            let changes = crate::admin::publish_changes(old, new);
            let mut ops = vec![app.admin.audit(&who, action, seq.0, changes, at)];
            ops.extend(also.iter().cloned());
            ops
        };
        Ok(
            crate::server::publish(&app.service, config, None, expect, &extra).map(|snap| {
                tracing::info!(seq = snap.seq.0, operator = %who.name, action, "config published");
                snap.seq.0
            }),
        )
    })
    .await
}

/// `POST /admin/api/config`: a whole TOML or JSON document (scripts).
async fn publish_document(app: Arc<App>, who: Principal, body: Bytes) -> Result<Reply, ApiError> {
    let config = parse_document(&body)?;
    let seq = publish_as(app, who, config, None, "published", Vec::new())
        .await?
        .map_err(publish_error)?;
    json_ok(&json!({ "seq": seq }))
}

/// A config document, JSON when it starts with `{`, else TOML: 400 naming where a document
/// that is not well-formed breaks, 422 naming every field of one that is not a valid config.
fn parse_document(body: &[u8]) -> Result<Config, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        malformed(
            "malformed_toml",
            "the config must be UTF-8 TOML or JSON",
            (0, 0),
        )
    })?;
    // quota's parse names a bad field by its path but does not tell a broken document from a
    // bad field (toml's errors cannot), so only a document it refuses is parsed again, for its
    // syntax alone: broken (400, where) or well-formed but not a valid config (422, which fields).
    if text.trim_start().starts_with('{') {
        Config::from_json(body).map_err(|e| {
            match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Err(broken) => malformed_json(&broken),
                Ok(_) => invalid_config(e),
            }
        })
    } else {
        Config::from_toml(text).map_err(|e| match text.parse::<toml::Table>() {
            Err(broken) => malformed_toml(text, &broken),
            Ok(_) => invalid_config(e),
        })
    }
}

/// The draft as stored (meta `draft`).
#[derive(serde::Serialize, Deserialize)]
struct StoredDraft {
    config: Value,
    /// Names this saved version: a save, discard or publish names the version it replaces.
    rev: String,
    /// The live SeqNo when the draft was started: a later publish (a kill switch, a script)
    /// is undone by publishing the draft, and the review says so.
    base_seq: u64,
    saved_by: String,
    saved_at_ms: u64,
}

fn stored_draft(app: &App) -> Result<Option<StoredDraft>, ApiError> {
    let bytes = app
        .service
        .storage
        .get(Cf::Meta, DRAFT_KEY)
        .map_err(ApiError::unavailable)?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The stored draft, if `expect_rev` names it (`None`: there is none).
fn expected_draft(app: &App, expect_rev: &Option<String>) -> Result<Option<StoredDraft>, ApiError> {
    let draft = stored_draft(app)?;
    let rev = draft.as_ref().map(|d| &d.rev);
    if rev != expect_rev.as_ref() {
        let now = match &draft {
            Some(d) => format!(
                "the draft is now {} (saved by {} at {})",
                d.rev,
                d.saved_by,
                format_ms(d.saved_at_ms)
            ),
            None => "there is no draft now".to_string(),
        };
        return Err(ApiError {
            field: Some("expect_rev".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "draft_changed",
                format!("the draft changed since you loaded it: {now}; reload it"),
            )
        });
    }
    Ok(draft)
}

/// What `check-config` and a publish would say of a draft.
fn check_draft(app: &App, config: &Value) -> Vec<FieldError> {
    let bytes = serde_json::to_vec(config).expect("a JSON value serializes");
    match Config::from_json(&bytes) {
        Err(e) => e.errors,
        Ok(c) => match app
            .service
            .delivery_settings
            .check_partners(&c, app.service.store.share())
        {
            Ok(()) => Vec::new(),
            Err((field, problem)) => vec![FieldError { field, problem }],
        },
    }
}

/// The draft (or the live config when there is none), its problems and its changes. Slow for
/// a big config: call it off the async workers.
fn draft_view(app: &App) -> Result<Value, ApiError> {
    let snap = app.service.snapshot();
    let live = config_value(&snap.config.raw);
    let draft = stored_draft(app)?;
    let config = draft.as_ref().map_or(&live, |d| &d.config);
    Ok(json!({
        "errors": check_draft(app, config),
        "changes": quota::diff::changes(&live, config),
        "config": config,
        "live_seq": snap.seq.0,
        "rev": draft.as_ref().map(|d| &d.rev),
        "base_seq": draft.as_ref().map_or(snap.seq.0, |d| d.base_seq),
        "saved_by": draft.as_ref().map(|d| &d.saved_by),
        "saved_at": draft.as_ref().map(|d| format_ms(d.saved_at_ms)),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DraftRequest {
    config: serde_json::Map<String, Value>,
    /// The draft this one replaces (`null`: none, it starts from the live config).
    expect_rev: Option<String>,
}

async fn save_draft(app: Arc<App>, who: Principal, body: Bytes) -> Result<Reply, ApiError> {
    let req: DraftRequest = parse_json(&body)?;
    let mut config = Value::Object(req.config);
    // A draft that reads as a config is stored with its defaults filled in, so the review
    // shows only what the editor changed; one that does not is kept as written, to fix.
    if let Ok(raw) = serde_json::from_value::<RawConfig>(config.clone()) {
        config = config_value(&raw);
    }
    let _one_at_a_time = app.admin.drafts.lock().await;
    let before = expected_draft(&app, &req.expect_rev)?;
    let snap = app.service.snapshot();
    let base_seq = before.as_ref().map_or(snap.seq.0, |d| d.base_seq);
    let before = before.map_or_else(|| config_value(&snap.config.raw), |d| d.config);
    let at = now(&app);
    let changes = quota::diff::changes(&before, &config);
    let stored = StoredDraft {
        config,
        rev: format!("{:016x}", rand::random::<u64>()),
        base_seq,
        saved_by: who.name.clone(),
        saved_at_ms: at,
    };
    let ops = vec![
        Op::Put(
            Cf::Meta,
            DRAFT_KEY.to_vec(),
            serde_json::to_vec(&stored).map_err(ApiError::internal)?,
        ),
        app.admin
            .audit(&who, "draft_saved", snap.seq.0, changes, at),
    ];
    commit_draft(&app, ops).await
}

/// Commits a change of the draft with its audit entry; answers the draft as it is now.
async fn commit_draft(app: &Arc<App>, ops: Vec<Op>) -> Result<Reply, ApiError> {
    app.service
        .storage
        .commit(ops)
        .await
        .map_err(ApiError::unavailable)?;
    json_ok(&blocking(app.clone(), |app| draft_view(&app)).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscardRequest {
    expect_rev: String,
}

async fn discard_draft(app: Arc<App>, who: Principal, body: Bytes) -> Result<Reply, ApiError> {
    let req: DiscardRequest = parse_json(&body)?;
    let _one_at_a_time = app.admin.drafts.lock().await;
    let draft = expected_draft(&app, &Some(req.expect_rev))?.expect("a named draft exists");
    let snap = app.service.snapshot();
    let changes = quota::diff::changes(&draft.config, &config_value(&snap.config.raw));
    let ops = vec![
        Op::Delete(Cf::Meta, DRAFT_KEY.to_vec()),
        app.admin
            .audit(&who, "draft_discarded", snap.seq.0, changes, now(&app)),
    ];
    commit_draft(&app, ops).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishDraftRequest {
    /// The live SeqNo the review was made against.
    expect_seq: u64,
    /// The draft reviewed.
    expect_rev: String,
}

async fn publish_draft(app: Arc<App>, who: Principal, body: Bytes) -> Result<Reply, ApiError> {
    let req: PublishDraftRequest = parse_json(&body)?;
    let _one_at_a_time = app.admin.drafts.lock().await;
    let draft = expected_draft(&app, &Some(req.expect_rev))?.expect("a named draft exists");
    let bytes = serde_json::to_vec(&draft.config).map_err(ApiError::internal)?;
    let config = Config::from_json(&bytes).map_err(invalid_config)?;
    let clear = vec![Op::Delete(Cf::Meta, DRAFT_KEY.to_vec())];
    let expect = Some(SeqNo(req.expect_seq));
    let seq = publish_as(app.clone(), who, config, expect, "published", clear)
        .await?
        .map_err(publish_error)?;
    json_ok(&json!({ "seq": seq }))
}

/// What a kill switch flips.
#[derive(Deserialize, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
enum KillKind {
    Campaign,
    Round,
    Prize,
    Partner,
    Drops,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillRequest {
    kind: KillKind,
    id: String,
    paused: bool,
}

/// The `paused` flag of the `kind` entry `id` in a raw config.
fn paused_flag<'a>(raw: &'a mut RawConfig, kind: KillKind, id: &str) -> Option<&'a mut bool> {
    match kind {
        KillKind::Campaign => raw
            .campaigns
            .iter_mut()
            .find(|c| c.id == id)
            .map(|c| &mut c.paused),
        KillKind::Partner => raw
            .partners
            .iter_mut()
            .find(|p| p.id == id)
            .map(|p| &mut p.paused),
        KillKind::Round => raw
            .rounds
            .iter_mut()
            .find(|r| r.id == id)
            .map(|r| &mut r.paused),
        KillKind::Drops => raw
            .drops
            .iter_mut()
            .find(|d| d.id == id)
            .map(|d| &mut d.paused),
        KillKind::Prize => raw
            .rounds
            .iter_mut()
            .flat_map(|r| r.prizes.iter_mut())
            .chain(raw.drops.iter_mut().flat_map(|d| d.prizes.iter_mut()))
            .find(|p| p.id == id)
            .map(|p| &mut p.paused),
    }
}

/// Times a kill switch is tried again when another publish lands between its read of the live
/// config and its own publish.
const KILL_ATTEMPTS: usize = 5;

/// Publishes the live config with one `paused` flag set. It is made from the live SeqNo it read
/// and published only over that one (so it never undoes a publish it did not see); when another
/// publish lands first, it reads the new live config and tries again.
async fn kill_switch(app: Arc<App>, who: Principal, body: Bytes) -> Result<Reply, ApiError> {
    let req: KillRequest = parse_json(&body)?;
    let kind = format!("{:?}", req.kind).to_lowercase();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let snap = app.service.snapshot();
        let mut raw = snap.config.raw.clone();
        let flag = paused_flag(&mut raw, req.kind, &req.id)
            .ok_or_else(|| ApiError::not_found(&kind, &req.id))?;
        if *flag == req.paused {
            return json_ok(&json!({"seq": snap.seq.0, "changed": false}));
        }
        *flag = req.paused;
        let config = raw.validate().map_err(invalid_config)?;
        let publish = publish_as(
            app.clone(),
            who.clone(),
            config,
            Some(snap.seq),
            "kill_switch",
            Vec::new(),
        );
        match publish.await? {
            Ok(seq) => return json_ok(&json!({"seq": seq, "changed": true})),
            Err(PublishFailure::Stale { .. }) if attempt < KILL_ATTEMPTS => continue,
            Err(e) => return Err(publish_error(e)),
        }
    }
}

/// A `POST /admin/api/uploads` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// The file's name: `{stem}.csv`, `.geojson` or `.json`.
    name: String,
}

/// Stores an uploaded POI or zone file under `DATA/uploads/`, named by its content so an
/// upload never changes a file a published task reads; answers the path to put in the task.
async fn upload(
    app: Arc<App>,
    who: Principal,
    query: String,
    body: PendingBody,
) -> Result<Reply, ApiError> {
    let UploadQuery { name } = parse_query(&query)?;
    let (stem, ext) = name
        .rsplit_once('.')
        .filter(|(stem, ext)| {
            !stem.is_empty()
                && stem.len() <= 100
                && stem
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && matches!(*ext, "csv" | "geojson" | "json")
        })
        .ok_or_else(|| {
            ApiError::field(
                "name",
                "must be letters, digits, '-' or '_' (at most 100) and end in .csv, .geojson or .json",
            )
        })?;
    let (stem, ext) = (stem.to_string(), ext.to_string());
    let _one_at_a_time = turn(&app.admin.uploads).await?;
    let body = body.read(MAX_UPLOAD).await?;
    let bytes = body.len();
    let (path, points) = blocking(app.clone(), move |app| {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::field("body", "must be UTF-8 text"))?;
        let points = if ext == "csv" {
            let pois = redrain_geo::points::parse_csv(text)
                .map_err(|e| ApiError::field("body", e.to_string()))?;
            Some(pois.len())
        } else {
            match redrain_geo::points::parse_geojson(text) {
                Ok(pois) => Some(pois.len()),
                Err(points_err) => match redrain_geo::zones::Zones::from_geojson(text) {
                    Ok(_) => None,
                    Err(zones_err) => {
                        return Err(ApiError::field(
                            "body",
                            format!("neither points ({points_err}) nor zones ({zones_err})"),
                        ))
                    }
                },
            }
        };
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = app.data_dir.join("uploads");
        let path = dir.join(format!("{stem}-{digest}.{ext}"));
        write_once(&path, &body).map_err(ApiError::unavailable)?;
        let path = std::fs::canonicalize(&path).map_err(ApiError::internal)?;
        Ok((path.display().to_string(), points))
    })
    .await?;
    let what = format!(
        "{path} ({} points)",
        points.map_or("zones, no".into(), |n| n.to_string())
    );
    record(&app, &who, "upload", vec![what]).await?;
    json_ok(&json!({"path": path, "bytes": bytes, "points": points}))
}

/// Writes `bytes` to `path` unless it exists (a name with the content's hash holds that content:
/// a published task may read it, so it is never rewritten). Written to a temp file of its own,
/// synced, then renamed into place.
fn write_once(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("an upload path has a directory"))?;
    let tmp = path.with_extension(format!("part-{:016x}", rand::random::<u64>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Dashboard and map
// ---------------------------------------------------------------------------------------------

/// `GET /admin/api/live`: everything the dashboard shows, read from memory.
fn live(app: &App) -> Value {
    let svc = &app.service;
    let snap = svc.snapshot();
    let config = &snap.config;
    let now_ms = now(app);
    let slot = quota::limiter::slot_of(now_ms);
    let share = svc.store.share();
    let rounds = config.every_round().map(|(path, round)| {
        let campaign = &config.campaigns[round.campaign];
        let (status, occurrence) = crate::api::round_status(round, campaign, now_ms);
        let issued = svc.issued(round, occurrence.index);
        let prizes: Vec<Value> = round
            .prizes
            .iter()
            .zip(issued)
            .map(|(p, issued)| {
                json!({
                    "id": p.id, "kind": p.kind.name(), "quota": p.quota, "issued": issued,
                    "rate_per_s": p.rate_per_s, "node_rate_per_s": share.rate(p.rate_per_s),
                    "paused": p.paused, "partner": config.partners[p.partner].id,
                    "slots": svc.metrics.recent_wins(&p.id, slot),
                })
            })
            .collect();
        json!({
            "id": round.id, "campaign": campaign.id, "name": round.name, "status": status,
            "paused": round.paused, "kind": if path.starts_with("drops") { "drops" } else { "round" },
            "prizes": prizes,
        })
    });
    let rounds: Vec<Value> = rounds.collect();
    let draws: serde_json::Map<String, Value> = crate::metrics::OUTCOMES
        .iter()
        .zip(&svc.metrics.draws)
        .map(|(o, n)| {
            (
                o.to_string(),
                n.load(std::sync::atomic::Ordering::Relaxed).into(),
            )
        })
        .collect();
    json!({
        "seq": snap.seq.0,
        "now": format_ms(now_ms),
        "storage_failed": svc.storage.failed(),
        "slot_ms": quota::limiter::SLOT_MS,
        "draws": draws,
        "claims": svc.metrics.claims.load(std::sync::atomic::Ordering::Relaxed),
        "campaigns": config.campaigns.iter().map(|c| json!({"id": c.id, "name": c.name, "paused": c.paused})).collect::<Vec<_>>(),
        "partners": config.partners.iter().map(|p| json!({"id": p.id, "name": p.name, "kind": p.kind, "paused": p.paused})).collect::<Vec<_>>(),
        "rounds": rounds,
        "lanes": svc.deliveries.stats(),
        "ship_lag_bytes": svc.metrics.ship_lag(),
    })
}

/// `GET /admin/api/drops`: each live drop task with its extent.
fn drop_tasks(app: &App) -> Value {
    let set = app.service.drops.load();
    let snap = app.service.snapshot();
    let tasks: Vec<Value> = set
        .entries
        .iter()
        .map(|e| {
            let task = snap.config.drop_task(&e.live.id);
            let mut bbox = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
            for c in &e.live.coords {
                bbox = [
                    bbox[0].min(c.lat()),
                    bbox[1].min(c.lng()),
                    bbox[2].max(c.lat()),
                    bbox[3].max(c.lng()),
                ];
            }
            json!({
                "id": e.live.id,
                "name": task.map_or("", |t| t.round.name.as_str()),
                "points": e.live.coords.len(),
                "per_drop": task.map_or(0, |t| t.per_drop),
                "bbox": if e.live.coords.is_empty() { Value::Null } else { json!(bbox) },
            })
        })
        .collect();
    json!({ "tasks": tasks })
}

/// A `GET /admin/api/drops/{task}/map` query: the box, and most drops answered one by one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapQuery {
    south: f64,
    west: f64,
    north: f64,
    east: f64,
    max: Option<usize>,
}

/// `GET /admin/api/drops/{task}/map`: the drops in a box, one by one or as a density grid.
fn drop_map(app: &App, task: &str, query: &str) -> Result<Reply, ApiError> {
    let q: MapQuery = parse_query(query)?;
    let coord = |name: &str, v: f64, lo: f64, hi: f64| -> Result<f64, ApiError> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ApiError::field(name, format!("must be from {lo} to {hi}")))
        }
    };
    let (south, north) = (
        coord("south", q.south, -90.0, 90.0)?,
        coord("north", q.north, -90.0, 90.0)?,
    );
    let (west, east) = (
        coord("west", q.west, -180.0, 180.0)?,
        coord("east", q.east, -180.0, 180.0)?,
    );
    if south >= north || west >= east {
        return Err(ApiError::field(
            "south",
            "the box needs south < north and west < east",
        ));
    }
    let max = count_param("max", q.max, 2000, MAX_MAP_POINTS)?;
    let set = app.service.drops.load();
    let entry = set
        .entry(task)
        .ok_or_else(|| ApiError::not_found("drop task", task))?;
    let per_drop = app
        .service
        .snapshot()
        .config
        .drop_task(task)
        .map_or(0, |t| t.per_drop);
    let live = &entry.live;
    let remaining = |n: usize| per_drop.saturating_sub(live.claims.claimed(n as u32));
    let inside = |c: &redrain_geo::Coord| {
        (south..=north).contains(&c.lat()) && (west..=east).contains(&c.lng())
    };
    let mut cells = vec![[0u64; 2]; MAP_GRID * MAP_GRID];
    let mut total = 0usize;
    for (n, c) in live.coords.iter().enumerate().filter(|(_, c)| inside(c)) {
        let row = (((north - c.lat()) / (north - south)) * MAP_GRID as f64) as usize;
        let col = (((c.lng() - west) / (east - west)) * MAP_GRID as f64) as usize;
        let cell = &mut cells[row.min(MAP_GRID - 1) * MAP_GRID + col.min(MAP_GRID - 1)];
        cell[0] += 1;
        cell[1] += u64::from(remaining(n));
        total += 1;
    }
    if total <= max {
        let points: Vec<_> = live
            .coords
            .iter()
            .enumerate()
            .filter(|(_, c)| inside(c))
            .map(|(n, c)| json!([c.lat(), c.lng(), remaining(n)]))
            .collect();
        json_ok(&json!({"mode": "points", "per_drop": per_drop, "total": total, "points": points}))
    } else {
        json_ok(&json!({
            "mode": "density", "per_drop": per_drop, "total": total,
            "rows": MAP_GRID, "cols": MAP_GRID, "cells": cells,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Reconciliation
// ---------------------------------------------------------------------------------------------

/// Reconciles this node's ledger now, off the async workers.
async fn reconcile_now(app: &Arc<App>) -> Result<Arc<crate::reconcile::Report>, ApiError> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.reconcile())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::unavailable)
}

/// Reconciles now, then closes what re-driving can close: a win without a delivery record gets
/// a pending one (unless one exists by now), a dead delivery is sent again. Idempotent: a
/// second run finds nothing left to create, and re-driving a pending delivery changes nothing.
/// The audit entry says what was done, also when a failure stopped it part way. Answers
/// (created, re-driven).
async fn redrive_mismatches(app: &Arc<App>, who: &Principal) -> Result<(usize, usize), ApiError> {
    let (mut created, mut redriven) = (0, 0);
    let result: Result<(), ApiError> = async {
        // A report lists at most `MAX_LISTED` ids of each kind: while a list was full, there
        // may be more behind it, so reconcile again (bounded; each pass must close something).
        for _ in 0..MAX_REDRIVE_PASSES {
            let report = reconcile_now(app).await?;
            let before = created + redriven;
            close_mismatches(app, &report, &mut created, &mut redriven).await?;
            let m = &report.mismatches;
            let full = [&m.wins_without_delivery, &m.dead]
                .iter()
                .any(|list| list.len() >= crate::reconcile::MAX_LISTED);
            if !full || created + redriven == before {
                break;
            }
        }
        Ok(())
    }
    .await;
    let mut what = format!("created {created} missing deliveries, re-drove {redriven} dead");
    if let Err(e) = &result {
        what.push_str(&format!("; stopped by {}: {}", e.code, e.message));
    }
    record(app, who, "reconciliation_redrive", vec![what]).await?;
    result.map(|()| (created, redriven))
}

/// Reconcile-and-close passes one re-drive makes at most (each closes up to
/// [`crate::reconcile::MAX_LISTED`] of each kind).
const MAX_REDRIVE_PASSES: usize = 100;

async fn close_mismatches(
    app: &App,
    report: &crate::reconcile::Report,
    created: &mut usize,
    redriven: &mut usize,
) -> Result<(), ApiError> {
    let svc = &app.service;
    for win in &report.missing_wins {
        let id = &win.view.win_id;
        let Some(did) = redrain_delivery::record::DeliveryId::parse(id) else {
            continue;
        };
        if svc
            .storage
            .get(Cf::Deliveries, id.as_bytes())
            .map_err(ApiError::unavailable)?
            .is_some()
        {
            continue;
        }
        let mut rec = win.pending_delivery();
        // Retries run to the partner's deadline from now, not from the (maybe old) win.
        let deadline_s = svc
            .snapshot()
            .config
            .partners
            .iter()
            .find(|p| p.id.as_str() == win.partner)
            .map_or(quota::config::DEFAULT_RETRY_DEADLINE_S, |p| {
                p.retry_deadline_s
            });
        rec.deadline_ms = svc.clock.now_ms() + u64::from(deadline_s) * 1000;
        svc.storage
            .commit(crate::delivery::record_ops(&rec, None))
            .await
            .map_err(ApiError::unavailable)?;
        svc.deliveries.enqueue(&win.partner, did);
        *created += 1;
    }
    for id in &report.mismatches.dead {
        if let Some(did) = redrain_delivery::record::DeliveryId::parse(id) {
            svc.deliveries
                .redrive(did, None)
                .await
                .map_err(delivery_error)?;
            *redriven += 1;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

/// `/admin/...`: the page's embedded files (`/admin` and `/admin/` are the page itself).
fn page(path: &str) -> Reply {
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(asset) = redrain_admin_ui::asset(path) else {
        return error_reply(&ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
        ));
    };
    Response::builder()
        .header(header::CONTENT_TYPE, asset.content_type)
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Bytes::from_static(asset.body))
        .expect("static headers are valid")
}
