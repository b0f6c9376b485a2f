// The perch host ABI, version 1 (sdk/ABI.md in perch's repository), for
// AssemblyScript: the imports from module "perch", the exports every perch
// module needs, and string helpers over them.
//
// Strings cross the ABI as UTF-8 bytes; AssemblyScript strings are UTF-16,
// so each helper converts. The module runs AssemblyScript's incremental
// garbage collector (asconfig.json): what a handler allocates is collected,
// so a long-running function stays inside the manifest's memory_pages.

// ---- Imports (host -> guest). A module may use any subset.

@external("perch", "publish")
declare function host_publish(topicPtr: usize, topicLen: i32, payloadPtr: usize, payloadLen: i32): i32;
@external("perch", "emit")
declare function host_emit(metricPtr: usize, metricLen: i32, keyPtr: usize, keyLen: i32, value: f64): i32;
@external("perch", "forward")
declare function host_forward(streamPtr: usize, streamLen: i32, recordPtr: usize, recordLen: i32): i32;
@external("perch", "config_get")
declare function host_config_get(keyPtr: usize, keyLen: i32, outPtr: usize, outCap: i32): i32;
@external("perch", "log")
declare function host_log(level: i32, msgPtr: usize, msgLen: i32): void;

// ---- Error codes the host returns (negative), as in ABI.md.

export const NOT_FOUND: i32 = -1;
export const DENIED: i32 = -2;
export const LIMIT: i32 = -3;
export const INVALID: i32 = -4;
export const FULL: i32 = -5;

// ---- Log levels for log().

export const LOG_ERROR: i32 = 0;
export const LOG_WARN: i32 = 1;
export const LOG_INFO: i32 = 2;
export const LOG_DEBUG: i32 = 3;

// ---- The event buffer: the host writes each event's topic, then its
// payload, here before calling perch_on_event. An event larger than this is
// not delivered (counted as event_too_large): raise it if yours are bigger.

export const EVENT_BUFFER_LEN: i32 = 4096;
const eventBuffer: usize = memory.data(EVENT_BUFFER_LEN);

export function perch_abi_version(): i32 {
  return 1;
}

export function perch_event_buffer(): usize {
  return eventBuffer;
}

export function perch_event_buffer_len(): i32 {
  return EVENT_BUFFER_LEN;
}

/** Whether the lengths perch_on_event got lie inside the event buffer. */
export function eventFits(topicLen: i32, payloadLen: i32): bool {
  return topicLen >= 0 && payloadLen >= 0 && topicLen <= EVENT_BUFFER_LEN - payloadLen;
}

/** The current event's topic (check eventFits first). */
export function eventTopic(topicLen: i32): string {
  return String.UTF8.decodeUnsafe(eventBuffer, <usize>topicLen);
}

/** The current event's payload as text (check eventFits first). */
export function eventPayload(topicLen: i32, payloadLen: i32): string {
  return String.UTF8.decodeUnsafe(eventBuffer + <usize>topicLen, <usize>payloadLen);
}

// ---- Outputs. Each returns 0 or a negative error code.

/** Publishes into the gateway's broker; the topic must match publish.allow. */
export function publish(topic: string, payload: string): i32 {
  const t = String.UTF8.encode(topic);
  const p = String.UTF8.encode(payload);
  return host_publish(changetype<usize>(t), t.byteLength, changetype<usize>(p), p.byteLength);
}

/** Feeds the aggregator's windows for `metric` (and `key`, "" for none). */
export function emit(metric: string, key: string, value: f64): i32 {
  const m = String.UTF8.encode(metric);
  const k = String.UTF8.encode(key);
  return host_emit(changetype<usize>(m), m.byteLength, changetype<usize>(k), k.byteLength, value);
}

/** Appends a record to the store-and-forward buffer for upstream. */
export function forward(stream: string, record: string): i32 {
  const s = String.UTF8.encode(stream);
  const r = String.UTF8.encode(record);
  return host_forward(changetype<usize>(s), s.byteLength, changetype<usize>(r), r.byteLength);
}

/** Writes a line to the gateway's log, tagged with the function's name. */
export function log(level: i32, message: string): void {
  const m = String.UTF8.encode(message);
  host_log(level, changetype<usize>(m), m.byteLength);
}

/** A value of the manifest's [config] table as text, or null if absent. */
export function config(key: string): string | null {
  const k = String.UTF8.encode(key);
  let out = new ArrayBuffer(64);
  let n = host_config_get(changetype<usize>(k), k.byteLength, changetype<usize>(out), out.byteLength);
  if (n > out.byteLength) {
    out = new ArrayBuffer(n);
    n = host_config_get(changetype<usize>(k), k.byteLength, changetype<usize>(out), out.byteLength);
  }
  if (n < 0) return null;
  return String.UTF8.decodeUnsafe(changetype<usize>(out), <usize>n);
}

// ---- Small text helpers: enough JSON for flat sensor payloads.

function isNumberChar(c: i32): bool {
  return (c >= 48 && c <= 57) || c == 45 || c == 43 || c == 46 || c == 101 || c == 69;
}

function isSpace(c: i32): bool {
  return c == 32 || c == 9 || c == 10 || c == 13;
}

/**
 * The value of `key` in a flat JSON object: a number's text, or a string's
 * contents without quotes. Null when the text is no object, the key is
 * absent, or the string has escapes. A scanner, not a full parser.
 */
export function jsonValue(json: string, key: string): string | null {
  let i = 0;
  while (i < json.length && isSpace(json.charCodeAt(i))) i++;
  if (i >= json.length || json.charCodeAt(i) != 123 /* { */) return null;
  const quoted = "\"" + key + "\"";
  let at = json.indexOf(quoted, i);
  while (at >= 0) {
    let j = at + quoted.length;
    while (j < json.length && isSpace(json.charCodeAt(j))) j++;
    if (j < json.length && json.charCodeAt(j) == 58 /* : */) {
      j++;
      while (j < json.length && isSpace(json.charCodeAt(j))) j++;
      if (j >= json.length) return null;
      if (json.charCodeAt(j) == 34 /* " */) {
        const end = json.indexOf("\"", j + 1);
        if (end < 0) return null;
        const text = json.substring(j + 1, end);
        return text.includes("\\") ? null : text;
      }
      let end = j;
      while (end < json.length && isNumberChar(json.charCodeAt(end))) end++;
      return end > j ? json.substring(j, end) : null;
    }
    at = json.indexOf(quoted, at + 1);
  }
  return null;
}

/** Level `index` of an MQTT topic (0-based), or null. */
export function topicLevel(topic: string, index: i32): string | null {
  const levels = topic.split("/");
  return index >= 0 && index < levels.length ? levels[index] : null;
}

/** A JSON number's value; NaN unless the whole text is a number. */
export function parseNumber(text: string): f64 {
  for (let i = 0; i < text.length; i++) {
    if (!isNumberChar(text.charCodeAt(i))) return NaN;
  }
  return text.length > 0 ? parseFloat(text) : NaN;
}

// ---- abort: AssemblyScript's runtime calls it on a failed assertion or an
// impossible allocation. asconfig.json routes it here (`use abort=...`), so
// the module imports nothing but "perch": the message goes to the gateway's
// log and the invocation traps. It must not allocate.

const abortBuffer: usize = memory.data(256);

export function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  if (message !== null) {
    const len = min(message.length, 80);
    const n = String.UTF8.encodeUnsafe(changetype<usize>(message), len, abortBuffer);
    host_log(LOG_ERROR, abortBuffer, <i32>n);
  }
  unreachable();
}
