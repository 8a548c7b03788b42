//! Random weights in a published layout, from a key/shape manifest: for
//! tests, demos and benchmarks on machines without the real downloads.
//! Everything made here is marked synthetic in the file metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use mlx_rs::{ops, Array, Dtype};
use serde::Deserialize;

use crate::checked_weights::{WeightError, Weights, SYNTHETIC_METADATA_KEY};
use crate::model_files::{read_json, JsonFileError};
use crate::nn::Result;

/// One tensor of a manifest (`*_keys.json`: name → {shape, dtype}).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TensorSpec {
    pub shape: Vec<i32>,
    pub dtype: String,
}

pub type Manifest = BTreeMap<String, TensorSpec>;

pub fn read_manifest(path: &Path) -> std::result::Result<Manifest, JsonFileError> {
    read_json(path)
}

/// Seeded random tensors for every manifest entry. Values are chosen so a
/// forward pass stays finite and non-trivial: small weights (N(0, 0.02)),
/// unit-ish norm scales, positive variances, ImageNet normalisation
/// constants, and the mean pose of an open right hand (identity rotations,
/// zero shape, camera scale 4). WiLoR's camera heads are zero, so its
/// camera is that initial one: a synthetic hand sits centred in its crop
/// at the size a trained model gives it (random heads threw it hundreds of
/// pixels off, where no tracker could follow it from frame to frame).
pub fn random_tensors(manifest: &Manifest, seed: u64) -> Result<HashMap<String, Array>> {
    let mut out = HashMap::new();
    let mut rng = SplitMix64(seed);
    for (name, spec) in manifest {
        let shape = spec.shape.as_slice();
        let n: i32 = shape.iter().product();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let tensor = match (name.as_str(), leaf) {
            ("IMAGE_MEAN", _) => Array::from_slice(&[0.485f32, 0.456, 0.406], shape),
            ("IMAGE_STD", _) => Array::from_slice(&[0.229f32, 0.224, 0.225], shape),
            (_, "init_hand_pose") => {
                let pose: Vec<f32> = (0..n)
                    .map(|i| [1.0, 0.0, 0.0, 0.0, 1.0, 0.0][(i % 6) as usize])
                    .collect();
                Array::from_slice(&pose, shape)
            }
            (_, "init_betas") => ops::zeros::<f32>(shape)?,
            (_, "init_cam") => {
                let cam: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 4.0 } else { 0.0 }).collect();
                Array::from_slice(&cam, shape)
            }
            _ if name.contains("deccam.") || name.contains("dec_cam.") => ops::zeros::<f32>(shape)?,
            (_, "running_var") => rng.uniform(shape, 0.5, 1.5),
            (_, "running_mean") => rng.centred(shape, 0.1),
            // Sapiens2's RoPE periods, 100^(j/n): random ones would be noise.
            (_, "periods") => {
                let v: Vec<f32> = (0..n).map(|j| 100f32.powf(j as f32 / n as f32)).collect();
                Array::from_slice(&v, shape)
            }
            (_, "stride") => Array::from_slice(&[8.0f32, 16.0, 32.0][..n as usize], shape),
            _ if name.contains("norm") || name.contains(".bn") => {
                if leaf == "weight" {
                    rng.uniform(shape, 0.8, 1.2)
                } else {
                    rng.centred(shape, 0.05)
                }
            }
            _ => rng.centred(shape, 0.02),
        };
        let tensor = match spec.dtype.as_str() {
            "float16" => tensor.as_dtype(Dtype::Float16)?,
            "bfloat16" => tensor.as_dtype(Dtype::Bfloat16)?,
            _ => tensor,
        };
        out.insert(name.clone(), tensor);
    }
    Ok(out)
}

/// A small, fast, seeded generator: MLX's counter-based RNG is exact but
/// slow on the CPU (tens of seconds for the 639 M values of WiLoR).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_unit(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    fn uniform(&mut self, shape: &[i32], lo: f32, hi: f32) -> Array {
        let n: i32 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * self.next_unit()).collect();
        Array::from_slice(&v, shape)
    }

    /// Uniform with mean 0 and standard deviation `std`.
    fn centred(&mut self, shape: &[i32], std: f32) -> Array {
        let a = std * 3f32.sqrt();
        self.uniform(shape, -a, a)
    }
}

/// Replaces every 2-D `<prefix>.weight` that `select` accepts by MLX's 4-bit
/// affine quantization with group size `group_size`: `<prefix>.weight`
/// (uint32, 8 values per word), `<prefix>.scales` and `<prefix>.biases`
/// (float32), which is how the published int4 file lays out its Linears.
pub fn quantize_linears(
    tensors: &mut HashMap<String, Array>,
    group_size: i32,
    select: impl Fn(&str) -> bool,
) -> Result<usize> {
    let names: Vec<String> = tensors
        .iter()
        .filter(|(k, v)| {
            k.ends_with(".weight")
                && v.ndim() == 2
                && v.dim(1) % group_size == 0
                && select(k.trim_end_matches(".weight"))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for name in &names {
        let prefix = name.trim_end_matches(".weight");
        let (packed, scales, biases) = ops::quantize(&tensors[name], group_size, 4)?;
        tensors.insert(name.clone(), packed);
        tensors.insert(format!("{prefix}.scales"), scales);
        tensors.insert(format!("{prefix}.biases"), biases);
    }
    Ok(names.len())
}

/// Metadata that marks a file as synthetic.
pub fn synthetic_metadata(what: &str, seed: u64) -> HashMap<String, String> {
    HashMap::from([
        (SYNTHETIC_METADATA_KEY.to_owned(), "true".to_owned()),
        ("posed.synthetic.of".to_owned(), what.to_owned()),
        ("posed.synthetic.seed".to_owned(), seed.to_string()),
    ])
}

/// The tensors a model's loader asks for, from its config alone: build the
/// model against an empty file and read the "missing" list. This is the
/// layout `Weights::finish` checks, so synthetic files always load.
pub fn layout_of(build: impl FnOnce(&Weights) -> Result<()>) -> Result<Manifest> {
    let w = Weights::from_tensors("layout", HashMap::new(), HashMap::new());
    build(&w)?;
    let mut out = Manifest::new();
    if let Err(WeightError::Layout { report, .. }) = w.finish() {
        for (name, shape) in report.missing {
            out.insert(
                name,
                TensorSpec {
                    shape,
                    dtype: "float32".into(),
                },
            );
        }
    }
    Ok(out)
}

/// The detector's and WiLoR's layouts for these configs.
pub fn hand_layouts(
    detector: &crate::hand_detector::DetectorConfig,
    wilor: &crate::wilor::WilorConfig,
) -> Result<(Manifest, Manifest)> {
    let d = layout_of(|w| crate::hand_detector::HandDetector::new(detector.clone(), w).map(drop))?;
    let mano = crate::mano::Mano::from_arrays("synthetic", &npy_map(synthetic_mano(0)))
        .expect("the synthetic MANO is well formed");
    let p = layout_of(|w| crate::wilor::Wilor::new(wilor.clone(), w, mano).map(drop))?;
    Ok((d, p))
}

/// A MANO-shaped hand model with random geometry, for machines without the
/// real (separately licensed) MANO: the real kinematic tree, fingertip and
/// joint order, and key `posed_synthetic` so loaders can say what it is.
pub fn synthetic_mano(seed: u64) -> crate::mano_convert::Arrays {
    use crate::mano_convert::{FINGERTIP_VERTICES, MANO_PARENTS, OPENPOSE_JOINT_MAP};
    use crate::npz::NpyData;
    let (v, b, p, j) = (778usize, 10usize, 135usize, 16usize);
    let mut rng = SplitMix64(seed ^ 0x4d41_4e4f);
    let mut vals = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * rng.next_unit()).collect()
    };
    let v_template = vals(v * 3, -0.05, 0.05);
    let shapedirs = vals(v * 3 * b, -1e-3, 1e-3);
    let posedirs = vals(p * v * 3, -1e-3, 1e-3);
    // Each joint is the mean of 8 vertices; each vertex follows one joint.
    let mut j_regressor = vec![0f32; j * v];
    for joint in 0..j {
        for k in 0..8 {
            j_regressor[joint * v + (joint * 48 + k * 5) % v] = 0.125;
        }
    }
    let lbs_weights: Vec<f32> = (0..v * j)
        .map(|i| if i % j == (i / j) % j { 1.0 } else { 0.0 })
        .collect();
    let faces: Vec<i32> = (0..1538 * 3)
        .map(|i| ((i / 3 + i % 3) % v) as i32)
        .collect();
    vec![
        ("v_template", vec![v, 3], NpyData::F32(v_template)),
        ("shapedirs", vec![v, 3, b], NpyData::F32(shapedirs)),
        ("posedirs", vec![p, v * 3], NpyData::F32(posedirs)),
        ("J_regressor", vec![j, v], NpyData::F32(j_regressor)),
        ("parents", vec![j], NpyData::I32(MANO_PARENTS.to_vec())),
        ("lbs_weights", vec![v, j], NpyData::F32(lbs_weights)),
        (
            "extra_joints_idxs",
            vec![5],
            NpyData::I32(FINGERTIP_VERTICES.to_vec()),
        ),
        (
            "joint_map",
            vec![21],
            NpyData::I32(OPENPOSE_JOINT_MAP.to_vec()),
        ),
        ("faces", vec![1538, 3], NpyData::I32(faces)),
        ("posed_synthetic", vec![1], NpyData::I32(vec![1])),
    ]
}

/// The arrays as the npz reader would return them.
pub fn npy_map(arrays: crate::mano_convert::Arrays) -> HashMap<String, crate::npz::NpyArray> {
    arrays
        .into_iter()
        .map(|(name, shape, data)| {
            let values = match data {
                crate::npz::NpyData::F32(v) => v.into_iter().map(f64::from).collect(),
                crate::npz::NpyData::I32(v) => v.into_iter().map(f64::from).collect(),
            };
            (name.to_owned(), crate::npz::NpyArray { shape, values })
        })
        .collect()
}

/// Linears that the published int4 file quantizes: the 128 in the blocks.
pub fn is_int4_layer(prefix: &str) -> bool {
    prefix.starts_with("backbone.blocks.")
}
