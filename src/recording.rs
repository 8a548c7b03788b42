//! Recording of incoming frames to a folder, as `<seq>_<capture_ns>.png`:
//! the layout replay reads back at the recorded pace. Writing happens off
//! the frame path; when the disk falls behind, frames are skipped (and
//! counted), never queued without bound.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::engine::Frame;
use crate::events::unix_ns;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Arc<Frame>>,
    skipped: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts the writer task; fails if the folder cannot be created.
    pub fn start(dir: &Path) -> std::io::Result<Recorder> {
        std::fs::create_dir_all(dir)?;
        let (tx, mut rx) = mpsc::channel::<Arc<Frame>>(8);
        let dir: PathBuf = dir.into();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while let Some(frame) = rx.recv().await {
                seq += 1;
                let path = dir.join(format!("{seq:06}_{}.png", unix_ns(frame.captured)));
                let written = tokio::task::spawn_blocking(move || {
                    image::save_buffer(
                        &path,
                        &frame.rgb,
                        frame.width as u32,
                        frame.height as u32,
                        image::ExtendedColorType::Rgb8,
                    )
                    .map_err(|e| format!("{}: {e}", path.display()))
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::warn!("recording: {e}");
                }
            }
        });
        Ok(Recorder {
            tx,
            skipped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn record(&self, frame: &Arc<Frame>) {
        if self.tx.try_send(frame.clone()).is_err() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frames not recorded because the writer was behind.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}
