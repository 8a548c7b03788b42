//! The setup and deploy scripts and files, on this Linux machine: the
//! macOS branch of `make setup` (with the platform faked), the launchd
//! installer (with stand-ins for launchctl and posed), and the Info.plist
//! macOS requires of a binary that uses the camera.

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value after `<key>key</key>`: a `<string>` or `<true/>`/`<false/>`.
fn value<'a>(plist: &'a str, key: &str) -> Option<&'a str> {
    let after = plist
        .split_once(&format!("<key>{key}</key>"))?
        .1
        .trim_start();
    if let Some(rest) = after.strip_prefix("<string>") {
        return rest.split_once("</string>").map(|(v, _)| v);
    }
    ["<true/>", "<false/>"]
        .into_iter()
        .find(|b| after.starts_with(b))
}

#[test]
fn the_embedded_info_plist_names_posed_and_says_why_it_wants_the_camera() {
    let info = read("deploy/launchd/Info.plist");
    let agent = read("deploy/launchd/dev.posed.daemon.plist");
    assert_eq!(value(&info, "CFBundleIdentifier"), value(&agent, "Label"));
    assert_eq!(value(&info, "CFBundleIdentifier"), Some("dev.posed.daemon"));
    let why = value(&info, "NSCameraUsageDescription").expect("a camera usage description");
    assert!(why.len() > 40 && why.contains("posed"), "{why}");
    assert_eq!(
        value(&info, "NSCameraUseContinuityCameraDeviceType"),
        Some("<true/>")
    );
    assert_eq!(value(&info, "CFBundleVersion"), Some("@POSED_VERSION@"));
    // Every <key> has a value, and the document is balanced.
    assert_eq!(info.matches("<key>").count(), 7);
    assert_eq!(
        info.matches("<dict>").count(),
        info.matches("</dict>").count()
    );
}

/// A copy of the scripts and patches, so a run cannot touch this checkout's
/// `.mlx` and `.cargo`.
fn scratch_checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["scripts", "patches"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(sub).unwrap() {
            let path = entry.unwrap().path();
            // The setup scripts use no subfolder (scripts/fixtures is not
            // theirs).
            if path.is_file() {
                std::fs::copy(&path, dir.path().join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    dir
}

/// The macOS branch of `make setup`, run here with the platform faked: it
/// fetches the `mlx-metal` wheel, checks its hash, finds what the build
/// links and what MLX loads, patches mlx-sys to link it, and points cargo at
/// both. (Compiling and running on a Mac is the one part this cannot do.)
#[test]
fn setup_mlx_prepares_the_prebuilt_metal_wheel_for_apple_silicon() {
    let checkout = scratch_checkout();
    let root = checkout.path();
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/setup-mlx.sh"))
        .env("POSED_SETUP_PLATFORM", "Darwin arm64")
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ready: MLX 0.32.2 (mlx-metal wheel)"), "{log}");
    let lib = root.join(".mlx/wheel/mlx/lib");
    for file in [
        lib.join("libmlx.dylib"),
        lib.join("mlx.metallib"),
        root.join(".mlx/wheel/mlx/include/mlx/mlx.h"),
        root.join(".mlx/wheel/mlx/include/metal_cpp/Metal/Metal.hpp"),
        root.join(".mlx/wheel/mlx/share/cmake/MLX/MLXConfig.cmake"),
    ] {
        assert!(file.is_file(), "{} missing", file.display());
    }
    // The wheel's libmlx is a 64-bit Mach-O for arm64.
    let dylib = std::fs::read(lib.join("libmlx.dylib")).unwrap();
    assert_eq!(dylib[..8], [0xcf, 0xfa, 0xed, 0xfe, 0x0c, 0x00, 0x00, 0x01]);

    let build_rs = read(root.join(".mlx/mlx-sys/build.rs").to_str().unwrap());
    assert!(build_rs.contains("fn build_and_link_mlx_c_prebuilt"));
    assert!(build_rs.contains("rustc-link-lib=dylib=c++"));
    let config = read(root.join(".cargo/config.toml").to_str().unwrap());
    let root = root.display();
    assert!(config.contains(&format!("mlx-sys = {{ path = \"{root}/.mlx/mlx-sys\" }}")));
    assert!(config.contains(&format!(
        "MLX_DIR = \"{root}/.mlx/wheel/mlx/share/cmake/MLX\""
    )));
    assert!(config.contains(&format!(
        "POSED_MLX_LIB_DIR = \"{root}/.mlx/wheel/mlx/lib\""
    )));

    // Offline once it has run: a second run downloads nothing.
    let again = std::process::Command::new("bash")
        .arg(checkout.path().join("scripts/setup-mlx.sh"))
        .env("POSED_SETUP_PLATFORM", "Darwin arm64")
        .env("PIP_NO_INDEX", "1")
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!String::from_utf8_lossy(&again.stdout).contains("downloading"));
}

/// `install.sh` against stand-ins for launchctl, plutil and posed: what it
/// installs, what the agent runs, and that running it again changes nothing
/// but the binary.
#[test]
fn install_sh_gives_the_agent_a_runtime_folder_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let tools = tmp.path().join("tools");
    let calls = tmp.path().join("calls.log");
    let mlx_lib = tmp.path().join("wheel/lib");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::create_dir_all(&mlx_lib).unwrap();
    std::fs::write(mlx_lib.join("libmlx.dylib"), "libmlx").unwrap();
    std::fs::write(mlx_lib.join("mlx.metallib"), "metallib").unwrap();
    let script = |name: &str, body: &str| {
        let path = tools.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let log = calls.display();
    script("launchctl", &format!("echo \"launchctl $*\" >> '{log}'"));
    script("plutil", "exit 0");
    let posed = script("posed", &format!("echo \"$0 $*\" >> '{log}'"));
    let install = |args: &[&str]| {
        let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap());
        let out = std::process::Command::new("bash")
            .arg("deploy/launchd/install.sh")
            .args(args)
            .env("HOME", &home)
            .env("PATH", path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let bin = posed.to_str().unwrap();
    let lib = mlx_lib.to_str().unwrap();

    let (code, out) = install(&["--bin", bin, "--mlx-lib", lib]);
    assert_eq!(code, Some(0), "{out}");
    let runtime = home.join("Library/Application Support/posed/runtime");
    assert_eq!(read(runtime.join("posed").to_str().unwrap()), read(bin));
    assert_eq!(
        read(runtime.join("lib/libmlx.dylib").to_str().unwrap()),
        "libmlx"
    );
    assert_eq!(
        read(runtime.join("lib/mlx.metallib").to_str().unwrap()),
        "metallib"
    );
    let agent = read(
        home.join("Library/LaunchAgents/dev.posed.daemon.plist")
            .to_str()
            .unwrap(),
    );
    assert!(agent.contains(&format!(
        "<string>{}</string>",
        runtime.join("posed").display()
    )));
    assert!(!agent.contains("@POSED_"), "{agent}");
    let config = home.join("Library/Application Support/posed/posed.toml");
    assert_eq!(read(config.to_str().unwrap()), read("config/posed.toml"));
    let uid = String::from_utf8(
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let calls_text = read(calls.to_str().unwrap());
    assert!(
        calls_text.contains(&format!("{} doctor", runtime.join("posed").display())),
        "the installed copy is checked, not the build: {calls_text}"
    );
    assert!(calls_text.contains(&format!("launchctl bootstrap gui/{}", uid.trim())));

    // Again, with an edited config and a new build: the config stays.
    std::fs::write(&config, "# mine\n").unwrap();
    std::fs::write(&posed, "#!/bin/sh\nexit 0\n# build 2\n").unwrap();
    let (code, out) = install(&["--bin", bin, "--mlx-lib", lib]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(read(config.to_str().unwrap()), "# mine\n");
    assert!(read(runtime.join("posed").to_str().unwrap()).ends_with("# build 2\n"));
    assert!(!home
        .join("Library/Application Support/posed/runtime.new")
        .exists());

    // Without MLX beside it, nothing is installed and the line says why.
    let (code, out) = install(&["--bin", bin, "--mlx-lib", tmp.path().to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(out.contains("no libmlx.dylib in"), "{out}");

    let (code, out) = install(&["--uninstall"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!runtime.exists());
    assert!(!home
        .join("Library/LaunchAgents/dev.posed.daemon.plist")
        .exists());
    assert_eq!(read(config.to_str().unwrap()), "# mine\n");
}
