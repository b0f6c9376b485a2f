//! Why an invocation failed: a trap, a handler's non-zero return value, an
//! event too large for the guest, or the wall-clock limit. A handler's
//! named values (sdk/ABI.md, "Return values of handlers") are the host's
//! error codes, which a handler may pass on, and the Rust SDK's own
//! guest-side failures; a failure names them, so a log line says what `1`
//! meant.

use std::fmt;

use wasmi::TrapCode;

/// Why one invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped; the name says how (`out_of_fuel`, `memory_limit`,
    /// `memory_out_of_bounds`, `stack_overflow`, `unreachable`, ...).
    Trap(&'static str),
    /// The handler returned this non-zero value.
    Returned(i32),
    /// Topic and payload do not fit the guest's event buffer; the event was
    /// not delivered.
    EventTooLarge { needed: usize, capacity: usize },
    /// The call ran past its wall-clock limit and was stopped.
    Timeout { limit_ms: u64 },
}

impl Failure {
    /// A short stable name, for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(kind) => kind,
            Failure::Returned(_) => "handler_error",
            Failure::EventTooLarge { .. } => "event_too_large",
            Failure::Timeout { .. } => "timeout",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap(kind) => write!(f, "trap: {kind}"),
            Failure::Returned(rc) => write!(f, "handler returned {}", describe_handler_code(*rc)),
            Failure::EventTooLarge { needed, capacity } => write!(
                f,
                "event_too_large: topic and payload take {needed} bytes, the function's event \
                 buffer holds {capacity}"
            ),
            Failure::Timeout { limit_ms } => write!(
                f,
                "timeout: still running after its wall-clock limit of {limit_ms} ms \
                 (limits.timeout_ms, else functions.default_timeout_ms); stopped"
            ),
        }
    }
}

/// The name of a trap, as logged and counted.
pub(super) fn trap_kind(e: &wasmi::Error) -> &'static str {
    match e.as_trap_code() {
        Some(TrapCode::OutOfFuel) => "out_of_fuel",
        Some(TrapCode::GrowthOperationLimited) => "memory_limit",
        Some(TrapCode::MemoryOutOfBounds) => "memory_out_of_bounds",
        Some(TrapCode::StackOverflow) => "stack_overflow",
        Some(TrapCode::UnreachableCodeReached) => "unreachable",
        Some(TrapCode::IntegerDivisionByZero) => "integer_divide_by_zero",
        Some(TrapCode::IntegerOverflow) => "integer_overflow",
        Some(TrapCode::BadConversionToInteger) => "bad_conversion_to_integer",
        Some(TrapCode::TableOutOfBounds) => "table_out_of_bounds",
        Some(TrapCode::IndirectCallToNull) => "indirect_call_to_null",
        Some(TrapCode::BadSignature) => "bad_signature",
        Some(TrapCode::OutOfSystemMemory) => "out_of_system_memory",
        None => "host_error",
    }
}

/// A handler's non-zero return value by its name in sdk/ABI.md and what it
/// means; `None` for a value no SDK defines (the function's own).
pub fn handler_code(code: i32) -> Option<(&'static str, &'static str)> {
    Some(match code {
        -1 => ("NOT_FOUND", "a state or config key it needed is missing"),
        -2 => ("DENIED", "a topic it publishes to is not in publish.allow"),
        -3 => ("LIMIT", "this invocation's output limit was used up"),
        -4 => ("INVALID", "a host call got a bad argument"),
        -5 => ("FULL", "a queue or store downstream was full"),
        1 => ("PAYLOAD", "the event's payload is not the JSON it expected"),
        2 => ("CONFIG", "a config value has the wrong type"),
        3 => ("TOO_LARGE", "a value did not fit the buffer it offered"),
        4 => ("BAD_EVENT", "the event did not fit its event buffer"),
        5 => ("ENCODE", "an output did not fit the SDK's buffer"),
        _ => return None,
    })
}

/// `error 1 (PAYLOAD: ...)`, or `error 42 (the function's own code...)`.
pub fn describe_handler_code(code: i32) -> String {
    match handler_code(code) {
        Some((name, meaning)) => format!("error {code} ({name}: {meaning})"),
        None => format!(
            "error {code} (not a code sdk/ABI.md names: the function's own; see its source)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code sdk/ABI.md lists under the handlers' return values has
    /// the name the document gives it here, and no other is named.
    #[test]
    fn the_names_are_those_of_abi_md() {
        let abi = include_str!("../../../sdk/ABI.md");
        let section = abi
            .split("### Return values of handlers")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("ABI.md has the handlers' return values section");
        let mut listed = 0;
        for line in section.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(code), Some(name)) = (cells.get(1), cells.get(2)) else {
                continue;
            };
            let Ok(code) = code.parse::<i32>() else {
                continue;
            };
            let name = name.trim_matches('`');
            assert_eq!(
                handler_code(code).map(|(n, _)| n),
                Some(name),
                "code {code}"
            );
            listed += 1;
        }
        assert_eq!(listed, 10, "ABI.md's table of handler codes");
        assert_eq!(handler_code(6), None);
        assert_eq!(handler_code(-6), None);
    }

    #[test]
    fn a_failure_says_the_name_and_an_unknown_code_says_so() {
        assert_eq!(
            describe_handler_code(1),
            "error 1 (PAYLOAD: the event's payload is not the JSON it expected)"
        );
        assert!(describe_handler_code(42).contains("the function's own"));
    }
}
