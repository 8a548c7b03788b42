//! The routes. Each is one module that owns its whole pipeline: finding and
//! loading its models from its config section, the CPU work the prep thread
//! does ahead of the MLX thread, its timed stages, warm-up, the state it
//! keeps between frames, what a push may ask of it, and turning its result
//! into an event.
//!
//! Two traits split a route by thread:
//! - [`Route`] (`route.rs`): the MLX-thread half (models, [`Route::run`]).
//!   The engine runs it through [`RouteSet`]; `posed bench` calls the very
//!   same `run`, so the bench times the daemon's stage code, not a copy.
//! - [`RouteKind`] (`kind.rs`): the daemon half (config, model files, push
//!   requests, post-processing), one unit value per route in [`REGISTRY`].
//!
//! Adding a route: its module, its config section, its proto messages, a
//! [`RouteId`] variant and one line in [`REGISTRY`] (docs/ARCHITECTURE.md).

mod kind;
mod route;

use serde::{Deserialize, Serialize};

use crate::proto;
pub use kind::*;
pub use route::*;

pub mod body;
pub mod hands;
pub mod matte;

/// Which route. The names are the config sections, the CLI's `--route`
/// values and the telemetry prefixes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RouteId {
    Hands,
    Body,
    Matte,
}

impl RouteId {
    pub fn name(self) -> &'static str {
        match self {
            RouteId::Hands => "hands",
            RouteId::Body => "body",
            RouteId::Matte => "matte",
        }
    }

    /// The daemon half of this route.
    pub fn kind(self) -> &'static dyn AnyRouteKind {
        *REGISTRY
            .iter()
            .find(|k| k.id() == self)
            .expect("every RouteId is in the registry")
    }

    pub fn to_proto(self) -> proto::Route {
        self.kind().proto()
    }

    /// A route of the wire, if this daemon knows it.
    pub fn from_proto(route: i32) -> Option<RouteId> {
        REGISTRY
            .iter()
            .find(|k| k.proto() as i32 == route)
            .map(|k| k.id())
    }
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every route, in the order a frame runs them.
pub static REGISTRY: [&dyn AnyRouteKind; 3] = [&hands::Hands, &body::Body, &matte::Matte];

/// Stages every route's events carry besides its own, and the two every
/// detector-first route (hands, body) starts with.
pub mod stage {
    /// The detector's letterbox (made on the prep thread).
    pub const PREPROCESS: &str = "preprocess";
    /// The detector's forward pass and its post-processing (NMS).
    pub const DETECT: &str = "detect";
    /// The push's image (and hint) decoded; recorded as `push.decode`.
    pub const DECODE: &str = "decode";
    /// The result turned into an event.
    pub const POST: &str = "post";
    /// The event handed to the subscribers.
    pub const FANOUT: &str = "fanout";
    /// From the frame's arrival to its event's fan-out.
    pub const END_TO_END: &str = "end_to_end";
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_route_id_has_one_registry_entry_a_proto_route_and_its_config_name() {
        use clap::ValueEnum;
        for &id in RouteId::value_variants() {
            assert_eq!(REGISTRY.iter().filter(|k| k.id() == id).count(), 1);
            assert_eq!(RouteId::from_proto(id.to_proto() as i32), Some(id));
            let serde_name = serde_json::to_value(id).unwrap();
            assert_eq!(serde_name, id.name(), "serde");
            assert_eq!(id.to_possible_value().unwrap().get_name(), id.name());
        }
        assert_eq!(RouteId::from_proto(proto::Route::Unspecified as i32), None);
        assert_eq!(RouteId::from_proto(99), None);
    }

    #[test]
    fn the_clock_times_stages_in_order() {
        let mut c = StageClock::default();
        c.add("preprocess", Duration::from_millis(3)).unwrap();
        c.mark("detect").unwrap();
        let t = c.into_timings();
        assert_eq!(t[0], ("preprocess", Duration::from_millis(3)));
        assert_eq!(t[1].0, "detect");
    }
}
