//! The admin web page, embedded in the binary: one HTML page, one script and one stylesheet,
//! written by hand with no build step and nothing fetched from the internet at run time.
//!
//! This crate owns the files only; the engine serves them at `/admin/` and the page talks to
//! the admin API (`docs/admin-api.md`). Layout:
//! - `static/index.html`: the shell (navigation, login form, page containers);
//! - `static/app.js`: the pages: dashboard, editor and review, map, deliveries,
//!   reconciliation, audit. Operator-entered text is only ever set as text, never as HTML;
//! - `static/app.css`: the styles.
//!
//! ```
//! let page = redrain_admin_ui::asset("index.html").unwrap();
//! assert_eq!(page.content_type, "text/html; charset=utf-8");
//! assert!(redrain_admin_ui::asset("../Cargo.toml").is_none());
//! ```

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The file's bytes.
    pub body: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
}

const ASSETS: &[(&str, &[u8], &str)] = &[
    (
        "index.html",
        include_bytes!("../static/index.html"),
        "text/html; charset=utf-8",
    ),
    (
        "app.js",
        include_bytes!("../static/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "app.css",
        include_bytes!("../static/app.css"),
        "text/css; charset=utf-8",
    ),
];

/// The embedded file at `path` (relative to `/admin/`), if there is one.
pub fn asset(path: &str) -> Option<Asset> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|&(_, body, content_type)| Asset { body, content_type })
}
