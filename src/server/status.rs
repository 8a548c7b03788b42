//! `GetStatus` and `GetTelemetry`: what the daemon runs and how fast.

use std::sync::atomic::Ordering;

use super::Shared;
use crate::engine::Readiness;
use crate::proto;
use crate::routes::RouteId;
use crate::telemetry;

pub(super) fn telemetry(shared: &Shared, with_histograms: bool) -> proto::Telemetry {
    let t = &shared.telemetry;
    let stages = t
        .snapshot(with_histograms)
        .into_iter()
        .map(|s| proto::StageStats {
            histogram_v2: s
                .histogram
                .as_ref()
                .map(telemetry::encode_v2)
                .unwrap_or_default(),
            name: s.name,
            count: s.count,
            dropped: s.dropped,
            p50_ns: s.p50_ns,
            p90_ns: s.p90_ns,
            p99_ns: s.p99_ns,
            p999_ns: s.p999_ns,
            max_ns: s.max_ns,
            mean_ns: s.mean_ns,
        })
        .collect();
    proto::Telemetry {
        uptime_ns: u64::try_from(t.uptime().as_nanos()).unwrap_or(u64::MAX),
        stages,
    }
}

pub(super) fn status(shared: &Shared) -> proto::Status {
    let readiness = shared.engine.readiness().borrow().clone();
    let report = shared.facts.models.borrow().clone();
    let models = report
        .models
        .into_iter()
        .map(|m| proto::ModelStatus {
            name: m.name,
            route: m.route.to_proto() as i32,
            weights: m.weights.display().to_string(),
            dtype: m.dtype,
            ready: readiness == Readiness::Serving,
            synthetic: report.synthetic,
            error: match &readiness {
                Readiness::Failed(e) => e.clone(),
                _ => String::new(),
            },
        })
        .collect();
    proto::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        device: shared.facts.device.clone(),
        mlx_version: shared.facts.mlx_version.clone(),
        models,
        sources: std::iter::once(proto::SourceStatus {
            id: "push".into(),
            kind: "push".into(),
            state: "running".into(),
            frames: shared.pushed.load(Ordering::Relaxed),
            dropped: 0,
            detail: String::new(),
        })
        .chain(shared.sources.iter().map(|src| src.to_proto()))
        .collect(),
        subscribers: u32::try_from(shared.fanout.subscribers()).unwrap_or(u32::MAX),
        synthetic_weights: report.synthetic,
        body_keypoint_names: if shared.facts.routes.contains(&RouteId::Body) {
            posed_models::sapiens2::keypoint_names_308()
                .into_iter()
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        },
    }
}
