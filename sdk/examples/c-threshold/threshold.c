/*
 * c-threshold: the threshold-alert function in C, against the raw perch ABI
 * (sdk/ABI.md). No libc, no allocator: the event buffer is a static array
 * and every output is built in a stack buffer.
 *
 * In:  sensors/<device>/temperature  {"device":"t1","temperature":31.5}
 *      ("device" optional: the topic's second level is used without it)
 * Out: alerts/<device>/temperature   {"device":"t1","temperature":31.5,"limit":30.0}
 *      for every reading above config `limit`. Numbers are copied as written
 *      in the payload and the manifest (the Rust version re-formats them,
 *      so it writes 12 as 12.0).
 *
 * Return codes match the Rust SDK: host codes are passed through (-1 when
 * `limit` is missing), 1 = payload unreadable, 2 = config value not a
 * number, 4 = event lengths outside the buffer, 5 = output too long.
 */

typedef unsigned int u32;

/* Imports: module "perch", names and signatures from ABI.md. */
#define PERCH_IMPORT(name) __attribute__((import_module("perch"), import_name(#name)))

PERCH_IMPORT(publish) int perch_publish(const char *topic, int topic_len, const char *payload, int payload_len);
PERCH_IMPORT(config_get) int perch_config_get(const char *key, int key_len, char *out, int out_cap);
PERCH_IMPORT(log) void perch_log(int level, const char *msg, int msg_len);

#define PERCH_EXPORT(name) __attribute__((export_name(#name)))

enum { ERR_PAYLOAD = 1, ERR_CONFIG = 2, ERR_BAD_EVENT = 4, ERR_ENCODE = 5 };
enum { LOG_WARN = 1 };

#define EVENT_BUFFER_LEN 4096
static char event_buffer[EVENT_BUFFER_LEN];

PERCH_EXPORT(perch_abi_version) int perch_abi_version(void) { return 1; }
PERCH_EXPORT(perch_event_buffer) int perch_event_buffer(void) { return (int)(u32)event_buffer; }
PERCH_EXPORT(perch_event_buffer_len) int perch_event_buffer_len(void) { return EVENT_BUFFER_LEN; }

/* A slice of bytes: text in the event buffer or in a stack buffer. */
typedef struct { const char *ptr; int len; } str;

static int str_eq(str a, const char *lit, int lit_len) {
    if (a.len != lit_len) return 0;
    for (int i = 0; i < lit_len; i++)
        if (a.ptr[i] != lit[i]) return 0;
    return 1;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Parses a whole JSON number (`-12.5e3`), returning its length or 0. */
static int parse_number(str s, double *out) {
    int i = 0, digits = 0, neg = 0;
    double v = 0.0;
    if (i < s.len && s.ptr[i] == '-') { neg = 1; i++; }
    while (i < s.len && is_digit(s.ptr[i])) { v = v * 10.0 + (s.ptr[i] - '0'); i++; digits++; }
    if (i < s.len && s.ptr[i] == '.') {
        double scale = 0.1;
        i++;
        while (i < s.len && is_digit(s.ptr[i])) { v += (s.ptr[i] - '0') * scale; scale *= 0.1; i++; digits++; }
    }
    if (digits == 0) return 0;
    if (i < s.len && (s.ptr[i] == 'e' || s.ptr[i] == 'E')) {
        int exp = 0, eneg = 0, edigits = 0;
        i++;
        if (i < s.len && (s.ptr[i] == '+' || s.ptr[i] == '-')) { eneg = s.ptr[i] == '-'; i++; }
        while (i < s.len && is_digit(s.ptr[i]) && exp < 400) { exp = exp * 10 + (s.ptr[i] - '0'); i++; edigits++; }
        if (edigits == 0) return 0;
        while (exp-- > 0) v = eneg ? v / 10.0 : v * 10.0;
    }
    *out = neg ? -v : v;
    return i;
}

/*
 * Finds the value of top-level-looking key `key` in a JSON object: a small
 * scanner, not a full parser. Returns the value's text (a number token, or a
 * string's contents without quotes) or len -1 if absent. Strings with
 * escapes are not supported (len -1 as well).
 */
static str json_field(str json, const char *key, int key_len) {
    str none = { 0, -1 };
    int i = 0;
    while (i < json.len && is_space(json.ptr[i])) i++;
    if (i >= json.len || json.ptr[i] != '{') return none;
    for (; i + key_len + 2 <= json.len; i++) {
        if (json.ptr[i] != '"') continue;
        str candidate = { json.ptr + i + 1, key_len };
        if (json.ptr[i + 1 + key_len] != '"' || !str_eq(candidate, key, key_len)) continue;
        int j = i + key_len + 2;
        while (j < json.len && is_space(json.ptr[j])) j++;
        if (j >= json.len || json.ptr[j] != ':') continue;
        j++;
        while (j < json.len && is_space(json.ptr[j])) j++;
        if (j >= json.len) return none;
        if (json.ptr[j] == '"') {
            int start = ++j;
            while (j < json.len && json.ptr[j] != '"') {
                if (json.ptr[j] == '\\') return none;
                j++;
            }
            if (j >= json.len) return none;
            str value = { json.ptr + start, j - start };
            return value;
        }
        int start = j;
        while (j < json.len && (is_digit(json.ptr[j]) || json.ptr[j] == '-' || json.ptr[j] == '+' ||
                                json.ptr[j] == '.' || json.ptr[j] == 'e' || json.ptr[j] == 'E'))
            j++;
        str value = { json.ptr + start, j - start };
        return value;
    }
    return none;
}

/* Level `index` of an MQTT topic, or len -1. */
static str topic_level(str topic, int index) {
    str none = { 0, -1 };
    int start = 0;
    for (int i = 0; i <= topic.len; i++) {
        if (i == topic.len || topic.ptr[i] == '/') {
            if (index-- == 0) {
                str level = { topic.ptr + start, i - start };
                return level;
            }
            start = i + 1;
        }
    }
    return none;
}

/* Appends to a fixed buffer; on overflow marks it full (len = cap + 1). */
typedef struct { char *ptr; int len; int cap; } out_buf;

static void put(out_buf *b, const char *s, int n) {
    if (b->len + n > b->cap) { b->len = b->cap + 1; return; }
    for (int i = 0; i < n; i++) b->ptr[b->len + i] = s[i];
    b->len += n;
}
#define PUT_LIT(b, lit) put((b), (lit), (int)sizeof(lit) - 1)

PERCH_EXPORT(perch_on_event)
int perch_on_event(int topic_len, int payload_len, long long timestamp_ms) {
    (void)timestamp_ms;
    if (topic_len < 0 || payload_len < 0 || topic_len > EVENT_BUFFER_LEN - payload_len) return ERR_BAD_EVENT;
    str topic = { event_buffer, topic_len };
    str payload = { event_buffer + topic_len, payload_len };

    str temp_text = json_field(payload, "temperature", 11);
    double temperature;
    if (temp_text.len <= 0 || parse_number(temp_text, &temperature) != temp_text.len) return ERR_PAYLOAD;

    char limit_buf[64];
    int n = perch_config_get("limit", 5, limit_buf, (int)sizeof limit_buf);
    if (n < 0) return n;
    if (n > (int)sizeof limit_buf) return ERR_CONFIG;
    str limit_text = { limit_buf, n };
    double limit;
    if (n == 0 || parse_number(limit_text, &limit) != n) return ERR_CONFIG;

    if (!(temperature > limit)) return 0;

    str device = json_field(payload, "device", 6);
    if (device.len < 0) device = topic_level(topic, 1);
    if (device.len < 0) { device.ptr = "unknown"; device.len = 7; }

    char topic_out[128];
    out_buf t = { topic_out, 0, (int)sizeof topic_out };
    PUT_LIT(&t, "alerts/");
    put(&t, device.ptr, device.len);
    PUT_LIT(&t, "/temperature");

    char alert[256];
    out_buf a = { alert, 0, (int)sizeof alert };
    PUT_LIT(&a, "{\"device\":\"");
    put(&a, device.ptr, device.len);
    PUT_LIT(&a, "\",\"temperature\":");
    put(&a, temp_text.ptr, temp_text.len);
    PUT_LIT(&a, ",\"limit\":");
    put(&a, limit_text.ptr, limit_text.len);
    PUT_LIT(&a, "}");
    if (t.len > t.cap || a.len > a.cap) {
        static const char msg[] = "c-threshold: alert too long for its buffer";
        perch_log(LOG_WARN, msg, (int)sizeof msg - 1);
        return ERR_ENCODE;
    }
    return perch_publish(topic_out, t.len, alert, a.len);
}
