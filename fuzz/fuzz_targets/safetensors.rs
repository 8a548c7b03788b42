//! Safetensors files as `checked_weights::Weights::from_file` reads them
//! (MLX's loader), with every tensor evaluated; and the `safetensors`
//! crate's parser, which the parity tools use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::checked_weights::Weights;

fuzz_target!(|data: &[u8]| {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    let _ = safetensors::SafeTensors::deserialize(data);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w.safetensors");
    std::fs::write(&path, data).expect("write");
    let Ok((tensors, _)) = mlx_rs::Array::load_safetensors_with_metadata(&path) else {
        return;
    };
    for a in tensors.values() {
        let _ = a.eval();
    }
    if let Ok(w) = Weights::from_file(&path) {
        let _ = w.is_synthetic();
        let _ = w.finish();
    }
});
