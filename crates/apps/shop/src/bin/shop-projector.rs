//! `shop-projector [run|migrate]`: keeps the shop's read models up to date (the engine's
//! projector with the shop's events and read models), or sets them up (`migrate`).

fn main() -> std::process::ExitCode {
    prism_projector::main(shop_model::application())
}
