//! `posed::config::Config::load`: the TOML file, then `POSED_*` variables.
//! The input is the file's text, optionally followed by a line `%%env` and
//! `NAME=value` lines that the environment answers with.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use posed::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (toml, env_text) = text.split_once("\n%%env\n").unwrap_or((&text, ""));
    let env: HashMap<String, String> = env_text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("posed.toml");
    std::fs::write(&path, toml.as_bytes()).expect("write");
    if let Ok(c) = Config::load(Some(&path), |k| env.get(k).cloned(), &[]) {
        let _ = c.listen();
        let _ = c.socket();
        let _ = c.metrics();
        let _ = c.smoothing();
        let _ = c.shutdown_deadline();
    }
});
