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
        (Value::Array(a), Value::Array(b)) if keyed(a) && keyed(b) => {
            for va in a {
                let id = id_of(va);
                let path = format!("{at}[{id}]");
                match b.iter().find(|vb| id_of(vb) == id) {
                    Some(vb) => walk(&path, va, vb, out),
                    None => out.push(format!("{path}: removed")),
                }
            }
            for vb in b {
                if !a.iter().any(|va| id_of(va) == id_of(vb)) {
                    out.push(format!("{at}[{}]: added", id_of(vb)));
                }
            }
        }
        _ if old != new => out.push(format!("{at}: {} → {}", show(old), show(new))),
        _ => {}
    }
}

/// Lists whose entries all have a distinct string `id` are matched by id, not position.
fn keyed(list: &[Value]) -> bool {
    let ids: std::collections::HashSet<&str> = list.iter().map(id_of).collect();
    ids.len() == list.len() && !ids.contains("")
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

/// A value as shown in a change line: JSON, cut at 80 characters.
fn show(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
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
}
