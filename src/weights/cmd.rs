//! `posed weights fetch | list | verify | convert-mano`.

use std::path::Path;

use anyhow::{bail, Result};
use posed_models::body_pipeline::{BodyModelFiles, BodyPipeline};
use posed_models::hand_detector::DetectorConfig;
use posed_models::hand_pipeline::{HandModelFiles, HandPipeline};
use posed_models::rtmdet::RtmdetConfig;
use posed_models::sapiens2::{Sapiens2Config, Sapiens2Size};
use posed_models::wilor::WilorConfig;

use super::hub::{self, DownloadProgress, Hub, HubOptions};
use super::manifest::{self, Manifest};
use super::resolve;

fn manifests(route: Option<&str>) -> Result<Vec<Manifest>> {
    match route {
        Some(r) => Ok(vec![manifest::builtin(r)?]),
        None => manifest::ROUTES
            .iter()
            .map(|r| manifest::builtin(r))
            .collect(),
    }
}

/// The variant a fetch takes when none is named: the hand route's f32 pose
/// model, the body route's 0.4b.
fn default_variant(route: &str) -> &'static str {
    match route {
        "body" => "0.4b",
        "matte" => "",
        _ => "f32",
    }
}

/// The role that has variants in each route's manifest.
fn main_role(route: &str) -> &'static str {
    match route {
        "matte" => "matte",
        _ => "pose",
    }
}

/// Downloads every file `route` needs for `variant` (all routes with
/// published weights when `route` is None; each route's default variant
/// when `variant` is None), then converts MANO and the person detector.
pub async fn fetch(route: Option<&str>, variant: Option<&str>) -> Result<()> {
    let hub = Hub::new(HubOptions::from_env())?;
    for m in manifests(route)? {
        let variant = variant.unwrap_or(default_variant(&m.route));
        m.file(main_role(&m.route), variant)?;
        for file in m.files_for(variant) {
            let path = hub.fetch(file, DownloadProgress::bar()).await?;
            println!("{:<8} {:<60} {}", m.route, file.label(), path.display());
        }
        if m.route == "hands" {
            let pkl = hub
                .fetch(m.file("mano", variant)?, DownloadProgress::bar())
                .await?;
            let mean = hub
                .fetch(m.file("mano-mean", variant)?, DownloadProgress::bar())
                .await?;
            let npz = resolve::mano_npz(&pkl, Some(&mean))?;
            println!(
                "{:<8} {:<60} {}",
                m.route,
                "mano.npz (converted)",
                npz.display()
            );
        }
        if m.route == "body" {
            let pth = hub
                .fetch(m.file("detector", variant)?, DownloadProgress::bar())
                .await?;
            let converted = resolve::detector_safetensors(&pth)?;
            println!(
                "{:<8} {:<60} {}",
                m.route,
                "person detector (converted)",
                converted.display()
            );
        }
    }
    Ok(())
}

/// What is in the cache, per manifest file.
pub fn list() -> Result<()> {
    let hub = Hub::new(HubOptions::from_env())?;
    println!("hub cache: {}", hub.options().cache_dir.display());
    println!("posed cache: {}", resolve::posed_cache_dir().display());
    for m in manifests(None)? {
        for f in &m.files {
            let variant = f.variant.as_deref().unwrap_or("-");
            match hub.cached(f) {
                Some(p) => {
                    let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    println!(
                        "{:<6} {:<10} {:<5} cached   {:>14} B  {}",
                        m.route,
                        f.role,
                        variant,
                        size,
                        p.display()
                    );
                }
                None => println!(
                    "{:<6} {:<10} {:<5} missing  {}",
                    m.route,
                    f.role,
                    variant,
                    f.label()
                ),
            }
        }
    }
    Ok(())
}

/// Hashes every cached file against its ETag and manifest, then loads the
/// cached models through the real loaders (key, shape and dtype checks).
pub fn verify(route: Option<&str>) -> Result<()> {
    let hub = Hub::new(HubOptions::from_env())?;
    let mut failures = 0;
    for m in manifests(route)? {
        for f in &m.files {
            let Some(path) = hub.cached(f) else {
                println!("missing  {}", f.label());
                continue;
            };
            match hub::verify(&path, f) {
                Ok(v) => println!(
                    "ok       {} ({} B, sha256 {}, checked: {})",
                    f.label(),
                    v.size,
                    &v.sha256[..16],
                    if v.checks.is_empty() {
                        "size only".into()
                    } else {
                        v.checks.join(", ")
                    }
                ),
                Err(e) => {
                    failures += 1;
                    println!("FAILED   {e}");
                }
            }
        }
        if m.route == "hands" {
            for variant in ["f32", "int4"] {
                failures += usize::from(!verify_hand_load(&hub, &m, variant));
            }
        }
        if m.route == "body" {
            for size in Sapiens2Size::ALL {
                failures += usize::from(!verify_body_load(&hub, &m, size));
            }
        }
        if m.route == "matte" {
            failures += usize::from(!verify_matte_load(&hub, &m));
        }
    }
    if failures > 0 {
        bail!("{failures} check(s) failed");
    }
    Ok(())
}

/// Loads the cached hand files of `variant`, if all are there; false on a
/// load failure.
fn verify_hand_load(hub: &Hub, m: &Manifest, variant: &str) -> bool {
    let cached = |role: &str| m.file(role, variant).ok().and_then(|f| hub.cached(f));
    let (Some(det), Some(pose), Some(pkl)) = (cached("detector"), cached("pose"), cached("mano"))
    else {
        return true;
    };
    let mano = match resolve::mano_npz(&pkl, cached("mano-mean").as_deref()) {
        Ok(p) => p,
        Err(e) => {
            println!("FAILED   MANO conversion: {e:#}");
            return false;
        }
    };
    let files = HandModelFiles {
        detector_config: DetectorConfig::yolov8m(),
        detector_weights: det,
        wilor_config: WilorConfig::vit_h(),
        wilor_weights: pose,
        mano,
    };
    match HandPipeline::load(&files) {
        Ok(_) => {
            println!("ok       hands {variant}: the detector, WiLoR and MANO load with every key and shape in place");
            true
        }
        Err(e) => {
            println!("FAILED   hands {variant}: {e}");
            false
        }
    }
}

/// Loads the cached person detector and the cached pose model of `size`,
/// if both are there; false on a conversion or load failure.
fn verify_body_load(hub: &Hub, m: &Manifest, size: Sapiens2Size) -> bool {
    let cached = |role: &str| m.file(role, size.name()).ok().and_then(|f| hub.cached(f));
    let (Some(pth), Some(pose)) = (cached("detector"), cached("pose")) else {
        return true;
    };
    let detector = match resolve::detector_safetensors(&pth) {
        Ok(p) => p,
        Err(e) => {
            println!("FAILED   person detector conversion: {e:#}");
            return false;
        }
    };
    let files = BodyModelFiles {
        detector_config: RtmdetConfig::m(),
        detector_weights: detector,
        pose_config: Sapiens2Config::pose(size),
        pose_weights: pose,
    };
    match BodyPipeline::load(&files, None) {
        Ok(_) => {
            println!(
                "ok       body {}: RTMDet-m and Sapiens2 load with every key and shape in place",
                size.name()
            );
            true
        }
        Err(e) => {
            println!("FAILED   body {}: {e}", size.name());
            false
        }
    }
}

/// Loads the cached CorridorKey file, if it is there; false on a failure.
fn verify_matte_load(hub: &Hub, m: &Manifest) -> bool {
    use posed_models::corridorkey::CorridorKeyConfig;
    use posed_models::matte_pipeline::{FrameFit, MatteModelFiles, MattePipeline};
    let Some(weights) = m.file("matte", "").ok().and_then(|f| hub.cached(f)) else {
        return true;
    };
    // The layout does not depend on the run size; a small one loads fast.
    let files = MatteModelFiles {
        config: CorridorKeyConfig::base_plus(64),
        weights,
    };
    match MattePipeline::load(&files, mlx_rs::Dtype::Float32, FrameFit::Resize) {
        Ok(_) => {
            println!("ok       matte: CorridorKey loads with every key and shape in place");
            true
        }
        Err(e) => {
            println!("FAILED   matte: {e}");
            false
        }
    }
}

pub fn convert_mano(pkl: &Path, mean: Option<&Path>, out: &Path) -> Result<()> {
    posed_models::mano_convert::convert_file(pkl, mean, out)?;
    println!("wrote {}", out.display());
    Ok(())
}
