;; Built for a perch ABI version this gateway does not speak.
(module
  (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 2))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32) (i32.const 0))
)
