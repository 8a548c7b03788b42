//! The model manifests in `models/manifests/`: which published file each
//! route needs, where it lives on the Hugging Face hub, and what it must be.

use serde::Deserialize;

/// One route's manifest (`models/manifests/<route>.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub route: String,
    #[serde(rename = "file")]
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// What the route uses it for: "detector", "pose", "mano", ...
    pub role: String,
    /// For files that come in variants (the pose model: "f32", "int4").
    pub variant: Option<String>,
    pub repo: String,
    #[serde(default = "main_revision")]
    pub revision: String,
    pub path: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// A key/shape manifest beside this one.
    pub layout: Option<String>,
    /// Filled from the manifest: the route this file belongs to.
    #[serde(skip)]
    pub route: String,
}

fn main_revision() -> String {
    "main".into()
}

impl ManifestFile {
    /// `repo/path@revision`, as messages name the file.
    pub fn label(&self) -> String {
        format!("{}/{}@{}", self.repo, self.path, self.revision)
    }
}

const HANDS: &str = include_str!("../../models/manifests/hands.toml");
const BODY: &str = include_str!("../../models/manifests/body.toml");
pub const HAND_DETECTOR_LAYOUT: &str =
    include_str!("../../models/manifests/hand-detector.keys.json");
pub const WILOR_LAYOUT: &str = include_str!("../../models/manifests/wilor.keys.json");

/// The routes that have published weights.
pub const ROUTES: &[&str] = &["hands", "body"];

/// The manifest built into this binary for `route`.
pub fn builtin(route: &str) -> anyhow::Result<Manifest> {
    let text = match route {
        "hands" => HANDS,
        "body" => BODY,
        "matte" => anyhow::bail!(
            "the {route} route has no published weights in this build yet (routes with weights: {})",
            ROUTES.join(", ")
        ),
        other => anyhow::bail!("unknown route {other:?} (hands, body, matte)"),
    };
    parse(text)
}

pub fn parse(text: &str) -> anyhow::Result<Manifest> {
    let mut m: Manifest = toml::from_str(text)?;
    for f in &mut m.files {
        f.route = m.route.clone();
    }
    Ok(m)
}

impl Manifest {
    /// The file for `role` (and `variant`, for files that have variants).
    pub fn file(&self, role: &str, variant: &str) -> anyhow::Result<&ManifestFile> {
        self.files
            .iter()
            .find(|f| f.role == role && f.variant.as_deref().is_none_or(|v| v == variant))
            .ok_or_else(|| {
                let variants: Vec<&str> = self
                    .files
                    .iter()
                    .filter(|f| f.role == role)
                    .filter_map(|f| f.variant.as_deref())
                    .collect();
                anyhow::anyhow!(
                    "the {} manifest has no {role} file of variant {variant:?} (variants: {})",
                    self.route,
                    variants.join(", ")
                )
            })
    }

    /// The files a fetch of `variant` needs: every file without variants,
    /// and the variant's own.
    pub fn files_for(&self, variant: &str) -> Vec<&ManifestFile> {
        self.files
            .iter()
            .filter(|f| f.variant.as_deref().is_none_or(|v| v == variant))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_manifest_names_every_role_and_variant() {
        let m = builtin("hands").unwrap();
        assert_eq!(m.file("pose", "f32").unwrap().path, "wilor-mlx.safetensors");
        assert_eq!(
            m.file("pose", "int4").unwrap().path,
            "wilor-mlx-int4.safetensors"
        );
        assert!(m
            .file("pose", "fp8")
            .unwrap_err()
            .to_string()
            .contains("f32, int4"));
        assert_eq!(m.files_for("int4").len(), 4);
        assert!(m.files.iter().all(|f| f.route == "hands"));
        assert!(builtin("nose").is_err());
    }

    #[test]
    fn the_body_manifest_has_the_detector_and_every_pose_size() {
        let m = builtin("body").unwrap();
        assert!(m.file("detector", "1b").unwrap().path.ends_with(".pth"));
        for size in ["0.4b", "0.8b", "1b", "5b"] {
            let f = m.file("pose", size).unwrap();
            assert_eq!(f.repo, format!("facebook/sapiens2-pose-{size}"));
            assert_eq!(f.path, format!("sapiens2_{size}_pose.safetensors"));
        }
        assert_eq!(m.files_for("1b").len(), 2);
    }
}
