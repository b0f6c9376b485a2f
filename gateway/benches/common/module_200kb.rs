//! The ~200 KB module the runtime bench deploys and the runtime's memory
//! regression test (`a_replaced_version_gives_its_memory_back` in gateway/tests/memory.rs)
//! compiles over and over: one generator for both.

/// A valid perch module of about 200 KB: the ABI exports plus many
/// functions with real bodies (what a module with a JSON parser and some
/// logic weighs).
pub fn module_200kb() -> Vec<u8> {
    let head = "(module (memory (export \"memory\") 1)
         (func (export \"perch_abi_version\") (result i32) (i32.const 1))
         (func (export \"perch_event_buffer\") (result i32) (i32.const 1024))
         (func (export \"perch_event_buffer_len\") (result i32) (i32.const 4096))
         (func (export \"perch_on_event\") (param i32 i32 i64) (result i32) (call $f0 (local.get 0)))\n";
    let mut funcs = String::new();
    let mut n: u32 = 0;
    loop {
        for _ in 0..100 {
            // Each function does some memory work and calls the one before.
            funcs.push_str(&format!(
                "(func $f{n} (param $x i32) (result i32) (local $a i32)\n"
            ));
            for k in 0..12 {
                funcs.push_str(&format!(
                    "(local.set $a (i32.add (i32.mul (local.get $x) (i32.const {})) (i32.load offset={} (i32.const 0))))\n\
                     (i32.store offset={} (i32.const 0) (i32.xor (local.get $a) (i32.const {})))\n",
                    k * 7 + 3,
                    (k * 4) % 512,
                    (k * 8) % 512,
                    n ^ k
                ));
            }
            let callee = n.saturating_sub(1);
            funcs.push_str(&format!(
                "(if (result i32) (i32.eqz (local.get $x)) (then (local.get $a)) \
                 (else (call $f{callee} (i32.sub (local.get $x) (i32.const 1))))))\n"
            ));
            n += 1;
        }
        let wasm = wat::parse_str(format!("{head}{funcs})")).unwrap();
        if wasm.len() >= 200 * 1024 {
            return wasm;
        }
    }
}
