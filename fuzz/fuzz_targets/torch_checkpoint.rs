//! `torch_checkpoint::read_state_dict_from` on any bytes: the zip archive,
//! its `data.pkl`, persistent ids, storages, offsets, sizes and strides
//! (tensors are built as MLX arrays on the CPU).
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::torch_checkpoint;

fuzz_target!(|data: &[u8]| {
    mlx_rs::Device::set_default(&mlx_rs::Device::cpu());
    if let Ok(tensors) =
        torch_checkpoint::read_state_dict_from(std::io::Cursor::new(data), "fuzz.pth")
    {
        for a in tensors.values() {
            a.eval().expect("a read tensor evaluates");
        }
    }
});
