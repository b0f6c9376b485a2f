;; A memory-hungry function: every event grows its memory page by page
;; until the host's limit stops it.
(module
  (memory (export "memory") 1)
  (func (export "perch_abi_version") (result i32) (i32.const 1))
  (func (export "perch_event_buffer") (result i32) (i32.const 1024))
  (func (export "perch_event_buffer_len") (result i32) (i32.const 4096))
  (func (export "perch_on_event") (param i32 i32 i64) (result i32)
    (loop $more
      (drop (memory.grow (i32.const 1)))
      (br $more))
    (i32.const 0))
)
