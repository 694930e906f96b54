//! `delivery --config FILE [--check]`: runs one of the delivery subsystem's services.

fn main() -> std::process::ExitCode {
    fractal::service::main(
        "delivery",
        "DELIVERY_",
        food_delivery::SERVICES,
        food_delivery::run,
    )
}
