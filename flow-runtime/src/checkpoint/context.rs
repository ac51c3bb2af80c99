//! The context as a checkpoint keeps it: each value's JSON text, by key.

use std::fmt;
use std::sync::Arc;

use flow_core::FlowError;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Every context value of a [`Checkpoint`](super::Checkpoint), as JSON text sorted by key.
///
/// Values are not parsed when a checkpoint is read: a restored run decodes each one into its
/// Rust type on its first typed read, so restoring a large context costs little more than
/// reading its bytes.
#[derive(Clone, Default)]
pub struct CheckpointContext(pub(crate) Vec<(String, Arc<RawValue>)>);

impl CheckpointContext {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(key, _)| key.as_str())
    }

    /// The value under `key`, decoded as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, FlowError> {
        let raw = self
            .0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .map(|i| &self.0[i].1)
            .map_err(|_| FlowError::MissingKey {
                key: key.to_owned(),
            })?;
        serde_json::from_str(raw.get()).map_err(|error| FlowError::WrongType {
            key: key.to_owned(),
            expected: std::any::type_name::<T>().to_owned(),
            found: format!("JSON that does not decode as it ({error})"),
        })
    }

    /// The JSON text of the value under `key`.
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.get())
    }
}

impl fmt::Debug for CheckpointContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v.get())))
            .finish()
    }
}

impl PartialEq for CheckpointContext {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((a, x), (b, y))| a == b && x.get() == y.get())
    }
}

impl Serialize for CheckpointContext {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, &**value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for CheckpointContext {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Values;
        impl<'de> Visitor<'de> for Values {
            type Value = CheckpointContext;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of context values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut values: Vec<(String, Arc<RawValue>)> =
                    Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some((key, value)) = access.next_entry::<String, Box<RawValue>>()? {
                    values.push((key, Arc::from(value)));
                }
                // Written sorted; sorted again (cheaply, if so) so that lookups may search.
                values.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                if values.windows(2).any(|w| w[0].0 == w[1].0) {
                    return Err(serde::de::Error::custom("a context key appears twice"));
                }
                Ok(CheckpointContext(values))
            }
        }
        deserializer.deserialize_map(Values)
    }
}
