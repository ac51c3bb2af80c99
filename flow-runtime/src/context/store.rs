//! The context's store: its values, native or JSON, and the copy-on-write image a checkpoint
//! takes of them.

use std::any::{Any, type_name};
use std::ops::Range;
use std::sync::{Arc, RwLockWriteGuard};

use flow_core::{FlowError, FxHashMap};
use serde_json::Value;

use super::ContextValue;
use crate::checkpoint::CheckpointContext;

type SharedValue = Arc<dyn Any + Send + Sync>;
type ToJson = fn(&(dyn Any + Send + Sync)) -> Result<Value, serde_json::Error>;
type WriteJson = fn(&(dyn Any + Send + Sync), &mut Vec<u8>) -> Result<(), serde_json::Error>;

/// One stored value: native (as the state stored it), or JSON that has not been read yet
/// (parsed, or still text: a value restored from a checkpoint is a slice of its context's
/// text until it is read). Cloning one shares its value.
#[derive(Clone)]
pub(crate) enum Slot {
    Native {
        value: SharedValue,
        type_name: &'static str,
        to_json: ToJson,
        write_json: WriteJson,
    },
    Json(Arc<Value>),
    Text {
        text: Arc<str>,
        range: Range<usize>,
    },
}

pub(super) type Store = FxHashMap<String, Slot>;

/// The store, writable: the first write after a checkpoint took a [`Frozen`] copy of the map
/// copies it (copy-on-write), so the checkpoint keeps the values of its moment.
pub(super) struct Writable<'a>(pub(super) RwLockWriteGuard<'a, Arc<Store>>);

impl std::ops::Deref for Writable<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.0
    }
}

impl std::ops::DerefMut for Writable<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        Arc::make_mut(&mut self.0)
    }
}

/// The context's values at one moment, for a checkpoint: taking it is O(1) (the map is
/// shared); serializing it needs no lock, and writes meanwhile copy the map rather than
/// change what it holds.
pub(crate) struct Frozen(pub(super) Arc<Store>);

impl Frozen {
    /// The values as one JSON object with each value's place in it (the context of a
    /// checkpoint), written in one pass, no lock held. A value that fails to serialize is an
    /// error naming its key.
    pub(crate) fn to_checkpoint(&self) -> Result<CheckpointContext, FlowError> {
        let values = &*self.0;
        let failed = |key: &str, error: serde_json::Error| FlowError::Serialization {
            key: key.to_owned(),
            message: error.to_string(),
        };
        let mut buffer: Vec<u8> = Vec::with_capacity(values.len() * 32 + 2);
        buffer.push(b'{');
        for (index, (key, slot)) in values.iter().enumerate() {
            if index > 0 {
                buffer.push(b',');
            }
            serde_json::to_writer(&mut buffer, key).map_err(|e| failed(key, e))?;
            buffer.push(b':');
            match slot {
                Slot::Native {
                    value, write_json, ..
                } => write_json(&**value, &mut buffer).map_err(|e| failed(key, e))?,
                Slot::Json(json) => {
                    serde_json::to_writer(&mut buffer, &**json).map_err(|e| failed(key, e))?;
                }
                Slot::Text { text, range } => {
                    buffer.extend_from_slice(&text.as_bytes()[range.clone()]);
                }
            }
        }
        buffer.push(b'}');
        let whole = |message: String| FlowError::Serialization {
            key: "(the context)".into(),
            message,
        };
        let text = String::from_utf8(buffer).map_err(|e| whole(e.to_string()))?;
        Ok(CheckpointContext::written(text))
    }
}

impl Slot {
    pub(super) fn native<T: ContextValue>(value: Arc<T>) -> Self {
        Slot::Native {
            value,
            type_name: type_name::<T>(),
            to_json: to_json::<T>,
            write_json: write_json::<T>,
        }
    }
}

fn write_json<T: ContextValue>(
    value: &(dyn Any + Send + Sync),
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    match value.downcast_ref::<T>() {
        Some(value) => serde_json::to_writer(out, value),
        // A slot's writer is always made for its own type: this would be a bug, said as such.
        None => Err(serde::ser::Error::custom(
            "the value is not of the type it was stored as",
        )),
    }
}

fn to_json<T: ContextValue>(value: &(dyn Any + Send + Sync)) -> Result<Value, serde_json::Error> {
    match value.downcast_ref::<T>() {
        Some(value) => serde_json::to_value(value),
        // A slot's converter is always made for its own type: this would be a bug, said as such.
        None => Err(serde::ser::Error::custom(
            "the value is not of the type it was stored as",
        )),
    }
}

impl Slot {
    /// A JSON value (from a checkpoint, or a map's input).
    pub(super) fn json(value: Value) -> Self {
        Slot::Json(Arc::new(value))
    }

    /// The type of a native value (`None`: JSON, typed on first read).
    pub(super) fn native_type(&self) -> Option<std::any::TypeId> {
        match self {
            Slot::Native { value, .. } => Some((**value).type_id()),
            Slot::Json(_) | Slot::Text { .. } => None,
        }
    }

    /// The value as a `T`: shared when native, decoded when JSON (not kept: see
    /// `Context::get_typed` for the store's cached decode).
    pub(super) fn typed<T: ContextValue>(&self, key: &str) -> Result<Arc<T>, FlowError> {
        match self {
            Slot::Native {
                value,
                type_name: found,
                ..
            } => Arc::clone(value)
                .downcast::<T>()
                .map_err(|_| wrong_type::<T>(key, found)),
            Slot::Json(json) => decode_value(key, json).map(Arc::new),
            Slot::Text { text, range } => decode_text(key, &text[range.clone()]).map(Arc::new),
        }
    }

    /// The value as JSON.
    pub(super) fn to_value(&self, key: &str) -> Result<Value, FlowError> {
        let failed = |error: serde_json::Error| FlowError::Serialization {
            key: key.to_owned(),
            message: error.to_string(),
        };
        match self {
            Slot::Json(json) => Ok(Value::clone(json)),
            Slot::Text { text, range } => {
                serde_json::from_str(&text[range.clone()]).map_err(failed)
            }
            Slot::Native { value, to_json, .. } => to_json(&**value).map_err(failed),
        }
    }
}

/// A JSON value decoded as a `T`, or the error saying why it does not decode.
pub(super) fn decode_value<T: ContextValue>(key: &str, json: &Value) -> Result<T, FlowError> {
    T::deserialize(json).map_err(|error| FlowError::WrongType {
        key: key.to_owned(),
        expected: type_name::<T>().to_owned(),
        found: format!(
            "JSON {} that does not decode as it ({error})",
            json_kind(json)
        ),
    })
}

/// JSON text decoded as a `T`, or the error saying why it does not decode.
pub(super) fn decode_text<T: ContextValue>(key: &str, text: &str) -> Result<T, FlowError> {
    serde_json::from_str(text).map_err(|error| FlowError::WrongType {
        key: key.to_owned(),
        expected: type_name::<T>().to_owned(),
        found: format!("JSON that does not decode as it ({error})"),
    })
}

pub(super) fn missing(key: &str) -> FlowError {
    FlowError::MissingKey {
        key: key.to_owned(),
    }
}

pub(super) fn wrong_type<T>(key: &str, found: &str) -> FlowError {
    FlowError::WrongType {
        key: key.to_owned(),
        expected: type_name::<T>().to_owned(),
        found: found.to_owned(),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Slot {
    /// The value as a `T`, taking this slot's share (so a value nothing else holds can be
    /// changed in place).
    pub(super) fn into_typed<T: ContextValue>(self, key: &str) -> Result<Arc<T>, FlowError> {
        match self {
            Slot::Native {
                value,
                type_name: found,
                ..
            } => value
                .downcast::<T>()
                .map_err(|_| wrong_type::<T>(key, found)),
            other => other.typed(key),
        }
    }

    /// The name of a native value's type, for messages.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Slot::Native { type_name, .. } => type_name,
            Slot::Json(_) | Slot::Text { .. } => "JSON",
        }
    }
}
