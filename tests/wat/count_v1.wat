;; count_v1: counts its events in state key "n", as a 4-byte little-endian
;; u32 (the old state format of the stateful upgrade tests).
(module
  (import "perch" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
  (import "perch" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "n")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (i32.store (i32.const 64) (i32.const 0))
    (drop (call $get (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 4)))
    (i32.store (i32.const 64) (i32.add (i32.load (i32.const 64)) (i32.const 1)))
    (call $set (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 4)))
)
