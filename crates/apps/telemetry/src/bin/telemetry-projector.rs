//! `telemetry-projector [run|migrate]`: keeps the telemetry read models up to date (the
//! engine's projector with telemetry's events and read models), or sets them up (`migrate`).

fn main() -> std::process::ExitCode {
    prism_projector::main(telemetry::application())
}
