//! What every route's event has in common: the frame's identity, the stage
//! timings, and the copy a subscriber gets (without heavy fields it did not
//! ask for).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::Frame;
use crate::proto;

pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The event of one route's result for `frame`: the route's stage timings
/// then post-processing's, and the frame's identity and size.
pub fn route_event(
    frame: &Frame,
    route: proto::Route,
    stages: &[(&'static str, Duration)],
    post_time: Duration,
    dropped_before: u64,
    payload: proto::event::Payload,
) -> proto::Event {
    let mut timings: Vec<proto::StageTiming> =
        stages.iter().map(|(stage, d)| timing(stage, *d)).collect();
    timings.push(timing(crate::routes::stage::POST, post_time));
    proto::Event {
        timings,
        dropped_frames: dropped_before,
        ..frame_event(frame, route, payload)
    }
}

/// An event of `route` for `frame`: its identity, size and times.
fn frame_event(frame: &Frame, route: proto::Route, payload: proto::event::Payload) -> proto::Event {
    proto::Event {
        frame_id: frame.id,
        source_id: frame.source_id.clone(),
        client_frame_id: frame.client_frame_id,
        route: route as i32,
        capture_unix_ns: unix_ns(frame.captured),
        emit_unix_ns: unix_ns(SystemTime::now()),
        image_width: u32::try_from(frame.width).unwrap_or(u32::MAX),
        image_height: u32::try_from(frame.height).unwrap_or(u32::MAX),
        payload: Some(payload),
        ..Default::default()
    }
}

pub fn timing(stage: &str, d: Duration) -> proto::StageTiming {
    proto::StageTiming {
        stage: stage.to_owned(),
        duration_ns: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
    }
}

/// A copy of `event` without the heavy fields a subscriber did not ask for
/// (matte images are shared, not copied).
pub fn without_heavy_fields(
    event: &proto::Event,
    include_vertices: bool,
    include_matte_images: bool,
) -> proto::Event {
    let mut e = event.clone();
    match &mut e.payload {
        Some(proto::event::Payload::Hands(h)) if !include_vertices => {
            for hand in &mut h.hands {
                hand.vertices = Vec::new();
            }
        }
        Some(proto::event::Payload::Matte(m)) if !include_matte_images => {
            m.foreground = Default::default();
            m.composite = Default::default();
        }
        _ => {}
    }
    e
}

/// The event that says route `route` has no result for `frame`, and why.
pub fn error_event(frame: &Frame, route: proto::Route, status: &tonic::Status) -> proto::Event {
    let error = proto::EventError {
        code: status.code() as i32,
        message: status.message().to_owned(),
    };
    frame_event(frame, route, proto::event::Payload::Error(error))
}

pub fn is_error(e: &proto::Event) -> bool {
    matches!(e.payload, Some(proto::event::Payload::Error(_)))
}

/// A client box: finite, not empty or inverted, touching the image, and
/// reaching at most one image size beyond any edge (a hand at the border is
/// partly outside; a box of 1e38 pixels is not a hand).
pub fn checked_box(
    field: &str,
    i: usize,
    r: Option<&proto::Box2D>,
    width: usize,
    height: usize,
) -> Result<[f32; 4], tonic::Status> {
    use tonic::Status;
    let r = r.ok_or_else(|| Status::invalid_argument(format!("{field}[{i}] has no box")))?;
    let v = [r.x1, r.y1, r.x2, r.y2];
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] is not finite: {v:?}"
        )));
    }
    if r.x2 <= r.x1 || r.y2 <= r.y1 {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] is empty or inverted: {v:?} (want x1 < x2, y1 < y2)"
        )));
    }
    let (w, h) = (width as f32, height as f32);
    if r.x2 <= 0.0 || r.y2 <= 0.0 || r.x1 >= w || r.y1 >= h {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] {v:?} lies outside the {width}x{height} image"
        )));
    }
    if r.x1 < -w || r.y1 < -h || r.x2 > 2.0 * w || r.y2 > 2.0 * h {
        return Err(Status::invalid_argument(format!(
            "{field}[{i}] {v:?} reaches more than the image's size beyond its {width}x{height} edges"
        )));
    }
    Ok(v)
}
