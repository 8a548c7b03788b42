//! Reading a route's model files: JSON configs and manifests with typed
//! errors, and the error of loading a route's networks from its weights.

use std::path::{Path, PathBuf};

use crate::checked_weights::WeightError;
use crate::mano::ManoError;

/// A JSON file that cannot be read or does not parse as what it should hold.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The JSON file at `path` as a `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, JsonFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JsonFileError::Read {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| JsonFileError::Parse {
        path: path.into(),
        source,
    })
}

/// Why a route's networks did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Mano(#[from] ManoError),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("matte tile overlap {overlap} must be in 0..{size} (the model size)")]
    TileOverlap { overlap: i32, size: i32 },
}
