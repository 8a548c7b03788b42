//! MANO without Python: the official `MANO_RIGHT.pkl` (a Python-2 pickle of
//! NumPy arrays, a chumpy object and a SciPy sparse matrix) converted into
//! the `mano.npz` layout [`crate::mano::Mano`] reads.
//!
//! | npz key | from the pickle |
//! | --- | --- |
//! | v_template (778,3) | `v_template` |
//! | shapedirs (778,3,10) | `shapedirs` (a chumpy `Ch`; its array is `x`) |
//! | posedirs (135,2334) | `posedirs` (778,3,135) → (2334,135) → transposed |
//! | J_regressor (16,778) | `J_regressor` (CSC) made dense |
//! | parents (16,) | `kintree_table[0]`, root set to −1 |
//! | lbs_weights (778,16) | `weights` |
//! | faces (1538,3) | `f` |
//! | extra_joints_idxs, joint_map | the fingertip vertices and OpenPose order WiLoR uses |
//! | init_hand_pose, init_betas, init_cam | `pose`, `shape`, `cam` of `mano_mean_params.npz`, when given |

use std::collections::HashMap;
use std::path::Path;

use crate::npz::{self, NpyArray, NpyData};
use crate::pickle::{self, Value};

/// Fingertip vertices (thumb, index, middle, ring, little) of the right hand.
pub const FINGERTIP_VERTICES: [i32; 5] = [744, 320, 443, 554, 671];
/// MANO's kinematic tree: the parent of each of the 16 joints (root −1).
pub const MANO_PARENTS: [i32; 16] = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14];
/// MANO joints + fingertips in OpenPose hand order.
pub const OPENPOSE_JOINT_MAP: [i32; 21] = [
    0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20,
];

const VERTICES: usize = 778;
const JOINTS: usize = 16;
const POSE_FEATURES: usize = (JOINTS - 1) * 9;
/// How deep [`to_array`] follows objects wrapping arrays (chumpy in chumpy,
/// a sparse matrix's parts); a pickle can make an object hold itself.
const MAX_NESTING: usize = 8;
/// The largest sparse matrix made dense, in elements (MANO's J_regressor
/// has 12,448).
const MAX_DENSE: usize = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pickle(#[from] pickle::PickleError),
    #[error("{path}: {source}")]
    Npz { path: String, source: npz::NpzError },
    #[error("not a MANO model: {0}")]
    Layout(String),
    #[error("not a MANO model: `{key}`: {source}")]
    Field {
        key: String,
        #[source]
        source: PickledArrayError,
    },
}

/// Why a pickled value is not an array [`to_array`] can read.
#[derive(Debug, thiserror::Error)]
pub enum PickledArrayError {
    /// The object is not shaped like the array type it claims to be.
    #[error("{0}")]
    Structure(String),
    #[error(transparent)]
    Npy(#[from] npz::NpyError),
}

impl From<&str> for PickledArrayError {
    fn from(s: &str) -> Self {
        PickledArrayError::Structure(s.into())
    }
}

impl From<String> for PickledArrayError {
    fn from(s: String) -> Self {
        PickledArrayError::Structure(s)
    }
}

pub type Arrays = Vec<(&'static str, Vec<usize>, NpyData)>;

/// Converts `pkl` (plus the mean parameters, when given) and writes `out`.
pub fn convert_file(
    pkl: &Path,
    mean_params: Option<&Path>,
    out: &Path,
) -> Result<(), ConvertError> {
    let bytes = std::fs::read(pkl).map_err(|source| ConvertError::Read {
        path: pkl.display().to_string(),
        source,
    })?;
    let mean = match mean_params {
        Some(p) => Some(npz::read_npz(p).map_err(|source| ConvertError::Npz {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    let arrays = convert(&bytes, mean.as_ref())?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ConvertError::Read {
            path: dir.display().to_string(),
            source,
        })?;
    }
    npz::write_npz(out, &arrays).map_err(|source| ConvertError::Npz {
        path: out.display().to_string(),
        source,
    })
}

/// The `mano.npz` arrays from the bytes of a MANO pickle.
pub fn convert(
    pkl: &[u8],
    mean_params: Option<&HashMap<String, NpyArray>>,
) -> Result<Arrays, ConvertError> {
    let model = pickle::load(pkl)?;
    if !matches!(model, Value::Dict(_)) {
        return Err(ConvertError::Layout(
            "the pickle does not hold a dict".into(),
        ));
    }
    let field = |key: &str, shape: &[usize]| -> Result<NpyArray, ConvertError> {
        let v = model
            .get(key)
            .ok_or_else(|| ConvertError::Layout(format!("no `{key}`")))?;
        let a = to_array(&v).map_err(|source| ConvertError::Field {
            key: key.into(),
            source,
        })?;
        if a.shape != shape {
            return Err(ConvertError::Layout(format!(
                "`{key}` has shape {:?}, expected {shape:?}",
                a.shape
            )));
        }
        Ok(a)
    };
    // The number of shape components is the file's choice (10 in MANO 1.2).
    let betas = model
        .get("shapedirs")
        .and_then(|v| to_array(&v).ok())
        .and_then(|a| a.shape.get(2).copied())
        .unwrap_or(10);
    let v_template = field("v_template", &[VERTICES, 3])?;
    let shapedirs = field("shapedirs", &[VERTICES, 3, betas])?;
    let posedirs = field("posedirs", &[VERTICES, 3, POSE_FEATURES])?;
    let j_regressor = field("J_regressor", &[JOINTS, VERTICES])?;
    let weights = field("weights", &[VERTICES, JOINTS])?;
    let kintree = field("kintree_table", &[2, JOINTS])?;
    let faces = model
        .get("f")
        .ok_or_else(|| ConvertError::Layout("no `f`".into()))
        .and_then(|v| {
            to_array(&v).map_err(|source| ConvertError::Field {
                key: "f".into(),
                source,
            })
        })?;
    if faces.shape.len() != 2 || faces.shape[1] != 3 {
        return Err(ConvertError::Layout(format!(
            "`f` has shape {:?}, expected (faces, 3)",
            faces.shape
        )));
    }

    // (778, 3, 135) → (2334, 135) → (135, 2334): one row per pose feature.
    let rows = VERTICES * 3;
    let mut posedirs_t = vec![0f32; rows * POSE_FEATURES];
    for r in 0..rows {
        for p in 0..POSE_FEATURES {
            posedirs_t[p * rows + r] = posedirs.values[r * POSE_FEATURES + p] as f32;
        }
    }
    let mut parents: Vec<i32> = kintree.values[..JOINTS].iter().map(|&v| v as i32).collect();
    parents[0] = -1;

    let f32s = |a: &NpyArray| NpyData::F32(a.to_f32());
    let mut out: Arrays = vec![
        ("v_template", v_template.shape.clone(), f32s(&v_template)),
        ("shapedirs", shapedirs.shape.clone(), f32s(&shapedirs)),
        (
            "posedirs",
            vec![POSE_FEATURES, rows],
            NpyData::F32(posedirs_t),
        ),
        ("J_regressor", j_regressor.shape.clone(), f32s(&j_regressor)),
        ("parents", vec![JOINTS], NpyData::I32(parents)),
        ("lbs_weights", weights.shape.clone(), f32s(&weights)),
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
        ("faces", faces.shape.clone(), NpyData::I32(faces.to_i32())),
    ];
    if let Some(mean) = mean_params {
        for (src, dst, len) in [
            ("pose", "init_hand_pose", JOINTS * 6),
            ("shape", "init_betas", betas),
            ("cam", "init_cam", 3),
        ] {
            let a = mean.get(src).ok_or_else(|| {
                ConvertError::Layout(format!("the mean parameters have no `{src}`"))
            })?;
            if a.values.len() != len {
                return Err(ConvertError::Layout(format!(
                    "mean `{src}` holds {} values, expected {len}",
                    a.values.len()
                )));
            }
            out.push((dst, vec![len], f32s(a)));
        }
    }
    Ok(out)
}

/// A NumPy array, a chumpy object wrapping one, or a SciPy sparse matrix
/// (made dense), as numbers in C order.
pub fn to_array(v: &Value) -> Result<NpyArray, PickledArrayError> {
    to_array_in(v, 0)
}

fn to_array_in(v: &Value, depth: usize) -> Result<NpyArray, PickledArrayError> {
    if depth > MAX_NESTING {
        return Err(format!("arrays nested deeper than {MAX_NESTING} objects").into());
    }
    let (module, name) = v.class_name().ok_or("not an array")?;
    let Value::Object(obj) = v else {
        return Err(format!("{module}.{name} is not an array").into());
    };
    let obj = obj.borrow();
    let state = obj
        .state
        .clone()
        .ok_or_else(|| format!("{module}.{name} has no state"))?;
    match (module.as_str(), name.as_str()) {
        ("numpy", "ndarray") => ndarray(&state),
        (m, _) if m == "chumpy" || m.starts_with("chumpy.") => to_array_in(
            &state.get("x").ok_or("chumpy object without `x`")?,
            depth + 1,
        ),
        (m, "csc_matrix" | "csr_matrix" | "csc_array" | "csr_array")
            if m.starts_with("scipy.sparse") =>
        {
            sparse_to_dense(&state, name.starts_with("csc"), depth)
        }
        _ => Err(format!("{module}.{name} is not an array type this reader knows").into()),
    }
}

/// `ndarray.__setstate__((version, shape, dtype, is_fortran, raw))`.
fn ndarray(state: &Value) -> Result<NpyArray, PickledArrayError> {
    let mut items = state.items().ok_or("ndarray state is not a tuple")?;
    if items.len() == 5 {
        items.remove(0);
    }
    let [shape, dtype, fortran, raw] =
        <[Value; 4]>::try_from(items).map_err(|_| "ndarray state does not have 4 or 5 items")?;
    let shape: Vec<usize> = shape
        .items()
        .ok_or("ndarray shape is not a tuple")?
        .iter()
        .map(|d| d.as_int().map(|d| d as usize).ok_or("bad dimension"))
        .collect::<Result<_, _>>()?;
    let descr = dtype_descr(&dtype)?;
    let raw = match &raw {
        Value::Bytes(b) => b.to_vec(),
        Value::Str(s) => s.chars().map(|c| c as u32 as u8).collect(),
        _ => return Err("ndarray data is not a byte string (object arrays are not read)".into()),
    };
    let fortran = fortran.as_int().ok_or("bad fortran flag")? != 0;
    let values = npz::decode_values(&descr, &raw, &shape, fortran)?;
    Ok(NpyArray { shape, values })
}

/// `numpy.dtype("f8", ...)` with state `(3, "<", ...)` → `"<f8"`.
fn dtype_descr(dtype: &Value) -> Result<String, PickledArrayError> {
    let Value::Object(o) = dtype else {
        return Err("ndarray dtype is not a numpy.dtype".into());
    };
    let o = o.borrow();
    let code = o
        .args
        .first()
        .and_then(Value::as_text)
        .ok_or("numpy.dtype without a type code")?;
    if code.starts_with(['<', '>', '|', '=']) {
        return Ok(code);
    }
    let endian = o
        .state
        .as_ref()
        .and_then(Value::items)
        .and_then(|s| s.get(1).and_then(Value::as_text))
        .unwrap_or_else(|| "<".into());
    Ok(format!("{endian}{code}"))
}

fn sparse_to_dense(
    state: &Value,
    column_major: bool,
    depth: usize,
) -> Result<NpyArray, PickledArrayError> {
    let shape = state
        .get("_shape")
        .or_else(|| state.get("shape"))
        .and_then(|s| s.items())
        .ok_or("sparse matrix without a shape")?;
    let [rows, cols] = [0, 1].map(|i| shape.get(i).and_then(Value::as_int).unwrap_or(-1));
    if rows < 0 || cols < 0 || shape.len() != 2 {
        return Err("sparse matrix shape is not 2-D".into());
    }
    let (rows, cols) = (rows as usize, cols as usize);
    if rows.checked_mul(cols).is_none_or(|n| n > MAX_DENSE) {
        return Err(format!("sparse matrix of {rows}x{cols} is too large to make dense").into());
    }
    let part = |k: &str| -> Result<Vec<f64>, PickledArrayError> {
        let v = state.get(k).ok_or(format!("sparse matrix without `{k}`"))?;
        to_array_in(&v, depth + 1).map(|a| a.values)
    };
    let (data, indices, indptr) = (part("data")?, part("indices")?, part("indptr")?);
    let (outer, inner) = if column_major {
        (cols, rows)
    } else {
        (rows, cols)
    };
    if indptr.len() != outer + 1 || indices.len() != data.len() {
        return Err("sparse matrix arrays do not agree".into());
    }
    let mut dense = vec![0.0; rows * cols];
    for o in 0..outer {
        let span = indptr[o] as usize..indptr[o + 1] as usize;
        let (Some(idx), Some(vals)) = (indices.get(span.clone()), data.get(span)) else {
            return Err("sparse index pointer out of range".into());
        };
        for (&i, &v) in idx.iter().zip(vals) {
            let i = i as usize;
            if i >= inner {
                return Err("sparse index out of range".into());
            }
            let (r, c) = if column_major { (i, o) } else { (o, i) };
            dense[r * cols + c] += v;
        }
    }
    Ok(NpyArray {
        shape: vec![rows, cols],
        values: dense,
    })
}
