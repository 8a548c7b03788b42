//! Safetensors files as `checked_weights::Weights::from_file` reads them
//! (its header check, then MLX's loader), and the `safetensors` crate's
//! parser, which the parity tools use. MLX's loader is not called on its
//! own: mlx-c formats its error messages as printf formats, and a file
//! quoting `%` in a bad header crashes it (see fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::checked_weights::Weights;

fuzz_target!(|data: &[u8]| {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for (_, view) in st.tensors() {
            let _ = (view.dtype(), view.shape(), view.data().len());
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.safetensors");
    std::fs::write(&path, data).expect("write");
    if let Ok(w) = Weights::from_file(&path) {
        let _ = w.is_synthetic();
        let _ = w.finish();
    }
});
