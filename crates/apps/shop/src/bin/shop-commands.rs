//! `shop-commands`: the shop's HTTP command API and the outbox relay, until SIGTERM or Ctrl-C.

fn main() -> std::process::ExitCode {
    shop_commands::main()
}
