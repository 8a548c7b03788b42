//! WiLoR's weak-perspective crop camera → a perspective camera for the whole
//! image, and projection of 3-D points with it (WiLoR-mini's conventions).

/// A pinhole camera for the full image, in pixels of the image: focal
/// lengths `fx`, `fy` and principal point (`cx`, `cy`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intrinsics {
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
}

impl Intrinsics {
    /// WiLoR's stand-in when the camera is unknown: its focal length at the
    /// crop (5000 px at 256 px) scaled to the image's longer side, square
    /// pixels, the principal point at the image centre. Depths it gives are
    /// relative, not metric.
    pub fn pseudo(crop_focal: f32, crop_size: f32, width: f32, height: f32) -> Intrinsics {
        let f = crop_focal / crop_size * width.max(height);
        Intrinsics {
            fx: f,
            fy: f,
            cx: width / 2.0,
            cy: height / 2.0,
        }
    }
}

/// The longest focal length accepted, in multiples of the image's longer side.
pub const MAX_FOCAL_PER_SIDE: f32 = 1000.0;

/// Intrinsics from outside that cannot describe a camera for the image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidIntrinsics {
    #[error("is not finite: {0:?}")]
    NotFinite([f32; 4]),
    #[error("needs positive focal lengths, got fx={fx} fy={fy}")]
    FocalNotPositive { fx: f32, fy: f32 },
    #[error("focal lengths fx={fx} fy={fy} are not from 1 to {max} px (1000 times the image's longer side)")]
    FocalOutOfRange { fx: f32, fy: f32, max: f32 },
    #[error("principal point ({cx}, {cy}) lies outside the {width}x{height} image")]
    PrincipalPointOutside {
        cx: f32,
        cy: f32,
        width: usize,
        height: usize,
    },
}

impl Intrinsics {
    /// Intrinsics from outside (a client, a config): positive finite focal
    /// lengths, the principal point inside the `width × height` image.
    pub fn checked(
        fx: f32,
        fy: f32,
        cx: f32,
        cy: f32,
        width: usize,
        height: usize,
    ) -> Result<Intrinsics, InvalidIntrinsics> {
        let v = [fx, fy, cx, cy];
        if v.iter().any(|x| !x.is_finite()) {
            return Err(InvalidIntrinsics::NotFinite(v));
        }
        if fx <= 0.0 || fy <= 0.0 {
            return Err(InvalidIntrinsics::FocalNotPositive { fx, fy });
        }
        let (w, h) = (width as f32, height as f32);
        // The pseudo camera's focal is ~20 times the longer side; 1000
        // times is a field of view of under a tenth of a degree.
        let max = MAX_FOCAL_PER_SIDE * w.max(h);
        if !(1.0..=max).contains(&fx) || !(1.0..=max).contains(&fy) {
            return Err(InvalidIntrinsics::FocalOutOfRange { fx, fy, max });
        }
        if !(0.0..=w).contains(&cx) || !(0.0..=h).contains(&cy) {
            return Err(InvalidIntrinsics::PrincipalPointOutside {
                cx,
                cy,
                width,
                height,
            });
        }
        Ok(Intrinsics { fx, fy, cx, cy })
    }
}

/// `cam` = [s, tx, ty], the weak-perspective camera predicted for a crop
/// of side `crop_side` centred at `centre` → translation [tx, ty, tz] of the
/// hand in camera space (metres) for the full image's camera `k`.
///
/// The crop's scale gives depth, tz = 2·fx / (crop_side·s); the crop
/// centre's offset from the principal point, in pixels, becomes a lateral
/// offset at that depth: Δx = (centre.x − cx)·tz/fx and Δy = (centre.y −
/// cy)·tz/fy. With the pseudo camera this is WiLoR-mini's
/// `cam_crop_to_full`.
pub fn cam_crop_to_full(
    cam: [f32; 3],
    centre: [f32; 2],
    crop_side: f32,
    k: &Intrinsics,
) -> [f32; 3] {
    let bs = crop_side * cam[0] + 1e-9;
    [
        2.0 * (centre[0] - k.cx) / bs + cam[1],
        2.0 * (centre[1] - k.cy) / bs * (k.fx / k.fy) + cam[2],
        2.0 * k.fx / bs,
    ]
}

/// Pinhole projection of `point + translation` with camera `k`.
pub fn project(point: [f32; 3], translation: [f32; 3], k: &Intrinsics) -> [f32; 2] {
    let x = point[0] + translation[0];
    let y = point[1] + translation[1];
    let z = point[2] + translation[2];
    [k.fx * x / z + k.cx, k.fy * y / z + k.cy]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 2], b: [f32; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-3 && (a[1] - b[1]).abs() < 1e-3
    }

    #[test]
    fn a_centred_hand_projects_back_onto_its_box_centre() {
        let (w, h) = (640.0, 480.0);
        let k = Intrinsics::pseudo(5000.0, 256.0, w, h);
        assert_eq!(
            k,
            Intrinsics {
                fx: 12500.0,
                fy: 12500.0,
                cx: 320.0,
                cy: 240.0
            }
        );
        let centre = [400.0, 300.0];
        let t = cam_crop_to_full([2.0, 0.0, 0.0], centre, 200.0, &k);
        // The crop's origin lands on the box centre.
        assert!(close(project([0.0, 0.0, 0.0], t, &k), centre));
        // Depth follows the apparent size: twice the crop side, half the depth.
        let t2 = cam_crop_to_full([2.0, 0.0, 0.0], centre, 400.0, &k);
        assert!((t[2] / t2[2] - 2.0).abs() < 1e-5);
    }

    #[test]
    fn a_real_camera_gives_metric_depth_and_keeps_the_hand_on_its_box() {
        // A 640x480 webcam: 600 px focal, off-centre principal point,
        // slightly non-square pixels.
        let k = Intrinsics {
            fx: 600.0,
            fy: 610.0,
            cx: 330.0,
            cy: 236.0,
        };
        let centre = [150.0, 400.0];
        let t = cam_crop_to_full([1.2, 0.01, -0.02], centre, 100.0, &k);
        // tz = 2·fx / (crop_side·s).
        assert!((t[2] - 2.0 * 600.0 / 120.0).abs() < 1e-4);
        // The crop's own offset (tx, ty) moves the hand off the box centre by
        // exactly that much at its depth; without it, it sits on the centre.
        let on_centre = cam_crop_to_full([1.2, 0.0, 0.0], centre, 100.0, &k);
        assert!(close(project([0.0, 0.0, 0.0], on_centre, &k), centre));
        let p = project([0.0, 0.0, 0.0], t, &k);
        assert!(
            close(
                p,
                [
                    centre[0] + 0.01 * 600.0 / t[2],
                    centre[1] - 0.02 * 610.0 / t[2]
                ]
            ),
            "{p:?}"
        );
    }
}
