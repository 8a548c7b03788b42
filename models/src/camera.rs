//! WiLoR's weak-perspective crop camera → a perspective camera for the whole
//! image, and projection of 3-D points with it (WiLoR-mini's conventions).

/// Focal length in pixels of the full image: WiLoR's 5000 px at a 256 px
/// crop, scaled to the image's longer side.
pub fn full_image_focal(crop_focal: f32, crop_size: f32, width: f32, height: f32) -> f32 {
    crop_focal / crop_size * width.max(height)
}

/// `cam` = [s, tx, ty] predicted for a crop of side `crop_side` centred at
/// `centre` → translation [tx, ty, tz] of the hand in camera space (metres)
/// for an image of `width × height` with focal length `focal`.
pub fn cam_crop_to_full(
    cam: [f32; 3],
    centre: [f32; 2],
    crop_side: f32,
    width: f32,
    height: f32,
    focal: f32,
) -> [f32; 3] {
    let bs = crop_side * cam[0] + 1e-9;
    [
        2.0 * (centre[0] - width / 2.0) / bs + cam[1],
        2.0 * (centre[1] - height / 2.0) / bs + cam[2],
        2.0 * focal / bs,
    ]
}

/// Pinhole projection of `point + translation` with the principal point at
/// the image centre.
pub fn project(
    point: [f32; 3],
    translation: [f32; 3],
    focal: f32,
    width: f32,
    height: f32,
) -> [f32; 2] {
    let x = point[0] + translation[0];
    let y = point[1] + translation[1];
    let z = point[2] + translation[2];
    [focal * x / z + width / 2.0, focal * y / z + height / 2.0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_centred_hand_projects_back_onto_its_box_centre() {
        let (w, h) = (640.0, 480.0);
        let focal = full_image_focal(5000.0, 256.0, w, h);
        assert_eq!(focal, 12500.0);
        let centre = [400.0, 300.0];
        let t = cam_crop_to_full([2.0, 0.0, 0.0], centre, 200.0, w, h, focal);
        // The crop's origin lands on the box centre.
        let p = project([0.0, 0.0, 0.0], t, focal, w, h);
        assert!(
            (p[0] - centre[0]).abs() < 1e-3 && (p[1] - centre[1]).abs() < 1e-3,
            "{p:?}"
        );
        // Depth follows the apparent size: twice the crop side, half the depth.
        let t2 = cam_crop_to_full([2.0, 0.0, 0.0], centre, 400.0, w, h, focal);
        assert!((t[2] / t2[2] - 2.0).abs() < 1e-5);
    }
}
