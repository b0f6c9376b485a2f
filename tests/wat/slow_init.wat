;; A function whose perch_init spins for a while (about 100 million loop
;; iterations) before it succeeds: its deploy stays "in progress" long
;; enough for a second command to arrive meanwhile.
(module
  (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_init") (result i32)
    (local $i i32)
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 100000000))))
    (i32.const 0))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32) (i32.const 0))
)
