//! `system --config FILE [--check]`: runs a service of the system hub.

fn main() -> std::process::ExitCode {
    fractal::service::main("system", food_system::SERVICES, food_system::run)
}
