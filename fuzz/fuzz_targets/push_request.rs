//! Request validation: any bytes as a protobuf `PushImageRequest`, then
//! `posed::server::decode_push` for every route (image decode, hand and
//! person boxes, hand options, matte hint), and the intrinsics check the
//! push path makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posed::decode::ImageLimits;
use posed::proto::PushImageRequest;
use posed::routes::{RequestLimits, RouteId};
use posed_models::camera::Intrinsics;
use prost::Message;

const ROUTES: [RouteId; 3] = [RouteId::Hands, RouteId::Body, RouteId::Matte];

fuzz_target!(|data: &[u8]| {
    let Ok(req) = PushImageRequest::decode(data) else {
        return;
    };
    let image_limits = ImageLimits {
        max_pixels: 1 << 16,
        ..Default::default()
    };
    let request_limits = RequestLimits::default();
    for n in 1..=ROUTES.len() {
        let Ok((rgb, requests)) =
            posed::server::decode_push(&req, &image_limits, &request_limits, &ROUTES[..n])
        else {
            continue;
        };
        assert_eq!(requests.len(), n);
        if let Some(k) = &req.intrinsics {
            let _ = Intrinsics::checked(k.fx, k.fy, k.cx, k.cy, rgb.width, rgb.height);
        }
    }
});
