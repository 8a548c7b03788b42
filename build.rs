#[path = "models/link_mlx.rs"]
mod link_mlx;

fn main() {
    link_mlx::link_mlx_runtime();
    record_rustc_version();
}

/// `posed doctor` reports the compiler that built it.
fn record_rustc_version() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=POSED_RUSTC_VERSION={version}");
}
