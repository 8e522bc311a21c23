//! What changed between two config documents, for review before publishing and for the audit
//! log: one line per changed field, with list entries named by their `id`
//! (`rounds[rain].prizes[cash-big].quota: 100 → 200`).

use serde_json::Value;

/// Most lines one diff lists; the rest are counted in a last line.
pub const MAX_CHANGES: usize = 500;

/// The changes from `old` to `new` (both JSON documents), in document order.
pub fn changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    if out.len() > MAX_CHANGES {
        let more = out.len() - MAX_CHANGES;
        out.truncate(MAX_CHANGES);
        out.push(format!("… and {more} more"));
    }
    out
}

fn walk(at: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let path = join(at, k);
                match b.get(k) {
                    Some(vb) => walk(&path, va, vb, out),
                    None if !va.is_null() => out.push(format!("{path}: {} → unset", show(va))),
                    None => {}
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) && !vb.is_null() {
                    out.push(format!("{}: unset → {}", join(at, k), show(vb)));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => match (by_id(a), by_id(b)) {
            (Some(ids_a), Some(ids_b)) => {
                for va in a {
                    let id = id_of(va);
                    let path = format!("{at}[{id}]");
                    match ids_b.get(id) {
                        Some(vb) => walk(&path, va, vb, out),
                        None => out.push(format!("{path}: removed")),
                    }
                }
                for vb in b {
                    if !ids_a.contains_key(id_of(vb)) {
                        out.push(format!("{at}[{}]: added", id_of(vb)));
                    }
                }
            }
            _ => changed(at, old, new, out),
        },
        _ => changed(at, old, new, out),
    }
}

fn changed(at: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old != new {
        let (old, new) = shown(&old.to_string(), &new.to_string());
        out.push(format!("{at}: {old} → {new}"));
    }
}

/// The entries of a list by `id`, when every entry has a distinct string one (then entries are
/// matched by id, not position).
fn by_id(list: &[Value]) -> Option<std::collections::HashMap<&str, &Value>> {
    let ids: std::collections::HashMap<&str, &Value> = list.iter().map(|v| (id_of(v), v)).collect();
    (ids.len() == list.len() && !ids.contains_key("")).then_some(ids)
}

fn id_of(v: &Value) -> &str {
    v.get("id").and_then(Value::as_str).unwrap_or("")
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Characters of a value a change line shows.
const SHOWN: usize = 80;
/// Of those, how many come before the first difference when a value is cut.
const BEFORE_DIFFERENCE: usize = 20;

/// A value added or removed, as a change line shows it: its first [`SHOWN`] characters.
fn show(v: &Value) -> String {
    shown(&v.to_string(), "").0
}

/// Two values (JSON text) as a change line shows them: whole up to [`SHOWN`] characters, else
/// cut to a window around where they first differ, so the change itself is always in view.
fn shown(old: &str, new: &str) -> (String, String) {
    let common = old
        .chars()
        .zip(new.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let start = common.saturating_sub(BEFORE_DIFFERENCE);
    let window = |text: &str| -> String {
        let len = text.chars().count();
        if len <= SHOWN {
            return text.to_string();
        }
        let start = start.min(len.saturating_sub(SHOWN));
        let cut: String = text.chars().skip(start).take(SHOWN).collect();
        let before = if start > 0 { "…" } else { "" };
        let after = if start + SHOWN < len { "…" } else { "" };
        format!("{before}{cut}{after}")
    };
    (window(old), window(new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_list_entries_by_id_and_reports_additions_and_removals() {
        let old = json!({"rounds": [
            {"id": "rain", "prizes": [{"id": "a", "quota": 100}, {"id": "b", "quota": 1}]},
            {"id": "gone", "prizes": []}
        ]});
        let new = json!({"rounds": [
            {"id": "night", "prizes": []},
            {"id": "rain", "prizes": [{"id": "a", "quota": 200, "paused": true}, {"id": "b", "quota": 1}]}
        ]});
        assert_eq!(
            changes(&old, &new),
            vec![
                "rounds[rain].prizes[a].quota: 100 → 200",
                "rounds[rain].prizes[a].paused: unset → true",
                "rounds[gone]: removed",
                "rounds[night]: added",
            ]
        );
    }

    #[test]
    fn lists_without_ids_compare_whole_and_equal_documents_have_no_changes() {
        let a = json!({"drops": [{"id": "t", "zones": ["a.geojson"]}]});
        let b = json!({"drops": [{"id": "t", "zones": ["a.geojson", "b.geojson"]}]});
        assert_eq!(
            changes(&a, &b),
            vec![r#"drops[t].zones: ["a.geojson"] → ["a.geojson","b.geojson"]"#]
        );
        assert!(changes(&b, &b).is_empty());
        // Duplicate ids (an invalid draft) fall back to whole-list comparison.
        let dup = json!({"rounds": [{"id": "r"}, {"id": "r"}]});
        assert_eq!(changes(&dup, &dup), Vec::<String>::new());
    }

    #[test]
    fn a_long_value_is_cut_around_its_first_difference() {
        let head = "x".repeat(200);
        let (old, new) = (
            json!(format!("{head}-old-tail")),
            json!(format!("{head}-new-tail")),
        );
        let line = &changes(&json!({"name": old}), &json!({"name": new}))[0];
        assert!(
            line.contains("-old-tail") && line.contains("-new-tail"),
            "{line}"
        );
        assert!(line.starts_with("name: …x"), "{line}");
        // Short values are shown whole.
        assert_eq!(
            changes(&json!({"a": "short"}), &json!({"a": "shorter"})),
            vec![r#"a: "short" → "shorter""#]
        );
    }
}
