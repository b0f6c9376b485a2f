//! `perch passwd`: a password hash for `[[broker.users]].password_hash`.
//!
//! On a terminal the password is read twice with echo off (a typo would
//! otherwise lock the user out, unseen); from a pipe it is one line, so a
//! script can `echo 'secret' | perch passwd`. Prompts go to stderr, the
//! hash alone to stdout.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use rustix::termios::{self, LocalModes, OptionalActions, Termios};

pub(super) fn passwd() -> anyhow::Result<()> {
    let password = if std::io::stdin().is_terminal() {
        from_terminal()?
    } else {
        let line = read_line().context("cannot read the password from stdin")?;
        ensure_not_empty(&line)?;
        line
    };
    println!("{}", crate::broker::auth::hash_password(&password));
    Ok(())
}

/// Asks twice, without echo; the two must match.
fn from_terminal() -> anyhow::Result<String> {
    let first = read_hidden("password: ")?;
    ensure_not_empty(&first)?;
    let second = read_hidden("again, to be sure: ")?;
    anyhow::ensure!(
        first == second,
        "the two passwords differ; nothing was written: run perch passwd again"
    );
    Ok(first)
}

fn ensure_not_empty(password: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !password.is_empty(),
        "the password is empty; type it, or pipe it in: echo 'secret' | perch passwd"
    );
    Ok(())
}

/// One line from stdin, without its line ending.
fn read_line() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Prompts on stderr and reads one line from the terminal on stdin with
/// echo off (Enter still moves to a new line); the terminal's settings come
/// back whatever the read did.
fn read_hidden(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    // Echo off before the prompt, so nothing typed after it is shown.
    termios::tcsetattr(&stdin, OptionalActions::Now, &quiet)
        .context("cannot turn the terminal's echo off")?;
    let restore = Restore(saved);
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let line = read_line().context("cannot read the password from the terminal");
    drop(restore);
    line
}

/// Puts the terminal's settings back when dropped (also on a panic).
struct Restore(Termios);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}
