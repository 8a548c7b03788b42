//! Parity runner of the matte route: CorridorKey.

use std::path::Path;

use super::{input, load_net, read_tensors, FixtureModel, ParityError, Tensors};
use crate::corridorkey::{CorridorKey, CorridorKeyConfig};
use crate::model_files::read_json;

/// The CorridorKey fixture in `dir`: the encoder's features, the heads'
/// and the refiner's logits, alpha and foreground.
pub(super) fn corridorkey(dir: &Path) -> Result<Tensors, ParityError> {
    let cfg: CorridorKeyConfig = read_json(&dir.join("corridorkey_config.json"))?;
    let net = load_net(&dir.join("corridorkey_weights.safetensors"), |w| {
        CorridorKey::new(cfg, w)
    })?;
    let io = read_tensors(&FixtureModel::CorridorKey.io_file(dir))?;
    let get = |name: &str| input(&io, name);
    let mut t = Tensors::new();
    let out = net.forward(get("input.x_nhwc")?)?;
    for (i, f) in out.features.iter().enumerate() {
        t.insert(format!("intermediate.encoder_feature_{i}"), f.clone());
    }
    t.insert("intermediate.alpha_logits".into(), out.alpha_logits);
    t.insert("intermediate.fg_logits".into(), out.fg_logits);
    t.insert("intermediate.delta_logits".into(), out.delta_logits);
    t.insert("output.alpha".into(), out.alpha);
    t.insert("output.fg".into(), out.fg);
    for a in t.values() {
        a.eval()?;
    }
    Ok(t)
}
