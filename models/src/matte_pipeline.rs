//! The matte route's model work: a frame and a coarse alpha hint in,
//! alpha and foreground at the frame's resolution out.
//!
//! Two ways to fit a frame to CorridorKey's fixed square input:
//! - `Resize` (upstream's engine): stretch the frame to `img_size²` with an
//!   antialiased bilinear resize, run once, resize the mattes back. Cost is
//!   fixed whatever the frame size.
//! - `Tiles`: run at the frame's own resolution in overlapping `img_size²`
//!   tiles blended with linear ramps. Sharper edges on large frames; cost
//!   grows with the number of tiles.
//!
//! The hint is an 8-bit plane at the frame's resolution (pushed by the
//! client), the previous frame's alpha at the network's resolution (for
//! streams), or a fallback computed from the frame.

use std::path::{Path, PathBuf};

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array, Dtype};

use crate::checked_weights::Weights;
use crate::corridorkey::{network_input, CorridorKey, CorridorKeyConfig};
use crate::image::RgbImage;
use crate::model_files::{optional_config, required_file, LoadError, ModelFilesError};
use crate::nn::Result;
use crate::resample::resize_bilinear;

/// Where the matte route's files are.
#[derive(Debug, Clone)]
pub struct MatteModelFiles {
    pub config: CorridorKeyConfig,
    /// The published `corridorkey_mlx.safetensors` layout.
    pub weights: PathBuf,
}

pub const MATTE_WEIGHTS: &str = "corridorkey_weights.safetensors";
pub const MATTE_CONFIG: &str = "corridorkey_config.json";

impl MatteModelFiles {
    /// A models folder: the weights, and optionally their config (the
    /// published hiera_base_plus model otherwise, run at `img_size`).
    pub fn from_dir(dir: &Path, img_size: i32) -> std::result::Result<Self, ModelFilesError> {
        let weights = required_file(dir, MATTE_WEIGHTS, "the matte route's CorridorKey weights")?;
        let mut config =
            optional_config(dir, MATTE_CONFIG, || CorridorKeyConfig::base_plus(img_size))?;
        config.img_size = img_size;
        Ok(MatteModelFiles { config, weights })
    }
}

/// How a frame meets the network's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFit {
    /// Stretch to the model size and back.
    Resize,
    /// Native resolution in model-size tiles that overlap this many pixels.
    Tiles { overlap: i32 },
}

/// The hint when the client sends none and there is no previous alpha.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackHint {
    /// Everything may be foreground: the network decides alone.
    Ones,
    /// A soft green-screen key: pixels whose green exceeds both red and
    /// blue are background.
    Chroma,
}

/// Where this frame's hint comes from.
pub enum Hint<'a> {
    /// 8-bit grey at the frame's resolution.
    Plane(&'a [u8]),
    /// A previous alpha, as [`MatteOutput::network_alpha`] returned it.
    Previous(&'a Array),
    Fallback(FallbackHint),
}

/// The network's answer at its own geometry, before the way back.
pub struct MatteOutput {
    /// (1, h, w, 1): what the next frame of a stream can use as its hint.
    pub network_alpha: Array,
    pub network_fg: Array,
}

/// Alpha and foreground at the frame's resolution, 8 bits per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct MatteEstimate {
    pub width: usize,
    pub height: usize,
    /// width × height.
    pub alpha: Vec<u8>,
    /// width × height × 3, straight (not premultiplied) sRGB.
    pub fg: Vec<u8>,
}

pub struct MattePipeline {
    net: CorridorKey,
    pub fit: FrameFit,
    /// Run the refiner in tiles of this size (whole-frame GroupNorm
    /// statistics): bounds its memory at large sizes.
    pub refiner_tile: Option<i32>,
}

impl MattePipeline {
    /// Loads CorridorKey with its decoders and refiner in `head_dtype`
    /// (the encoder is float32); also says whether the file is synthetic.
    pub fn load(
        files: &MatteModelFiles,
        head_dtype: Dtype,
        fit: FrameFit,
    ) -> std::result::Result<(Self, bool), LoadError> {
        let w = Weights::from_file(&files.weights)?;
        let synthetic = w.is_synthetic();
        let net = CorridorKey::with_head_dtype(files.config.clone(), &w, head_dtype)?;
        w.finish()?;
        if let FrameFit::Tiles { overlap } = fit {
            let s = files.config.img_size;
            if !(0..s).contains(&overlap) {
                return Err(LoadError::TileOverlap { overlap, size: s });
            }
        }
        Ok((
            MattePipeline {
                net,
                fit,
                refiner_tile: None,
            },
            synthetic,
        ))
    }

    pub fn config(&self) -> &CorridorKeyConfig {
        self.net.config()
    }

    /// The network on `x` (prepared, resize fit) part by part, each part
    /// evaluated before the next is built; `part` hears each part's name
    /// and milliseconds as it finishes.
    pub fn profile(&self, x: &Array, part: &mut dyn FnMut(&'static str, f64)) -> Result<()> {
        let mut lap = std::time::Instant::now();
        self.net
            .forward_observed(x, self.refiner_tile, &mut |name, a| {
                a.eval()?;
                part(name, lap.elapsed().as_secs_f64() * 1e3);
                lap = std::time::Instant::now();
                Ok(())
            })?;
        Ok(())
    }

    /// The (height, width) the network sees for a `width × height` frame.
    pub fn network_size(&self, width: usize, height: usize) -> (usize, usize) {
        match self.fit {
            FrameFit::Resize => {
                let s = self.config().img_size as usize;
                (s, s)
            }
            FrameFit::Tiles { .. } => (height, width),
        }
    }

    /// MLX: the frame and its hint as the network input, (1, h, w, 4).
    pub fn prepare(&self, img: RgbImage, hint: Hint) -> Result<Array> {
        let (w, h) = (img.width, img.height);
        let (nh, nw) = self.network_size(w, h);
        let rgb = Array::from_slice(img.data, &[1, h as i32, w as i32, 3])
            .as_dtype(Dtype::Float32)?
            .divide(Array::from_f32(255.0))?;
        let rgb = resize_bilinear(&rgb, nh, nw)?;
        let hint = match hint {
            Hint::Plane(grey) => {
                if grey.len() != w * h {
                    return Err(mlx_rs::error::Exception::custom(format!(
                        "the hint has {} samples, the {w}x{h} frame needs {}",
                        grey.len(),
                        w * h
                    )));
                }
                let g = Array::from_slice(grey, &[1, h as i32, w as i32, 1])
                    .as_dtype(Dtype::Float32)?
                    .divide(Array::from_f32(255.0))?;
                resize_bilinear(&g, nh, nw)?
            }
            Hint::Previous(a) => {
                if a.shape() != [1, nh as i32, nw as i32, 1] {
                    return Err(mlx_rs::error::Exception::custom(format!(
                        "the previous alpha is {:?}, this frame needs (1, {nh}, {nw}, 1)",
                        a.shape()
                    )));
                }
                a.clone()
            }
            Hint::Fallback(FallbackHint::Ones) => ops::ones::<f32>(&[1, nh as i32, nw as i32, 1])?,
            Hint::Fallback(FallbackHint::Chroma) => chroma_key(&rgb)?,
        };
        network_input(&rgb, &hint)
    }

    /// MLX: CorridorKey on the prepared input (evaluated).
    pub fn run(&self, x: &Array) -> Result<MatteOutput> {
        let (alpha, fg) = match self.fit {
            FrameFit::Resize => {
                let out = self.net.forward_with(x, self.refiner_tile)?;
                (out.alpha, out.fg)
            }
            FrameFit::Tiles { overlap } => {
                self.net
                    .forward_frame_tiled(x, overlap, self.refiner_tile)?
            }
        };
        alpha.eval()?;
        fg.eval()?;
        Ok(MatteOutput {
            network_alpha: alpha,
            network_fg: fg,
        })
    }

    /// MLX + copy: alpha and foreground resized to `width × height` and
    /// quantised to 8 bits.
    pub fn to_frame(
        &self,
        out: &MatteOutput,
        width: usize,
        height: usize,
    ) -> Result<MatteEstimate> {
        // Each plane on its own: the host copies need contiguous arrays.
        let to_bytes = |x: &Array| -> Result<Array> {
            let x = resize_bilinear(x, height, width)?;
            ops::clip(&x.multiply(Array::from_f32(255.0))?, (0.0f32, 255.0f32))?
                .round(None)?
                .as_dtype(Dtype::Uint8)
        };
        let alpha = to_bytes(&out.network_alpha)?;
        let fg = to_bytes(&out.network_fg)?;
        alpha.eval()?;
        fg.eval()?;
        Ok(MatteEstimate {
            width,
            height,
            alpha: alpha.as_slice::<u8>().to_vec(),
            fg: fg.as_slice::<u8>().to_vec(),
        })
    }

    /// Every stage for `img`.
    pub fn estimate(&self, img: RgbImage, hint: Hint) -> Result<(MatteEstimate, MatteOutput)> {
        let out = self.run(&self.prepare(img, hint)?)?;
        Ok((self.to_frame(&out, img.width, img.height)?, out))
    }
}

/// A soft green-screen key of RGB in [0, 1] (1, h, w, 3): 1 where green
/// does not dominate, falling to 0 as green exceeds max(red, blue) by 0.25.
pub fn chroma_key(rgb: &Array) -> Result<Array> {
    let r = rgb.index((.., .., .., 0..1));
    let g = rgb.index((.., .., .., 1..2));
    let b = rgb.index((.., .., .., 2..3));
    let spill = g.subtract(ops::maximum(&r, &b)?)?;
    ops::clip(
        &Array::from_f32(1.0).subtract(spill.multiply(Array::from_f32(4.0))?)?,
        (0.0f32, 1.0f32),
    )
}
