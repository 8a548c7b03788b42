//! The MANO converter (`mano_convert::convert`) on any bytes: pickle,
//! NumPy/chumpy/SciPy array reconstruction, layout checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::mano_convert;

fuzz_target!(|data: &[u8]| {
    let _ = mano_convert::convert(data, None);
});
