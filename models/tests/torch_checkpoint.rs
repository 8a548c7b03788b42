//! The `.pth` reader on a checkpoint written in torch.save's zip format
//! (made by `data/make_torch_checkpoint.py`, without torch): strided views,
//! offsets, bfloat16 and integer storages, mmdet's `state_dict` wrapper.

use std::path::Path;

use mlx_rs::Dtype;
use posed_models::nn::host_f32;
use posed_models::torch_checkpoint::{convert_mmdet_checkpoint, read_state_dict};

fn checkpoint() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tiny_checkpoint.pth"
    ))
}

#[test]
fn tensors_come_back_with_their_views_and_dtypes() {
    let t = read_state_dict(checkpoint()).unwrap();
    assert_eq!(t.len(), 5);
    let values = |name: &str| host_f32(&t[name]).unwrap();
    assert_eq!(t["a.weight"].shape(), [2, 3]);
    assert_eq!(values("a.weight"), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    // The same storage read with strides (1, 3): the transpose.
    assert_eq!(t["a.transposed"].shape(), [3, 2]);
    assert_eq!(values("a.transposed"), [0.0, 1.5, 0.5, 2.0, 1.0, 2.5]);
    // Offset 2, stride 2.
    assert_eq!(values("b.every_other"), [1.0, 2.0]);
    assert_eq!(t["c.bf16"].dtype(), Dtype::Bfloat16);
    assert_eq!(values("c.bf16"), [1.5, -2.0, 0.3125]);
    assert_eq!(t["bn.num_batches_tracked"].dtype(), Dtype::Int64);
    assert_eq!(t["bn.num_batches_tracked"].item_exact::<i64>(), 7);
}

#[test]
fn conversion_keeps_the_float_tensors_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("converted.safetensors");
    assert_eq!(convert_mmdet_checkpoint(checkpoint(), &out).unwrap(), 4);
    let back = mlx_rs::Array::load_safetensors(&out).unwrap();
    assert!(!back.contains_key("bn.num_batches_tracked"));
    assert_eq!(
        host_f32(&back["a.transposed"]).unwrap(),
        [0.0, 1.5, 0.5, 2.0, 1.0, 2.5]
    );
}

#[test]
fn a_file_that_is_not_a_checkpoint_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pth");
    std::fs::write(&bad, b"not a zip").unwrap();
    let err = read_state_dict(&bad).unwrap_err().to_string();
    assert!(err.contains("not a torch.save zip archive"), "{err}");
}

/// What the writer saves, the reader gives back (shapes, values, names).
#[test]
fn written_checkpoints_read_back() {
    use posed_models::torch_checkpoint::write_state_dict;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.pth");
    let a = mlx_rs::Array::from_slice(&[1.0f32, -2.0, 3.5, 4.0, 5.0, 6.25], &[3, 2]);
    let b = mlx_rs::Array::from_slice(&[0.5f32], &[1]);
    write_state_dict(&path, &[("x.weight".into(), a), ("x.bias".into(), b)]).unwrap();
    let back = read_state_dict(&path).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back["x.weight"].shape(), [3, 2]);
    assert_eq!(
        host_f32(&back["x.weight"]).unwrap(),
        [1.0, -2.0, 3.5, 4.0, 5.0, 6.25]
    );
    assert_eq!(host_f32(&back["x.bias"]).unwrap(), [0.5]);
}
