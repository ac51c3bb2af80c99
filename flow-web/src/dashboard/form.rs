//! Input forms generated from a request's JSON Schema, and the answer read back from a
//! submitted form.
//!
//! A text request is a text area; an object whose fields are text, numbers, yes/no or a
//! choice gets a field each; anything else (nested objects, lists) is typed as JSON. The
//! server checks the answer against the schema either way.

use std::collections::HashMap;
use std::fmt::Write;

use flow_runtime::InputRequest;
use serde_json::{Map, Value};

use super::html::escape;

/// How one object field is entered.
enum Field {
    Text,
    Integer,
    Number,
    Boolean,
    Choice(Vec<String>),
    Json,
}

/// The form's shape for a schema.
enum Shape {
    Text,
    Object(Vec<(String, Field, bool)>),
    Json,
}

fn shape(schema: &Value) -> Shape {
    if kind(schema) == Some("string") && schema.get("enum").is_none() {
        return Shape::Text;
    }
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return Shape::Json;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let fields = properties
        .iter()
        .map(|(name, property)| {
            (
                name.clone(),
                field(resolve(schema, property)),
                required.contains(&name.as_str()),
            )
        })
        .collect();
    Shape::Object(fields)
}

/// `property`, or the definition its local `$ref` points to (`#/$defs/Team`: how schemars
/// writes a named type).
fn resolve<'a>(root: &'a Value, property: &'a Value) -> &'a Value {
    let Some(reference) = property.get("$ref").and_then(Value::as_str) else {
        return property;
    };
    reference
        .strip_prefix('#')
        .and_then(|pointer| root.pointer(pointer))
        .unwrap_or(property)
}

/// The schema's `type`, or the one that is not `null` (`["integer", "null"]`: optional).
fn kind(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(kind) => Some(kind),
        Value::Array(kinds) => {
            let kinds: Vec<&str> = kinds
                .iter()
                .filter_map(Value::as_str)
                .filter(|k| *k != "null")
                .collect();
            (kinds.len() == 1).then(|| kinds[0])
        }
        _ => None,
    }
}

fn field(property: &Value) -> Field {
    if let Some(choices) = property.get("enum").and_then(Value::as_array)
        && choices.iter().all(Value::is_string)
    {
        return Field::Choice(
            choices
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect(),
        );
    }
    match kind(property) {
        Some("string") => Field::Text,
        Some("integer") => Field::Integer,
        Some("number") => Field::Number,
        Some("boolean") => Field::Boolean,
        _ => Field::Json,
    }
}

/// The form answering `request` (posted to `action` with `csrf`), refilled with `given` and
/// showing `refusal` when a submitted answer was refused.
pub(crate) fn render(
    request: &InputRequest,
    action: &str,
    csrf: &str,
    given: &HashMap<String, String>,
    refusal: Option<&str>,
) -> String {
    let id = request.id.to_string();
    let mut form = format!(
        "<form class=\"input\" method=\"post\" action=\"{action}\" data-request=\"{id}\">\
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"id\" value=\"{id}\">\
<p><strong>{prompt}</strong> <span class=\"muted\">({id})</span></p>",
        action = escape(action),
        csrf = escape(csrf),
        id = escape(&id),
        prompt = escape(&request.prompt),
    );
    if let Some(refusal) = refusal {
        let _ = write!(form, "<p class=\"refusal\">{}</p>", escape(refusal));
    }
    let value_of = |name: &str| escape(given.get(name).map_or("", String::as_str));
    match shape(&request.schema) {
        Shape::Text => {
            let _ = write!(
                form,
                "<label>Answer<br><textarea name=\"value\" rows=\"3\" cols=\"50\">{}</textarea></label>",
                value_of("value")
            );
        }
        Shape::Object(fields) => {
            for (name, kind, required) in &fields {
                let input = format!("field.{name}");
                let label = format!("{}{}", escape(name), if *required { " *" } else { "" });
                let control = match kind {
                    Field::Text => format!(
                        "<input type=\"text\" name=\"{n}\" value=\"{v}\">",
                        n = escape(&input),
                        v = value_of(&input)
                    ),
                    Field::Integer | Field::Number => format!(
                        "<input type=\"number\" step=\"{step}\" name=\"{n}\" value=\"{v}\">",
                        step = if matches!(kind, Field::Integer) {
                            "1"
                        } else {
                            "any"
                        },
                        n = escape(&input),
                        v = value_of(&input)
                    ),
                    Field::Boolean if *required => format!(
                        "<input type=\"checkbox\" name=\"{n}\" value=\"true\"{checked}>",
                        n = escape(&input),
                        checked = if given.get(&input).is_some_and(|v| v == "true") {
                            " checked"
                        } else {
                            ""
                        }
                    ),
                    // An optional yes/no can also be left unsaid (an unticked box could not).
                    Field::Boolean => {
                        let mut select = format!("<select name=\"{}\">", escape(&input));
                        for (value, shown) in [("", "—"), ("true", "yes"), ("false", "no")] {
                            let selected = given.get(&input).map_or("", String::as_str) == value;
                            let _ = write!(
                                select,
                                "<option value=\"{value}\"{s}>{shown}</option>",
                                s = if selected { " selected" } else { "" }
                            );
                        }
                        select.push_str("</select>");
                        select
                    }
                    Field::Choice(choices) => {
                        let mut select = format!("<select name=\"{}\">", escape(&input));
                        for choice in choices {
                            let selected = given.get(&input) == Some(choice);
                            let _ = write!(
                                select,
                                "<option value=\"{c}\"{s}>{c}</option>",
                                c = escape(choice),
                                s = if selected { " selected" } else { "" }
                            );
                        }
                        select.push_str("</select>");
                        select
                    }
                    Field::Json => format!(
                        "<textarea name=\"{n}\" rows=\"2\" cols=\"40\" placeholder=\"JSON\">{v}</textarea>",
                        n = escape(&input),
                        v = value_of(&input)
                    ),
                };
                let _ = write!(form, "<label>{label}<br>{control}</label>");
            }
        }
        Shape::Json => {
            let _ = write!(
                form,
                "<label>Answer (JSON)<br><textarea name=\"json\" rows=\"4\" cols=\"50\">{}</textarea></label>",
                value_of("json")
            );
        }
    }
    form.push_str("<p><button type=\"submit\">Answer</button></p></form>");
    form
}

/// The answer a submitted form gives for `schema`; an error says which field is not what
/// it must be.
pub(crate) fn answer(schema: &Value, submitted: &HashMap<String, String>) -> Result<Value, String> {
    match shape(schema) {
        Shape::Text => Ok(Value::String(
            submitted.get("value").cloned().unwrap_or_default(),
        )),
        Shape::Json => json(
            submitted.get("json").map_or("", String::as_str),
            "the answer",
        ),
        Shape::Object(fields) => {
            let mut object = Map::new();
            for (name, kind, required) in fields {
                let text = submitted
                    .get(&format!("field.{name}"))
                    .map_or("", String::as_str);
                let value = match kind {
                    // (An unticked box is not sent: false.)
                    Field::Boolean if required => Value::Bool(text == "true"),
                    Field::Boolean => match text {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        _ => continue,
                    },
                    // Required text may be empty (the schema says if it may); other empty
                    // fields are left out, and a required one is named by the schema check.
                    Field::Text if required && text.is_empty() => Value::String(String::new()),
                    _ if text.trim().is_empty() => continue,
                    Field::Text | Field::Choice(_) => Value::String(text.to_owned()),
                    Field::Integer => text
                        .trim()
                        .parse::<i64>()
                        .map(Value::from)
                        .map_err(|_| format!("{name}: `{text}` is not a whole number"))?,
                    Field::Number => text
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .ok_or_else(|| format!("{name}: `{text}` is not a number"))?,
                    Field::Json => json(text, &name)?,
                };
                object.insert(name, value);
            }
            Ok(Value::Object(object))
        }
    }
}

fn json(text: &str, what: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|error| format!("{what}: not JSON ({error})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn submitted(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn object_fields_are_read_by_their_types() {
        let schema = json!({
            "type": "object",
            "properties": {
                "amount": {"type": "integer"},
                "rate": {"type": ["number", "null"]},
                "approved": {"type": "boolean"},
                "urgent": {"type": ["boolean", "null"]},
                "remote": {"type": ["boolean", "null"]},
                "team": {"type": "string", "enum": ["ml", "data"]},
                "note": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["amount", "approved", "team"]
        });
        let answer = answer(
            &schema,
            &submitted(&[
                ("field.amount", "1200"),
                ("field.rate", "0.5"),
                ("field.team", "ml"),
                ("field.note", ""),
                ("field.tags", r#"["a","b"]"#),
                ("field.urgent", "false"),
                ("field.remote", ""),
            ]),
        )
        .unwrap();
        // (An optional yes/no left unsaid is left out; an unticked required box is false.)
        assert_eq!(
            answer,
            json!({"amount": 1200, "rate": 0.5, "approved": false, "urgent": false, "team": "ml", "tags": ["a", "b"]})
        );
        let error = super::answer(&schema, &submitted(&[("field.amount", "12.5")])).unwrap_err();
        assert_eq!(error, "amount: `12.5` is not a whole number");
    }

    #[test]
    fn text_and_other_requests() {
        assert_eq!(
            answer(&json!({"type": "string"}), &submitted(&[("value", "yes")])).unwrap(),
            json!("yes")
        );
        assert_eq!(
            answer(&json!({"type": "array"}), &submitted(&[("json", "[1,2]")])).unwrap(),
            json!([1, 2])
        );
        assert!(answer(&json!({}), &submitted(&[("json", "nope")])).is_err());
    }
}
