;; threshold-alert, written by hand against the perch ABI (sdk/ABI.md), so
;; the end-to-end tests do not depend on the Rust SDK. An event's payload is
;; a decimal reading; when it exceeds the config value `limit`, the reading
;; is published to `alerts/temperature`. A payload that is not a number makes
;; the handler return 1 (a handler-reported error).
(module
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "limit")
  (data (i32.const 16) "alerts/temperature")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))

  ;; Parses [p, p+n) as an optionally negative decimal: (value, ok).
  (func $parse (param $p i32) (param $n i32) (result f64 i32)
    (local $i i32) (local $v f64) (local $frac f64) (local $c i32)
    (local $neg i32) (local $dot i32) (local $digits i32)
    (local.set $frac (f64.const 1))
    (if (i32.eqz (local.get $n)) (then (return (f64.const 0) (i32.const 0))))
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 45))
      (then (local.set $neg (i32.const 1)) (local.set $i (i32.const 1))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.eq (local.get $c) (i32.const 46))
          (then
            (if (local.get $dot) (then (return (f64.const 0) (i32.const 0))))
            (local.set $dot (i32.const 1)))
          (else
            (if (i32.gt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 9))
              (then (return (f64.const 0) (i32.const 0))))
            (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
            (local.set $v (f64.add (f64.mul (local.get $v) (f64.const 10))
                                   (f64.convert_i32_u (i32.sub (local.get $c) (i32.const 48)))))
            (if (local.get $dot)
              (then (local.set $frac (f64.mul (local.get $frac) (f64.const 10)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $digits)) (then (return (f64.const 0) (i32.const 0))))
    (local.set $v (f64.div (local.get $v) (local.get $frac)))
    (if (local.get $neg) (then (local.set $v (f64.neg (local.get $v)))))
    (local.get $v) (i32.const 1))

  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (local $p i32) (local $v f64) (local $ok i32) (local $limit f64) (local $n i32)
    (local.set $p (i32.add (i32.const 1024) (local.get $tl)))
    (call $parse (local.get $p) (local.get $pl))
    (local.set $ok) (local.set $v)
    (if (i32.eqz (local.get $ok)) (then (return (i32.const 1))))
    (local.set $n (call $config_get (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 32)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 2))))
    (call $parse (i32.const 64) (local.get $n))
    (local.set $ok) (local.set $limit)
    (if (i32.eqz (local.get $ok)) (then (return (i32.const 3))))
    (if (f64.gt (local.get $v) (local.get $limit))
      (then (return (call $publish (i32.const 16) (i32.const 18) (local.get $p) (local.get $pl)))))
    (i32.const 0))
)
