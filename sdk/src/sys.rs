//! The raw host imports of `ABI.md`, module `perch`, and nothing else.
//!
//! On wasm32 these are the real imports. Everywhere else (native tests,
//! `cargo build --workspace` on a laptop) there is no gateway to import from,
//! so the same functions call into [`crate::testing::TestHost`], the
//! in-memory stand-in a native test installs. Both sides take slices and
//! return the ABI's `i32` status, so everything above this module (error
//! mapping, buffers, JSON) runs the same code natively and in wasm.
//!
//! Lengths are `usize`, which is `i32` in the wasm signature on wasm32.

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "perch")]
    unsafe extern "C" {
        pub fn publish(
            topic_ptr: *const u8,
            topic_len: usize,
            payload_ptr: *const u8,
            payload_len: usize,
        ) -> i32;
        pub fn emit(
            metric_ptr: *const u8,
            metric_len: usize,
            key_ptr: *const u8,
            key_len: usize,
            value: f64,
        ) -> i32;
        pub fn emit_at(
            metric_ptr: *const u8,
            metric_len: usize,
            key_ptr: *const u8,
            key_len: usize,
            value: f64,
            timestamp_ms: i64,
        ) -> i32;
        pub fn forward(
            stream_ptr: *const u8,
            stream_len: usize,
            record_ptr: *const u8,
            record_len: usize,
        ) -> i32;
        pub fn state_get(
            key_ptr: *const u8,
            key_len: usize,
            out_ptr: *mut u8,
            out_cap: usize,
        ) -> i32;
        pub fn state_set(
            key_ptr: *const u8,
            key_len: usize,
            value_ptr: *const u8,
            value_len: usize,
        ) -> i32;
        pub fn state_delete(key_ptr: *const u8, key_len: usize) -> i32;
        pub fn config_get(
            key_ptr: *const u8,
            key_len: usize,
            out_ptr: *mut u8,
            out_cap: usize,
        ) -> i32;
        pub fn log(level: i32, msg_ptr: *const u8, msg_len: usize);
        pub fn now_ms() -> i64;
    }
}

#[cfg(target_arch = "wasm32")]
mod calls {
    // SAFETY (all functions below): every pointer comes from a live slice of
    // the given length, so the host reads or writes only guest memory the
    // caller owns for the duration of the call; the host keeps no pointer.
    use super::imports;
    use crate::config_cache::ConfigCache;
    use core::cell::UnsafeCell;

    pub fn publish(topic: &[u8], payload: &[u8]) -> i32 {
        unsafe { imports::publish(topic.as_ptr(), topic.len(), payload.as_ptr(), payload.len()) }
    }

    pub fn emit(metric: &[u8], key: &[u8], value: f64) -> i32 {
        unsafe {
            imports::emit(
                metric.as_ptr(),
                metric.len(),
                key.as_ptr(),
                key.len(),
                value,
            )
        }
    }

    pub fn emit_at(metric: &[u8], key: &[u8], value: f64, timestamp_ms: i64) -> i32 {
        unsafe {
            imports::emit_at(
                metric.as_ptr(),
                metric.len(),
                key.as_ptr(),
                key.len(),
                value,
                timestamp_ms,
            )
        }
    }

    pub fn forward(stream: &[u8], record: &[u8]) -> i32 {
        unsafe { imports::forward(stream.as_ptr(), stream.len(), record.as_ptr(), record.len()) }
    }

    pub fn state_get(key: &[u8], out: &mut [u8]) -> i32 {
        unsafe { imports::state_get(key.as_ptr(), key.len(), out.as_mut_ptr(), out.len()) }
    }

    pub fn state_set(key: &[u8], value: &[u8]) -> i32 {
        unsafe { imports::state_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) }
    }

    pub fn state_delete(key: &[u8]) -> i32 {
        unsafe { imports::state_delete(key.as_ptr(), key.len()) }
    }

    pub fn config_get(key: &[u8], out: &mut [u8]) -> i32 {
        unsafe { imports::config_get(key.as_ptr(), key.len(), out.as_mut_ptr(), out.len()) }
    }

    pub fn log(level: i32, msg: &[u8]) {
        unsafe { imports::log(level, msg.as_ptr(), msg.len()) }
    }

    pub fn now_ms() -> i64 {
        unsafe { imports::now_ms() }
    }

    /// Runs `f` on the instance's config cache, a static in its memory.
    pub fn with_config_cache<R>(f: impl FnOnce(&mut ConfigCache) -> R) -> R {
        struct Slot(UnsafeCell<ConfigCache>);
        // SAFETY: a wasm instance runs one thread.
        unsafe impl Sync for Slot {}
        static CACHE: Slot = Slot(UnsafeCell::new(ConfigCache::new()));
        // SAFETY: one thread, and `f` (the cache's own get/put) never comes
        // back here, so this is the only reference while it runs.
        f(unsafe { &mut *CACHE.0.get() })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod calls {
    use crate::config_cache::ConfigCache;
    use crate::testing::with_host;

    pub fn publish(topic: &[u8], payload: &[u8]) -> i32 {
        with_host(|h| h.publish(topic, payload))
    }

    pub fn emit(metric: &[u8], key: &[u8], value: f64) -> i32 {
        with_host(|h| h.emit(metric, key, value, None))
    }

    pub fn emit_at(metric: &[u8], key: &[u8], value: f64, timestamp_ms: i64) -> i32 {
        with_host(|h| h.emit(metric, key, value, Some(timestamp_ms)))
    }

    pub fn forward(stream: &[u8], record: &[u8]) -> i32 {
        with_host(|h| h.forward(stream, record))
    }

    pub fn state_get(key: &[u8], out: &mut [u8]) -> i32 {
        with_host(|h| h.state_get(key, out))
    }

    pub fn state_set(key: &[u8], value: &[u8]) -> i32 {
        with_host(|h| h.state_set(key, value))
    }

    pub fn state_delete(key: &[u8]) -> i32 {
        with_host(|h| h.state_delete(key))
    }

    pub fn config_get(key: &[u8], out: &mut [u8]) -> i32 {
        with_host(|h| h.config_get(key, out))
    }

    pub fn log(level: i32, msg: &[u8]) {
        with_host(|h| h.log(level, msg))
    }

    pub fn now_ms() -> i64 {
        with_host(|h| h.now_ms())
    }

    /// Runs `f` on the config cache of the test host (one per host, so tests
    /// with different configs never share values).
    pub fn with_config_cache<R>(f: impl FnOnce(&mut ConfigCache) -> R) -> R {
        with_host(|h| f(h.config_cache()))
    }
}

pub(crate) use calls::*;
