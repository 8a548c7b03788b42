//! The deploy files agree with each other and with what macOS requires of a
//! binary that uses the camera.

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
