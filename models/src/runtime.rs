//! What MLX runtime this process got: version, default device, backends.

use std::ffi::CStr;

/// The MLX library version that is loaded (from `libmlx`, not from headers).
pub fn mlx_version() -> String {
    // SAFETY: mlx_string is created, filled by mlx_version and freed here.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let rc = mlx_sys::mlx_version(&mut s);
        let out = if rc == 0 {
            CStr::from_ptr(mlx_sys::mlx_string_data(s))
                .to_string_lossy()
                .into_owned()
        } else {
            String::from("unknown")
        };
        mlx_sys::mlx_string_free(s);
        out
    }
}

/// Which compute backends this libmlx was built with and can reach now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backends {
    pub metal: bool,
    pub cuda: bool,
}

pub fn backends() -> Backends {
    let mut metal = false;
    let mut cuda = false;
    // SAFETY: plain out-parameters.
    unsafe {
        if mlx_sys::mlx_metal_is_available(&mut metal) != 0 {
            metal = false;
        }
        if mlx_sys::mlx_cuda_is_available(&mut cuda) != 0 {
            cuda = false;
        }
    }
    Backends { metal, cuda }
}

/// The device MLX runs on unless told otherwise, with whatever the backend
/// reports about it (`device_name`, `architecture`, memory size, ...).
#[derive(Debug, Clone)]
pub struct DeviceReport {
    pub kind: &'static str,
    pub index: i32,
    pub info: Vec<(String, String)>,
}

impl DeviceReport {
    pub fn name(&self) -> Option<&str> {
        self.info
            .iter()
            .find(|(k, _)| k == "device_name")
            .map(|(_, v)| v.as_str())
    }
}

/// Whether MLX's default device (this thread's) is a GPU.
pub fn default_device_is_gpu() -> bool {
    with_default_device(device_is_gpu)
}

pub fn default_device() -> DeviceReport {
    with_default_device(|device| {
        let mut index = 0;
        // SAFETY: `device` is a live handle for the duration of the call.
        unsafe { mlx_sys::mlx_device_get_index(&mut index, device) };
        DeviceReport {
            kind: if device_is_gpu(device) { "gpu" } else { "cpu" },
            index,
            info: device_info(device),
        }
    })
}

/// Runs `f` on a handle to this thread's default device, freed afterwards.
fn with_default_device<T>(f: impl FnOnce(mlx_sys::mlx_device) -> T) -> T {
    // SAFETY: the handle is created and freed here, and `f` cannot keep it.
    unsafe {
        let mut device = mlx_sys::mlx_device_new();
        mlx_sys::mlx_get_default_device(&mut device);
        let out = f(device);
        mlx_sys::mlx_device_free(device);
        out
    }
}

fn device_is_gpu(device: mlx_sys::mlx_device) -> bool {
    let mut kind = mlx_sys::mlx_device_type__MLX_CPU;
    // SAFETY: `device` is a live handle for the duration of the call.
    unsafe { mlx_sys::mlx_device_get_type(&mut kind, device) };
    kind == mlx_sys::mlx_device_type__MLX_GPU
}

fn device_info(device: mlx_sys::mlx_device) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // SAFETY: every mlx_* handle created here is freed here; strings are
    // copied out before their owner is freed.
    unsafe {
        let mut info = mlx_sys::mlx_device_info_new();
        if mlx_sys::mlx_device_info_get(&mut info, device) != 0 {
            mlx_sys::mlx_device_info_free(info);
            return out;
        }
        let mut keys = mlx_sys::mlx_vector_string_new();
        if mlx_sys::mlx_device_info_get_keys(&mut keys, info) == 0 {
            for i in 0..mlx_sys::mlx_vector_string_size(keys) {
                let mut key_ptr: *mut std::os::raw::c_char = std::ptr::null_mut();
                if mlx_sys::mlx_vector_string_get(&mut key_ptr, keys, i) != 0 {
                    continue;
                }
                let key = CStr::from_ptr(key_ptr).to_string_lossy().into_owned();
                let mut is_string = false;
                mlx_sys::mlx_device_info_is_string(&mut is_string, info, key_ptr);
                let value = if is_string {
                    let mut v: *const std::os::raw::c_char = std::ptr::null();
                    mlx_sys::mlx_device_info_get_string(&mut v, info, key_ptr);
                    if v.is_null() {
                        continue;
                    }
                    CStr::from_ptr(v).to_string_lossy().into_owned()
                } else {
                    let mut v: usize = 0;
                    mlx_sys::mlx_device_info_get_size(&mut v, info, key_ptr);
                    v.to_string()
                };
                out.push((key, value));
            }
            mlx_sys::mlx_vector_string_free(keys);
        }
        mlx_sys::mlx_device_info_free(info);
    }
    out
}

/// What [`self_check`] found wrong.
#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("{op}: {source}")]
    Mlx {
        op: &'static str,
        #[source]
        source: mlx_rs::error::Exception,
    },
    #[error("{op} shape {got:?}, expected {want:?}")]
    Shape {
        op: &'static str,
        got: Vec<i32>,
        want: Vec<i32>,
    },
    /// `at`: the element's index, e.g. `1,0`.
    #[error("{op}[{at}] = {got}, expected {want}")]
    Value {
        op: &'static str,
        at: String,
        got: f32,
        want: f32,
    },
}

/// A tiny matmul and NHWC convolution on the default device, compared with
/// the same sums done in plain Rust. Proves that libmlx loaded, that its BLAS
/// and convolution paths run, and that results come back through mlx-rs.
pub fn self_check() -> Result<(), SelfCheckError> {
    use mlx_rs::{ops, Array};

    let fail = |op: &'static str| move |source| SelfCheckError::Mlx { op, source };
    // matmul: (3,4) x (4,2)
    let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    let b: Vec<f32> = (0..8).map(|i| 1.0 - i as f32 * 0.25).collect();
    let c = Array::from_slice(&a, &[3, 4])
        .matmul(Array::from_slice(&b, &[4, 2]))
        .map_err(fail("matmul"))?;
    c.eval().map_err(fail("matmul"))?;
    for i in 0..3 {
        for j in 0..2 {
            let want: f32 = (0..4).map(|k| a[i * 4 + k] * b[k * 2 + j]).sum();
            let got = c.as_slice::<f32>()[i * 2 + j];
            if (got - want).abs() > 1e-4 {
                return Err(SelfCheckError::Value {
                    op: "matmul",
                    at: format!("{i},{j}"),
                    got,
                    want,
                });
            }
        }
    }
    // conv2d: input (1,4,4,2) NHWC, kernel (3,3,3,2) OHWI, stride 1, padding 1
    let x: Vec<f32> = (0..32).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let w: Vec<f32> = (0..54).map(|i| ((i * 5) % 9) as f32 * 0.1 - 0.4).collect();
    let y = ops::conv2d(
        Array::from_slice(&x, &[1, 4, 4, 2]),
        Array::from_slice(&w, &[3, 3, 3, 2]),
        (1, 1),
        (1, 1),
        None,
        None,
    )
    .map_err(fail("conv2d"))?;
    y.eval().map_err(fail("conv2d"))?;
    if y.shape() != [1, 4, 4, 3] {
        return Err(SelfCheckError::Shape {
            op: "conv2d",
            got: y.shape().to_vec(),
            want: vec![1, 4, 4, 3],
        });
    }
    let ys = y.as_slice::<f32>();
    for oy in 0..4i32 {
        for ox in 0..4i32 {
            for o in 0..3 {
                let mut want = 0.0f32;
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                        if !(0..4).contains(&iy) || !(0..4).contains(&ix) {
                            continue;
                        }
                        for c in 0..2 {
                            want += x[((iy * 4 + ix) * 2 + c) as usize]
                                * w[((o * 3 + ky as usize) * 3 + kx as usize) * 2 + c as usize];
                        }
                    }
                }
                let got = ys[((oy * 4 + ox) * 3) as usize + o];
                if (got - want).abs() > 1e-4 {
                    return Err(SelfCheckError::Value {
                        op: "conv2d",
                        at: format!("{oy},{ox},{o}"),
                        got,
                        want,
                    });
                }
            }
        }
    }
    Ok(())
}

/// MLX's allocator: memory held by arrays, the most it has held since the
/// last reset, and freed buffers it keeps for reuse (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub active: usize,
    pub peak: usize,
    pub cache: usize,
}

pub fn memory_use() -> MemoryUse {
    let (mut active, mut peak, mut cache) = (0, 0, 0);
    // SAFETY: plain out-parameters.
    unsafe {
        mlx_sys::mlx_get_active_memory(&mut active);
        mlx_sys::mlx_get_peak_memory(&mut peak);
        mlx_sys::mlx_get_cache_memory(&mut cache);
    }
    MemoryUse {
        active,
        peak,
        cache,
    }
}

pub fn reset_peak_memory() {
    // SAFETY: no arguments.
    unsafe {
        mlx_sys::mlx_reset_peak_memory();
    }
}

/// Caps the freed buffers MLX keeps for reuse; returns the previous cap.
/// Large frames leave buffers of many sizes behind: uncapped, the cache
/// can hold most of a GPU's memory and the next large allocation fails.
pub fn set_cache_limit(bytes: usize) -> usize {
    let mut previous = 0;
    // SAFETY: plain out-parameter.
    unsafe {
        mlx_sys::mlx_set_cache_limit(&mut previous, bytes);
    }
    previous
}

/// Frees the buffers MLX keeps for reuse.
pub fn clear_cache() {
    // SAFETY: no arguments.
    unsafe {
        mlx_sys::mlx_clear_cache();
    }
}
