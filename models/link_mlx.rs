// Shared by the build scripts of `posed` and `posed-models` (included with
// `#[path]`): link arguments that must reach every final binary, tests and
// benches included. A dependency's `rustc-link-arg` never reaches them.

use std::env;

/// A Linux build without the wheel's lib folder (build scripts have no
/// thiserror, hence the hand-written impls).
#[derive(Debug, PartialEq)]
pub struct NoMlxLibDir;

impl std::fmt::Display for NoMlxLibDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("POSED_MLX_LIB_DIR is not set: run `make setup` (scripts/setup-mlx.sh) first")
    }
}

impl std::error::Error for NoMlxLibDir {}

/// Points the binary at the MLX wheel's libmlx (see [`link_args`]).
pub fn link_mlx_runtime() {
    println!("cargo:rerun-if-env-changed=POSED_MLX_LIB_DIR");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let lib_dir = env::var("POSED_MLX_LIB_DIR").ok();
    let openblas = env::var_os("CARGO_FEATURE_OPENBLAS").is_some();
    match link_args(&target_os, lib_dir.as_deref(), openblas) {
        Ok(args) => {
            for arg in args {
                println!("cargo:rustc-link-arg={arg}");
            }
        }
        Err(NoMlxLibDir) => panic!("{NoMlxLibDir}"),
    }
}

/// The runtime search path for the wheel's libmlx, so the binary runs
/// without LD_LIBRARY_PATH/DYLD_LIBRARY_PATH:
///
/// - Linux: the wheel's lib folder in RUNPATH, and with `openblas`,
///   OpenBLAS in the executable's own NEEDED list. The loader searches
///   NEEDED breadth-first, so MLX's `cblas_*` calls then bind to OpenBLAS
///   instead of the reference BLAS bundled in the wheel (20x slower on GEMM).
/// - macOS: `@executable_path/lib` first (the installed runtime folder:
///   the binary beside `lib/libmlx.dylib` and `lib/mlx.metallib`), then the
///   wheel's lib folder (a build in the checkout). Accelerate is MLX's BLAS
///   there; without a wheel (MLX built from source) MLX is linked
///   statically and needs no path.
pub fn link_args(
    target_os: &str,
    lib_dir: Option<&str>,
    openblas: bool,
) -> Result<Vec<String>, NoMlxLibDir> {
    match (target_os, lib_dir) {
        ("linux", None) => Err(NoMlxLibDir),
        ("linux", Some(dir)) => {
            let mut args = vec![format!("-Wl,-rpath,{dir}")];
            if openblas {
                args.extend(
                    ["-Wl,--no-as-needed", "-lopenblas", "-Wl,--as-needed"].map(String::from),
                );
            }
            Ok(args)
        }
        ("macos", Some(dir)) => Ok(vec![
            "-Wl,-rpath,@executable_path/lib".into(),
            format!("-Wl,-rpath,{dir}"),
        ]),
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::link_args;

    #[test]
    fn macos_finds_libmlx_beside_the_installed_binary_then_in_the_wheel() {
        assert_eq!(
            link_args("macos", Some("/src/posed/.mlx/wheel/mlx/lib"), true).unwrap(),
            [
                "-Wl,-rpath,@executable_path/lib",
                "-Wl,-rpath,/src/posed/.mlx/wheel/mlx/lib",
            ]
        );
        // Built from source: static MLX, nothing to find at run time.
        assert_eq!(
            link_args("macos", None, false).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn linux_needs_the_wheel_and_puts_openblas_first() {
        assert_eq!(
            link_args("linux", Some("/w/lib"), true).unwrap(),
            [
                "-Wl,-rpath,/w/lib",
                "-Wl,--no-as-needed",
                "-lopenblas",
                "-Wl,--as-needed"
            ]
        );
        assert_eq!(
            link_args("linux", Some("/w/lib"), false).unwrap(),
            ["-Wl,-rpath,/w/lib"]
        );
        assert!(link_args("linux", None, true)
            .unwrap_err()
            .to_string()
            .contains("make setup"));
    }
}
