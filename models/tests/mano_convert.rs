//! The MANO pickle converter on a pickle made the way the official
//! `MANO_RIGHT.pkl` is (see `data/make_mano_pickle.py`, which also says how
//! each value is defined): every converted array is checked exactly, and
//! the result loads into the MANO layer.

use std::path::PathBuf;

use posed_models::mano::Mano;
use posed_models::mano_convert::{self, FINGERTIP_VERTICES, OPENPOSE_JOINT_MAP};
use posed_models::npz;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn converts_a_python2_mano_pickle_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mano.npz");
    mano_convert::convert_file(
        &data("mano_right_like.pkl"),
        Some(&data("mano_mean_params_like.npz")),
        &out,
    )
    .unwrap();
    let a = npz::read_npz(&out).unwrap();
    let check = |key: &str, shape: &[usize], expect: &dyn Fn(usize) -> f64| {
        let arr = &a[key];
        assert_eq!(arr.shape, shape, "{key}");
        for (i, &v) in arr.values.iter().enumerate() {
            assert_eq!(v, expect(i), "{key}[{i}]");
        }
    };
    let (v, b, p, j) = (778, 10, 135, 16);
    check("v_template", &[v, 3], &|i| i as f64 / 4096.0);
    check("shapedirs", &[v, 3, b], &|i| i as f64 / 65536.0);
    // posedirs[p][r] = source[r][p] = (r·135 + p)·2^-20 for r over vertex×xyz.
    check("posedirs", &[p, v * 3], &|i| {
        let (pp, r) = (i / (v * 3), i % (v * 3));
        (r * p + pp) as f64 / 1048576.0
    });
    check("J_regressor", &[j, v], &|i| {
        let (joint, vert) = (i / v, i % v);
        let hit = (0..4).any(|k| (joint * 48 + k * 7) % v == vert);
        if hit {
            0.25
        } else {
            0.0
        }
    });
    check("lbs_weights", &[v, j], &|i| (i % 256) as f64 / 256.0);
    check("faces", &[1538, 3], &|i| (i % v) as f64);
    let parents = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14];
    check("parents", &[j], &|i| parents[i] as f64);
    check("extra_joints_idxs", &[5], &|i| FINGERTIP_VERTICES[i] as f64);
    check("joint_map", &[21], &|i| OPENPOSE_JOINT_MAP[i] as f64);
    check("init_hand_pose", &[96], &|i| {
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0][i % 6]
    });
    check("init_betas", &[b], &|i| i as f64 * 0.125);
    check("init_cam", &[3], &|i| [4.0, 0.5, -0.25][i]);
    // Index arrays are int32 and floats float32 in the written file.
    let raw = std::fs::read(&out).unwrap();
    assert!(raw.windows(4).any(|w| w == b"<i4'"));
    assert!(raw.windows(4).any(|w| w == b"<f4'"));

    Mano::from_npz(&out).expect("the converted file loads into the MANO layer");
}

#[test]
fn a_pickle_that_is_not_mano_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pkl");
    // pickle.dumps({'v_template': 1}, protocol=2)
    std::fs::write(&bad, b"\x80\x02}q\x00U\x0av_templateq\x01K\x01s.").unwrap();
    let e = mano_convert::convert_file(&bad, None, &dir.path().join("o.npz")).unwrap_err();
    assert!(e.to_string().contains("`v_template`"), "{e}");
    let e = mano_convert::convert_file(&dir.path().join("absent.pkl"), None, &bad).unwrap_err();
    assert!(e.to_string().contains("absent.pkl"), "{e}");
}
