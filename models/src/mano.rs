//! MANO hand model: shape and pose blendshapes, joint regression, the
//! kinematic chain and linear blend skinning, as smplx's `MANOLayer` computes
//! them with rotation matrices (`pose2rot=False`, no PCA, zero translation).
//!
//! Buffers come from a `mano.npz` in the wilor-mlx layout. MANO is licensed
//! separately from posed: it is converted locally and never bundled.

use std::collections::HashMap;
use std::path::Path;

use mlx_rs::{ops, Array};

use crate::nn::{select, Result};
use crate::npz::{self, NpyArray};

#[derive(Debug, thiserror::Error)]
pub enum ManoError {
    #[error("MANO {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: npz::NpzError,
    },
    #[error("MANO {path}: {problems}")]
    Layout { path: String, problems: String },
}

/// The mean pose, shape and camera a WiLoR checkpoint was trained around;
/// when a `mano.npz` carries them they override the weight file's buffers.
#[derive(Debug, Clone, PartialEq)]
pub struct ManoMeans {
    pub hand_pose: Vec<f32>,
    pub betas: Vec<f32>,
    pub cam: Vec<f32>,
}

pub struct Mano {
    v_template: Array,
    /// (betas, V·3): shape blendshapes laid out for `betas @ shapedirs`.
    shapedirs: Array,
    /// (15·9, V·3)
    posedirs: Array,
    /// (J, V)
    j_regressor: Array,
    /// (V, J)
    lbs_weights: Array,
    chain: KinematicChain,
    /// Fingertip vertices appended to the J joints.
    tips: Array,
    /// Reorders the J + tips joints into the output order (OpenPose hand).
    joint_map: Array,
    pub faces: Vec<[u32; 3]>,
    pub means: Option<ManoMeans>,
    pub num_vertices: i32,
    pub num_betas: i32,
    /// Random geometry from `posed weights synth` (key `posed_synthetic`).
    pub synthetic: bool,
}

/// Expected sizes, checked against every buffer.
const JOINTS: usize = 16;

impl Mano {
    pub fn from_npz(path: &Path) -> std::result::Result<Self, ManoError> {
        let name = path.display().to_string();
        let arrays = npz::read_npz(path).map_err(|source| ManoError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_arrays(&name, &arrays)
    }

    pub fn from_arrays(
        name: &str,
        a: &HashMap<String, NpyArray>,
    ) -> std::result::Result<Self, ManoError> {
        let mut problems = Vec::new();
        let v = a.get("v_template").map(|t| t.shape[0]).unwrap_or(778);
        let nb = a
            .get("shapedirs")
            .and_then(|t| t.shape.get(2).copied())
            .unwrap_or(10);
        let p = (JOINTS - 1) * 9;
        let mut get = |key: &str, shape: &[usize]| -> Option<&NpyArray> {
            match a.get(key) {
                None => {
                    problems.push(format!("missing {key} {shape:?}"));
                    None
                }
                Some(t) if t.shape != shape => {
                    problems.push(format!("{key}: expected {shape:?}, file has {:?}", t.shape));
                    None
                }
                Some(t) => Some(t),
            }
        };
        let v_template = get("v_template", &[v, 3]).map(NpyArray::to_f32);
        let shapedirs = get("shapedirs", &[v, 3, nb]).map(NpyArray::to_f32);
        let posedirs = get("posedirs", &[p, v * 3]).map(NpyArray::to_f32);
        let j_regressor = get("J_regressor", &[JOINTS, v]).map(NpyArray::to_f32);
        let lbs_weights = get("lbs_weights", &[v, JOINTS]).map(NpyArray::to_f32);
        let parents = get("parents", &[JOINTS]).map(NpyArray::to_i32);
        let tips = get("extra_joints_idxs", &[5]).map(NpyArray::to_i32);
        let joint_map = get("joint_map", &[JOINTS + 5]).map(NpyArray::to_i32);
        let faces = a.get("faces").map(|f| f.to_i32());
        let means = match (
            a.get("init_hand_pose"),
            a.get("init_betas"),
            a.get("init_cam"),
        ) {
            (Some(p), Some(b), Some(c)) => Some(ManoMeans {
                hand_pose: p.to_f32(),
                betas: b.to_f32(),
                cam: c.to_f32(),
            }),
            _ => None,
        };
        let layout = |problems: Vec<String>| ManoError::Layout {
            path: name.into(),
            problems: problems.join("; "),
        };
        let (
            Some(v_template),
            Some(shapedirs),
            Some(posedirs),
            Some(j_regressor),
            Some(lbs_weights),
            Some(parents),
            Some(tips),
            Some(joint_map),
        ) = (
            v_template,
            shapedirs,
            posedirs,
            j_regressor,
            lbs_weights,
            parents,
            tips,
            joint_map,
        )
        else {
            return Err(layout(problems));
        };
        if let Some(bad) = tips.iter().find(|&&t| t < 0 || t as usize >= v) {
            problems.push(format!("extra_joints_idxs: vertex {bad} out of range"));
        }
        if let Some(bad) = joint_map
            .iter()
            .find(|&&j| j < 0 || j as usize >= JOINTS + 5)
        {
            problems.push(format!("joint_map: joint {bad} out of range"));
        }
        let chain = KinematicChain::new(&parents).map_err(|e| {
            problems.push(e.to_string());
            layout(problems.clone())
        })?;
        if !problems.is_empty() {
            return Err(layout(problems));
        }
        let (v_i, nb_i) = (v as i32, nb as i32);
        // (V·3, betas) → (betas, V·3), so shaping is one plain matmul.
        let mut shapedirs_t = vec![0f32; shapedirs.len()];
        for (row, values) in shapedirs.chunks_exact(nb).enumerate() {
            for (l, &val) in values.iter().enumerate() {
                shapedirs_t[l * v * 3 + row] = val;
            }
        }
        let shapedirs = Array::from_slice(&shapedirs_t, &[nb_i, v_i * 3]);
        Ok(Mano {
            v_template: Array::from_slice(&v_template, &[v_i, 3]),
            shapedirs,
            posedirs: Array::from_slice(&posedirs, &[p as i32, v_i * 3]),
            j_regressor: Array::from_slice(&j_regressor, &[JOINTS as i32, v_i]),
            lbs_weights: Array::from_slice(&lbs_weights, &[v_i, JOINTS as i32]),
            chain,
            tips: Array::from_slice(&tips, &[5]),
            joint_map: Array::from_slice(&joint_map, &[JOINTS as i32 + 5]),
            faces: faces
                .map(|f| {
                    f.chunks_exact(3)
                        .map(|c| [c[0] as u32, c[1] as u32, c[2] as u32])
                        .collect()
                })
                .unwrap_or_default(),
            means,
            num_vertices: v_i,
            num_betas: nb_i,
            synthetic: a.contains_key("posed_synthetic"),
        })
    }

    /// `rotations` (B, 16, 3, 3) = global orientation then the 15 hand joints;
    /// `betas` (B, num_betas). Returns vertices (B, V, 3) and joints (B, 21, 3)
    /// in the output joint order, in metres, in the MANO frame.
    pub fn forward(&self, rotations: &Array, betas: &Array) -> Result<(Array, Array)> {
        let b = rotations.dim(0);
        let v = self.num_vertices;
        let j = JOINTS as i32;

        let v_shaped = self
            .v_template
            .add(betas.matmul(&self.shapedirs)?.reshape(&[b, v, 3])?)?;
        let joints = self.j_regressor.matmul(&v_shaped)?; // (B, J, 3)

        let eye = ops::eye::<f32>(3, None, None)?;
        let pose_feature = rotations
            .index((.., 1.., .., ..))
            .subtract(&eye)?
            .reshape(&[b, -1])?;
        let v_posed = v_shaped.add(pose_feature.matmul(&self.posedirs)?.reshape(&[b, v, 3])?)?;

        // World transform of every joint, then relative to its rest position.
        let world = self.chain.world_transforms(rotations, &joints)?; // (B, J, 3, 4)
        let world_rot = world.index((.., .., .., 0..3));
        let world_t = select(&world, 3, 3)?;
        let rest_offset = world_rot
            .matmul(joints.reshape(&[b, j, 3, 1])?)?
            .reshape(&[b, j, 3])?;
        let skin_t = world_t.subtract(&rest_offset)?;
        let skin = ops::concatenate(&[world_rot, skin_t.reshape(&[b, j, 3, 1])?], -1)?;

        // Linear blend skinning: per-vertex blend of the joints' 3×4 transforms.
        let blended = self
            .lbs_weights
            .matmul(skin.reshape(&[b, j, 12])?)?
            .reshape(&[b, v, 3, 4])?;
        let vertices = blended
            .index((.., .., .., 0..3))
            .matmul(v_posed.reshape(&[b, v, 3, 1])?)?
            .reshape(&[b, v, 3])?
            .add(select(&blended, 3, 3)?)?;

        let tips = vertices.take_axis(&self.tips, 1)?;
        let all = ops::concatenate(&[world_t, tips], 1)?;
        let joints = all.take_axis(&self.joint_map, 1)?;
        Ok((vertices, joints))
    }
}

/// A `parents` table that is not a tree [`KinematicChain`] can walk.
#[derive(Debug, thiserror::Error)]
enum TreeError {
    #[error("parents: root must be joint 0, got {0:?}")]
    Root(Vec<i32>),
    #[error("parents: joint {joint} has parent {parent}; parents must precede children")]
    Order { joint: usize, parent: i32 },
}

/// MANO's tree walked level by level: every joint of a level is its parent's
/// transform times its own local one, so the chain costs one batched matmul
/// per tree level instead of one per joint.
struct KinematicChain {
    parents: Vec<i32>,
    /// Joints of each level (level 0 is the root alone).
    levels: Vec<Vec<i32>>,
    /// For each level ≥ 1, where each joint's parent sits in the level above.
    parent_slots: Vec<Vec<i32>>,
    /// Position of every joint in the level-by-level concatenation.
    unsort: Vec<i32>,
}

impl KinematicChain {
    fn new(parents: &[i32]) -> std::result::Result<Self, TreeError> {
        let n = parents.len();
        if parents.first() != Some(&-1) && parents.first() != Some(&0) {
            return Err(TreeError::Root(parents.to_vec()));
        }
        let mut depth = vec![0usize; n];
        for i in 1..n {
            let p = parents[i];
            if p < 0 || p as usize >= i {
                return Err(TreeError::Order {
                    joint: i,
                    parent: p,
                });
            }
            depth[i] = depth[p as usize] + 1;
        }
        let max_depth = depth.iter().copied().max().unwrap_or(0);
        let levels: Vec<Vec<i32>> = (0..=max_depth)
            .map(|d| (0..n as i32).filter(|&i| depth[i as usize] == d).collect())
            .collect();
        let parent_slots = levels
            .windows(2)
            .map(|w| {
                w[1].iter()
                    .map(|&j| {
                        w[0].iter()
                            .position(|&p| p == parents[j as usize])
                            .expect("parent is one level up") as i32
                    })
                    .collect()
            })
            .collect();
        let order: Vec<i32> = levels.iter().flatten().copied().collect();
        let mut unsort = vec![0i32; n];
        for (slot, &joint) in order.iter().enumerate() {
            unsort[joint as usize] = slot as i32;
        }
        let mut parents = parents.to_vec();
        parents[0] = -1;
        Ok(KinematicChain {
            parents,
            levels,
            parent_slots,
            unsort,
        })
    }

    /// `rotations` (B, J, 3, 3), rest `joints` (B, J, 3) → world transforms
    /// (B, J, 3, 4) = [R | t] of each joint.
    fn world_transforms(&self, rotations: &Array, joints: &Array) -> Result<Array> {
        let b = rotations.dim(0);
        let j = self.parents.len() as i32;
        // Local transforms: rotation about the joint, offset from the parent.
        let parent_idx: Vec<i32> = self.parents.iter().map(|&p| p.max(0)).collect();
        let parent_joints = joints.take_axis(Array::from_slice(&parent_idx, &[j]), 1)?;
        let root_mask: Vec<f32> = self
            .parents
            .iter()
            .map(|&p| if p < 0 { 0.0 } else { 1.0 })
            .collect();
        let rel =
            joints.subtract(parent_joints.multiply(Array::from_slice(&root_mask, &[1, j, 1]))?)?;
        let local3x4 = ops::concatenate(&[rotations.clone(), rel.reshape(&[b, j, 3, 1])?], -1)?;
        let bottom = ops::broadcast_to(
            Array::from_slice(&[0.0f32, 0.0, 0.0, 1.0], &[1, 1, 1, 4]),
            &[b, j, 1, 4],
        )?;
        let local = ops::concatenate(&[local3x4, bottom], 2)?; // (B, J, 4, 4)

        let mut level_world = vec![local.index((.., 0..1, .., ..))];
        for (level, slots) in self.levels.iter().skip(1).zip(&self.parent_slots) {
            let k = level.len() as i32;
            let parent = level_world
                .last()
                .expect("root level")
                .take_axis(Array::from_slice(slots, &[k]), 1)?;
            let own = local.take_axis(Array::from_slice(level, &[k]), 1)?;
            level_world.push(parent.matmul(&own)?);
        }
        let all = ops::concatenate(&level_world, 1)?;
        let world = all.take_axis(Array::from_slice(&self.unsort, &[j]), 1)?;
        Ok(world.index((.., .., 0..3, ..)))
    }
}

use mlx_rs::ops::indexing::IndexOp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_levels_follow_the_mano_tree() {
        let parents = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14];
        let c = KinematicChain::new(&parents).unwrap();
        assert_eq!(c.levels[0], [0]);
        assert_eq!(c.levels[1], [1, 4, 7, 10, 13]);
        assert_eq!(c.levels[3], [3, 6, 9, 12, 15]);
        assert_eq!(c.parent_slots[1], [0, 1, 2, 3, 4]);
        assert!(KinematicChain::new(&[-1, 2, 0]).is_err());
    }
}
