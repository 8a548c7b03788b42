//! Property tests for the model-file readers (issue #23): the pickle
//! machine, the MANO converter, `.npy`/`.npz`, `torch.save` checkpoints,
//! safetensors through MLX's loader and the JSON model configs.
//!
//! Every reader must answer any bytes with a value or an error: no panic, no
//! unbounded allocation (a declared 2^40-element array is refused before
//! anything is allocated for it). Inputs are arbitrary bytes and mutations
//! (truncation, flipped bytes, spliced huge lengths) of small valid files.
//! The same valid files are the fuzz targets' seed corpus:
//! `cargo test -p posed-models --test parsers_prop -- --ignored write_fuzz_seeds`
//! rewrites `fuzz/corpus/`.

use std::io::Cursor;
use std::path::Path;

use mlx_rs::Array;
use posed_models::checked_weights::Weights;
use posed_models::nn::host_f32;
use posed_models::npz::{self, NpyData, NpyError};
use posed_models::{mano_convert, pickle, torch_checkpoint};
use proptest::prelude::*;

// ---- Mutations ---------------------------------------------------------------

/// One edit of a valid file.
#[derive(Debug, Clone)]
enum Edit {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    /// Overwrite with a little-endian length: small, huge or all ones.
    Length(usize, u64, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let length = prop_oneof![
        Just(u64::MAX),
        Just(1u64 << 40),
        Just(u32::MAX as u64),
        Just(0x7fff_ffff),
        0u64..4096,
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (
            any::<usize>(),
            length,
            prop_oneof![Just(1usize), Just(2), Just(4), Just(8)]
        )
            .prop_map(|(i, v, w)| Edit::Length(i, v, w)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Truncate(i) => bytes.truncate(i % n),
            Edit::Flip(i, x) => {
                if let Some(b) = bytes.get_mut(i % n) {
                    *b ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Length(i, v, w) => {
                let at = i % n;
                for (k, b) in v.to_le_bytes()[..*w].iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(edit(), 1..4)
}

// ---- A small pickle writer for seeds ------------------------------------------

/// Pickle instructions, written the way Python 2's protocol 2 writes MANO.
#[derive(Default)]
struct Pkl(Vec<u8>);

impl Pkl {
    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn text(&mut self, s: &str) -> &mut Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.op(b"T").op(&(b.len() as u32).to_le_bytes()).op(b)
    }
    fn int(&mut self, v: i32) -> &mut Self {
        self.op(b"J").op(&v.to_le_bytes())
    }
    fn ints(&mut self, v: &[i64]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x as i32);
        }
        self.op(b"t")
    }
    /// `numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")` with its
    /// state `(1, shape, dtype(descr), False, raw)`.
    fn ndarray(&mut self, shape: &[i64], code: &str, raw: &[u8]) -> &mut Self {
        self.global("numpy.core.multiarray", "_reconstruct");
        self.op(b"(").global("numpy", "ndarray");
        self.ints(&[0]).op(b"U\x01b").op(b"tR");
        self.op(b"(").int(1).ints(shape);
        self.global("numpy", "dtype")
            .op(b"(")
            .text(code)
            .int(0)
            .int(1)
            .op(b"tR");
        self.op(b"(")
            .int(3)
            .text("<")
            .op(b"NNN")
            .int(-1)
            .int(-1)
            .int(0)
            .op(b"tb");
        self.op(b"\x89").bytes(raw).op(b"tb")
    }
    fn f64s(&mut self, shape: &[i64], v: &[f64]) -> &mut Self {
        let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.ndarray(shape, "f8", &raw)
    }
    /// `copy_reg._reconstructor(cls, object, None)`, then BUILD with a dict
    /// that the caller fills (keys and values) before `end_object`.
    fn object(&mut self, module: &str, name: &str) -> &mut Self {
        self.global("copy_reg", "_reconstructor").op(b"(");
        self.global(module, name)
            .global("__builtin__", "object")
            .op(b"NtR}(")
    }
    fn end_object(&mut self) -> &mut Self {
        self.op(b"ub")
    }
    fn finish(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.0)
    }
}

/// A MANO-shaped pickle with tiny arrays: every array kind the converter
/// reads (NumPy, chumpy, SciPy CSC), with shapes it then refuses.
fn tiny_mano_pickle() -> Vec<u8> {
    let mut p = Pkl::default();
    p.op(b"\x80\x02}(");
    p.text("v_template")
        .f64s(&[2, 3], &[0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    p.text("shapedirs").object("chumpy.ch", "Ch");
    p.text("x").f64s(&[1, 3, 2], &[1.0; 6]).end_object();
    p.text("J_regressor")
        .object("scipy.sparse.csc", "csc_matrix");
    p.text("_shape").ints(&[2, 3]);
    p.text("data").f64s(&[2], &[0.25, 0.75]);
    p.text("indices")
        .ndarray(&[2], "i4", &[0, 0, 0, 0, 1, 0, 0, 0]);
    p.text("indptr")
        .ndarray(&[4], "i8", &[0u64, 1, 2, 2].map(u64::to_le_bytes).concat());
    p.text("format").text("csc").end_object();
    p.text("kintree_table").ints(&[0, 1]);
    p.text("f")
        .ndarray(&[1, 3], "u4", &[0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]);
    p.op(b"u").finish()
}

/// Python-2-style containers, memo references and every integer width.
fn containers_pickle() -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
    p.extend_from_slice(&[b'U', 1, b'a', b']', b'q', 1, b'(', b'K', 1]);
    p.extend_from_slice(&[b'J', 0xfe, 0xff, 0xff, 0xff, b'M', 0x2c, 0x01, b'e']);
    p.extend_from_slice(&[b'U', 1, b'b', b'G']);
    p.extend_from_slice(&1.5f64.to_be_bytes());
    p.extend_from_slice(&[b'N', 0x88, 0x87, b'U', 1, b'c', b'h', 1]);
    p.extend_from_slice(&[b'U', 1, b'd', 0x8a, 2, 0x7f, 0xff, b'u', b'.']);
    p
}

fn pickle_seeds() -> Vec<Vec<u8>> {
    vec![
        tiny_mano_pickle(),
        containers_pickle(),
        b"(lp0\nI1\naS'two'\np1\naF3.5\na(dp2\nVkey\np3\nL4L\nsa.".to_vec(),
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x04spam\x94\x8c\x04eggs\x94\x93\x94)\x81\x94.".to_vec(),
    ]
}

// ---- .npy and .npz -------------------------------------------------------------

fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
        if fortran { "True" } else { "False" }
    );
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn npy_seeds() -> Vec<Vec<u8>> {
    let f4: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![
        npy("<f4", false, "(2, 3)", &f4),
        npy("<f4", true, "(3, 2)", &f4),
        npy(
            ">i2",
            false,
            "(4,)",
            &[0, 1, 0xff, 0xfe, 0x12, 0x34, 0x80, 0],
        ),
        npy("|u1", false, "()", &[7]),
        npy("<f8", false, "(0, 5)", &[]),
    ]
}

fn npz_bytes(arrays: &[(&str, Vec<usize>, NpyData)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npz");
    npz::write_npz(&path, arrays).unwrap();
    std::fs::read(path).unwrap()
}

fn npz_seeds() -> Vec<Vec<u8>> {
    vec![
        npz_bytes(&[
            ("pose", vec![2, 3], NpyData::F32(vec![0.5; 6])),
            ("faces", vec![1, 3], NpyData::I32(vec![0, 1, 2])),
        ]),
        std::fs::read(data_file("mano_mean_params_like.npz")).unwrap(),
    ]
}

fn data_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

// ---- torch.save and safetensors ----------------------------------------------

fn checkpoint_bytes(tensors: &[(String, Array)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pth");
    torch_checkpoint::write_state_dict(&path, tensors).unwrap();
    std::fs::read(path).unwrap()
}

fn checkpoint_seeds() -> Vec<Vec<u8>> {
    vec![
        std::fs::read(data_file("tiny_checkpoint.pth")).unwrap(),
        checkpoint_bytes(&[(
            "w".into(),
            Array::from_slice(&[1.0f32, -2.0, 3.5, 0.0], &[2, 2]),
        )]),
    ]
}

/// A safetensors file written by hand: JSON header, then the data.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![
        safetensors_bytes(
            r#"{"__metadata__":{"posed.synthetic":"true"},"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            &f32s,
        ),
        safetensors_bytes(
            r#"{"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"c":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#,
            &[0, 0x3c, 0, 0xc0, 1, 2, 3, 4],
        ),
    ]
}

/// Writes every seed above into `fuzz/corpus/<target>/` (run by hand, see
/// fuzz/README.md).
#[test]
#[ignore = "writes the fuzz seed corpus"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let targets: [(&str, Vec<Vec<u8>>); 6] = [
        ("pickle", pickle_seeds()),
        ("mano_pickle", pickle_seeds()),
        ("npy", npy_seeds()),
        ("npz", npz_seeds()),
        ("torch_checkpoint", checkpoint_seeds()),
        ("safetensors", safetensors_seeds()),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
}

// ---- Properties ----------------------------------------------------------------

/// What a caller of the pickle reader does with a value.
fn use_pickle_value(v: &pickle::Value) {
    let _ = v.class_name();
    for item in v.items().unwrap_or_default().iter().take(32) {
        let _ = mano_convert::to_array(item);
    }
    for key in ["x", "v_template", "J_regressor", "shapedirs"] {
        if let Some(found) = v.get(key) {
            let _ = mano_convert::to_array(&found);
        }
    }
    let _ = mano_convert::to_array(v);
}

#[test]
fn seeds_are_valid() {
    for s in pickle_seeds() {
        pickle::load(&s).unwrap();
    }
    let Err(e) = mano_convert::convert(&tiny_mano_pickle(), None) else {
        panic!("a 2-vertex model converted");
    };
    assert!(e.to_string().contains("v_template"), "{e}");
    let model = pickle::load(&tiny_mano_pickle()).unwrap();
    let j = mano_convert::to_array(&model.get("J_regressor").unwrap()).unwrap();
    assert_eq!(j.shape, [2, 3]);
    assert_eq!(j.values, [0.25, 0.0, 0.0, 0.0, 0.75, 0.0]);
    let s = mano_convert::to_array(&model.get("shapedirs").unwrap()).unwrap();
    assert_eq!(s.shape, [1, 3, 2]);
    for s in npy_seeds() {
        npz::parse_npy(&s).unwrap();
    }
    for s in npz_seeds() {
        npz::read_npz_from(Cursor::new(s)).unwrap();
    }
    for s in checkpoint_seeds() {
        torch_checkpoint::read_state_dict_from(Cursor::new(s), "seed").unwrap();
    }
    // The header check passes the hand-written seeds and a file MLX wrote.
    let dir = tempfile::tempdir().unwrap();
    for (i, s) in safetensors_seeds().into_iter().enumerate() {
        let path = dir.path().join(format!("{i}.safetensors"));
        std::fs::write(&path, s).unwrap();
        Weights::from_file(&path).unwrap();
    }
    let path = dir.path().join("mlx.safetensors");
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3]);
    let b = Array::from_slice(&[1u8, 0], &[2, 1])
        .as_dtype(mlx_rs::Dtype::Bool)
        .unwrap();
    let c = Array::from_slice(&[0.5f32; 4], &[2, 2])
        .as_dtype(mlx_rs::Dtype::Bfloat16)
        .unwrap();
    Array::save_safetensors([("a", &a), ("b", &b), ("c", &c)], None, &path).unwrap();
    let w = Weights::from_file(&path).unwrap();
    assert_eq!(w.shape_of("c"), Some(vec![2, 2]));
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error_or_a_value() {
    for s in pickle_seeds() {
        for n in 0..s.len() {
            if let Ok(v) = pickle::load(&s[..n]) {
                use_pickle_value(&v);
            }
        }
    }
    for s in npy_seeds() {
        for n in 0..s.len() {
            let _ = npz::parse_npy(&s[..n]);
        }
    }
    for s in npz_seeds() {
        for n in (0..s.len()).step_by(7) {
            let _ = npz::read_npz_from(Cursor::new(&s[..n]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pickle_load_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(v) = pickle::load(&bytes) {
            use_pickle_value(&v);
        }
    }

    #[test]
    fn pickle_load_takes_mutated_pickles(seed in 0..4usize, e in edits()) {
        let bytes = apply(pickle_seeds()[seed].clone(), &e);
        if let Ok(v) = pickle::load(&bytes) {
            use_pickle_value(&v);
        }
        let _ = mano_convert::convert(&bytes, None);
    }

    #[test]
    fn npy_takes_mutated_arrays(seed in 0..5usize, e in edits()) {
        let bytes = apply(npy_seeds()[seed].clone(), &e);
        if let Ok(a) = npz::parse_npy(&bytes) {
            prop_assert_eq!(a.shape.iter().product::<usize>(), a.values.len());
        }
    }

    #[test]
    fn npy_dtype_strings_never_panic(descr in "\\PC{0,6}", fortran: bool, dims in proptest::collection::vec(0usize..5, 0..4)) {
        let data = [0x5au8; 256];
        let _ = npz::decode_values(&descr, &data, &dims, fortran);
    }

    #[test]
    fn npy_round_trips(
        shape in proptest::collection::vec(1usize..5, 1..4),
        ints: bool,
        seed: u32,
    ) {
        let n: usize = shape.iter().product();
        let f: Vec<f32> = (0..n).map(|i| (i as f32 - seed as f32) * 0.25).collect();
        let data = if ints {
            NpyData::I32(f.iter().map(|&v| v as i32).collect())
        } else {
            NpyData::F32(f.clone())
        };
        let bytes = npz_bytes(&[("a", shape.clone(), data)]);
        let back = npz::read_npz_from(Cursor::new(bytes)).unwrap();
        let a = &back["a"];
        prop_assert_eq!(&a.shape, &shape);
        let want: Vec<f64> = f.iter().map(|&v| if ints { (v as i32) as f64 } else { v as f64 }).collect();
        prop_assert_eq!(&a.values, &want);
    }
}

proptest! {
    // Zip and MLX work per case: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn npz_takes_mutated_archives(seed in 0..2usize, e in edits()) {
        let bytes = apply(npz_seeds()[seed].clone(), &e);
        let _ = npz::read_npz_from(Cursor::new(bytes));
    }

    #[test]
    fn checkpoint_takes_mutated_archives(seed in 0..2usize, e in edits()) {
        let bytes = apply(checkpoint_seeds()[seed].clone(), &e);
        if let Ok(t) = torch_checkpoint::read_state_dict_from(Cursor::new(bytes), "fuzz") {
            for a in t.values() {
                a.eval().unwrap();
            }
        }
    }

    #[test]
    fn checkpoint_round_trips(
        shapes in proptest::collection::vec(proptest::collection::vec(1i32..4, 1..3), 1..4),
    ) {
        let tensors: Vec<(String, Array)> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n: i32 = s.iter().product();
                let v: Vec<f32> = (0..n).map(|k| k as f32 * 0.5 - i as f32).collect();
                (format!("t{i}.weight"), Array::from_slice(&v, s))
            })
            .collect();
        let back = torch_checkpoint::read_state_dict_from(
            Cursor::new(checkpoint_bytes(&tensors)),
            "round trip",
        )
        .unwrap();
        prop_assert_eq!(back.len(), tensors.len());
        for (name, a) in &tensors {
            prop_assert_eq!(back[name].shape(), a.shape());
            prop_assert_eq!(host_f32(&back[name]).unwrap(), host_f32(a).unwrap());
        }
    }

    #[test]
    fn safetensors_takes_mutated_files(seed in 0..2usize, e in edits()) {
        let bytes = apply(safetensors_seeds()[seed].clone(), &e);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let _ = safetensors::SafeTensors::deserialize(&bytes);
        if let Ok(w) = Weights::from_file(&path) {
            let _ = w.finish();
        }
    }

    #[test]
    fn model_configs_take_any_json(text in "\\PC{0,64}", seed in 0..3usize, e in edits()) {
        use posed_models::{corridorkey, hand_detector, rtmdet, sapiens2, wilor};
        let valid = [r#"{"img_size": 64}"#, r#"{"depth": [1, 2], "dims": 8}"#, "[]"];
        for bytes in [text.into_bytes(), apply(valid[seed].as_bytes().to_vec(), &e)] {
            let _ = serde_json::from_slice::<hand_detector::DetectorConfig>(&bytes);
            let _ = serde_json::from_slice::<wilor::WilorConfig>(&bytes);
            let _ = serde_json::from_slice::<rtmdet::RtmdetConfig>(&bytes);
            let _ = serde_json::from_slice::<sapiens2::Sapiens2Config>(&bytes);
            let _ = serde_json::from_slice::<corridorkey::CorridorKeyConfig>(&bytes);
        }
    }
}

// ---- Regressions (each failed before its fix) ----------------------------------

/// A `.npy` header may declare any shape: its element count must be checked
/// against the data before anything is allocated, without overflowing.
#[test]
fn npy_huge_declared_shapes_are_errors() {
    let e = npz::parse_npy(&npy("<f8", false, "(1099511627776,)", &[0; 8])).unwrap_err();
    assert!(matches!(e, NpyError::ShortData { .. }), "{e}");
    for shape in [
        "(1099511627776, 1099511627776)",
        "(18446744073709551615, 2)",
    ] {
        let e = npz::parse_npy(&npy("<f8", false, shape, &[0; 8])).unwrap_err();
        assert!(matches!(e, NpyError::Shape(_)), "{shape}: {e}");
    }
    // 2^61 elements of 8 bytes: the byte count overflows.
    let e = npz::parse_npy(&npy("<f8", false, "(2305843009213693952,)", &[0; 8])).unwrap_err();
    assert!(matches!(e, NpyError::Shape(_)), "{e}");
}

#[test]
fn npy_odd_dtype_strings_are_errors() {
    for descr in ["", "é", "<é4", "<f0", "<i0", "<u", "<f16", "<i16"] {
        let e = npz::decode_values(descr, &[0; 64], &[2], false).unwrap_err();
        assert!(matches!(e, NpyError::Dtype(_)), "{descr:?}: {e}");
    }
}

/// A zip member may declare any uncompressed size; the reader must not
/// reserve it up front.
#[test]
fn npz_member_with_a_huge_declared_size_is_an_error() {
    let mut bytes = npz_seeds()[0].clone();
    // The central directory's uncompressed size of the first member
    // (local headers keep theirs): all ones, zip64 not declared.
    let cd = bytes
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("a central directory");
    bytes[cd + 24..cd + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    let _ = npz::read_npz_from(Cursor::new(bytes));
}

/// `{"w": _rebuild_tensor_v2(<FloatStorage "0" of 4>, offset, size, stride)}`
/// in a torch.save zip with a 16-byte storage.
fn checkpoint_with_view(offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    use std::io::Write;
    let long = |p: &mut Pkl, v: i64| {
        p.op(&[0x8a, 8]).op(&v.to_le_bytes());
    };
    let mut p = Pkl::default();
    p.op(b"\x80\x02}").text("w");
    p.global("torch._utils", "_rebuild_tensor_v2").op(b"((");
    p.text("storage").global("torch", "FloatStorage");
    p.text("0").text("cpu").int(4).op(b"tQ");
    long(&mut p, offset);
    for list in [size, stride] {
        p.op(b"(");
        for &v in list {
            long(&mut p, v);
        }
        p.op(b"t");
    }
    p.op(b"\x89")
        .global("collections", "OrderedDict")
        .op(b")RtRs");
    let pkl = p.finish();
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&pkl).unwrap();
    zip.start_file("archive/data/0", stored).unwrap();
    zip.write_all(&[0u8; 16]).unwrap();
    zip.finish().unwrap().into_inner()
}

#[test]
fn checkpoint_views_past_their_storage_are_errors() {
    let read =
        |bytes: Vec<u8>| torch_checkpoint::read_state_dict_from(Cursor::new(bytes), "crafted");
    // The well-formed view reads.
    let t = read(checkpoint_with_view(1, &[3], &[1])).unwrap();
    assert_eq!(t["w"].shape(), [3]);
    for (offset, size, stride) in [
        // 2^40 elements, all the same storage element: refused, not gathered.
        (0, &[1i64 << 20, 1 << 20][..], &[0i64, 0][..]),
        // Offsets and strides that overflow.
        (-1, &[1][..], &[1][..]),
        (0, &[2][..], &[i64::MAX][..]),
        (i64::MAX / 4, &[1][..], &[1][..]),
        (0, &[-1, 2][..], &[1, 1][..]),
        // Larger than MLX's i32 dimensions.
        (0, &[1i64 << 32][..], &[0][..]),
    ] {
        let e = read(checkpoint_with_view(offset, size, stride)).unwrap_err();
        assert!(e.to_string().contains("w: "), "{e}");
    }
}

#[test]
fn sparse_matrix_with_a_huge_shape_is_an_error() {
    let mut p = Pkl::default();
    p.op(b"\x80\x02").object("scipy.sparse.csc", "csc_matrix");
    p.text("_shape").op(b"(");
    p.op(&[0x8a, 8])
        .op(&(1i64 << 40).to_le_bytes())
        .int(1)
        .op(b"t");
    p.text("data").f64s(&[1], &[1.0]);
    p.text("indices").ndarray(&[1], "i4", &[0, 0, 0, 0]);
    p.text("indptr")
        .ndarray(&[2], "i4", &[0, 0, 0, 0, 1, 0, 0, 0]);
    p.end_object();
    let v = pickle::load(&p.finish()).unwrap();
    let e = mano_convert::to_array(&v).unwrap_err();
    assert!(e.to_string().contains("sparse"), "{e}");
}

#[test]
fn an_array_object_that_holds_itself_is_an_error() {
    // A chumpy object memoised, then given a state whose `x` is itself.
    let mut p = Pkl::default();
    p.op(b"\x80\x02")
        .global("copy_reg", "_reconstructor")
        .op(b"(");
    p.global("chumpy.ch", "Ch")
        .global("__builtin__", "object")
        .op(b"NtRq\x00}(");
    p.text("x").op(b"h\x00").end_object();
    let v = pickle::load(&p.finish()).unwrap();
    let e = mano_convert::to_array(&v).unwrap_err();
    assert!(e.to_string().contains("nested"), "{e}");
}

#[test]
fn pickle_dup_of_a_tuple_does_not_copy_it() {
    // `()`, then 48 times DUP and TUPLE2: 2^48 leaves if DUP copied.
    let mut p = vec![0x80, 2, b')'];
    for _ in 0..48 {
        p.extend_from_slice(&[b'2', 0x86]);
    }
    p.push(b'.');
    let v = pickle::load(&p).unwrap();
    assert_eq!(v.items().unwrap().len(), 2);
}

#[test]
fn deeply_nested_pickles_load_and_drop_on_a_small_stack() {
    // One byte per level: TUPLE1 a million times, dropped on a 256 KiB stack;
    // and a chain of `_reconstruct` calls that `class_name` follows.
    let mut deep = vec![0x80, 2, b')'];
    deep.extend(std::iter::repeat_n(0x85u8, 1 << 20));
    deep.push(b'.');
    let mut chain = Pkl::default();
    chain
        .op(b"\x80\x02")
        .global("numpy", "ndarray")
        .op(b"q\x00")
        .global("copy_reg", "_reconstruct")
        .op(b"q\x01\x30h\x00");
    for _ in 0..200_000 {
        chain.op(b"q\x02\x30h\x01h\x02\x85R");
    }
    let chain = chain.finish();
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let v = pickle::load(&deep).unwrap();
            assert_eq!(v.items().unwrap().len(), 1);
            drop(v);
            let v = pickle::load(&chain).unwrap();
            assert_eq!(v.class_name().unwrap().1, "ndarray");
            let e = mano_convert::to_array(&v).unwrap_err();
            assert!(e.to_string().contains("state"), "{e}");
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Found by the `safetensors` fuzz target: a header that is not valid JSON
/// with `%6` in it. MLX's C API passes its exception messages to printf as
/// the format (mlx-c `mlx_error(e.what())`), so the parse error quoting
/// the file crashed in vsnprintf. The header is now checked before MLX
/// reads the file.
#[test]
fn a_safetensors_header_with_printf_directives_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut header = br#"{"a.weight":{"dtype":"F%6"#.to_vec();
    header.extend([0xff; 48]);
    for (i, bytes) in [
        safetensors_bytes(std::str::from_utf8(&header[..24]).unwrap(), &[]),
        {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend(&header);
            b
        },
        safetensors_bytes(
            r#"{"%s%s%s%n":{"dtype":"F%s%s","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        safetensors_bytes(
            r#"{"%s%s%s%n":{"dtype":"F32","shape":[2],"data_offsets":[0,9]}}"#,
            &[0; 9],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("{i}.safetensors"));
        std::fs::write(&path, bytes).unwrap();
        let Err(e) = Weights::from_file(&path) else {
            panic!("file {i} loaded");
        };
        assert!(e.to_string().contains("cannot read weights"), "{e}");
    }
}
