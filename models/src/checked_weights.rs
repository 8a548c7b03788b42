//! Weights resolved by name, with every key and shape checked at load time.
//!
//! A model constructor walks its module tree with [`Weights::pp`] and asks for
//! each tensor with the shape its config implies. Problems are collected, not
//! returned one by one, so that a bad file is reported whole: every missing,
//! unexpected and mis-shaped key, by name, in one error.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mlx_rs::{Array, Dtype};

/// Metadata key that marks a file as random weights made by `posed weights synth`
/// or by tests, never by a real checkpoint.
pub const SYNTHETIC_METADATA_KEY: &str = "posed.synthetic";

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("cannot read weights {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("weights {source_name} do not match the model config:\n{report}")]
    Layout {
        source_name: String,
        report: LayoutReport,
    },
}

/// Everything wrong with a weight file, as one readable list.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LayoutReport {
    pub missing: Vec<(String, Vec<i32>)>,
    pub unexpected: Vec<String>,
    pub mis_shaped: Vec<(String, Vec<i32>, Vec<i32>)>,
    pub wrong_dtype: Vec<(String, String, String)>,
}

impl LayoutReport {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mis_shaped.is_empty()
            && self.wrong_dtype.is_empty()
    }
}

impl fmt::Display for LayoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 20;
        let section = |f: &mut fmt::Formatter<'_>, title: &str, lines: Vec<String>| {
            if lines.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {} {title}:", lines.len())?;
            for l in lines.iter().take(SHOWN) {
                writeln!(f, "    {l}")?;
            }
            if lines.len() > SHOWN {
                writeln!(f, "    ... and {} more", lines.len() - SHOWN)?;
            }
            Ok(())
        };
        section(
            f,
            "missing",
            self.missing
                .iter()
                .map(|(k, s)| format!("{k} {s:?}"))
                .collect(),
        )?;
        section(
            f,
            "mis-shaped",
            self.mis_shaped
                .iter()
                .map(|(k, want, got)| format!("{k}: expected {want:?}, file has {got:?}"))
                .collect(),
        )?;
        section(
            f,
            "of the wrong dtype",
            self.wrong_dtype
                .iter()
                .map(|(k, want, got)| format!("{k}: expected {want}, file has {got}"))
                .collect(),
        )?;
        section(f, "unexpected", self.unexpected.clone())
    }
}

struct Store {
    name: String,
    tensors: HashMap<String, Array>,
    metadata: HashMap<String, String>,
    used: RefCell<BTreeSet<String>>,
    optional: RefCell<BTreeSet<String>>,
    report: RefCell<LayoutReport>,
    float_dtype: Option<Dtype>,
}

/// A view of a weight file under a key prefix.
#[derive(Clone)]
pub struct Weights {
    store: Rc<Store>,
    prefix: String,
    /// Float type this view casts to (overrides the file-wide policy).
    cast: Option<Dtype>,
}

impl Weights {
    /// Reads a safetensors file (MLX maps it lazily; data is read on first use).
    ///
    /// The tensors load on the default device's stream. mlx-rs would load
    /// them on the CPU stream, and MLX's CUDA backend gives every array made
    /// there managed (unified) memory: the GPU would then read all weights
    /// through page migration. Loaded on the GPU stream they land in plain
    /// device memory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(WeightError::Read {
                path: path.into(),
                reason: "no such file".into(),
            });
        }
        check_header(path).map_err(|reason| WeightError::Read {
            path: path.into(),
            reason,
        })?;
        let (tensors, metadata) = mlx_rs::with_stream(&mlx_rs::Stream::new(), || {
            Array::load_safetensors_with_metadata(path)
        })
        .map_err(|e| WeightError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(Self::from_tensors(
            path.display().to_string(),
            tensors,
            metadata,
        ))
    }

    pub fn from_tensors(
        name: impl Into<String>,
        tensors: HashMap<String, Array>,
        metadata: HashMap<String, String>,
    ) -> Self {
        Weights {
            store: Rc::new(Store {
                name: name.into(),
                tensors,
                metadata,
                used: RefCell::default(),
                optional: RefCell::default(),
                report: RefCell::default(),
                float_dtype: None,
            }),
            prefix: String::new(),
            cast: None,
        }
    }

    /// This view with every floating-point tensor taken in `dtype` (one
    /// sub-network of a file in another precision).
    pub fn cast_to(&self, dtype: Dtype) -> Weights {
        Weights {
            cast: Some(dtype),
            ..self.clone()
        }
    }

    /// Cast every floating-point tensor to `dtype` as it is taken (for
    /// running a float32 file in bf16 or fp16). Call before any `get`.
    pub fn with_float_dtype(self, dtype: Dtype) -> Self {
        let store = Rc::try_unwrap(self.store)
            .ok()
            .expect("with_float_dtype must be called before the weights are shared");
        Weights {
            store: Rc::new(Store {
                float_dtype: Some(dtype),
                ..store
            }),
            prefix: self.prefix,
            cast: self.cast,
        }
    }

    pub fn source_name(&self) -> &str {
        &self.store.name
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.store.metadata
    }

    /// Whether the file says it holds random weights (see [`SYNTHETIC_METADATA_KEY`]).
    pub fn is_synthetic(&self) -> bool {
        self.store
            .metadata
            .get(SYNTHETIC_METADATA_KEY)
            .is_some_and(|v| v == "true")
    }

    /// The view one level down: `w.pp("blocks").pp(3)` reads `blocks.3.*`.
    pub fn pp(&self, name: impl fmt::Display) -> Weights {
        Weights {
            store: self.store.clone(),
            prefix: self.key(&name.to_string()),
            cast: self.cast,
        }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.tensors.contains_key(&self.key(name))
    }

    /// The tensor `name` with exactly `shape`. On a problem it is recorded and
    /// zeros of `shape` come back, so loading goes on and reports everything.
    pub fn get(&self, name: &str, shape: &[i32]) -> Array {
        self.take(name, shape, None)
    }

    /// Like [`get`](Self::get) for a tensor stored in an exact dtype (packed
    /// quantized words, index tables), which the float policy leaves alone.
    pub fn get_exact(&self, name: &str, shape: &[i32], dtype: Dtype) -> Array {
        self.take(name, shape, Some(dtype))
    }

    /// A tensor the published layout may or may not carry.
    pub fn get_optional(&self, name: &str, shape: &[i32]) -> Option<Array> {
        let key = self.key(name);
        self.store.optional.borrow_mut().insert(key.clone());
        self.store
            .tensors
            .contains_key(&key)
            .then(|| self.get(name, shape))
    }

    /// The shape stored for `name`, if any (for layouts whose shapes encode a
    /// choice, like the group size of a quantized layer).
    pub fn shape_of(&self, name: &str) -> Option<Vec<i32>> {
        self.store
            .tensors
            .get(&self.key(name))
            .map(|a| a.shape().to_vec())
    }

    fn take(&self, name: &str, shape: &[i32], exact: Option<Dtype>) -> Array {
        let key = self.key(name);
        self.store.used.borrow_mut().insert(key.clone());
        let placeholder = || {
            mlx_rs::ops::zeros_dtype(shape, exact.unwrap_or(Dtype::Float32))
                .expect("zeros of a valid shape")
        };
        let Some(tensor) = self.store.tensors.get(&key) else {
            self.store
                .report
                .borrow_mut()
                .missing
                .push((key, shape.to_vec()));
            return placeholder();
        };
        if tensor.shape() != shape {
            self.store.report.borrow_mut().mis_shaped.push((
                key,
                shape.to_vec(),
                tensor.shape().to_vec(),
            ));
            return placeholder();
        }
        let dtype = tensor.dtype();
        match exact {
            Some(want) if want != dtype => {
                self.store.report.borrow_mut().wrong_dtype.push((
                    key,
                    format!("{want:?}"),
                    format!("{dtype:?}"),
                ));
                placeholder()
            }
            Some(_) => tensor.clone(),
            None if !is_float(dtype) => {
                self.store.report.borrow_mut().wrong_dtype.push((
                    key,
                    "a float type".into(),
                    format!("{dtype:?}"),
                ));
                placeholder()
            }
            None => match self.cast.or(self.store.float_dtype) {
                Some(want) if want != dtype => tensor.as_dtype(want).expect("float cast"),
                _ => tensor.clone(),
            },
        }
    }

    /// Ends loading: every tensor must have been asked for, and every request
    /// answered. Returns the collected problems as one error.
    pub fn finish(&self) -> Result<(), WeightError> {
        let used = self.store.used.borrow();
        let mut report = self.store.report.borrow().clone();
        report.unexpected = self
            .store
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        report.unexpected.sort();
        report.missing.sort();
        if report.is_empty() {
            Ok(())
        } else {
            Err(WeightError::Layout {
                source_name: self.store.name.clone(),
                report,
            })
        }
    }
}

/// Checks a safetensors file's header before MLX reads the file: the JSON,
/// every dtype, and that each tensor's shape fills exactly its byte range
/// inside the data. MLX's C API hands its exception messages to printf as
/// the format string, so an error quoting the file (a `%` in a dtype or a
/// name) is undefined behaviour there; MLX gets only files it will accept.
fn check_header(path: &Path) -> Result<(), String> {
    use std::io::Read;
    const MAX_HEADER: u64 = 100_000_000;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "shorter than a safetensors header".to_string())?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER || n > file_len - 8 {
        return Err(format!(
            "header of {n} bytes does not fit the file of {file_len}"
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| format!("bad safetensors header: {e}"))?;
    let data_len = file_len - 8 - n;
    for (name, info) in metadata.tensors() {
        let (start, end) = info.data_offsets;
        let bits = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize() as u128, |acc, &d| {
                acc.checked_mul(d as u128)
            });
        let fits =
            start <= end && end as u64 <= data_len && bits == Some(8 * (end - start) as u128);
        if !fits {
            return Err(format!(
                "tensor {name:?} ({:?} {:?}) does not fill its bytes {start}..{end} of {data_len}",
                info.dtype, info.shape
            ));
        }
    }
    Ok(())
}

fn is_float(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16 | Dtype::Float64
    )
}
