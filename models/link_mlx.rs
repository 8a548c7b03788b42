// Shared by the build scripts of `posed` and `posed-models` (included with
// `#[path]`): link arguments that must reach every final binary, tests and
// benches included. A dependency's `rustc-link-arg` never reaches them.

use std::env;

/// On Linux, bake the MLX wheel's lib folder into the binary's RUNPATH (so it
/// runs without LD_LIBRARY_PATH) and, with the `openblas` feature, put
/// OpenBLAS in the executable's own NEEDED list. The loader searches NEEDED
/// breadth-first, so MLX's `cblas_*` calls then bind to OpenBLAS instead of
/// the reference BLAS bundled in the wheel (20x slower on GEMM).
pub fn link_mlx_runtime() {
    println!("cargo:rerun-if-env-changed=POSED_MLX_LIB_DIR");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let Ok(lib_dir) = env::var("POSED_MLX_LIB_DIR") else {
        panic!("POSED_MLX_LIB_DIR is not set: run `make setup` (scripts/setup-mlx.sh) first");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    if env::var_os("CARGO_FEATURE_OPENBLAS").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-lopenblas");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
