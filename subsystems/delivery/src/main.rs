//! `delivery --config FILE [--check]`: runs one of the delivery subsystem's services.

fn main() -> std::process::ExitCode {
    fractal::service::main(food_delivery::SUBSYSTEM)
}
