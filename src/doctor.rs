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
    print_camera();
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
    }
    match backend.devices() {
        Ok(d) => println!("  cameras    {} (`posed cameras` lists them)", d.len()),
        Err(e) => println!("  cameras    cannot list: {e}"),
    }
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
