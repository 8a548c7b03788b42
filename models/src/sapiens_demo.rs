//! The upstream Sapiens demo's top-down settings, shared by the person
//! detector ([`crate::rtmdet`]) and the pose network ([`crate::sapiens2`]):
//! which detector boxes count as people, how much a person's box is padded
//! before cropping, and whether the mirrored crop runs too.

use serde::{Deserialize, Serialize};

/// The Sapiens demo's person filter on top of mmdet's output
/// ([`crate::rtmdet::person_filter`] applies it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PersonFilter {
    pub bbox_thr: f32,
    pub nms_thr: f32,
}

impl Default for PersonFilter {
    fn default() -> Self {
        PersonFilter {
            bbox_thr: 0.3,
            nms_thr: 0.3,
        }
    }
}

/// The Sapiens demo's top-down settings: its person filter and the flip test.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopdownConfig {
    #[serde(flatten)]
    pub person_filter: PersonFilter,
    #[serde(default = "yes")]
    pub flip_test: bool,
    /// Box padding around a person before the aspect is fixed.
    #[serde(default = "padding")]
    pub bbox_padding: f32,
}

fn yes() -> bool {
    true
}

fn padding() -> f32 {
    1.25
}

impl Default for TopdownConfig {
    fn default() -> Self {
        TopdownConfig {
            person_filter: PersonFilter::default(),
            flip_test: true,
            bbox_padding: padding(),
        }
    }
}
