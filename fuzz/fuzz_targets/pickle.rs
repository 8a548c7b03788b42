//! `posed_models::pickle::load` on any bytes, then what the callers do with
//! a loaded value: class names, items, dict lookups, array conversion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed_models::{mano_convert, pickle};

fuzz_target!(|data: &[u8]| {
    let Ok(v) = pickle::load(data) else { return };
    let _ = v.class_name();
    let _ = v.as_text();
    for item in v.items().unwrap_or_default().iter().take(64) {
        let _ = item.class_name();
        let _ = mano_convert::to_array(item);
    }
    for key in ["state_dict", "x", "v_template", "shapedirs", "J_regressor"] {
        if let Some(found) = v.get(key) {
            let _ = mano_convert::to_array(&found);
        }
    }
    let _ = mano_convert::to_array(&v);
});
