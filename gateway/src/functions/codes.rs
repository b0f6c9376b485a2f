//! The named values a handler returns (sdk/ABI.md, "Return values of
//! handlers"): the host's error codes, which a handler may pass on, and the
//! Rust SDK's own guest-side failures. The runtime names them when it
//! reports a failed invocation, so a log line says what `1` meant.

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
