;; event_time: each event's payload is a reading's own time, as decimal Unix
;; milliseconds; the function emits 1.0 to metric `readings` at that time
;; (`emit_at`: event time), so the aggregate windows count readings by when
;; they were taken, not when they arrived. A payload that is not a number
;; makes the handler return 1.
(module
  (import "perch" "emit_at"
    (func $emit_at (param i32 i32 i32 i32 f64 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "readings")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (local $p i32) (local $i i32) (local $c i32) (local $t i64)
    (local.set $p (i32.add (i32.const 1024) (local.get $tl)))
    (if (i32.eqz (local.get $pl)) (then (return (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $pl)))
        (local.set $c (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48)))
        (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i32.const 1))))
        (local.set $t (i64.add (i64.mul (local.get $t) (i64.const 10))
                               (i64.extend_i32_u (local.get $c))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $emit_at (i32.const 0) (i32.const 8) (i32.const 0) (i32.const 0)
                   (f64.const 1) (local.get $t)))
)
