;; echo: publishes each event's payload to the topic named by the config value
;; `out`, so tests can tell which version handled an event (give each version
;; its own `out`). With a config value `fail` present, every event fails
;; (handler returns 1): a version that errors, for canary tests.
(module
  (import "perch" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "perch" "config_get" (func $config_get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "out")
  (data (i32.const 8) "fail")
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param $tl i32) (param $pl i32) (param $ts i64) (result i32)
    (local $n i32)
    (if (i32.ge_s (call $config_get (i32.const 8) (i32.const 4) (i32.const 64) (i32.const 16)) (i32.const 0))
      (then (return (i32.const 1))))
    (local.set $n (call $config_get (i32.const 0) (i32.const 3) (i32.const 128) (i32.const 256)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 2))))
    (call $publish (i32.const 128) (local.get $n)
                   (i32.add (i32.const 1024) (local.get $tl)) (local.get $pl)))
)
