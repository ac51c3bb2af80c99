//! The context as a checkpoint keeps it: one JSON object, and an index of where each value is.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use flow_core::FlowError;
use serde::de::{DeserializeOwned, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Each key and the byte range of its value in a context's text.
pub(crate) type Index = Vec<(String, Range<usize>)>;

/// Every context value of a [`Checkpoint`](super::Checkpoint): one JSON object, written as it
/// is into the checkpoint's JSON, with an index of each value's place in it. (Keys are in no
/// particular order; if one appears twice in a hand-edited checkpoint, the last one counts.)
///
/// Nothing is decoded when a checkpoint is read but the index: a restored run decodes each
/// value into its Rust type on its first typed read, straight from this text. So a large
/// context costs one copy of its bytes and one pass over them, not an allocation per value.
/// (It reads from bytes or a string, borrowing as it goes: not from a reader or a
/// `serde_json::Value`.)
#[derive(Clone)]
pub struct CheckpointContext {
    text: Arc<str>,
    /// Each key and the byte range of its value in `text` (made on first use for a context
    /// this process wrote, when reading it for a checkpoint read from JSON).
    entries: OnceLock<Result<Index, String>>,
}

impl Default for CheckpointContext {
    fn default() -> Self {
        Self {
            text: Arc::from("{}"),
            entries: OnceLock::from(Ok(Vec::new())),
        }
    }
}

impl CheckpointContext {
    /// From the text of a JSON object written by this crate (trusted: not parsed again).
    pub(crate) fn written(text: String) -> Self {
        Self {
            text: Arc::from(text),
            entries: OnceLock::new(),
        }
    }

    /// The context of a checkpoint's JSON: `text` is that JSON object (checked by the caller's
    /// parse), copied once and indexed.
    fn parse(text: &str) -> Result<Self, String> {
        let text: Arc<str> = Arc::from(text);
        let entries = index(&text)?;
        Ok(Self {
            text,
            entries: OnceLock::from(Ok(entries)),
        })
    }

    /// The JSON object's text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The index, made on first use for a context this process wrote (the text it wrote always
    /// indexes; if it ever did not, every read reports why rather than finding nothing).
    fn entries(&self) -> Result<&[(String, Range<usize>)], FlowError> {
        self.entries
            .get_or_init(|| index(&self.text))
            .as_deref()
            .map_err(|message| FlowError::Serialization {
                key: "(the checkpoint's context)".into(),
                message: message.clone(),
            })
    }

    /// Number of values (0 for a context that cannot be read: [`Self::get`] says why).
    pub fn len(&self) -> usize {
        self.entries().map_or(0, <[_]>::len)
    }

    /// True when there are none (or the context cannot be read: [`Self::get`] says why).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key, sorted (none for a context that cannot be read: [`Self::get`] says why).
    pub fn keys(&self) -> Vec<&str> {
        let entries = self.entries().unwrap_or_default();
        let mut keys: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The value under `key`, decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, FlowError> {
        self.entries()?;
        let raw = self.raw(key).ok_or_else(|| FlowError::MissingKey {
            key: key.to_owned(),
        })?;
        serde_json::from_str(raw).map_err(|error| FlowError::WrongType {
            key: key.to_owned(),
            expected: std::any::type_name::<T>().to_owned(),
            found: format!("JSON that does not decode as it ({error})"),
        })
    }

    /// The JSON text of the value under `key` (a scan: checkpoints are read whole by a
    /// restored run, not looked up key by key).
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.entries()
            .ok()?
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, range)| &self.text[range.clone()])
    }

    /// Stores `value` under `key` (replacing what was there): an edit before the checkpoint is
    /// restored (see `CheckpointStore::edit_latest`). The restored run reads it like any
    /// value. A value that does not serialize is [`FlowError::Serialization`].
    pub fn set(&mut self, key: &str, value: impl Serialize) -> Result<(), FlowError> {
        let json = serde_json::to_string(&value).map_err(|error| FlowError::Serialization {
            key: key.to_owned(),
            message: error.to_string(),
        })?;
        self.rewrite(key, Some(&json))
    }

    /// Removes the value under `key`; true if there was one.
    pub fn remove(&mut self, key: &str) -> Result<bool, FlowError> {
        let had = self.entries()?.iter().any(|(k, _)| k == key);
        self.rewrite(key, None)?;
        Ok(had)
    }

    /// The object again, with `key` set to the JSON text `value` (or left out). A key that
    /// appears twice keeps its last value, as when read.
    fn rewrite(&mut self, key: &str, value: Option<&str>) -> Result<(), FlowError> {
        let entries = self.entries()?;
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<&(String, Range<usize>)> = entries
            .iter()
            .rev()
            .filter(|(k, _)| k != key && seen.insert(k.as_str()))
            .collect();
        kept.reverse();
        let mut text = String::with_capacity(self.text.len() + value.map_or(0, str::len) + 8);
        text.push('{');
        let write = |text: &mut String, k: &str, v: &str| {
            if text.len() > 1 {
                text.push(',');
            }
            // A `String` key always serializes.
            text.push_str(&serde_json::to_string(k).unwrap_or_default());
            text.push(':');
            text.push_str(v);
        };
        for (k, range) in kept {
            write(&mut text, k, &self.text[range.clone()]);
        }
        if let Some(value) = value {
            write(&mut text, key, value);
        }
        text.push('}');
        *self = Self::written(text);
        Ok(())
    }

    /// The whole object's text and the index, for a context built from it.
    pub(crate) fn into_parts(self) -> Result<(Arc<str>, Index), FlowError> {
        self.entries()?;
        let entries = self
            .entries
            .into_inner()
            .and_then(Result::ok)
            .unwrap_or_default();
        Ok((self.text, entries))
    }
}

impl fmt::Debug for CheckpointContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries()
                    .unwrap_or_default()
                    .iter()
                    .map(|(k, range)| (k, &self.text[range.clone()])),
            )
            .finish()
    }
}

impl PartialEq for CheckpointContext {
    fn eq(&self, other: &Self) -> bool {
        fn sorted(c: &CheckpointContext) -> Vec<(&str, &str)> {
            let mut entries: Vec<(&str, &str)> = c
                .entries()
                .unwrap_or_default()
                .iter()
                .map(|(k, range)| (k.as_str(), &c.text[range.clone()]))
                .collect();
            entries.sort_unstable();
            entries
        }
        sorted(self) == sorted(other)
    }
}

impl Serialize for CheckpointContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Into JSON, the text goes as it is (`Checkpoint::to_json` splices it in without even
        // this check).
        RawValue::from_string(self.text.to_string())
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CheckpointContext {
    /// The object is borrowed from the input, then copied once and indexed (as
    /// [`Checkpoint::from_json`](super::Checkpoint::from_json) does): this reads from bytes or
    /// a string, not from a reader.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text: &'de RawValue = Deserialize::deserialize(deserializer)?;
        Self::parse(text.get()).map_err(D::Error::custom)
    }
}

/// Where each value of the JSON object `text` is: one pass, borrowing the values.
fn index(text: &str) -> Result<Vec<(String, Range<usize>)>, String> {
    struct Places<'a> {
        base: usize,
        len: usize,
        _text: std::marker::PhantomData<&'a ()>,
    }
    impl<'de> Visitor<'de> for Places<'de> {
        type Value = Vec<(String, Range<usize>)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of context values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0));
            while let Some((key, value)) = access.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                let start = value.get().as_ptr() as usize - self.base;
                let end = start + value.get().len();
                if end > self.len {
                    return Err(A::Error::custom("a value lies outside the context"));
                }
                entries.push((key.into_owned(), start..end));
            }
            Ok(entries)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer
        .deserialize_map(Places {
            base: text.as_ptr() as usize,
            len: text.len(),
            _text: std::marker::PhantomData,
        })
        .map_err(|error| error.to_string())
}
