//! YAML documents read as JSON values, for serde: organisation files and application-service
//! registration files. Anchors and aliases are refused (a few hundred bytes could expand into
//! gigabytes), and so are NUL characters and nesting deeper than [`MAX_DEPTH`].

use serde_json::{json, Value};

/// The deepest nesting accepted (an organisation file needs four levels, a registration three).
pub const MAX_DEPTH: usize = 32;

/// The first document of `text` as JSON (`null` when there is none), or what is wrong with it,
/// line first.
pub fn parse(text: &str) -> Result<Value, String> {
    check(text)?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    Ok(docs.first().map(to_json).unwrap_or(Value::Null))
}

/// Reads a YAML text's events without building anything, and refuses anchors, aliases, NUL
/// characters in values (an escaped `"\0"`) and nesting deeper than [`MAX_DEPTH`].
fn check(text: &str) -> Result<(), String> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| e.to_string())?;
        let line = mark.line();
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => return Err(format!("line {line}: aliases (*name) are not accepted")),
            Event::Scalar(_, _, anchor, _) | Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _)
                if anchor != 0 =>
            {
                return Err(format!("line {line}: anchors (&name) are not accepted"))
            }
            Event::Scalar(value, ..) if value.contains('\0') => {
                return Err(format!("line {line}: a NUL character is not allowed"))
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!("line {line}: nested deeper than {MAX_DEPTH} levels"));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
}

/// A YAML node as JSON (keys become strings).
fn to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}
