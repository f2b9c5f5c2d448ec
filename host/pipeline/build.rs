//! Generates the gRPC code of `proto/` (order.proto, admin.proto) with the protoc shipped
//! in a crate, and the descriptor set that reflection serves.

use std::env;
use std::path::PathBuf;

fn main() {
    if let Err(message) = compile_proto() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn compile_proto() -> Result<(), String> {
    let protoc = protoc_bin_vendored::protoc_bin_path().map_err(|e| e.to_string())?;
    // SAFETY: the build script is single-threaded; the variable is read by the generator.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("order_descriptor.bin"))
        .compile_protos(
            &["../../proto/order.proto", "../../proto/admin.proto"],
            &["../../proto"],
        )
        .map_err(|e| format!("compiling proto/: {e}"))
}
