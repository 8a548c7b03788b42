//! The recording reader: a folder of `<seq>_<capture_ns>.<ext>` files as
//! `posed::sources::replay_files` lists them, each decoded the way
//! `run_replay` does. The input is `name\0contents\0name\0contents...`
//! (names made safe for the file system).
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed::decode;
use posed::proto::push_image_request::Image;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut parts = data.split(|&b| b == 0);
    let mut written = 0;
    while let (Some(name), Some(contents)) = (parts.next(), parts.next()) {
        let name: String = String::from_utf8_lossy(name)
            .chars()
            .filter(|c| *c != '/' && *c != '\\')
            .take(100)
            .collect();
        if name.is_empty() || name == "." || name == ".." {
            continue;
        }
        if std::fs::write(dir.path().join(&name), contents).is_ok() {
            written += 1;
        }
        if written == 8 {
            break;
        }
    }
    let files = posed::sources::replay_files(dir.path()).expect("the folder is readable");
    for (path, _ns) in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let limits = decode::ImageLimits {
            max_pixels: 1 << 16,
            ..Default::default()
        };
        let _ = decode::decode(Some(&Image::Encoded(bytes)), &limits);
    }
});
