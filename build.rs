#[path = "models/link_mlx.rs"]
mod link_mlx;

use std::path::PathBuf;

fn main() {
    link_mlx::link_mlx_runtime();
    record_rustc_version();
    compile_protos();
    embed_info_plist();
}

/// macOS grants cameras to a binary by its Info.plist; a bare executable
/// carries it in a `__TEXT,__info_plist` section (see deploy/launchd/).
fn embed_info_plist() {
    let template = "deploy/launchd/Info.plist";
    println!("cargo:rerun-if-changed={template}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("macos") {
        return;
    }
    let text = std::fs::read_to_string(template).expect("reading deploy/launchd/Info.plist");
    let version = std::env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("Info.plist");
    std::fs::write(&out, text.replace("@POSED_VERSION@", &version)).expect("writing Info.plist");
    println!(
        "cargo:rustc-link-arg-bin=posed=-Wl,-sectcreate,__TEXT,__info_plist,{}",
        out.display()
    );
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

/// gRPC code for `proto/posed/v1`, plus the descriptor set that server
/// reflection serves. protoc comes from the protoc-bin-vendored crate unless
/// PROTOC names another, so no system package is needed.
fn compile_protos() {
    // Once a build script names what it depends on, cargo reruns it for
    // those alone: the proto folder must be named too.
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform"),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Matte images are shared by every subscriber's copy of an event.
    config.bytes([".posed.v1.Matte"]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("posed_v1_descriptor.bin"))
        .compile_with_config(config, &["proto/posed/v1/posed.proto"], &["proto"])
        .expect("compiling proto/posed/v1/posed.proto");
}
