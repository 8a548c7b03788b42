//! `posed doctor`: what runtime this binary got, and whether it computes.

use posed_models::runtime;

/// The facts `posed doctor` prints, gathered without side effects beyond a
/// tiny MLX computation.
#[derive(Debug)]
pub struct Report {
    pub posed_version: &'static str,
    pub rustc_version: &'static str,
    pub mlx_version: String,
    pub device: runtime::DeviceReport,
    pub backends: runtime::Backends,
    pub blas: Option<String>,
    pub self_check: Result<(), runtime::SelfCheckError>,
}

pub fn report() -> Report {
    Report {
        posed_version: env!("CARGO_PKG_VERSION"),
        rustc_version: env!("POSED_RUSTC_VERSION"),
        mlx_version: runtime::mlx_version(),
        device: runtime::default_device(),
        backends: runtime::backends(),
        blas: bound_blas(),
        self_check: runtime::self_check(),
    }
}

pub fn run() -> anyhow::Result<()> {
    let r = report();
    println!("posed        {}", r.posed_version);
    println!("rustc        {}", r.rustc_version);
    println!("mlx          {}", r.mlx_version);
    let name = r.device.name().unwrap_or("-");
    println!("device       {}:{} ({name})", r.device.kind, r.device.index);
    for (k, v) in &r.device.info {
        if k != "device_name" {
            println!("  {k:<11} {v}");
        }
    }
    println!(
        "backends     metal={} cuda={}",
        yes_no(r.backends.metal),
        yes_no(r.backends.cuda)
    );
    println!("blas         {}", r.blas.as_deref().unwrap_or("-"));
    #[cfg(target_os = "macos")]
    let metallib = {
        let found = metallib_beside(loaded_libmlx().as_deref());
        match &found {
            Ok(line) => println!("metallib     {line}"),
            Err(why) => println!("metallib     MISSING: {why}"),
        }
        found
    };
    print_camera();
    #[cfg(target_os = "macos")]
    if let Err(why) = metallib {
        anyhow::bail!("doctor: {why}");
    }
    match &r.self_check {
        Ok(()) => {
            println!("self-check   ok (matmul 3x4x2, conv2d 4x4 NHWC/OHWI)");
            Ok(())
        }
        Err(e) => anyhow::bail!("doctor: MLX self-check failed: {e}"),
    }
}

/// Camera access as the daemon would find it, without asking the user.
fn print_camera() {
    use posed_capture::Backend;
    let mut backend = crate::sources::camera::platform_backend();
    let permission = crate::cameras::permission_line(&backend.permission(false));
    println!("camera       {permission}");
    #[cfg(target_os = "macos")]
    {
        // What macOS reads from the binary's embedded Info.plist.
        let id = posed_capture::avf::bundle_identity();
        println!(
            "  bundle     {} (usage description {})",
            id.identifier.as_deref().unwrap_or("none embedded"),
            if id.camera_usage.is_some() {
                "embedded"
            } else {
                "missing"
            }
        );
        // TCC asks about the responsible process: from a terminal that is
        // the terminal app, under launchd posed itself.
        println!("  note       run from a terminal, the camera grant in effect is the terminal's; the agent has its own");
    }
    match backend.devices() {
        Ok(d) => println!("  cameras    {} (`posed cameras` lists them)", d.len()),
        Err(e) => println!("  cameras    cannot list: {e}"),
    }
}

/// Where this process loaded `libmlx.dylib` from, if it did (MLX built
/// from source is linked in statically).
#[cfg(target_os = "macos")]
fn loaded_libmlx() -> Option<std::path::PathBuf> {
    // libSystem's dyld image list (libc marks its bindings deprecated).
    extern "C" {
        fn _dyld_image_count() -> u32;
        fn _dyld_get_image_name(image_index: u32) -> *const std::ffi::c_char;
    }
    // SAFETY: dyld's image list; each name is a NUL-terminated path owned
    // by dyld, copied out at once. An index past a concurrent unload gives
    // null, which is skipped.
    unsafe {
        (0.._dyld_image_count()).find_map(|i| {
            let name = _dyld_get_image_name(i);
            if name.is_null() {
                return None;
            }
            let path = std::ffi::CStr::from_ptr(name).to_string_lossy();
            path.ends_with("/libmlx.dylib")
                .then(|| std::path::PathBuf::from(path.as_ref()))
        })
    }
}

/// MLX's Metal kernels ship as `mlx.metallib`, which MLX looks for beside
/// `libmlx.dylib`: the line to print, or what is wrong and how to fix it.
pub fn metallib_beside(libmlx: Option<&std::path::Path>) -> Result<String, NoMetallib> {
    let Some(lib) = libmlx else {
        return Ok("MLX is linked in (built from source); its build placed the metallib".into());
    };
    let metallib = lib.with_file_name("mlx.metallib");
    if metallib.is_file() {
        Ok(format!("{} (beside {})", metallib.display(), lib.display()))
    } else {
        Err(NoMetallib {
            libmlx: lib.to_owned(),
        })
    }
}

/// `libmlx.dylib` was loaded from a folder without `mlx.metallib`.
#[derive(Debug, thiserror::Error)]
#[error(
    "no mlx.metallib beside {}: Metal kernels cannot load; re-run `make setup` \
     (it unpacks the mlx-metal wheel), or reinstall the agent with \
     deploy/launchd/install.sh, which copies both",
    libmlx.display()
)]
pub struct NoMetallib {
    pub libmlx: std::path::PathBuf,
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The shared object that `cblas_sgemm` resolves to in this process: the one
/// MLX's CPU GEMMs call. On macOS that is Accelerate.
#[cfg(target_os = "linux")]
pub fn bound_blas() -> Option<String> {
    // SAFETY: dlsym/dladdr with a NUL-terminated name; the returned path is
    // owned by the loader and copied out immediately.
    unsafe {
        let sym = libc::dlsym(libc::RTLD_DEFAULT, c"cblas_sgemm".as_ptr());
        if sym.is_null() {
            return None;
        }
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(sym, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let path = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
        let path = std::fs::canonicalize(&*path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.into_owned());
        Some(path)
    }
}

#[cfg(target_os = "macos")]
pub fn bound_blas() -> Option<String> {
    Some("Accelerate (macOS)".into())
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn bound_blas() -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::metallib_beside;

    #[test]
    fn the_metallib_must_sit_beside_libmlx() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libmlx.dylib");
        std::fs::write(&lib, "").unwrap();
        let err = metallib_beside(Some(&lib)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("no mlx.metallib beside {}", lib.display())),
            "{err}"
        );
        assert!(err.contains("make setup"));
        std::fs::write(dir.path().join("mlx.metallib"), "").unwrap();
        let ok = metallib_beside(Some(&lib)).unwrap();
        assert!(ok.starts_with(&dir.path().join("mlx.metallib").display().to_string()));
        assert!(metallib_beside(None).is_ok());
    }
}
