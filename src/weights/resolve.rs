//! Where the daemon's model files come from, in order: the configured
//! folder or paths, the hub cache, a download (unless `HF_HUB_OFFLINE`);
//! otherwise one line that says what is missing and how to get it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use posed_models::hand_detector::DetectorConfig;
use posed_models::hand_pipeline::HandModelFiles;
use posed_models::wilor::WilorConfig;
use sha2::Digest as _;

use super::hub::{DownloadProgress, Hub};
use super::manifest;
use crate::config::{BodyConfig, HandsConfig, MatteConfig};
use posed_models::body_pipeline::BodyModelFiles;
use posed_models::corridorkey::CorridorKeyConfig;
use posed_models::matte_pipeline::MatteModelFiles;
use posed_models::rtmdet::RtmdetConfig;
use posed_models::sapiens2::{Sapiens2Config, Sapiens2Size};

/// posed's own cache (converted MANO): `POSED_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/posed`, else `~/Library/Caches/posed` on macOS and
/// `~/.cache/posed` elsewhere.
pub fn posed_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("POSED_CACHE_DIR") {
        return p.into();
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("posed");
    }
    let home = PathBuf::from(var("HOME").unwrap_or_default());
    if cfg!(target_os = "macos") {
        home.join("Library/Caches/posed")
    } else {
        home.join(".cache/posed")
    }
}

/// The hand route's files for `config`.
pub async fn hand_files(config: &HandsConfig, hub: &Hub) -> Result<HandModelFiles> {
    if !config.models_dir.is_empty() {
        let mut files =
            HandModelFiles::from_dir(Path::new(&config.models_dir)).map_err(anyhow::Error::msg)?;
        if !config.mano.is_empty() {
            files.mano = mano_npz(Path::new(&config.mano), None)?;
        }
        return Ok(files);
    }
    let m = manifest::builtin("hands")?;
    let get = |role: &str| {
        let file = m.file(role, config.variant.as_str()).cloned();
        async move {
            let file = file?;
            hub.fetch(&file, DownloadProgress::bar())
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let detector_weights = get("detector").await?;
    let wilor_weights = get("pose").await?;
    let mano = if config.mano.is_empty() {
        let pkl = get("mano").await?;
        let mean = get("mano-mean").await?;
        mano_npz(&pkl, Some(&mean))?
    } else {
        mano_npz(Path::new(&config.mano), None)?
    };
    Ok(HandModelFiles {
        detector_config: DetectorConfig::yolov8m(),
        detector_weights,
        wilor_config: WilorConfig::vit_h(),
        wilor_weights,
        mano,
    })
}

/// A `mano.npz` for `path`: itself, or (for a MANO pickle) its conversion,
/// made once and kept in posed's cache under the pickle's hash.
pub fn mano_npz(path: &Path, mean_params: Option<&Path>) -> Result<PathBuf> {
    if path.extension().is_some_and(|e| e == "npz") {
        anyhow::ensure!(
            path.is_file(),
            "MANO file {} does not exist",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading MANO {}", path.display()))?;
    let mut hash = sha2::Sha256::new();
    hash.update(&bytes);
    if let Some(mean) = mean_params {
        hash.update(std::fs::read(mean).with_context(|| format!("reading {}", mean.display()))?);
    }
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = posed_cache_dir()
        .join("mano")
        .join(format!("mano-{key}.npz"));
    if !out.is_file() {
        posed_models::mano_convert::convert_file(path, mean_params, &out)
            .with_context(|| format!("converting MANO {}", path.display()))?;
        tracing::info!("converted MANO {} into {}", path.display(), out.display());
    }
    Ok(out)
}

/// The body route's files for `config`.
pub async fn body_files(config: &BodyConfig, hub: &Hub) -> Result<BodyModelFiles> {
    if !config.models_dir.is_empty() {
        return BodyModelFiles::from_dir(Path::new(&config.models_dir)).map_err(anyhow::Error::msg);
    }
    let size = Sapiens2Size::parse(config.size.as_str())
        .with_context(|| format!("unknown Sapiens2 size {:?}", config.size))?;
    let m = manifest::builtin("body")?;
    let pth = hub
        .fetch(
            m.file("detector", config.size.as_str())?,
            DownloadProgress::bar(),
        )
        .await?;
    let pose_weights = hub
        .fetch(
            m.file("pose", config.size.as_str())?,
            DownloadProgress::bar(),
        )
        .await?;
    Ok(BodyModelFiles {
        detector_config: RtmdetConfig::m(),
        detector_weights: detector_safetensors(&pth)?,
        pose_config: Sapiens2Config::pose(size),
        pose_weights,
    })
}

/// The matte route's files for `config`.
pub async fn matte_files(config: &MatteConfig, hub: &Hub) -> Result<MatteModelFiles> {
    if !config.models_dir.is_empty() {
        return MatteModelFiles::from_dir(Path::new(&config.models_dir), config.img_size)
            .map_err(anyhow::Error::msg);
    }
    let m = manifest::builtin("matte")?;
    let weights = hub
        .fetch(m.file("matte", "")?, DownloadProgress::bar())
        .await?;
    Ok(MatteModelFiles {
        config: CorridorKeyConfig::base_plus(config.img_size),
        weights,
    })
}

/// mmdet's `.pth` checkpoint as the safetensors file the loader reads,
/// converted once into posed's cache under the checkpoint's hash.
pub fn detector_safetensors(pth: &Path) -> Result<PathBuf> {
    if pth.extension().is_some_and(|e| e == "safetensors") {
        return Ok(pth.to_owned());
    }
    let bytes = std::fs::read(pth).with_context(|| format!("reading {}", pth.display()))?;
    let key: String = sha2::Sha256::digest(&bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = posed_cache_dir()
        .join("rtmdet")
        .join(format!("rtmdet-{key}.safetensors"));
    if !out.is_file() {
        std::fs::create_dir_all(out.parent().expect("a parent"))
            .with_context(|| format!("creating {}", out.display()))?;
        let n = posed_models::torch_checkpoint::convert_mmdet_checkpoint(pth, &out)?;
        tracing::info!(
            "converted {} ({n} tensors) into {}",
            pth.display(),
            out.display()
        );
    }
    Ok(out)
}
