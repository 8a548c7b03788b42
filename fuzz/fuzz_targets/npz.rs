//! `npz::read_npz_from` on any bytes: the zip archive (stored or deflated
//! members, declared sizes) and each `.npy` member.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::npz;

fuzz_target!(|data: &[u8]| {
    let _ = npz::read_npz_from(std::io::Cursor::new(data));
});
