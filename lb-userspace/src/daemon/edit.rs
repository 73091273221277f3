//! Backend edits on the config text in force, through `toml_edit`, so that
//! what is written back keeps the operator's comments, order and layout:
//! add, remove, drain (weight 0) and set-weight, for a VIP named by its
//! name or endpoint and a backend named by its name or address.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// What to do to a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Add a new backend.
    Add,
    /// Remove a backend.
    Remove,
    /// Set its weight to 0: no new flows, established ones continue.
    Drain,
    /// Set its weight.
    SetWeight,
}

impl Action {
    /// The verb as the CLI and the journal spell it.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Remove => "remove",
            Action::Drain => "drain",
            Action::SetWeight => "set-weight",
        }
    }
}

/// One backend edit.
#[derive(Clone, Debug)]
pub struct BackendEdit {
    /// What to do.
    pub action: Action,
    /// The VIP: its name, or `address:port/protocol`.
    pub vip: String,
    /// The backend: its name or address (`add`: its address).
    pub backend: String,
    /// The weight (`set-weight`, optional for `add`).
    pub weight: Option<u32>,
    /// A name for a new backend.
    pub name: Option<String>,
    /// A MAC for a new backend.
    pub mac: Option<String>,
    /// A port for a new backend.
    pub port: Option<u16>,
}

/// Why an edit cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No such VIP.
    #[error("no VIP {0:?} (by name or address:port/protocol)")]
    UnknownVip(String),
    /// No such backend.
    #[error("VIP {vip:?} has no backend {backend:?} (by name or address)")]
    UnknownBackend {
        /// The VIP.
        vip: String,
        /// The backend asked for.
        backend: String,
    },
    /// The edit itself is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The config in force cannot be edited.
    #[error("the config in force cannot be edited: {0}")]
    Config(String),
}

/// The backends of one VIP, in either TOML spelling.
enum Backends<'a> {
    Inline(&'a mut Array),
    Tables(&'a mut ArrayOfTables),
}

fn field<'a>(get: impl Fn(&str) -> Option<&'a Value>, key: &str) -> Option<String> {
    get(key).and_then(|v| v.as_str()).map(str::to_string)
}

fn endpoint_of(vip: &Table) -> Option<String> {
    let get = |k: &str| vip.get(k).and_then(Item::as_value);
    let address: IpAddr = field(get, "address")?.parse().ok()?;
    let port = get("port")?.as_integer()?;
    let protocol = field(get, "protocol")?;
    Some(format!(
        "{}/{protocol}",
        SocketAddr::new(address, u16::try_from(port).ok()?)
    ))
}

/// Whether a backend entry (name and address fields) is `wanted`.
fn is_backend(name: Option<String>, address: Option<String>, wanted: &str) -> bool {
    if name.as_deref() == Some(wanted) {
        return true;
    }
    let Some(address) = address.and_then(|a| a.parse::<IpAddr>().ok()) else {
        return false;
    };
    wanted.parse::<IpAddr>() == Ok(address)
        || wanted
            .parse::<SocketAddr>()
            .is_ok_and(|s| s.ip() == address)
}

/// Applies `edit` to the config text `text`; returns the new text.
pub fn apply(text: &str, edit: &BackendEdit) -> Result<String, EditError> {
    let mut document: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Config(e.to_string()))?;
    let vips = document
        .get_mut("vip")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::UnknownVip(edit.vip.clone()))?;
    let vip = vips
        .iter_mut()
        .find(|vip| {
            vip.get("name").and_then(Item::as_str) == Some(edit.vip.as_str())
                || endpoint_of(vip).as_deref() == Some(edit.vip.as_str())
        })
        .ok_or_else(|| EditError::UnknownVip(edit.vip.clone()))?;
    if !vip.contains_key("backend") {
        vip.insert("backend", Item::Value(Value::Array(Array::new())));
    }
    let backends = match vip.get_mut("backend") {
        Some(Item::Value(Value::Array(array))) => Backends::Inline(array),
        Some(Item::ArrayOfTables(tables)) => Backends::Tables(tables),
        _ => {
            return Err(EditError::Config(
                "a VIP's `backend` is neither a list nor [[vip.backend]] tables".into(),
            ));
        }
    };
    let unknown = || EditError::UnknownBackend {
        vip: edit.vip.clone(),
        backend: edit.backend.clone(),
    };
    match edit.action {
        Action::Add => add(backends, edit),
        Action::Remove => match backends {
            Backends::Inline(array) => {
                let index = inline_position(array, &edit.backend).ok_or_else(unknown)?;
                array.remove(index);
                Ok(())
            }
            Backends::Tables(tables) => {
                let index = tables
                    .iter()
                    .position(|t| table_is(t, &edit.backend))
                    .ok_or_else(unknown)?;
                tables.remove(index);
                Ok(())
            }
        },
        Action::Drain | Action::SetWeight => {
            let weight = match edit.action {
                Action::Drain if edit.weight.is_some() => {
                    return Err(EditError::Invalid(
                        "drain sets the weight to 0; it takes no weight".into(),
                    ));
                }
                Action::Drain => 0,
                _ => edit
                    .weight
                    .ok_or_else(|| EditError::Invalid("set-weight needs a weight".into()))?,
            };
            match backends {
                Backends::Inline(array) => {
                    let index = inline_position(array, &edit.backend).ok_or_else(unknown)?;
                    let entry = array
                        .get_mut(index)
                        .and_then(Value::as_inline_table_mut)
                        .ok_or_else(unknown)?;
                    entry.insert("weight", Value::from(i64::from(weight)));
                    entry.fmt();
                }
                Backends::Tables(tables) => {
                    let table = tables
                        .iter_mut()
                        .find(|t| table_is(t, &edit.backend))
                        .ok_or_else(unknown)?;
                    table.insert("weight", toml_edit::value(i64::from(weight)));
                }
            }
            Ok(())
        }
    }?;
    Ok(document.to_string())
}

fn inline_position(array: &Array, wanted: &str) -> Option<usize> {
    array.iter().position(|entry| {
        entry.as_inline_table().is_some_and(|t| {
            let get = |k: &str| t.get(k);
            is_backend(field(get, "name"), field(get, "address"), wanted)
        })
    })
}

fn table_is(table: &Table, wanted: &str) -> bool {
    let get = |k: &str| table.get(k).and_then(Item::as_value);
    is_backend(field(get, "name"), field(get, "address"), wanted)
}

fn add(backends: Backends<'_>, edit: &BackendEdit) -> Result<(), EditError> {
    let address: IpAddr = edit.backend.parse().map_err(|_| {
        EditError::Invalid(format!(
            "add needs the backend's IP address, not {:?}",
            edit.backend
        ))
    })?;
    let mut entry = InlineTable::new();
    if let Some(name) = &edit.name {
        entry.insert("name", Value::from(name.as_str()));
    }
    entry.insert("address", Value::from(address.to_string()));
    if let Some(port) = edit.port {
        entry.insert("port", Value::from(i64::from(port)));
    }
    if let Some(weight) = edit.weight {
        entry.insert("weight", Value::from(i64::from(weight)));
    }
    if let Some(mac) = &edit.mac {
        entry.insert("mac", Value::from(mac.as_str()));
    }
    match backends {
        Backends::Inline(array) => {
            array.push_formatted(Value::InlineTable(entry).decorated("\n  ", " "))
        }
        Backends::Tables(tables) => tables.push(entry.into_table()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INLINE: &str = r#"# the shop
[[vip]]
name = "web"   # the main site
address = "198.18.100.1"
port = 80
protocol = "tcp"
backend = [
  { name = "b1", address = "198.18.0.11" },
  { name = "b2", address = "198.18.0.12", weight = 2 },
]
"#;

    const TABLES: &str = r#"[[vip]]
address = "198.18.100.1"
port = 80
protocol = "tcp"
[[vip.backend]]
name = "b1"
address = "198.18.0.11"
"#;

    fn edit(action: Action, vip: &str, backend: &str, weight: Option<u32>) -> BackendEdit {
        BackendEdit {
            action,
            vip: vip.into(),
            backend: backend.into(),
            weight,
            name: None,
            mac: None,
            port: None,
        }
    }

    fn config(text: &str) -> crate::config::Config {
        crate::config::Config::parse(text).unwrap()
    }

    #[test]
    fn set_weight_keeps_comments_and_changes_only_that_backend() {
        let out = apply(
            INLINE,
            &edit(Action::SetWeight, "web", "198.18.0.12", Some(5)),
        )
        .unwrap();
        assert!(
            out.contains("# the main site") && out.starts_with("# the shop"),
            "{out}"
        );
        let parsed = config(&out);
        let weights: Vec<u32> = parsed.vips[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [1, 5]);
    }

    #[test]
    fn every_action_in_both_spellings() {
        for (text, vip) in [(INLINE, "web"), (TABLES, "198.18.100.1:80/tcp")] {
            let drained = apply(text, &edit(Action::Drain, vip, "b1", None)).unwrap();
            assert_eq!(config(&drained).vips[0].backends[0].weight, 0);
            let mut new = edit(Action::Add, vip, "198.18.0.13", Some(3));
            new.name = Some("b3".into());
            let added = apply(text, &new).unwrap();
            let backends = &config(&added).vips[0].backends;
            let last = backends.last().unwrap();
            assert_eq!((last.label(), last.weight), ("b3".to_string(), 3));
            let removed = apply(text, &edit(Action::Remove, vip, "b1", None)).unwrap();
            assert!(
                config(&removed).vips[0]
                    .backends
                    .iter()
                    .all(|b| b.label() != "b1")
            );
        }
    }

    #[test]
    fn unknown_names_are_errors_of_their_own() {
        assert!(matches!(
            apply(INLINE, &edit(Action::Drain, "nope", "b1", None)),
            Err(EditError::UnknownVip(_))
        ));
        assert!(matches!(
            apply(INLINE, &edit(Action::Drain, "web", "b9", None)),
            Err(EditError::UnknownBackend { .. })
        ));
        assert!(matches!(
            apply(INLINE, &edit(Action::SetWeight, "web", "b1", None)),
            Err(EditError::Invalid(_))
        ));
    }
}
