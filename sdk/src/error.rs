//! The one error type of the SDK.
//!
//! Host calls return ABI error codes (negative `i32`, see `ABI.md`); the SDK
//! adds a few guest-side failures of its own. A handler that returns
//! `Err(e)` hands `e.code()` back to the host, which counts and logs the value
//! and feeds it to the function's circuit breaker. Host codes keep their
//! negative value; guest-side codes are small positive numbers, so a log line
//! says which side failed.

use core::fmt;

/// What went wrong in a host call or in the SDK's own handling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `-1`: no such state key or config key.
    NotFound,
    /// `-2`: the topic is not allowed by the manifest's `publish.allow`.
    Denied,
    /// `-3`: this invocation's output limit (bytes or count) is used up.
    Limit,
    /// `-4`: bad argument: not UTF-8, invalid topic name, key or value too long.
    Invalid,
    /// `-5`: a queue or store downstream is full; the output was dropped.
    Full,
    /// A negative code this SDK does not know (a newer host); kept as is.
    Host(i32),
    /// `1`: the event payload is not the JSON the handler expected.
    Payload,
    /// `2`: a config value is present but cannot be read as the asked type.
    Config,
    /// `3`: a value did not fit in the buffer the guest offered; `needed` is
    /// its full length in bytes.
    TooLarge {
        /// The value's full length in bytes.
        needed: usize,
    },
    /// `4`: the host delivered an event whose lengths do not fit the event
    /// buffer or whose topic is not UTF-8 (a host bug; never expected).
    BadEvent,
    /// `5`: an output (JSON or formatted text) did not fit the SDK's buffer.
    Encode,
}

impl Error {
    /// The `i32` this error is reported as: the ABI code for host errors,
    /// a small positive number for guest-side ones.
    pub const fn code(&self) -> i32 {
        match *self {
            Error::NotFound => -1,
            Error::Denied => -2,
            Error::Limit => -3,
            Error::Invalid => -4,
            Error::Full => -5,
            Error::Host(code) => code,
            Error::Payload => 1,
            Error::Config => 2,
            Error::TooLarge { .. } => 3,
            Error::BadEvent => 4,
            Error::Encode => 5,
        }
    }

    /// The error a status code stands for; `None` for `0` (success).
    ///
    /// `TooLarge` comes back with `needed: 0`: the length is not part of the
    /// code.
    pub const fn from_code(code: i32) -> Option<Error> {
        Some(match code {
            0 => return None,
            -1 => Error::NotFound,
            -2 => Error::Denied,
            -3 => Error::Limit,
            -4 => Error::Invalid,
            -5 => Error::Full,
            1 => Error::Payload,
            2 => Error::Config,
            3 => Error::TooLarge { needed: 0 },
            4 => Error::BadEvent,
            5 => Error::Encode,
            other => Error::Host(other),
        })
    }

    /// Turns a host call's status (`0` or a negative code) into a `Result`.
    pub(crate) fn check(status: i32) -> Result<(), Error> {
        match Error::from_code(status) {
            None => Ok(()),
            Some(err) => Err(err),
        }
    }

    /// Turns a host call that returns a length (or a negative code) into a
    /// `Result`.
    pub(crate) fn check_len(status: i32) -> Result<usize, Error> {
        if status >= 0 {
            Ok(status as usize)
        } else {
            Err(Error::from_code(status).unwrap_or(Error::Host(status)))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound => f.write_str("not found"),
            Error::Denied => f.write_str("topic not allowed by publish.allow"),
            Error::Limit => f.write_str("output limit of this invocation used up"),
            Error::Invalid => f.write_str("invalid argument"),
            Error::Full => f.write_str("downstream full, output dropped"),
            Error::Host(code) => write!(f, "host error {code}"),
            Error::Payload => f.write_str("payload is not the expected JSON"),
            Error::Config => f.write_str("config value has the wrong type"),
            Error::TooLarge { needed } => write!(f, "value of {needed} bytes does not fit"),
            Error::BadEvent => f.write_str("event does not fit the event buffer"),
            Error::Encode => f.write_str("output does not fit the SDK's buffer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for err in [
            Error::NotFound,
            Error::Denied,
            Error::Limit,
            Error::Invalid,
            Error::Full,
            Error::Host(-42),
            Error::Payload,
            Error::Config,
            Error::TooLarge { needed: 0 },
            Error::BadEvent,
            Error::Encode,
        ] {
            assert_eq!(Error::from_code(err.code()), Some(err), "{err:?}");
        }
        assert_eq!(Error::from_code(0), None);
    }

    #[test]
    fn host_codes_match_abi_md() {
        // The table in ABI.md, "Error codes".
        assert_eq!(Error::NotFound.code(), -1);
        assert_eq!(Error::Denied.code(), -2);
        assert_eq!(Error::Limit.code(), -3);
        assert_eq!(Error::Invalid.code(), -4);
        assert_eq!(Error::Full.code(), -5);
    }

    #[test]
    fn lengths_and_errors_from_status() {
        assert_eq!(Error::check_len(12), Ok(12));
        assert_eq!(Error::check_len(-1), Err(Error::NotFound));
        assert_eq!(Error::check(0), Ok(()));
        assert_eq!(Error::check(-5), Err(Error::Full));
    }
}
