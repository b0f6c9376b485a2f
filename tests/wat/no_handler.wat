;; Lacks perch_on_event although its manifest has topic triggers.
(module
  (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
)
