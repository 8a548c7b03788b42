//! The ultralytics blocks only YOLOv8 uses: the C2f CSP stage and SPPF.

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

use crate::checked_weights::Weights;
use crate::nn::{max_pool_same, ConvBnSilu, Result};

pub struct Bottleneck {
    cv1: ConvBnSilu,
    cv2: ConvBnSilu,
    residual: bool,
}

impl Bottleneck {
    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.cv2.forward(&self.cv1.forward(x)?)?;
        if self.residual {
            x.add(&y)
        } else {
            Ok(y)
        }
    }
}

/// CSP bottleneck with two convolutions: split, run the bottlenecks on the
/// second half keeping every intermediate, concatenate, fuse.
pub struct C2f {
    cv1: ConvBnSilu,
    cv2: ConvBnSilu,
    m: Vec<Bottleneck>,
    hidden: i32,
}

impl C2f {
    pub fn new(
        w: &Weights,
        c_in: i32,
        c_out: i32,
        n: i32,
        shortcut: bool,
        eps: f32,
    ) -> Result<Self> {
        let c = c_out / 2;
        let m = (0..n)
            .map(|i| {
                let wm = w.pp("m").pp(i);
                Ok(Bottleneck {
                    cv1: ConvBnSilu::new(&wm.pp("cv1"), c, c, 3, 1, eps)?,
                    cv2: ConvBnSilu::new(&wm.pp("cv2"), c, c, 3, 1, eps)?,
                    residual: shortcut,
                })
            })
            .collect::<Result<_>>()?;
        Ok(C2f {
            cv1: ConvBnSilu::new(&w.pp("cv1"), c_in, 2 * c, 1, 1, eps)?,
            cv2: ConvBnSilu::new(&w.pp("cv2"), (2 + n) * c, c_out, 1, 1, eps)?,
            m,
            hidden: c,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let y = self.cv1.forward(x)?;
        let mut parts = vec![
            y.index((.., .., .., ..self.hidden)),
            y.index((.., .., .., self.hidden..)),
        ];
        for b in &self.m {
            let next = b.forward(parts.last().expect("two halves"))?;
            parts.push(next);
        }
        self.cv2.forward(&ops::concatenate(&parts, -1)?)
    }
}

/// Spatial pyramid pooling, fast: three chained 5×5 max pools.
pub struct Sppf {
    cv1: ConvBnSilu,
    cv2: ConvBnSilu,
}

impl Sppf {
    pub fn new(w: &Weights, c_in: i32, c_out: i32, eps: f32) -> Result<Self> {
        let c = c_in / 2;
        Ok(Sppf {
            cv1: ConvBnSilu::new(&w.pp("cv1"), c_in, c, 1, 1, eps)?,
            cv2: ConvBnSilu::new(&w.pp("cv2"), 4 * c, c_out, 1, 1, eps)?,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        let x = self.cv1.forward(x)?;
        let y1 = max_pool_same(&x, 5)?;
        let y2 = max_pool_same(&y1, 5)?;
        let y3 = max_pool_same(&y2, 5)?;
        self.cv2.forward(&ops::concatenate(&[x, y1, y2, y3], -1)?)
    }
}
