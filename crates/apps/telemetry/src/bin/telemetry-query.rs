//! `telemetry-query`: the engine's query service with telemetry's read models:
//! `GET /read-models/device_status/{device id}` (the engine's by-key route: cache-aside,
//! read-your-writes with `?min_version=`) and `GET /sites/{site_id}/readings` (this crate's
//! route, see `telemetry::query`).

fn main() -> std::process::ExitCode {
    prism_query::main(telemetry::application(), telemetry::query::routes())
}
