//! `ordering --config FILE [--check]`: runs one of the ordering subsystem's services.

fn main() -> std::process::ExitCode {
    fractal::service::main(food_ordering::SUBSYSTEM)
}
