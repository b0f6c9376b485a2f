//! The typed config values an instance has read, so that each is fetched
//! from the host and parsed once per instance, not once per event.
//!
//! Sound because a function's `[config]` is fixed per deployed version and
//! an instance never outlives its version: a redeploy, a new config or a
//! trap brings a new instance, with fresh memory and so an empty cache. On
//! wasm32 the cache is a static in the instance's memory; natively it lives
//! in the [`crate::testing::TestHost`], so tests with different configs
//! never see each other's values.
//!
//! Only what the typed helpers (`config_f64`, `config_i64`, `config_bool`
//! and their `_or` forms) read is kept: the parsed value, or that the key
//! is missing. Values that fail to parse are not kept (they fail each time,
//! with [`crate::Error::Config`]). Keys longer than [`KEY_MAX`] and keys
//! past the first [`ENTRIES`] are read from the host every time.

/// Longest key the cache keeps, in bytes.
pub(crate) const KEY_MAX: usize = 32;
/// How many keys the cache keeps.
pub(crate) const ENTRIES: usize = 8;

/// A config value as read once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Cached {
    /// The manifest has no such key (any type).
    Missing,
    F64(f64),
    I64(i64),
    Bool(bool),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: [u8; KEY_MAX],
    key_len: u8,
    value: Cached,
}

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct ConfigCache {
    entries: [Entry; ENTRIES],
    len: usize,
}

impl ConfigCache {
    pub(crate) const fn new() -> Self {
        ConfigCache {
            entries: [Entry {
                key: [0; KEY_MAX],
                key_len: 0,
                value: Cached::Missing,
            }; ENTRIES],
            len: 0,
        }
    }

    /// What was kept for `key` as the type `accepts` recognises (or as
    /// missing).
    pub(crate) fn get(&self, key: &[u8], accepts: fn(&Cached) -> bool) -> Option<Cached> {
        self.entries[..self.len]
            .iter()
            .find(|e| {
                usize::from(e.key_len) == key.len()
                    && &e.key[..key.len()] == key
                    && (e.value == Cached::Missing || accepts(&e.value))
            })
            .map(|e| e.value)
    }

    /// Keeps `value` for `key`, if there is room and the key is short enough.
    pub(crate) fn put(&mut self, key: &[u8], value: Cached) {
        if self.len == ENTRIES || key.len() > KEY_MAX {
            return;
        }
        let mut entry = Entry {
            key: [0; KEY_MAX],
            key_len: key.len() as u8,
            value,
        };
        entry.key[..key.len()].copy_from_slice(key);
        self.entries[self.len] = entry;
        self.len += 1;
    }
}

impl Default for ConfigCache {
    fn default() -> Self {
        Self::new()
    }
}

/// A type the typed config helpers read.
pub(crate) trait ConfigValue: Sized + Copy {
    fn parse(text: &str) -> Option<Self>;
    fn to_cached(self) -> Cached;
    fn from_cached(cached: &Cached) -> Option<Self>;
    fn accepts(cached: &Cached) -> bool {
        Self::from_cached(cached).is_some()
    }
}

impl ConfigValue for f64 {
    fn parse(text: &str) -> Option<Self> {
        crate::json::parse_f64(text.as_bytes())
    }
    fn to_cached(self) -> Cached {
        Cached::F64(self)
    }
    fn from_cached(cached: &Cached) -> Option<Self> {
        match *cached {
            Cached::F64(v) => Some(v),
            _ => None,
        }
    }
}

impl ConfigValue for i64 {
    fn parse(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn to_cached(self) -> Cached {
        Cached::I64(self)
    }
    fn from_cached(cached: &Cached) -> Option<Self> {
        match *cached {
            Cached::I64(v) => Some(v),
            _ => None,
        }
    }
}

impl ConfigValue for bool {
    fn parse(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn to_cached(self) -> Cached {
        Cached::Bool(self)
    }
    fn from_cached(cached: &Cached) -> Option<Self> {
        match *cached {
            Cached::Bool(v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_per_key_and_type() {
        let mut cache = ConfigCache::new();
        cache.put(b"limit", Cached::F64(30.0));
        cache.put(b"gone", Cached::Missing);
        assert_eq!(
            cache.get(b"limit", <f64 as ConfigValue>::accepts),
            Some(Cached::F64(30.0))
        );
        // The same key read as another type is not answered from the cache.
        assert_eq!(cache.get(b"limit", <i64 as ConfigValue>::accepts), None);
        assert_eq!(cache.get(b"limi", <f64 as ConfigValue>::accepts), None);
        // Missing is missing whatever the type.
        assert_eq!(
            cache.get(b"gone", <bool as ConfigValue>::accepts),
            Some(Cached::Missing)
        );
    }

    #[test]
    fn long_keys_and_overflow_are_not_kept() {
        let mut cache = ConfigCache::new();
        let long = [b'k'; KEY_MAX + 1];
        cache.put(&long, Cached::Bool(true));
        assert_eq!(cache.get(&long, <bool as ConfigValue>::accepts), None);
        let exact = [b'k'; KEY_MAX];
        cache.put(&exact, Cached::Bool(true));
        assert_eq!(
            cache.get(&exact, <bool as ConfigValue>::accepts),
            Some(Cached::Bool(true))
        );
        for i in 0..ENTRIES as u8 * 2 {
            cache.put(&[b'a', i], Cached::I64(i.into()));
        }
        assert_eq!(
            cache.get(&[b'a', 0], <i64 as ConfigValue>::accepts),
            Some(Cached::I64(0))
        );
        assert_eq!(
            cache.get(&[b'a', ENTRIES as u8], <i64 as ConfigValue>::accepts),
            None
        );
    }
}
