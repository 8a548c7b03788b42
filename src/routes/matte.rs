//! The matte route: CorridorKey (Hiera encoder, alpha and foreground
//! decoders, dilated refiner) on the frame and a coarse alpha hint — pushed
//! by the client, carried over from the stream's previous alpha, or keyed
//! from the green screen; then the `Matte` event with its images.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use posed_models::matte_pipeline::{
    self, FrameFit, Hint, MatteEstimate, MatteModelFiles, MattePipeline,
};
use tonic::Status;

use super::{
    frame_image, ModelInfo, PostOptions, PostWork, Preparer, RequestLimits, Route, RouteError,
    RouteId, RouteKind, RoutePost, RouteResult, StageClock,
};
use crate::config::{Config, FallbackHint, ImageEncoding, MatteConfig, MatteFit};
use crate::decode::encode_png;
use crate::engine::{Frame, StreamId};
use crate::events::route_event;
use crate::proto;
use crate::weights::hub::Hub;

/// The matte route's stages, in order.
pub mod stage {
    /// Resize to the model size and normalise, evaluated.
    pub const PREPROCESS: &str = "preprocess";
    /// CorridorKey, evaluated.
    pub const MATTE: &str = "matte";
    /// Alpha and foreground back to the frame's size, as bytes.
    pub const RESIZE: &str = "resize";
}

/// Streams whose last alpha is kept: PushStream clients name their own
/// sources, so the map is bounded (the stalest stream is forgotten).
const MAX_MATTE_STREAMS: usize = 16;

/// CorridorKey on the MLX thread, and each stream's previous alpha.
pub struct MatteRoute {
    pipeline: MattePipeline,
    /// Streams without a pushed hint reuse their previous alpha.
    hint_from_previous: bool,
    fallback: matte_pipeline::FallbackHint,
    previous: PreviousAlphas,
}

impl MatteRoute {
    pub fn new(pipeline: MattePipeline, hint_from_previous: bool, fallback: FallbackHint) -> Self {
        MatteRoute {
            pipeline,
            hint_from_previous,
            fallback: match fallback {
                FallbackHint::Ones => matte_pipeline::FallbackHint::Ones,
                FallbackHint::Chroma => matte_pipeline::FallbackHint::Chroma,
            },
            previous: PreviousAlphas::default(),
        }
    }

    pub fn pipeline(&self) -> &MattePipeline {
        &self.pipeline
    }
}

/// The last alpha per stream, at the network's resolution (MLX arrays:
/// MLX thread only), with the count of alphas kept when it was made.
#[derive(Default)]
struct PreviousAlphas {
    by_stream: HashMap<StreamId, (u64, mlx_rs::Array)>,
    kept: u64,
}

impl PreviousAlphas {
    fn keep(&mut self, stream: StreamId, alpha: mlx_rs::Array) {
        let map = &mut self.by_stream;
        if !map.contains_key(&stream) && map.len() >= MAX_MATTE_STREAMS {
            if let Some(stalest) = map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k) {
                map.remove(&stalest);
            }
        }
        self.kept += 1;
        map.insert(stream, (self.kept, alpha));
    }
}

/// What a frame may ask of the matte route.
#[derive(Debug, Clone, Default)]
pub struct MatteRequest {
    /// The client's hint: 8-bit grey, frame-sized.
    pub hint: Option<Vec<u8>>,
    /// The waiting caller wants the foreground and composite.
    pub images: bool,
}

/// Where a matte's hint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintSource {
    Pushed,
    Previous,
    Fallback,
}

/// One frame's matte.
#[derive(Debug)]
pub struct MatteOutput {
    pub matte: MatteEstimate,
    pub hint: HintSource,
    /// The frame's caller asked for the foreground and composite.
    pub images: bool,
}

impl Route for MatteRoute {
    type Request = MatteRequest;
    type Prep = ();
    type Output = MatteOutput;

    const ID: RouteId = RouteId::Matte;
    const STAGES: &'static [&'static str] = &[stage::PREPROCESS, stage::MATTE, stage::RESIZE];

    fn preparer(&self) -> Option<Preparer<Self>> {
        None
    }

    fn warm_up(&mut self) -> Result<(), RouteError> {
        // A pushed hint, then the way a stream's next frame goes (the
        // previous alpha as its hint); the warm-up's alpha is forgotten.
        let frame = Frame {
            stream: Some(StreamId::new()),
            ..super::blank_frame(320, 240)
        };
        let pushed = MatteRequest {
            hint: Some(vec![255; 320 * 240]),
            images: false,
        };
        let mut clock = StageClock::default();
        self.run(&frame, &pushed, None, &mut clock)?;
        self.run(&frame, &MatteRequest::default(), None, &mut clock)?;
        self.previous = PreviousAlphas::default();
        Ok(())
    }

    fn run(
        &mut self,
        frame: &Frame,
        request: &MatteRequest,
        _: Option<()>,
        clock: &mut StageClock,
    ) -> Result<MatteOutput, RouteError> {
        let img = frame_image(frame)?;
        let p = &self.pipeline;
        let stream = frame.stream.filter(|_| self.hint_from_previous);
        let (nh, nw) = p.network_size(frame.width, frame.height);
        let network_shape = [1, nh, nw, 1].map(|d| i32::try_from(d).unwrap_or(i32::MAX));
        let previous = stream
            .and_then(|s| self.previous.by_stream.get(&s))
            .map(|(_, a)| a)
            .filter(|a| a.shape() == network_shape);
        let (hint, source) = match (&request.hint, previous) {
            (Some(plane), _) => (Hint::Plane(plane), HintSource::Pushed),
            (None, Some(a)) => (Hint::Previous(a), HintSource::Previous),
            (None, None) => (Hint::Fallback(self.fallback), HintSource::Fallback),
        };
        let x = p.prepare(img, hint)?;
        x.eval()?;
        clock.mark(stage::PREPROCESS)?;
        let out = p.run(&x)?;
        clock.mark(stage::MATTE)?;
        let matte = p.to_frame(&out, frame.width, frame.height)?;
        clock.mark(stage::RESIZE)?;
        if let Some(stream) = stream {
            self.previous.keep(stream, out.network_alpha);
        }
        Ok(MatteOutput {
            matte,
            hint: source,
            images: request.images,
        })
    }
}

/// The matte route as the daemon knows it.
pub struct Matte;

impl RouteKind for Matte {
    type Route = MatteRoute;
    type Files = MatteModelFiles;
    type Post = MattePost;

    const PROTO: proto::Route = proto::Route::Matte;

    fn enabled(&self, config: &Config) -> bool {
        config.matte.enabled
    }

    fn models(&self, config: &Config, files: Option<&MatteModelFiles>) -> Vec<ModelInfo> {
        let mc = &config.matte;
        vec![ModelInfo {
            name: format!("corridorkey-{}", mc.img_size),
            route: RouteId::Matte,
            weights: files.map(|f| f.weights.clone()).unwrap_or_default(),
            dtype: format!("float32 encoder, {} heads", mc.head_dtype),
        }]
    }

    async fn find(&self, config: &Config, hub: &Hub) -> anyhow::Result<MatteModelFiles> {
        crate::weights::resolve::matte_files(&config.matte, hub).await
    }

    fn load(files: MatteModelFiles, config: &Config) -> anyhow::Result<(MatteRoute, bool)> {
        let mc = &config.matte;
        tracing::info!(
            weights = %files.weights.display(),
            img_size = mc.img_size,
            fit = %mc.fit,
            "loading the matte route"
        );
        load(&files, mc).context("loading the matte route")
    }

    fn request(
        &self,
        push: &proto::PushImageRequest,
        width: usize,
        height: usize,
        _: &RequestLimits,
    ) -> Result<MatteRequest, Status> {
        let hint = if push.matte_hint.is_empty() {
            None
        } else {
            Some(crate::decode::decode_hint(&push.matte_hint, width, height)?)
        };
        Ok(MatteRequest {
            hint,
            images: push.include_matte_images,
        })
    }

    fn post(&self, options: &PostOptions) -> MattePost {
        MattePost {
            options: options.clone(),
        }
    }
}

/// CorridorKey as `[matte]` configures it.
pub fn load(files: &MatteModelFiles, mc: &MatteConfig) -> anyhow::Result<(MatteRoute, bool)> {
    let fit = match mc.fit {
        MatteFit::Tiles => FrameFit::Tiles {
            overlap: mc.tile_overlap,
        },
        MatteFit::Resize => FrameFit::Resize,
    };
    let (mut pipeline, synthetic) = MattePipeline::load(files, mc.head_dtype.dtype(), fit)?;
    pipeline.refiner_tile = (mc.refiner_tile > 0).then_some(mc.refiner_tile);
    let route = MatteRoute::new(pipeline, mc.hint_from_previous, mc.fallback_hint);
    Ok((route, synthetic))
}

/// Encodes the images: PNG takes milliseconds, so off the async workers.
pub struct MattePost {
    options: PostOptions,
}

impl RoutePost<MatteRoute> for MattePost {
    fn event(
        &mut self,
        frame: &Arc<Frame>,
        result: &RouteResult<MatteRoute>,
        _: Instant,
    ) -> PostWork {
        let subscribers = self.options.matte_image_subscribers.load(Ordering::Relaxed);
        let with_images = result.output.images || subscribers > 0;
        let encoding = self.options.matte_encoding;
        // The event is made on a blocking thread; it needs its own handles.
        let frame = frame.clone();
        let timings = result.timings.to_vec();
        let dropped = result.dropped;
        let output = result.shared();
        PostWork::OffThread(Box::new(move || {
            let started = Instant::now();
            let payload = matte_payload(&output, encoding, with_images);
            route_event(
                &frame,
                proto::Route::Matte,
                &timings,
                started.elapsed(),
                dropped,
                payload,
            )
        }))
    }
}

/// The matte's images as the event carries them; `with_images` adds the
/// foreground and the RGBA composite.
pub fn matte_payload(
    output: &MatteOutput,
    encoding: ImageEncoding,
    with_images: bool,
) -> proto::event::Payload {
    let m = &output.matte;
    let (w, h) = (m.width, m.height);
    let encode = |data: Vec<u8>, channels: usize| -> bytes::Bytes {
        match encoding {
            ImageEncoding::Png => encode_png(&data, w, h, channels).into(),
            ImageEncoding::Raw => data.into(),
        }
    };
    let (foreground, composite) = if with_images {
        let rgba: Vec<u8> =
            m.fg.chunks_exact(3)
                .zip(&m.alpha)
                .flat_map(|(rgb, &a)| [rgb[0], rgb[1], rgb[2], a])
                .collect();
        (encode(m.fg.clone(), 3), encode(rgba, 4))
    } else {
        Default::default()
    };
    let coverage = m.alpha.iter().map(|&a| a as u64).sum::<u64>() as f64
        / (255.0 * m.alpha.len().max(1) as f64);
    proto::event::Payload::Matte(proto::Matte {
        width: w as u32,
        height: h as u32,
        encoding: match encoding {
            ImageEncoding::Png => proto::ImageEncoding::Png,
            ImageEncoding::Raw => proto::ImageEncoding::Raw,
        } as i32,
        alpha: encode(m.alpha.clone(), 1),
        foreground,
        composite,
        coverage: coverage as f32,
        hint_source: match output.hint {
            HintSource::Pushed => proto::MatteHintSource::Pushed,
            HintSource::Previous => proto::MatteHintSource::Previous,
            HintSource::Fallback => proto::MatteHintSource::Fallback,
        } as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matte_streams_are_bounded_and_the_stalest_is_forgotten() {
        let mut kept = PreviousAlphas::default();
        let s: Vec<StreamId> = (0..MAX_MATTE_STREAMS + 3)
            .map(|_| StreamId::new())
            .collect();
        for (i, &stream) in s.iter().enumerate() {
            let v = f32::from(u16::try_from(i).unwrap());
            kept.keep(stream, mlx_rs::Array::from_f32(v));
            // s[1] keeps streaming: it is never the stalest.
            kept.keep(s[1], mlx_rs::Array::from_f32(0.0));
        }
        let kept = &kept.by_stream;
        assert_eq!(kept.len(), MAX_MATTE_STREAMS);
        assert!(kept.contains_key(&s[1]));
        // Three streams too many: the three stalest went.
        for gone in [0, 2, 3] {
            assert!(!kept.contains_key(&s[gone]), "s{gone}");
        }
        assert!(kept.contains_key(&s[4]) && kept.contains_key(&s[MAX_MATTE_STREAMS + 2]));
    }
}
