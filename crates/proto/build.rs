fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/rackline/common/v1/common.proto",
            "proto/rackline/ipam/v1/ipam.proto",
            "proto/rackline/admin/v1/admin.proto",
            "proto/runtime/v1/api.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
