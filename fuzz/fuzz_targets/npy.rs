//! `npz::parse_npy` on any bytes: the `.npy` header dict, shapes, dtypes,
//! Fortran order and the data length check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::npz;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = npz::parse_npy(data) {
        let n: usize = a.shape.iter().product();
        assert_eq!(n, a.values.len(), "shape {:?}", a.shape);
    }
});
