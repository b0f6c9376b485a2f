//! `perch passwd`: a password hash for `[[broker.users]].password_hash`.

use std::io::BufRead;

use anyhow::Context;

pub(super) fn passwd() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("password (the input is shown; pipe it in to avoid that):");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        !password.is_empty(),
        "the password is empty; type it, or pipe it in: echo 'secret' | perch passwd"
    );
    println!("{}", crate::broker::auth::hash_password(password));
    Ok(())
}
