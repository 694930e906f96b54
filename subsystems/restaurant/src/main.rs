//! `restaurant --config FILE [--check]`: runs one of the restaurant subsystem's services.

fn main() -> std::process::ExitCode {
    fractal::service::main(food_restaurant::SUBSYSTEM)
}
