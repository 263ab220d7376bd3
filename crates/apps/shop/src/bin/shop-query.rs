//! `shop-query`: the shop's HTTP query API, until SIGTERM or Ctrl-C.

fn main() -> std::process::ExitCode {
    shop_query::main()
}
