//! `group --config FILE [--check]`: runs a service of the group hub.

fn main() -> std::process::ExitCode {
    fractal::service::main(food_group::SUBSYSTEM)
}
