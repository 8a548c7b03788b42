//! PyTorch `.pth` checkpoints (the zip format of `torch.save` since 1.6):
//! a pickled object tree in `<archive>/data.pkl` whose tensors point, by
//! persistent id, at raw storages in `<archive>/data/<key>`. Read without
//! running any pickled code: tensors are rebuilt from their storage, offset,
//! size and stride.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use mlx_rs::{Array, Dtype};

use crate::pickle::{self, Value};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CheckpointError {
    pub path: String,
    pub reason: String,
}

/// Why a tensor cannot be rebuilt from its storage.
#[derive(Debug, thiserror::Error)]
enum TensorError {
    #[error("the tensor reaches past its storage")]
    PastStorage,
    #[error("size {size:?} and stride {stride:?} do not match")]
    Layout {
        size: Vec<usize>,
        stride: Vec<usize>,
    },
    #[error("size {0:?} has more elements than its storage holds (broadcast views are not read)")]
    Broadcast(Vec<usize>),
    #[error("size {0:?} has a dimension of 2^31 or more")]
    TooLarge(Vec<usize>),
    #[error("dtype {0:?} is not read")]
    Dtype(Dtype),
    #[error(transparent)]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// The element type of a storage class (`torch.FloatStorage`, ...).
fn storage_dtype(class: &str) -> Option<(Dtype, usize)> {
    Some(match class {
        "FloatStorage" => (Dtype::Float32, 4),
        "HalfStorage" => (Dtype::Float16, 2),
        "BFloat16Storage" => (Dtype::Bfloat16, 2),
        "DoubleStorage" => (Dtype::Float64, 8),
        "LongStorage" => (Dtype::Int64, 8),
        "IntStorage" => (Dtype::Int32, 4),
        "ByteStorage" => (Dtype::Uint8, 1),
        "BoolStorage" => (Dtype::Bool, 1),
        _ => return None,
    })
}

/// Every tensor of the checkpoint's state dict (`obj["state_dict"]` when the
/// file wraps it, as mmdet's do), by name, in its stored dtype; float64
/// becomes float32 (MLX has no f64 on every device).
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, Array>, CheckpointError> {
    let file = std::fs::File::open(path).map_err(|e| CheckpointError {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    read_state_dict_from(file, &path.display().to_string())
}

/// [`read_state_dict`] of the archive `reader` holds; errors name `name`.
pub fn read_state_dict_from(
    reader: impl Read + std::io::Seek,
    name: &str,
) -> Result<HashMap<String, Array>, CheckpointError> {
    let fail = |reason: String| CheckpointError {
        path: name.to_owned(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| fail(format!("not a torch.save zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_owned)
        .ok_or_else(|| fail("no data.pkl in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    let mut read = |name: &str| -> Result<Vec<u8>, CheckpointError> {
        let mut entry = zip
            .by_name(name)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("{name}: {e}")))?;
        Ok(bytes)
    };
    let root = pickle::load(&read(&pkl_name)?).map_err(|e| fail(e.to_string()))?;
    let dict = root.get("state_dict").unwrap_or(root);
    let Value::Dict(items) = &dict else {
        return Err(fail("the checkpoint holds no dict of tensors".into()));
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = HashMap::new();
    for (k, v) in items.borrow().iter() {
        let Some(name) = k.as_text() else { continue };
        let Some(t) = TensorRef::parse(v) else {
            // Non-tensor entries (mmdet keeps none, others keep metadata).
            continue;
        };
        if !storages.contains_key(&t.storage_key) {
            let bytes = read(&format!("{prefix}data/{}", t.storage_key))?;
            storages.insert(t.storage_key.clone(), bytes);
        }
        let array = t
            .build(&storages[&t.storage_key])
            .map_err(|reason| fail(format!("{name}: {reason}")))?;
        out.insert(name, array);
    }
    Ok(out)
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`.
struct TensorRef {
    storage_key: String,
    dtype: Dtype,
    item: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    fn parse(v: &Value) -> Option<Self> {
        let Value::Object(o) = v else { return None };
        let o = o.borrow();
        let (_, callable) = o.callable.class_name()?;
        if callable != "_rebuild_tensor_v2" && callable != "_rebuild_tensor" {
            return None;
        }
        let Value::Persistent(pid) = o.args.first()? else {
            return None;
        };
        // ("storage", <storage class>, key, location, numel)
        let pid = pid.items()?;
        let (_, class) = pid.get(1)?.class_name()?;
        let (dtype, item) = storage_dtype(&class)?;
        let ints = |v: &Value| -> Option<Vec<usize>> {
            v.items()?
                .iter()
                .map(|x| x.as_int().map(|i| i as usize))
                .collect()
        };
        Some(TensorRef {
            storage_key: pid.get(2)?.as_text()?,
            dtype,
            item,
            offset: o.args.get(1)?.as_int()? as usize,
            size: ints(o.args.get(2)?)?,
            stride: ints(o.args.get(3)?)?,
        })
    }

    /// Gathers the elements in row-major order (any strides).
    fn build(&self, storage: &[u8]) -> Result<Array, TensorError> {
        // The pickle may claim any view: check where it reaches, without
        // overflowing, before anything is allocated for it.
        if self.size.len() != self.stride.len() {
            return Err(TensorError::Layout {
                size: self.size.clone(),
                stride: self.stride.clone(),
            });
        }
        if self.size.iter().any(|&d| d > i32::MAX as usize) {
            return Err(TensorError::TooLarge(self.size.clone()));
        }
        let elements = storage.len() / self.item;
        let mut n: usize = 1;
        let mut last = self.offset;
        for (&d, &s) in self.size.iter().zip(&self.stride) {
            n = n.checked_mul(d).ok_or(TensorError::PastStorage)?;
            if d > 0 {
                last = (d - 1)
                    .checked_mul(s)
                    .and_then(|reach| last.checked_add(reach))
                    .ok_or(TensorError::PastStorage)?;
            }
        }
        if n == 0 {
            return Ok(Array::from_slice::<f32>(&[], &self.shape()).as_dtype(self.dtype)?);
        }
        if last >= elements {
            return Err(TensorError::PastStorage);
        }
        if n > elements {
            return Err(TensorError::Broadcast(self.size.clone()));
        }
        let mut bytes = Vec::with_capacity(n * self.item);
        let mut index = vec![0usize; self.size.len()];
        for _ in 0..n {
            let at = self.offset
                + index
                    .iter()
                    .zip(&self.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            let range = at * self.item..(at + 1) * self.item;
            bytes.extend_from_slice(storage.get(range).ok_or(TensorError::PastStorage)?);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.size[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        let shape = self.shape();
        let le = |c: &[u8]| -> [u8; 8] {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            b
        };
        Ok(match self.dtype {
            Dtype::Float32 => {
                let v: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                Array::from_slice(&v, &shape)
            }
            Dtype::Float64 => {
                let v: Vec<f32> = bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(le(c)) as f32)
                    .collect();
                Array::from_slice(&v, &shape)
            }
            Dtype::Float16 => {
                let v: Vec<half::f16> = bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Array::from_slice(&v, &shape)
            }
            Dtype::Bfloat16 => {
                let v: Vec<f32> = bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect();
                Array::from_slice(&v, &shape).as_dtype(Dtype::Bfloat16)?
            }
            Dtype::Int64 => {
                let v: Vec<i64> = bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(le(c)))
                    .collect();
                Array::from_slice(&v, &shape)
            }
            Dtype::Int32 => {
                let v: Vec<i32> = bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                Array::from_slice(&v, &shape)
            }
            Dtype::Uint8 => Array::from_slice(&bytes, &shape),
            Dtype::Bool => {
                let v: Vec<bool> = bytes.iter().map(|&b| b != 0).collect();
                Array::from_slice(&v, &shape)
            }
            other => return Err(TensorError::Dtype(other)),
        })
    }

    /// The size as MLX's dimensions (checked to fit by `build`).
    fn shape(&self) -> Vec<i32> {
        self.size.iter().map(|&d| d as i32).collect()
    }
}

/// Converts an mmdet checkpoint into the safetensors file posed loads:
/// floating tensors as stored, `num_batches_tracked` and other integer
/// bookkeeping dropped.
pub fn convert_mmdet_checkpoint(pth: &Path, out: &Path) -> Result<usize, CheckpointError> {
    let tensors = read_state_dict(pth)?;
    let floats: Vec<(String, Array)> = tensors
        .into_iter()
        .filter(|(k, a)| {
            !k.ends_with("num_batches_tracked")
                && matches!(a.dtype(), Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16)
        })
        .collect();
    let n = floats.len();
    let fail = |reason: String| CheckpointError {
        path: out.display().to_string(),
        reason,
    };
    // MLX picks the format from the extension.
    let tmp = out.with_extension("partial.safetensors");
    Array::save_safetensors(floats.iter().map(|(k, v)| (k.as_str(), v)), None, &tmp)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&tmp, out).map_err(|e| fail(e.to_string()))?;
    Ok(n)
}

/// Writes float32 tensors as a `torch.save` zip checkpoint holding
/// `{"state_dict": OrderedDict(name → tensor)}`, the layout mmdet saves
/// (tensors contiguous, one storage each). For tests and stand-ins of
/// published checkpoints; `torch.load` reads it.
pub fn write_state_dict(path: &Path, tensors: &[(String, Array)]) -> Result<(), CheckpointError> {
    use std::io::Write;
    let fail = |reason: String| CheckpointError {
        path: path.display().to_string(),
        reason,
    };
    let mut p: Vec<u8> = vec![0x80, 2, b'}'];
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let global = |p: &mut Vec<u8>, module: &str, name: &str| {
        p.push(b'c');
        p.extend(format!("{module}\n{name}\n").as_bytes());
    };
    let int = |p: &mut Vec<u8>, v: i64| {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    };
    let ordered_dict = |p: &mut Vec<u8>| {
        global(p, "collections", "OrderedDict");
        p.extend([b')', b'R']);
    };
    text(&mut p, "state_dict");
    ordered_dict(&mut p);
    p.push(b'(');
    let mut storages = Vec::with_capacity(tensors.len());
    for (i, (name, a)) in tensors.iter().enumerate() {
        let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
        let mut strides = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        text(&mut p, name);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        p.push(b'(');
        text(&mut p, "storage");
        global(&mut p, "torch", "FloatStorage");
        text(&mut p, &i.to_string());
        text(&mut p, "cpu");
        int(&mut p, a.size() as i64);
        p.extend([b't', b'Q']);
        int(&mut p, 0);
        for list in [&shape, &strides] {
            p.push(b'(');
            for &v in list.iter() {
                int(&mut p, v);
            }
            p.push(b't');
        }
        p.push(0x89); // False: requires_grad
        ordered_dict(&mut p);
        p.extend([b't', b'R']);
        let values = crate::nn::host_f32(a).map_err(|e| fail(format!("{name}: {e}")))?;
        storages.push(
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    p.extend([b'u', b's', b'.']);

    let file = std::fs::File::create(path).map_err(|e| fail(e.to_string()))?;
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: String, bytes: &[u8]| -> Result<(), CheckpointError> {
        zip.start_file(name, stored)
            .map_err(|e| fail(e.to_string()))?;
        zip.write_all(bytes).map_err(|e| fail(e.to_string()))
    };
    put("archive/data.pkl".into(), &p)?;
    for (i, s) in storages.iter().enumerate() {
        put(format!("archive/data/{i}"), s)?;
    }
    put("archive/version".into(), b"3\n")?;
    zip.finish().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
