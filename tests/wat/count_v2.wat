;; count_v2: counts its events in state key "count", as an 8-byte
;; little-endian i64 (the new format). Its perch_migrate turns count_v1's
;; "n" (4-byte u32) into "count" and deletes "n". With config `trap`, the
;; migration traps (unreachable) after it has written "count"; with config
;; `slow`, it writes "migrating" and then keeps rewriting "count" until its
;; time limit stops it (for kill -9 tests). With config `corrupt`, each
;; event adds 1000 instead of 1 and the handler returns 1 (a bad version
;; for canaries); with `bad` it adds 1000 and returns 0 (a bad version that
;; looks healthy).
(module
  (import "perch" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_delete" (func $del (param i32 i32) (result i32)))
  (import "perch" "config_get" (func $config (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "n")
  (data (i32.const 8) "count")
  (data (i32.const 16) "trap")
  (data (i32.const 24) "slow")
  (data (i32.const 32) "migrating")
  (data (i32.const 48) "corrupt")
  (data (i32.const 56) "bad")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func $has (param $k i32) (param $len i32) (result i32)
    (i32.ge_s (call $config (local.get $k) (local.get $len) (i32.const 128) (i32.const 16)) (i32.const 0)))
  (func (export "perch_migrate") (param $from_len i32) (result i32)
    (i64.store (i32.const 64) (i64.const 0))
    (if (i32.lt_s (call $get (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 4)) (i32.const 0))
      (then (return (i32.const 0))))
    (if (call $has (i32.const 24) (i32.const 4))
      (then
        (drop (call $set (i32.const 32) (i32.const 9) (i32.const 64) (i32.const 8)))
        (loop $forever
          (drop (call $set (i32.const 8) (i32.const 5) (i32.const 64) (i32.const 8)))
          (br $forever))))
    (drop (call $set (i32.const 8) (i32.const 5) (i32.const 64) (i32.const 8)))
    (if (call $has (i32.const 16) (i32.const 4)) (then unreachable))
    (call $del (i32.const 0) (i32.const 1)))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (local $step i64)
    (local.set $step (i64.const 1))
    (if (i32.or (call $has (i32.const 48) (i32.const 7)) (call $has (i32.const 56) (i32.const 3)))
      (then (local.set $step (i64.const 1000))))
    (i64.store (i32.const 64) (i64.const 0))
    (drop (call $get (i32.const 8) (i32.const 5) (i32.const 64) (i32.const 8)))
    (i64.store (i32.const 64) (i64.add (i64.load (i32.const 64)) (local.get $step)))
    (drop (call $set (i32.const 8) (i32.const 5) (i32.const 64) (i32.const 8)))
    (call $has (i32.const 48) (i32.const 7)))
)
