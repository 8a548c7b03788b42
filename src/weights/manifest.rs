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
    /// "hub" (the default): a Hugging Face model repo at `revision`;
    /// "github-release": an asset of the GitHub release tagged `revision`,
    /// with a `.sha256` sidecar beside it.
    #[serde(default = "hub_source")]
    pub source: String,
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

fn hub_source() -> String {
    "hub".into()
}

impl ManifestFile {
    /// `repo/path@revision`, as messages name the file.
    pub fn label(&self) -> String {
        let prefix = if self.is_github_release() {
            "github:"
        } else {
            ""
        };
        format!("{prefix}{}/{}@{}", self.repo, self.path, self.revision)
    }

    pub fn is_github_release(&self) -> bool {
        self.source == "github-release"
    }
}

const HANDS: &str = include_str!("../../models/manifests/hands.toml");
const BODY: &str = include_str!("../../models/manifests/body.toml");
const MATTE: &str = include_str!("../../models/manifests/matte.toml");
pub const HAND_DETECTOR_LAYOUT: &str =
    include_str!("../../models/manifests/hand-detector.keys.json");
pub const WILOR_LAYOUT: &str = include_str!("../../models/manifests/wilor.keys.json");

/// The routes that have published weights.
pub const ROUTES: &[&str] = &["hands", "body", "matte"];

/// The manifest built into this binary for `route`.
pub fn builtin(route: &str) -> anyhow::Result<Manifest> {
    let text = match route {
        "hands" => HANDS,
        "body" => BODY,
        "matte" => MATTE,
        other => anyhow::bail!("unknown route {other:?} (hands, body, matte)"),
    };
    parse(text)
}

pub fn parse(text: &str) -> anyhow::Result<Manifest> {
    let mut m: Manifest = toml::from_str(text)?;
    for f in &mut m.files {
        f.route = m.route.clone();
        anyhow::ensure!(
            matches!(f.source.as_str(), "hub" | "github-release"),
            "{}: source {:?} is neither \"hub\" nor \"github-release\"",
            f.label(),
            f.source
        );
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

    #[test]
    fn the_matte_manifest_pins_the_release_asset() {
        let m = builtin("matte").unwrap();
        let f = m.file("matte", "").unwrap();
        assert!(f.is_github_release());
        assert_eq!(f.path, "corridorkey_mlx.safetensors");
        assert_eq!(
            f.sha256.as_deref(),
            Some("0b6b202768725fda9f7953090a705262d9c9276e241360d15218357a27d95580")
        );
        assert!(f.label().starts_with("github:"));
        assert!(parse("route = \"x\"\n[[file]]\nrole = \"a\"\nsource = \"ftp\"\nrepo = \"a/b\"\npath = \"c\"\n").is_err());
    }
}
