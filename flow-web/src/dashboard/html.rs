//! HTML pieces: escaping, the page around every view, status colours, links.

use std::fmt::Write;

/// `text` safe inside HTML text and attribute values (quoted with `"` or `'`).
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `segment` as one path segment of a URL (every byte but the unreserved ones encoded).
pub(crate) fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// The link to run `key` of `workflow`.
pub(crate) fn run_link(workflow: &str, key: &str) -> String {
    format!("/runs/{}/{}", encode_segment(workflow), encode_segment(key))
}

/// The colour a status is shown in (run and state statuses share names where they mean the
/// same).
pub(crate) fn colour(status: &str) -> &'static str {
    match status {
        "completed" => "#2e7d32",
        "completed_with_failures" => "#9e9d24",
        "failed" => "#c62828",
        "running" => "#1565c0",
        "ready" => "#64b5f6",
        "blocked" => "#ef6c00",
        "timeout" => "#ad1457",
        "cancelled" => "#616161",
        "awaiting_input" => "#f9a825",
        "paused" => "#8e24aa",
        _ => "#9e9e9e", // pending, idle, unknown
    }
}

/// A status as a coloured label.
pub(crate) fn badge(status: &str) -> String {
    format!(
        r#"<span class="badge" style="background:{}">{}</span>"#,
        colour(status),
        escape(status)
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}\
table{border-collapse:collapse;margin:1rem 0}td,th{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
.badge{color:#fff;padding:.1rem .5rem;border-radius:.6rem;font-size:.85rem}\
.refusal{color:#c62828;font-weight:600}.muted{color:#777}\
form.input{border:1px solid #ccc;padding:1rem;margin:1rem 0;max-width:40rem}\
form.input label{display:block;margin:.5rem 0}nav a{margin-right:.8rem}\
table.runs td:nth-child(-n+4){white-space:nowrap}";

/// A whole page. `poll`: the JSON address whose change reloads the page (live updates), with
/// the value it has now.
pub(crate) fn page(title: &str, body: &str, poll: Option<(&str, &str)>) -> String {
    let script = match poll {
        Some((address, now)) => format!(
            "<script>const now={now};setInterval(async()=>{{try{{const r=await fetch({address});\
if(r.ok&&JSON.stringify(await r.json())!==JSON.stringify(now)&&!document.querySelector('form.input :focus'))location.reload();}}catch(e){{}}}},2000);</script>",
            now = json_for_script(now),
            address = json_for_script(&serde_json::Value::String(address.to_owned()).to_string()),
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · fluffy</title>\
<style>{STYLE}</style></head><body><nav><a href=\"/\">runs</a><a href=\"/metrics\">metrics</a></nav>{body}{script}</body></html>",
        title = escape(title)
    )
}

/// JSON text safe inside a `<script>` element (no `</script>` or `<!--` can close it).
fn json_for_script(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_encodes_links() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(run_link("etl", "a/b c<"), "/runs/etl/a%2Fb%20c%3C");
        assert_eq!(
            json_for_script(r#""</script>""#),
            r#""\u003c/script\u003e""#
        );
    }
}
