//! The one error type of the HTTP API: a status, a stable code and a message naming the problem.

use serde::Serialize;
use warp::http::StatusCode;

/// An API error, sent as `{"code": "...", "message": "...", "field": "..."}`.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    #[serde(skip)]
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// The field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem, for config validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<quota::config::FieldError>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            code,
            message: message.into(),
            field: None,
            errors: Vec::new(),
        }
    }
    /// 400 naming a field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Self {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }
    /// 400 `invalid_header` naming a header whose value is not what it must be.
    pub fn header(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            code: "invalid_header",
            ..Self::field(name, problem)
        }
    }
    /// 404 for an unknown resource.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id {id:?}"),
        )
    }
    /// 500 whose detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
    /// 503 when durable storage failed; nothing was changed.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "storage unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "could not make the request durable; nothing was drawn, retry with the same request_id",
        )
    }
    /// The status code.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Parses a JSON body into `T`, naming the field at fault on failure; a body that is not JSON
/// at all is [`malformed_json`].
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            return malformed_json(e.inner());
        }
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        named_by_path(path, message)
    })?;
    de.end().map_err(|e| malformed_json(&e))?;
    Ok(value)
}

/// Parses a query string into `T` (a struct with `deny_unknown_fields`), naming the parameter
/// at fault: an unknown, repeated, missing or mistyped one.
pub fn parse_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        named_by_path(path, message)
    })
}

/// A 400 `invalid_field` for a value that is well-formed but not what `T` takes.
fn named_by_path(path: String, message: String) -> ApiError {
    // Missing, duplicate and unknown fields are reported by serde at the struct, not at the
    // field: take the name from the message ("missing field `user` at line 1 column 20").
    let path = if path == "." || path == "?" || path.is_empty() {
        field_in_message(&message).unwrap_or_default()
    } else {
        path
    };
    if path.is_empty() {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
    } else {
        ApiError::field(path, message)
    }
}

fn field_in_message(message: &str) -> Option<String> {
    let rest = ["missing field `", "duplicate field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))?;
    rest.split('`').next().map(String::from)
}

/// 400 `malformed_json`: the body is not JSON; names `body` and where it breaks. Every route
/// that reads JSON answers a broken body with this.
pub fn malformed_json(e: &serde_json::Error) -> ApiError {
    let text = e.to_string();
    // serde_json's message ends in the position; it is put back in the one format below.
    let position = format!(" at line {} column {}", e.line(), e.column());
    let problem = text.strip_suffix(&position).unwrap_or(&text);
    malformed("malformed_json", problem, (e.line(), e.column()))
}

/// 400 `malformed_toml`: `text` is not TOML; names `body` and where it breaks.
pub fn malformed_toml(text: &str, e: &toml::de::Error) -> ApiError {
    let (line, column) = e
        .span()
        .map_or((0, 0), |span| line_and_column(text, span.start));
    malformed("malformed_toml", e.message().trim(), (line, column))
}

/// A broken body's error: `code`, the field `body`, and the problem with its 1-based line and
/// column (`(0, 0)` when the parser did not say).
pub(crate) fn malformed(
    code: &'static str,
    problem: &str,
    (line, column): (usize, usize),
) -> ApiError {
    let message = if line == 0 {
        problem.to_string()
    } else {
        format!("{problem} at line {line} column {column}")
    };
    ApiError {
        code,
        ..ApiError::field("body", message)
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_body_is_named_with_its_line_and_column() {
        let e = serde_json::from_str::<serde_json::Value>("{\n  \"a\": ,\n}").unwrap_err();
        let e = malformed_json(&e);
        assert_eq!((e.status, e.code), (400, "malformed_json"));
        assert_eq!(e.field.as_deref(), Some("body"));
        assert_eq!(e.message, "body: expected value at line 2 column 8");

        let text = "a = 1\nb = = 2\n";
        let e = text.parse::<toml::Table>().unwrap_err();
        let e = malformed_toml(text, &e);
        assert_eq!((e.status, e.code), (400, "malformed_toml"));
        assert_eq!(e.field.as_deref(), Some("body"));
        assert!(e.message.ends_with(" at line 2 column 5"), "{}", e.message);
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("é\n", 99), (2, 1), "past the end: the end");
    }
}
