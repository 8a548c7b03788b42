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

/// A models folder that lacks a file its route needs, or whose config does
/// not read.
#[derive(Debug, thiserror::Error)]
pub enum ModelFilesError {
    /// `note` says what the file is or what the route needs.
    #[error("{dir} has no {file} ({note})")]
    Missing {
        dir: PathBuf,
        file: String,
        note: String,
    },
    #[error(transparent)]
    Config(#[from] JsonFileError),
}

/// `dir/name`, a file the route cannot run without; `note` goes into the
/// error when it is not there.
pub fn required_file(dir: &Path, name: &str, note: &str) -> Result<PathBuf, ModelFilesError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelFilesError::Missing {
            dir: dir.into(),
            file: name.into(),
            note: note.into(),
        })
    }
}

/// The JSON config `dir/name` when the folder has one, `default()` when not.
pub fn optional_config<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    default: impl FnOnce() -> T,
) -> Result<T, ModelFilesError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(read_json(&path)?)
    } else {
        Ok(default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_bad_configs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = required_file(dir.path(), "w.safetensors", "the weights").unwrap_err();
        let want = format!(
            "{} has no w.safetensors (the weights)",
            dir.path().display()
        );
        assert_eq!(e.to_string(), want);

        assert_eq!(optional_config(dir.path(), "c.json", || 7).unwrap(), 7);
        std::fs::write(dir.path().join("c.json"), "[").unwrap();
        let e = optional_config::<i32>(dir.path(), "c.json", || 7).unwrap_err();
        let path = dir.path().join("c.json").display().to_string();
        assert!(e.to_string().starts_with(&format!("{path}: ")), "{e}");
        assert!(
            std::error::Error::source(&e).is_some(),
            "the parse error is kept"
        );
    }
}
