//! A lean reader for the JSON objects sensors send: finds top-level fields
//! of a payload in one pass, without serde, copies or allocation.
//!
//! ```
//! use perch_sdk::json;
//!
//! let payload = br#"{"device":"t1","temperature":21.5,"tags":["a"]}"#;
//! let [device, temperature] = json::fields(payload, ["device", "temperature"])?;
//! assert_eq!(device.opt_str()?, Some("t1"));
//! assert_eq!(temperature.f64()?, 21.5);
//! # Ok::<(), perch_sdk::Error>(())
//! ```
//!
//! [`fields`] checks the whole payload against the JSON grammar (RFC 8259)
//! while it looks for the names, so a truncated or malformed payload is
//! [`Error::Payload`] even when the fields asked for came before the damage,
//! and so is a payload that is not an object or names a wanted field twice.
//! The typed getters of [`Field`] follow serde's rules for a struct field:
//! [`Field::f64`] is required, [`Field::opt_f64`] is an `Option` (absent or
//! `null` is `None`), and a value of the wrong type is [`Error::Payload`].
//!
//! Why it exists: a function pays fuel (about one unit per wasm instruction)
//! for every byte of parsing. serde-json-core's derive spends ~7,000 units on
//! a 40-byte reading, plus ~2,000 per `f64` in core's float parser; with
//! this reader the whole of `threshold-alert` takes ~3,700 per reading
//! instead of ~11,600, and 3.2x fewer host instructions than this reader's
//! first version (`docs/performance.md`). The hot path (`fields`, strings,
//! names) is written for an interpreter: inlined, eight bytes per step. serde-json-core
//! stays available ([`crate::Event::json`]) for payloads that are better
//! read into a struct.
//!
//! Numbers go through [`parse_f64`]: an exact fast path for the decimals
//! sensors send (a value of at most 2^53 in at most 19 digits, and a power
//! of ten within ±22),
//! core's parser for everything else, so the result is always the same as
//! `str::parse::<f64>`. Strings are returned as they are in the payload:
//! a string with escapes (`\"`, `\u00e9`) is not handed out by
//! [`Field::str`] (it is [`Error::Payload`], as with serde-json-core's
//! borrowed `&str`), but names with escapes are matched correctly.

use crate::Error;

/// Containers may nest this deep inside the payload object (deeper is
/// [`Error::Payload`]): the scanner tracks them in one `u64`.
pub const MAX_DEPTH: u32 = 64;

/// One top-level field of a payload, as [`fields`] found it (or did not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Field<'a> {
    /// The value's JSON text, already checked against the grammar.
    raw: Option<&'a [u8]>,
    /// Whether the scan saw that the value is a string of ASCII without
    /// escapes, so [`Field::opt_str`] need not look at its bytes again.
    /// `false` says nothing (a `Field::default()`, or a value it did not
    /// check): the bytes are checked then.
    plain: bool,
}

impl<'a> Field<'a> {
    /// The value's JSON text (`21.5`, `"t1"`, `{"a":1}`), if the field is there.
    pub fn raw(&self) -> Option<&'a [u8]> {
        self.raw
    }

    /// Whether the payload has the field (`null` counts as present).
    pub fn is_present(&self) -> bool {
        self.raw.is_some()
    }

    /// Whether the field is absent or `null`: what serde reads as `None`.
    pub fn is_none(&self) -> bool {
        matches!(self.raw, None | Some(b"null"))
    }

    /// The value, `None` if absent or `null`.
    fn some(&self) -> Option<&'a [u8]> {
        self.raw.filter(|raw| *raw != b"null")
    }

    /// A number; absent, `null` or another type is [`Error::Payload`].
    pub fn f64(&self) -> Result<f64, Error> {
        self.opt_f64()?.ok_or(Error::Payload)
    }

    /// A number, `None` if absent or `null`; another type is [`Error::Payload`].
    pub fn opt_f64(&self) -> Result<Option<f64>, Error> {
        self.some()
            .map(|raw| match raw[0] {
                // Checked against JSON's number grammar by the scan.
                b'-' | b'0'..=b'9' => parse_f64(raw).ok_or(Error::Payload),
                _ => Err(Error::Payload),
            })
            .transpose()
    }

    /// An integer (no fraction, no exponent) that fits `i64`.
    pub fn i64(&self) -> Result<i64, Error> {
        self.opt_i64()?.ok_or(Error::Payload)
    }

    /// An `i64`, `None` if absent or `null`.
    pub fn opt_i64(&self) -> Result<Option<i64>, Error> {
        self.some()
            .map(|raw| parse_i64(raw).ok_or(Error::Payload))
            .transpose()
    }

    /// A non-negative integer that fits `u64`.
    pub fn u64(&self) -> Result<u64, Error> {
        self.opt_u64()?.ok_or(Error::Payload)
    }

    /// A `u64`, `None` if absent or `null`.
    pub fn opt_u64(&self) -> Result<Option<u64>, Error> {
        self.some()
            .map(|raw| parse_u64(raw).ok_or(Error::Payload))
            .transpose()
    }

    /// `true` or `false`.
    pub fn bool(&self) -> Result<bool, Error> {
        self.opt_bool()?.ok_or(Error::Payload)
    }

    /// A boolean, `None` if absent or `null`.
    pub fn opt_bool(&self) -> Result<Option<bool>, Error> {
        self.some()
            .map(|raw| match raw {
                b"true" => Ok(true),
                b"false" => Ok(false),
                _ => Err(Error::Payload),
            })
            .transpose()
    }

    /// A string without escapes, borrowed from the payload.
    pub fn str(&self) -> Result<&'a str, Error> {
        self.opt_str()?.ok_or(Error::Payload)
    }

    /// A string without escapes, `None` if absent or `null`. A string with
    /// escapes, or one that is not UTF-8, is [`Error::Payload`].
    pub fn opt_str(&self) -> Result<Option<&'a str>, Error> {
        self.some()
            .map(|raw| match raw {
                [b'"', inner @ .., b'"'] if self.plain => {
                    // SAFETY: the scan saw only ASCII, which is UTF-8.
                    Ok(unsafe { core::str::from_utf8_unchecked(inner) })
                }
                [b'"', inner @ .., b'"'] => plain_str(inner).ok_or(Error::Payload),
                _ => Err(Error::Payload),
            })
            .transpose()
    }
}

/// The contents of a JSON string as `&str`, if it has no escapes and is
/// UTF-8. ASCII, the usual case, is checked with one loop instead of
/// core's UTF-8 decoder.
fn plain_str(inner: &[u8]) -> Option<&str> {
    if inner.iter().all(|&c| c < 0x80 && c != b'\\') {
        // SAFETY: all bytes are ASCII, which is UTF-8.
        return Some(unsafe { core::str::from_utf8_unchecked(inner) });
    }
    if inner.contains(&b'\\') {
        return None;
    }
    core::str::from_utf8(inner).ok()
}

/// Finds the top-level fields `names` of the JSON object `payload`, in one
/// pass that also checks the whole payload is valid JSON.
///
/// [`Error::Payload`] if the payload is not one JSON object (whitespace
/// around it is fine), if it nests deeper than [`MAX_DEPTH`], or if it has
/// one of `names` more than once. A name the object lacks comes back as a
/// [`Field`] that is not present.
pub fn fields<'a, const N: usize>(
    payload: &'a [u8],
    names: [&str; N],
) -> Result<[Field<'a>; N], Error> {
    scan_fields(payload, &names).ok_or(Error::Payload)
}

/// The body of [`fields`]: one pass over the object that checks it and
/// keeps the values of `names`. Written out in one function, with its
/// helpers inlined, because a guest pays per wasm instruction and a call
/// (with its result passed through memory) costs many of them; this is
/// what nearly every event of a typical function runs.
fn scan_fields<'a, const N: usize>(b: &'a [u8], names: &[&str; N]) -> Option<[Field<'a>; N]> {
    let mut found = [Field::default(); N];
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let key_start = i + 1;
            let (key_end, key_flags) = string(b, i)?;
            let key = b.get(key_start..key_end - 1)?;
            i = ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let value_start = ws(b, i + 1);
            // Strings and numbers, what readings hold, without the walk
            // of nested containers.
            let mut plain = false;
            i = match b.get(value_start) {
                Some(b'"') => {
                    let (end, flags) = string(b, value_start)?;
                    plain = flags == 0;
                    end
                }
                Some(b'-' | b'0'..=b'9') => json_number(b, value_start)?,
                _ => value(b, value_start)?,
            };
            let escaped = key_flags & ESCAPED != 0;
            let mut k = 0;
            while k < N {
                if key_is(key, escaped, names[k].as_bytes()) {
                    if found[k].raw.is_some() {
                        return None;
                    }
                    found[k] = Field {
                        raw: Some(b.get(value_start..i)?),
                        plain,
                    };
                }
                k += 1;
            }
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(b, i) == b.len()).then_some(found)
}

/// One field of the JSON object `payload`; see [`fields`], which reads
/// several in the same pass.
pub fn field<'a>(payload: &'a [u8], name: &str) -> Result<Field<'a>, Error> {
    let [found] = fields(payload, [name])?;
    Ok(found)
}

/// Top-level field `name` of `payload` as a number: `None` if the payload is
/// not a valid JSON object or the field is absent or not a number.
pub fn number_field(payload: &[u8], name: &str) -> Option<f64> {
    field(payload, name).ok()?.opt_f64().ok()?
}

/// A payload (or any JSON text) that is one JSON number, whitespace around
/// it allowed: `21.5`, ` -4e2\n`. Anything else is [`Error::Payload`].
pub fn number(text: &[u8]) -> Result<f64, Error> {
    let start = ws(text, 0);
    match json_number(text, start) {
        Some(end) if ws(text, end) == text.len() => {
            parse_f64(&text[start..end]).ok_or(Error::Payload)
        }
        _ => Err(Error::Payload),
    }
}

/// Parses a decimal number exactly as `str::parse::<f64>` does (same
/// grammar, same correctly rounded result), but with a fast path for the
/// numbers sensors and configs hold: `[+-]digits[.digits][e[+-]digits]`
/// with at most 19 digits whose value is at most 2^53 and whose power of
/// ten is within ±22. Those are exact by one IEEE multiplication or
/// division of two exactly representable numbers (Clinger's fast path);
/// anything else goes to core's parser.
pub fn parse_f64(text: &[u8]) -> Option<f64> {
    match fast_f64(text) {
        Some(value) => Some(value),
        None => core::str::from_utf8(text).ok()?.parse().ok(),
    }
}

/// Powers of ten that `f64` holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The fast path of [`parse_f64`]: `None` when it does not apply.
fn fast_f64(text: &[u8]) -> Option<f64> {
    let (negative, mut i) = match text.first()? {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let int_start = i;
    while let Some(d) = text
        .get(i)
        .and_then(|c| c.checked_sub(b'0'))
        .filter(|d| *d < 10)
    {
        if digits == 19 {
            return None;
        }
        mantissa = mantissa * 10 + u64::from(d);
        digits += 1;
        i += 1;
    }
    if i == int_start {
        return None;
    }
    let mut exponent: i32 = 0;
    if text.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while let Some(d) = text
            .get(i)
            .and_then(|c| c.checked_sub(b'0'))
            .filter(|d| *d < 10)
        {
            if digits == 19 {
                return None;
            }
            mantissa = mantissa * 10 + u64::from(d);
            digits += 1;
            exponent -= 1;
            i += 1;
        }
        if i == frac_start {
            return None;
        }
    }
    if let Some(b'e' | b'E') = text.get(i) {
        i += 1;
        let negative_exp = match text.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let exp_start = i;
        let mut exp: i32 = 0;
        while let Some(d) = text
            .get(i)
            .and_then(|c| c.checked_sub(b'0'))
            .filter(|d| *d < 10)
        {
            exp = exp * 10 + i32::from(d);
            if exp > 1000 {
                return None;
            }
            i += 1;
        }
        if i == exp_start {
            return None;
        }
        exponent += if negative_exp { -exp } else { exp };
    }
    if i != text.len() {
        return None;
    }
    let value = if mantissa == 0 {
        0.0
    } else if mantissa > 1 << 53 {
        return None;
    } else if (0..=22).contains(&exponent) {
        mantissa as f64 * POW10[exponent as usize]
    } else if (-22..0).contains(&exponent) {
        mantissa as f64 / POW10[(-exponent) as usize]
    } else {
        return None;
    };
    Some(if negative { -value } else { value })
}

/// A JSON integer (`-?(0|[1-9][0-9]*)`) that fits `i64`.
fn parse_i64(raw: &[u8]) -> Option<i64> {
    match raw {
        [b'-', rest @ ..] => {
            let magnitude = parse_u64(rest)?;
            0i64.checked_sub_unsigned(magnitude)
        }
        _ => i64::try_from(parse_u64(raw)?).ok(),
    }
}

/// A JSON integer without sign that fits `u64`.
fn parse_u64(raw: &[u8]) -> Option<u64> {
    match raw {
        [] => None,
        [b'0', _, ..] => None,
        _ => raw.iter().try_fold(0u64, |n, &c| {
            let d = c.checked_sub(b'0').filter(|d| *d < 10)?;
            n.checked_mul(10)?.checked_add(u64::from(d))
        }),
    }
}

/// Whether the key text `key` (between its quotes, escapes as written)
/// names `name`.
#[inline(always)]
fn key_is(key: &[u8], escaped: bool, name: &[u8]) -> bool {
    if !escaped {
        return same(key, name);
    }
    escaped_key_is(key, name)
}

/// Whether `a` and `b` hold the same bytes: a few word compares for the
/// short names of a payload instead of a call to `memcmp`, which in wasm is
/// a loop over bytes.
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        // Whole words, the last one overlapping the one before.
        let mut i = 0;
        while i + 8 < n {
            if word(a, i) != word(b, i) {
                return false;
            }
            i += 8;
        }
        return word(a, n - 8) == word(b, n - 8);
    }
    if n >= 4 {
        let half =
            |s: &[u8], at: usize| u32::from_le_bytes([s[at], s[at + 1], s[at + 2], s[at + 3]]);
        return half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4);
    }
    a == b
}

/// The 8 bytes of `s` at `at` as a little-endian word (`at + 8 <= s.len()`).
#[inline(always)]
fn word(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

/// [`key_is`] for a key with escapes.
#[inline(never)]
fn escaped_key_is(key: &[u8], name: &[u8]) -> bool {
    let mut rest = name;
    let mut i = 0;
    let mut utf8 = [0u8; 4];
    while i < key.len() {
        let expected: &[u8] = if key[i] != b'\\' {
            i += 1;
            &key[i - 1..i]
        } else {
            let (c, len) = match unescape(&key[i..]) {
                Some(found) => found,
                None => return false,
            };
            i += len;
            c.encode_utf8(&mut utf8).as_bytes()
        };
        match rest.strip_prefix(expected) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// The character of the escape at the start of `s` and the escape's length.
fn unescape(s: &[u8]) -> Option<(char, usize)> {
    let c = match s.get(1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let high = hex4(s.get(2..6)?)?;
            if !(0xD800..0xDC00).contains(&high) {
                return Some((char::from_u32(high)?, 6));
            }
            // A surrogate pair: `\uD83D\uDE00`.
            if s.get(6..8)? != b"\\u" {
                return None;
            }
            let low = hex4(s.get(8..12)?)?;
            if !(0xDC00..0xE000).contains(&low) {
                return None;
            }
            let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
            return Some((char::from_u32(c)?, 12));
        }
        _ => return None,
    };
    Some((c, 2))
}

fn hex4(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |n, &c| Some(n * 16 + (c as char).to_digit(16)?))
}

/// Byte classes for the scanner's loops, one table load per byte: the
/// interpreter a function runs in pays per instruction, and a table beats a
/// chain of comparisons (or a jump table, which wasmi charges in full).
const WS: u8 = 1;
/// Ends a run of plain string bytes: `"`, `\\` and control characters.
const STRING_STOP: u8 = 2;

static CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        class[c] = STRING_STOP;
        c += 1;
    }
    class[b'"' as usize] = STRING_STOP;
    class[b'\\' as usize] = STRING_STOP;
    class[b' ' as usize] = WS;
    class[b'\t' as usize] |= WS;
    class[b'\n' as usize] |= WS;
    class[b'\r' as usize] |= WS;
    class
};

/// Skips JSON whitespace from `i`.
#[inline(always)]
fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && CLASS[usize::from(b[i])] & WS != 0 {
        i += 1;
    }
    i
}

/// What [`string`] saw in a string besides plain ASCII: escapes, bytes
/// past ASCII (UTF-8, unchecked here).
const ESCAPED: u8 = 1;
const NOT_ASCII: u8 = 2;

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_le_bytes([1; 8]);
/// `0x80` in every byte of a word.
const HIGH: u64 = ONES * 0x80;

/// The high bit of the first byte of `w` (little-endian) that ends a run of
/// plain string bytes (`"`, `\\` or a control character), and maybe of
/// bytes after it; 0 if there is none. The lowest bit set is exact: the
/// borrows that can set a later byte's bit come only from a byte that is
/// itself a stop.
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    let quote = w ^ (ONES * b'"' as u64);
    let backslash = w ^ (ONES * b'\\' as u64);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x;
    (zero_byte(quote) | zero_byte(backslash) | (w.wrapping_sub(ONES * 0x20) & !w)) & HIGH
}

/// Checks the string starting at `b[i] == '"'`; returns the index after
/// its closing quote and what it has besides plain ASCII ([`ESCAPED`],
/// [`NOT_ASCII`]). Eight bytes at a time while eight are left: a guest pays
/// per wasm instruction, and a word's checks take fewer than a byte's.
#[inline(always)]
fn string(b: &[u8], mut i: usize) -> Option<(usize, u8)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    // The bytes before each stop, or-ed: their high bits say "not ASCII".
    let mut seen = 0u64;
    let mut flags = 0u8;
    loop {
        loop {
            if i + 8 > b.len() {
                while i < b.len() && CLASS[usize::from(b[i])] & STRING_STOP == 0 {
                    seen |= u64::from(b[i]);
                    i += 1;
                }
                break;
            }
            let w = word(b, i);
            let stops = string_stops(w);
            if stops != 0 {
                // The stop's byte index; the bytes below it are plain.
                let n = stops.trailing_zeros() / 8;
                seen |= w & ((1u64 << (8 * n)) - 1);
                i += n as usize;
                break;
            }
            seen |= w;
            i += 8;
        }
        if seen & HIGH != 0 {
            flags |= NOT_ASCII;
        }
        match *b.get(i)? {
            b'"' => return Some((i + 1, flags)),
            b'\\' => {
                flags |= ESCAPED;
                i += match b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                    b'u' => {
                        hex4(b.get(i + 2..i + 6)?)?;
                        6
                    }
                    _ => return None,
                }
            }
            // A control character.
            _ => return None,
        }
    }
}

/// Checks the number starting at `b[i]`; returns the index after it.
#[inline(always)]
fn json_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| -> Option<usize> {
        let start = i;
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        if i == start {
            None
        } else {
            Some(i)
        }
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i)?,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Some(i)
}

/// Checks the value starting at `b[i]` (no leading whitespace); returns the
/// index after it. Nested containers are walked without recursion: bit `d`
/// of `objects` says whether the container at depth `d` is an object.
fn value(b: &[u8], mut i: usize) -> Option<usize> {
    let mut objects: u64 = 0;
    let mut depth: u32 = 0;
    loop {
        // A value starts at `i`.
        match *b.get(i)? {
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                i = ws(b, i + 1);
                if depth == MAX_DEPTH {
                    return None;
                }
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    let is_object = open == b'{';
                    objects = (objects << 1) | u64::from(is_object);
                    depth += 1;
                    if is_object {
                        i = member_key(b, i)?;
                    }
                    continue;
                }
            }
            b'"' => i = nested_string(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            _ => i = json_number(b, i)?,
        }
        // A value ended at `i`: close containers until one goes on.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            let in_object = objects & 1 == 1;
            match b.get(i) {
                Some(b',') => {
                    i = ws(b, i + 1);
                    if in_object {
                        i = member_key(b, i)?;
                    }
                    break;
                }
                Some(b'}') if in_object => {}
                Some(b']') if !in_object => {}
                _ => return None,
            }
            i += 1;
            objects >>= 1;
            depth -= 1;
        }
    }
}

/// [`string`] for what [`value`] walks (one copy of it, not inlined).
#[inline(never)]
fn nested_string(b: &[u8], i: usize) -> Option<usize> {
    Some(string(b, i)?.0)
}

/// Checks `"key" :` at `i`; returns the index of the value after it.
fn member_key(b: &[u8], i: usize) -> Option<usize> {
    let i = ws(b, nested_string(b, i)?);
    if b.get(i) != Some(&b':') {
        return None;
    }
    Some(ws(b, i + 1))
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    match b.get(i..i + word.len()) {
        Some(found) if found == word => Some(i + word.len()),
        _ => None,
    }
}

/// Writes one JSON object into a buffer, field by field: the lean way to
/// build an output, and byte for byte what serde-json-core writes for a
/// struct with the same fields in the same order (`"limit":30.0`, `null` for
/// a non-finite number).
///
/// ```
/// let mut buf = [0u8; 128];
/// let mut alert = perch_sdk::json::Object::new(&mut buf);
/// alert.str("device", "t1").f64("temperature", 31.5).f64("limit", 30.0);
/// assert_eq!(alert.finish()?, br#"{"device":"t1","temperature":31.5,"limit":30.0}"#);
/// # Ok::<(), perch_sdk::Error>(())
/// ```
///
/// Writes that do not fit are remembered, not reported one by one:
/// [`Object::finish`] says [`Error::Encode`] if anything was cut.
#[derive(Debug)]
pub struct Object<'b> {
    buf: &'b mut [u8],
    len: usize,
    fields: usize,
    overflow: bool,
}

impl<'b> Object<'b> {
    /// An empty object writing into `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        let mut object = Object {
            buf,
            len: 0,
            fields: 0,
            overflow: false,
        };
        object.push(b"{");
        object
    }

    /// Adds a string field (escaped as JSON needs).
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        self.key(name);
        self.string(value);
        self
    }

    /// Adds a number field; NaN and infinities are written as `null`.
    pub fn f64(&mut self, name: &str, value: f64) -> &mut Self {
        self.key(name);
        let mut text = [0u8; 40];
        let len = format_f64(value, &mut text);
        self.push(&text[..len]);
        self
    }

    /// Adds an integer field.
    pub fn i64(&mut self, name: &str, value: i64) -> &mut Self {
        self.key(name);
        if value < 0 {
            self.push(b"-");
        }
        self.digits(value.unsigned_abs());
        self
    }

    /// Adds an unsigned integer field.
    pub fn u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.key(name);
        self.digits(value);
        self
    }

    /// Adds a boolean field.
    pub fn bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.key(name);
        self.push(if value { b"true" } else { b"false" });
        self
    }

    /// Adds a `null` field.
    pub fn null(&mut self, name: &str) -> &mut Self {
        self.key(name);
        self.push(b"null");
        self
    }

    /// Adds a field whose value is JSON text already (a [`Field::raw`], say),
    /// written as it is.
    pub fn raw(&mut self, name: &str, json: &[u8]) -> &mut Self {
        self.key(name);
        self.push(json);
        self
    }

    /// Closes the object: its bytes, or [`Error::Encode`] if it did not fit.
    pub fn finish(mut self) -> Result<&'b [u8], Error> {
        self.push(b"}");
        if self.overflow {
            return Err(Error::Encode);
        }
        let Object { buf, len, .. } = self;
        Ok(&buf[..len])
    }

    fn key(&mut self, name: &str) {
        if self.fields > 0 {
            self.push(b",");
        }
        self.fields += 1;
        self.string(name);
        self.push(b":");
    }

    fn push(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(to) => {
                to.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflow = true,
        }
    }

    fn digits(&mut self, mut n: u64) {
        let mut text = [0u8; 20];
        let mut at = text.len();
        loop {
            at -= 1;
            text[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&text[at..]);
    }

    /// Writes `s` quoted, escaping as serde-json-core does.
    fn string(&mut self, s: &str) {
        let bytes = s.as_bytes();
        if !needs_escape(bytes) {
            // Names and readings nearly always: one copy, no byte loop.
            self.push(b"\"");
            self.push(bytes);
            self.push(b"\"");
            return;
        }
        self.push(b"\"");
        let mut start = 0;
        for (i, &c) in bytes.iter().enumerate() {
            if CLASS[usize::from(c)] & STRING_STOP == 0 {
                continue;
            }
            let escape: &[u8] = match c {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                0x09 => b"\\t",
                0x0a => b"\\n",
                0x0c => b"\\f",
                0x0d => b"\\r",
                0..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    self.push(&bytes[start..i]);
                    self.push(&[
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(c >> 4)],
                        HEX[usize::from(c & 15)],
                    ]);
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            self.push(&bytes[start..i]);
            self.push(escape);
            start = i + 1;
        }
        self.push(&bytes[start..]);
        self.push(b"\"");
    }
}

/// Whether `bytes` has a byte a JSON string must escape (`"`, `\\`, a
/// control character): eight bytes at a time, as the scanner reads.
#[inline(always)]
fn needs_escape(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        if string_stops(word(bytes, i)) != 0 {
            return true;
        }
        i += 8;
    }
    bytes[i..]
        .iter()
        .any(|&c| CLASS[usize::from(c)] & STRING_STOP != 0)
}

/// Writes `value` as serde-json-core does (ryu's shortest round-trip form,
/// `null` if not finite) into `out`; returns the length. Typical readings
/// take a fast path; the rest go through serde-json-core itself.
pub fn format_f64(value: f64, out: &mut [u8; 40]) -> usize {
    if let Some(len) = fast_format_f64(value, out) {
        return len;
    }
    // Cannot fail: ryu's longest output is 24 bytes.
    serde_json_core::to_slice(&value, out).unwrap_or(0)
}

/// The fast path of [`format_f64`], for `1e-5 <= |value| < 1e15` with a
/// short decimal form: the fewest decimals `k` for which exactly one integer
/// `m` near `value * 10^k` reads back as `value` (so it is the shortest
/// round-trip form and the nearest, which is what ryu prints). `None` when
/// that does not settle it; ryu decides then.
fn fast_format_f64(value: f64, out: &mut [u8; 40]) -> Option<usize> {
    let a = value.abs();
    if !(1e-5..1e15).contains(&a) {
        return None;
    }
    for (k, &scale) in POW10.iter().enumerate().take(18) {
        let scaled = a * scale;
        if scaled >= (1u64 << 53) as f64 {
            return None;
        }
        let near = (scaled + 0.5) as u64;
        let reads_back = |m: u64| m <= 1 << 53 && m as f64 / scale == a;
        let m = if scaled < (1u64 << 50) as f64 {
            // An m that reads back is within scaled * 2^-52 < 1/4 of
            // scaled (one rounding in `a * scale`, one in `m / scale`, each
            // at most half an ulp), and near - 1 and near + 1 are at least
            // 1/2 away: only near can. One division instead of three.
            if !reads_back(near) {
                continue;
            }
            near
        } else {
            match [near.wrapping_sub(1), near, near + 1].map(reads_back) {
                [false, false, false] => continue,
                [true, false, false] => near - 1,
                [false, true, false] => near,
                [false, false, true] => near + 1,
                _ => return None,
            }
        };
        // The digits of m, least significant first, at least k + 1 of them.
        let mut digits = [b'0'; 20];
        let (mut n, mut rest) = (0, m);
        while rest > 0 || n <= k {
            digits[n] = b'0' + (rest % 10) as u8;
            rest /= 10;
            n += 1;
        }
        let mut len = 0;
        let mut put = |c: u8| {
            out[len] = c;
            len += 1;
        };
        if value < 0.0 {
            put(b'-');
        }
        digits[k..n].iter().rev().for_each(|&c| put(c));
        put(b'.');
        if k == 0 {
            put(b'0');
        }
        digits[..k].iter().rev().for_each(|&c| put(c));
        return Some(len);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// A small deterministic generator (xorshift64*), so failures replay.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn digits(&mut self, out: &mut String, n: u64) {
            for _ in 0..n {
                out.push(char::from(b'0' + self.below(10) as u8));
            }
        }
    }

    /// `parse_f64` must agree with core's parser bit for bit, on what both
    /// accept and on what both refuse.
    fn same_as_core(text: &str) {
        let ours = parse_f64(text.as_bytes()).map(f64::to_bits);
        let core = text.parse::<f64>().ok().map(f64::to_bits);
        assert_eq!(ours, core, "{text:?}");
    }

    #[test]
    fn parse_f64_matches_core_on_typical_readings() {
        for text in [
            "21.5",
            "-0",
            "-0.0",
            "0",
            "0.1",
            "0.2",
            "0.3",
            "30",
            "30.0",
            "-40",
            "98.6",
            "1e3",
            "1E3",
            "-1.5e3",
            "1.5e-3",
            "1e22",
            "1e23",
            "1e-22",
            "1e-23",
            "9007199254740992",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "0.000000000000000000001",
            "123456789012345678",
            "1234567890.1234567",
            "+1.5",
            "inf",
            "-inf",
            "NaN",
            "1.",
            ".5",
            "1e",
            "1e+",
            "--1",
            "",
            "-",
            "+",
            "1_000",
            " 1",
            "1 ",
            "0x10",
            "1.5.5",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "4.9e-324",
            "1e400",
            "-1e400",
        ] {
            same_as_core(text);
        }
        // Every reading a sensor with two decimals sends between -100 and 100.
        for centi in -10_000i32..=10_000 {
            let sign = if centi < 0 { "-" } else { "" };
            let (whole, frac) = (centi.abs() / 100, centi.abs() % 100);
            same_as_core(&format!("{sign}{whole}.{frac:02}"));
            same_as_core(&format!("{sign}{whole}.{}", frac % 10));
        }
    }

    #[test]
    fn parse_f64_matches_core_on_random_decimals() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut text = String::new();
        for _ in 0..50_000 {
            text.clear();
            match rng.below(3) {
                0 => text.push('-'),
                1 if rng.below(4) == 0 => text.push('+'),
                _ => {}
            }
            let int_digits = 1 + rng.below(20);
            rng.digits(&mut text, int_digits);
            if rng.below(3) != 0 {
                text.push('.');
                let frac_digits = 1 + rng.below(20);
                rng.digits(&mut text, frac_digits);
            }
            if rng.below(3) == 0 {
                text.push(if rng.below(2) == 0 { 'e' } else { 'E' });
                match rng.below(3) {
                    0 => text.push('-'),
                    1 => text.push('+'),
                    _ => {}
                }
                let exp = rng.below(40);
                text.push_str(&format!("{exp}"));
            }
            same_as_core(&text);
        }
    }

    #[test]
    fn parse_f64_matches_core_on_random_garbage() {
        let alphabet = b"0123456789.-+eE x";
        let mut rng = Rng(42);
        for _ in 0..50_000 {
            let len = rng.below(10) as usize;
            let text: String = (0..len)
                .map(|_| char::from(alphabet[rng.below(alphabet.len() as u64) as usize]))
                .collect();
            same_as_core(&text);
        }
    }

    #[test]
    fn parse_f64_reads_back_every_printed_f64() {
        let mut rng = Rng(7);
        for _ in 0..30_000 {
            let x = f64::from_bits(rng.next());
            if !x.is_finite() {
                continue;
            }
            for text in [format!("{x}"), format!("{x:e}"), format!("{x:.3}")] {
                same_as_core(&text);
            }
            assert_eq!(parse_f64(format!("{x}").as_bytes()), Some(x));
        }
    }

    #[test]
    fn finds_fields_and_reads_them_as_serde_would() {
        let payload =
            br#" { "device" : "t1", "nested": {"temperature": [1, {"x": null}]}, "temperature":21.5,
                   "seq": 700, "ok": true, "none": null, "neg": -3 } "#;
        let [device, temperature, seq, ok, none, neg, absent] = fields(
            payload,
            [
                "device",
                "temperature",
                "seq",
                "ok",
                "none",
                "neg",
                "absent",
            ],
        )
        .unwrap();
        assert_eq!(device.str(), Ok("t1"));
        assert_eq!(device.raw(), Some(&br#""t1""#[..]));
        assert_eq!(temperature.f64(), Ok(21.5));
        assert_eq!(seq.u64(), Ok(700));
        assert_eq!(seq.f64(), Ok(700.0));
        assert_eq!(seq.opt_i64(), Ok(Some(700)));
        assert_eq!(ok.bool(), Ok(true));
        assert!(none.is_present() && none.is_none());
        assert_eq!(none.opt_f64(), Ok(None));
        assert_eq!(none.f64(), Err(Error::Payload));
        assert_eq!(neg.i64(), Ok(-3));
        assert_eq!(neg.opt_u64(), Err(Error::Payload));
        assert!(!absent.is_present());
        assert_eq!(absent.opt_str(), Ok(None));
        assert_eq!(absent.str(), Err(Error::Payload));
        // Wrong types are errors, not `None`.
        assert_eq!(device.opt_f64(), Err(Error::Payload));
        assert_eq!(temperature.opt_str(), Err(Error::Payload));
        assert_eq!(temperature.opt_u64(), Err(Error::Payload));
        assert_eq!(ok.opt_i64(), Err(Error::Payload));
        assert_eq!(number_field(payload, "temperature"), Some(21.5));
        assert_eq!(number_field(payload, "device"), None);
        assert_eq!(number_field(b"{", "temperature"), None);
    }

    #[test]
    fn bare_numbers() {
        assert_eq!(number(b"21.5"), Ok(21.5));
        assert_eq!(number(b" -4e2\n"), Ok(-400.0));
        for bad in [
            &b""[..],
            b" ",
            b"+1",
            b"1.",
            b"01",
            b"1 2",
            b"\"1\"",
            b"{}",
            b"nan",
        ] {
            assert_eq!(number(bad), Err(Error::Payload), "{bad:?}");
        }
    }

    #[test]
    fn integers_stay_in_range() {
        let read = |text: &str| {
            let payload = format!(r#"{{"n":{text}}}"#);
            let n = field(payload.as_bytes(), "n").unwrap();
            (n.opt_i64(), n.opt_u64())
        };
        assert_eq!(read("0"), (Ok(Some(0)), Ok(Some(0))));
        assert_eq!(read("-0"), (Ok(Some(0)), Err(Error::Payload)));
        assert_eq!(
            read("9223372036854775807"),
            (Ok(Some(i64::MAX)), Ok(Some(i64::MAX as u64)))
        );
        assert_eq!(
            read("-9223372036854775808"),
            (Ok(Some(i64::MIN)), Err(Error::Payload))
        );
        assert_eq!(
            read("-9223372036854775809"),
            (Err(Error::Payload), Err(Error::Payload))
        );
        assert_eq!(
            read("18446744073709551615"),
            (Err(Error::Payload), Ok(Some(u64::MAX)))
        );
        assert_eq!(
            read("18446744073709551616"),
            (Err(Error::Payload), Err(Error::Payload))
        );
        assert_eq!(read("1.0"), (Err(Error::Payload), Err(Error::Payload)));
        assert_eq!(read("1e2"), (Err(Error::Payload), Err(Error::Payload)));
    }

    #[test]
    fn strings_with_escapes_match_names_but_are_not_borrowed() {
        let payload = br#"{"temp\u0065rature":1.5,"d\"q":"a\nb","\ud83d\ude00":2,"caf\u00e9":3}"#;
        let [t, dq, smile, cafe] =
            fields(payload, ["temperature", "d\"q", "\u{1F600}", "café"]).unwrap();
        assert_eq!(t.f64(), Ok(1.5));
        assert_eq!(dq.raw(), Some(&br#""a\nb""#[..]));
        assert_eq!(dq.opt_str(), Err(Error::Payload));
        assert_eq!(smile.f64(), Ok(2.0));
        assert_eq!(cafe.f64(), Ok(3.0));
        assert!(!field(payload, "temp").unwrap().is_present());
        assert_eq!(
            field(br#"{"k":"\u00e9"}"#, "k").unwrap().opt_str(),
            Err(Error::Payload)
        );
        assert_eq!(
            field("{\"k\":\"é\"}".as_bytes(), "k").unwrap().str(),
            Ok("é")
        );
        assert_eq!(
            field(b"{\"k\":\"\xff\"}", "k").unwrap().opt_str(),
            Err(Error::Payload)
        );
    }

    #[test]
    fn refuses_what_is_not_one_json_object() {
        for bad in [
            &b""[..],
            b" ",
            b"31.5",
            b"\"x\"",
            b"[1]",
            b"not json",
            b"{",
            b"}",
            b"{\"temperature\":21.5",
            b"{\"temperature\":21.5,}",
            b"{\"temperature\":21.5}}",
            b"{\"temperature\":21.5} x",
            b"{\"temperature\":21.5}{}",
            b"{\"temperature\" 21.5}",
            b"{\"temperature\":}",
            b"{temperature:21.5}",
            b"{'temperature':21.5}",
            b"{\"temperature\":21.}",
            b"{\"temperature\":.5}",
            b"{\"temperature\":01}",
            b"{\"temperature\":+1}",
            b"{\"temperature\":1e}",
            b"{\"temperature\":-}",
            b"{\"temperature\":NaN}",
            b"{\"temperature\":tru}",
            b"{\"temperature\":nul}",
            b"{\"a\":[1,]}",
            b"{\"a\":[1 2]}",
            b"{\"a\":{\"b\"}}",
            b"{\"a\":{\"b\":1,}}",
            b"{\"a\":[}",
            b"{\"a\":{]}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12\"}",
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":\"open}",
            b"{\"temperature\":1,\"temperature\":2}",
        ] {
            assert_eq!(
                fields(bad, ["temperature", "a"]),
                Err(Error::Payload),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A repeated field nobody asked for is not this reader's business.
        assert!(field(br#"{"a":1,"a":2,"t":3}"#, "t").is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let nest = |depth: usize| {
            let mut text = String::from("{\"a\":");
            text.push_str(&"[".repeat(depth));
            text.push_str(&"]".repeat(depth));
            text.push('}');
            field(text.as_bytes(), "a").map(|f| f.is_present())
        };
        assert_eq!(nest(MAX_DEPTH as usize), Ok(true));
        assert_eq!(nest(MAX_DEPTH as usize + 1), Err(Error::Payload));
        assert_eq!(nest(100_000), Err(Error::Payload));
    }

    /// The grammar, against serde_json's, on mutations of a real payload:
    /// every mutant is accepted by both or refused by both.
    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let seed: &[u8] =
            br#"{"device":"t1","temperature":-21.5e1,"tags":["a",{"b":[true,false,null]}],"x":"\n"}"#;
        let alphabet = b"{}[]:,\"\\ -+.eE0123456789tfnulrsaxb";
        let mut rng = Rng(2026);
        let mut checked = 0;
        for _ in 0..30_000 {
            let mut text: Vec<u8> = seed.to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(text.len() as u64 + 1) as usize;
                let c = alphabet[rng.below(alphabet.len() as u64) as usize];
                match rng.below(3) {
                    0 if at < text.len() => {
                        text.remove(at);
                    }
                    1 if at < text.len() => text[at] = c,
                    _ => text.insert(at, c),
                }
            }
            let theirs = serde_json::from_slice::<serde_json::Value>(&text);
            let ours = fields(&text, ["temperature"]);
            match theirs {
                // serde_json keeps the last of duplicate keys; we refuse a
                // duplicate of a wanted one.
                Ok(serde_json::Value::Object(_)) => {
                    let twice = text.windows(13).filter(|w| w == b"\"temperature\"").count() > 1;
                    assert_eq!(ours.is_ok(), !twice, "{}", String::from_utf8_lossy(&text));
                    if let (Ok([t]), Ok(serde_json::Value::Object(map))) =
                        (ours, serde_json::from_slice::<serde_json::Value>(&text))
                    {
                        // serde_json's default float parser may be 1 ulp off.
                        let want = map.get("temperature").and_then(|v| v.as_f64());
                        let got = t.opt_f64().ok().flatten();
                        assert_eq!(got.is_some(), want.is_some());
                        if let (Some(got), Some(want)) = (got, want) {
                            assert!((got - want).abs() <= want.abs() * 1e-15, "{got} {want}");
                        }
                    }
                }
                // JSON has no limit on exponents; serde_json refuses what
                // overflows f64, core's parser makes it infinite.
                Err(e) if e.to_string().contains("number out of range") => {}
                _ => assert!(ours.is_err(), "{}", String::from_utf8_lossy(&text)),
            }
            checked += 1;
        }
        assert_eq!(checked, 30_000);
    }

    /// The word-at-a-time string scan and name compare against serde_json,
    /// with a quote, a backslash escape, a control character and non-ASCII
    /// text at every position of strings from 0 to 24 bytes (so in every
    /// lane of a word and in the byte-wise tail).
    #[test]
    fn strings_of_every_length_and_stop_position() {
        let pieces: [&str; 7] = ["a", "é", "\\n", "\\\"", "\u{1}", "\\u00e9", "\u{7f}"];
        let mut checked = 0;
        for len in 0..24 {
            for (p, piece) in pieces.iter().enumerate() {
                for at in 0..=len {
                    let mut s = "x".repeat(at);
                    s.push_str(piece);
                    s.push_str(&"y".repeat(len - at));
                    for wanted_first in [false, true] {
                        let text = if wanted_first {
                            format!(r#"{{"device":"{s}","k{s}":1}}"#)
                        } else {
                            format!(r#"{{"k{s}":1,"device":"{s}"}}"#)
                        };
                        let theirs = serde_json::from_str::<serde_json::Value>(&text);
                        let key = format!(
                            "k{}",
                            serde_json::from_str::<String>(&format!("\"{s}\"")).unwrap_or_default()
                        );
                        let ours = fields(text.as_bytes(), ["device", key.as_str(), "absent"]);
                        match theirs {
                            Ok(value) => {
                                let [device, k, absent] = ours.unwrap();
                                let want = value["device"].as_str().unwrap();
                                assert!(!absent.is_present());
                                assert_eq!(k.i64(), Ok(1), "{text}");
                                if s.contains('\\') {
                                    assert_eq!(device.opt_str(), Err(Error::Payload), "{text}");
                                } else {
                                    assert_eq!(device.opt_str(), Ok(Some(want)), "{text}");
                                }
                            }
                            Err(_) => assert!(ours.is_err(), "{text} ({p})"),
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 7 * (1..=24).sum::<usize>());
        // Bytes that are not UTF-8 pass the scan but are no `str`.
        let text = b"{\"device\":\"k\xffitchen\"}";
        assert_eq!(
            field(text, "device").unwrap().opt_str(),
            Err(Error::Payload)
        );
    }

    #[test]
    fn same_compares_every_length() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(same(&a, &a.clone()));
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x20;
                assert!(!same(&a, &b), "{n} {i}");
            }
            assert!(!same(&a, &a[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[derive(serde::Serialize)]
    struct Sample<'a> {
        device: &'a str,
        temperature: f64,
        seq: u64,
        delta: i64,
        ok: bool,
    }

    fn serde_core<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let len = serde_json_core::to_slice(value, &mut buf).unwrap();
        buf[..len].to_vec()
    }

    #[test]
    fn object_writes_what_serde_json_core_writes() {
        let mut rng = Rng(99);
        let names = [
            "t1",
            "",
            "a\"b",
            "tab\there",
            "\\",
            "\u{1}\u{1f}\u{7f}",
            "café \u{1F600}",
        ];
        for i in 0..5_000u64 {
            let sample = Sample {
                device: names[i as usize % names.len()],
                temperature: match i % 4 {
                    0 => f64::from_bits(rng.next()),
                    1 => (rng.below(2_000_001) as f64 - 1e6) / 100.0,
                    2 => (rng.below(100_000) as f64 - 32.0) * 5.0 / 9.0,
                    _ => [0.0, -0.0, f64::NAN, f64::INFINITY, 1e-7, 1e15, 1e16, 123.0]
                        [i as usize / 4 % 8],
                },
                seq: rng.next() >> (rng.below(64) as u32),
                delta: rng.next() as i64 >> (rng.below(64) as u32),
                ok: i % 2 == 0,
            };
            let mut buf = [0u8; 512];
            let mut out = Object::new(&mut buf);
            out.str("device", sample.device)
                .f64("temperature", sample.temperature)
                .u64("seq", sample.seq)
                .i64("delta", sample.delta)
                .bool("ok", sample.ok);
            let ours = out.finish().unwrap();
            assert_eq!(
                String::from_utf8_lossy(ours),
                String::from_utf8_lossy(&serde_core(&sample)),
            );
        }
        let mut buf = [0u8; 64];
        let mut out = Object::new(&mut buf);
        out.null("n").raw("r", b"[1,2]");
        assert_eq!(out.finish(), Ok(&br#"{"n":null,"r":[1,2]}"#[..]));
        assert_eq!(Object::new(&mut buf).finish(), Ok(&b"{}"[..]));
    }

    #[test]
    fn object_strings_of_every_length_escape_as_serde_json_core() {
        for len in 0..20 {
            for special in ['"', '\\', '\n', '\u{1}', 'é', 'a'] {
                for at in 0..=len {
                    let mut s: String = "x".repeat(at);
                    s.push(special);
                    s.push_str(&"y".repeat(len - at));
                    let mut buf = [0u8; 128];
                    let mut object = Object::new(&mut buf);
                    object.str(&s, &s);
                    let ours = object.finish().unwrap().to_vec();
                    let theirs = serde_core(
                        &[(&s, &s)]
                            .into_iter()
                            .collect::<std::collections::BTreeMap<_, _>>(),
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&theirs),
                        "{s:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn object_that_does_not_fit_is_an_encode_error() {
        let mut buf = [0u8; 16];
        let mut out = Object::new(&mut buf);
        out.str("device", "kitchen").f64("t", 1.0);
        assert_eq!(out.finish(), Err(Error::Encode));
        // Exactly full fits.
        let mut buf = [0u8; 11];
        let mut out = Object::new(&mut buf);
        out.bool("ok", true);
        assert_eq!(out.finish(), Ok(&br#"{"ok":true}"#[..]));
        let mut buf = [0u8; 10];
        let mut out = Object::new(&mut buf);
        out.bool("ok", true);
        assert_eq!(out.finish(), Err(Error::Encode));
    }

    #[test]
    fn format_f64_is_ryu_on_every_kind_of_value() {
        let check = |x: f64| {
            let mut out = [0u8; 40];
            let len = format_f64(x, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out[..len]),
                String::from_utf8_lossy(&serde_core(&x)),
                "{x:?}"
            );
            fast_format_f64(x, &mut [0; 40]).is_some()
        };
        // Readings with one or two decimals: all on the fast path.
        for centi in (-100_000i32..=100_000).filter(|c| *c != 0) {
            assert!(check(f64::from(centi) / 100.0), "{centi}");
            assert!(check(f64::from(centi) / 10.0), "{centi}");
            check(f64::from(centi) * 0.1);
            check((f64::from(centi) - 32.0) * 5.0 / 9.0);
        }
        let mut rng = Rng(5);
        for _ in 0..60_000 {
            let bits = rng.next();
            check(f64::from_bits(bits));
            let unit = (bits >> 11) as f64 / (1u64 << 53) as f64;
            check(unit * POW10[rng.below(20) as usize] / 1e6);
        }
        for x in [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            1e-5,
            9.99e-6,
            1e15,
            999999999999999.9,
        ] {
            check(x);
        }
    }
}
