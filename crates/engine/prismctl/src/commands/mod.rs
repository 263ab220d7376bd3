//! One module per subcommand.

pub mod dlq;
pub mod lag;
pub mod migrate;
pub mod offsets;
pub mod read_models;
pub mod rebuild;
pub mod topics;

/// What to tell an operator whose PostgreSQL is not answering.
pub const POSTGRES_HINT: &str =
    "is PostgreSQL running and postgres.url right? On a development machine `ops/dev-stack up` starts it";
/// What to tell an operator whose Redis is not answering.
pub const REDIS_HINT: &str =
    "is Redis running and redis.url right? On a development machine `ops/dev-stack up` starts it";
/// What to tell an operator whose broker is not answering.
pub const KAFKA_HINT: &str =
    "is the broker running and kafka.bootstrap_servers right? On a development machine `ops/dev-stack up` starts one";

/// Asks `question` on the terminal; `true` for yes. Without a terminal (scripts, CI) there is
/// nobody to ask: the caller must have been given `--yes`.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question} — no terminal to confirm on; add --yes to proceed without asking");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        anyhow::bail!("not confirmed; nothing was changed")
    }
}
