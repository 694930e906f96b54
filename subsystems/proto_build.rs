// Shared by the subsystems' build scripts (`include!`d): compiles one subsystem's protos
// (`proto/food/<subsystem>/v1`) with a pure-Rust protobuf compiler, so building needs no
// `protoc`; generates its messages and gRPC services, using the shared contracts crate for
// `food.contracts.v1`, and keeps the descriptor set for server reflection.

fn compile_subsystem(subsystem: &str) -> Result<(), Box<dyn std::error::Error>> {
    use prost::Message as _;
    use std::path::PathBuf;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let dir = root.join("food").join(subsystem).join("v1");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rerun-if-changed={}", root.join("food/contracts/v1").display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "proto"));
    files.sort();
    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptors.bin"), descriptors.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .extern_path(".food.contracts.v1", "::food_contracts::v1")
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
