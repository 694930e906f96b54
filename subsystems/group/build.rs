include!("../proto_build.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_subsystem("group")
}
