//! The host functions a function's module imports from `perch` (the ABI
//! in sdk/ABI.md; their signatures are checked in `functions/abi.rs`): the
//! glue from the guest's memory to [`Host`].

use wasmi::{Caller, Extern, Linker, Memory, TrapCode};

use super::{code, now_ms, Host};
use crate::functions::state::StateError;

/// The guest's memory: known after instantiation; during a start function
/// it is looked up by name.
fn memory(caller: &Caller<'_, Host>) -> Result<Memory, wasmi::Error> {
    match caller.data().memory {
        Some(m) => Ok(m),
        None => caller
            .get_export("memory")
            .and_then(Extern::into_memory)
            .ok_or_else(|| TrapCode::MemoryOutOfBounds.into()),
    }
}

/// `memory[ptr..ptr+len]`, or the trap the ABI prescribes for a range outside
/// guest memory.
fn range(ptr: i32, len: i32, memory_len: usize) -> Result<std::ops::Range<usize>, wasmi::Error> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    match ptr.checked_add(len) {
        Some(end) if end <= memory_len => Ok(ptr..end),
        _ => Err(TrapCode::MemoryOutOfBounds.into()),
    }
}

/// Copies `value` into the guest's `out` buffer as far as it fits; returns
/// the full length, as `state_get` and `config_get` do.
fn copy_out(data: &mut [u8], out: std::ops::Range<usize>, value: &[u8]) -> i32 {
    let n = value.len().min(out.len());
    data[out.start..out.start + n].copy_from_slice(&value[..n]);
    value.len() as i32
}

/// Defines every import in `linker`.
pub(super) fn define_imports(linker: &mut Linker<Host>) {
    define_outputs(linker);
    define_data(linker);
}

/// `publish`, `emit`, `emit_at` and `forward`: what an invocation hands on.
fn define_outputs(linker: &mut Linker<Host>) {
    // `func_wrap` only fails for a name defined twice; these names are
    // distinct constants, so an error here is a bug caught by every test.
    let ok = |r: Result<&mut Linker<Host>, wasmi::errors::LinkerError>| {
        r.expect("perch host imports have distinct names");
    };
    ok(linker.func_wrap(
        "perch",
        "publish",
        |mut caller: Caller<'_, Host>, tp: i32, tl: i32, pp: i32, pl: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let topic = range(tp, tl, data.len())?;
            let payload = range(pp, pl, data.len())?;
            Ok(host.publish(&data[topic], &data[payload]))
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "emit",
        |mut caller: Caller<'_, Host>, mp: i32, ml: i32, kp: i32, kl: i32, value: f64| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let metric = range(mp, ml, data.len())?;
            let key = range(kp, kl, data.len())?;
            Ok(host.emit(&data[metric], &data[key], value))
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "emit_at",
        |mut caller: Caller<'_, Host>, mp: i32, ml: i32, kp: i32, kl: i32, value: f64, ts: i64| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let metric = range(mp, ml, data.len())?;
            let key = range(kp, kl, data.len())?;
            Ok(host.emit_at(&data[metric], &data[key], value, ts))
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "forward",
        |mut caller: Caller<'_, Host>, sp: i32, sl: i32, rp: i32, rl: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let stream = range(sp, sl, data.len())?;
            let record = range(rp, rl, data.len())?;
            Ok(host.forward(&data[stream], &data[record]))
        },
    ));
}

/// State, config, logs and the clock.
fn define_data(linker: &mut Linker<Host>) {
    // `func_wrap` only fails for a name defined twice; these names are
    // distinct constants, so an error here is a bug caught by every test.
    let ok = |r: Result<&mut Linker<Host>, wasmi::errors::LinkerError>| {
        r.expect("perch host imports have distinct names");
    };
    ok(linker.func_wrap(
        "perch",
        "state_get",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32, op: i32, oc: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let key = range(kp, kl, data.len())?;
            let out = range(op, oc, data.len())?;
            // The key is copied out of guest memory so that the value can be
            // copied into it; keys are short (≤ 256 bytes).
            let mut buf = [0u8; crate::functions::state::MAX_KEY_BYTES];
            let Some(key_copy) = buf.get_mut(..key.len()) else {
                return Ok(code::INVALID);
            };
            key_copy.copy_from_slice(&data[key]);
            Ok(match host.state.get(key_copy) {
                Some(value) => copy_out(data, out, value),
                None => code::NOT_FOUND,
            })
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "state_set",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32, vp: i32, vl: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let key = range(kp, kl, data.len())?;
            let value = range(vp, vl, data.len())?;
            Ok(match host.state.set(&data[key], &data[value]) {
                Ok(()) => code::OK,
                Err(StateError::TooLong) => code::INVALID,
                Err(StateError::Full) => host.refuse(code::FULL),
                Err(StateError::NotFound) => code::NOT_FOUND,
            })
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "state_delete",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let key = range(kp, kl, data.len())?;
            Ok(match host.state.delete(&data[key]) {
                Ok(()) => code::OK,
                Err(StateError::NotFound) => code::NOT_FOUND,
                Err(_) => code::INVALID,
            })
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "config_get",
        |mut caller: Caller<'_, Host>, kp: i32, kl: i32, op: i32, oc: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let key = range(kp, kl, data.len())?;
            let out = range(op, oc, data.len())?;
            // The value borrows the host's context, not guest memory, so it
            // can be copied into guest memory. Every stored key is UTF-8, so
            // only a key that matches none needs the UTF-8 check.
            let config = &host.ctx.config;
            Ok(
                match config.binary_search_by(|(k, _)| (**k).cmp(&data[key.clone()])) {
                    Ok(i) => copy_out(data, out, &config[i].1),
                    Err(_) if std::str::from_utf8(&data[key]).is_err() => code::INVALID,
                    Err(_) => code::NOT_FOUND,
                },
            )
        },
    ));
    ok(linker.func_wrap(
        "perch",
        "log",
        |mut caller: Caller<'_, Host>, level: i32, mp: i32, ml: i32| {
            let mem = memory(&caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let msg = range(mp, ml, data.len())?;
            host.log(level, &data[msg]);
            Ok(())
        },
    ));
    ok(linker.func_wrap("perch", "now_ms", |_: Caller<'_, Host>| now_ms()));
}
