//! `system --config FILE [--check]`: runs a service of the system hub.

fn main() -> std::process::ExitCode {
    fractal::service::main(food_system::SUBSYSTEM)
}
