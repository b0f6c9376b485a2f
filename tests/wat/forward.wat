;; forward: forwards each event's payload to the buffer's stream `fw`. A
;; `forward` the gateway refuses (FULL: its output channel is full) makes
;; the handler return that error, so every refusal the function was told
;; of shows in its error count.
(module
  (import "perch" "forward" (func $forward (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "fw")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (local $r i32)
    (local.set $r (call $forward (i32.const 0) (i32.const 2)
                                 (i32.add (i32.const 1024) (local.get $tl)) (local.get $pl)))
    (if (i32.lt_s (local.get $r) (i32.const 0)) (then (return (local.get $r))))
    (i32.const 0))
)
