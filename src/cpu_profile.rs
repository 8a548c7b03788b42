//! Where the host's time goes while the harness runs: `posed bench
//! --cpu-profile DIR` samples every thread's stack on CPU time (SIGPROF,
//! through pprof-rs) during the timed runs of each case and writes them as
//! folded stacks, one `thread;outer;…;leaf count` line per distinct stack,
//! which `benches/profile/host.py` and flame-graph tools read.
//!
//! The GPU kernel profile (`benches/profile/kernels.py`) showed the GPU idle
//! for half of each frame; this is the other half of that picture. Frames are
//! named `library!function`, and a frame without a symbol keeps its
//! library's name (`libcuda.so.1!?`). Only CPU time is sampled: a thread
//! blocked in the kernel is not seen, one spinning on the GPU is.
//!
//! Built only with `--features cpu-profile`; without it the option is an
//! error that says so.

/// Samples asked for per second of CPU time. The kernel delivers SIGPROF at
/// its timer tick, so fewer arrive (about 150-210 on the GPU machines):
/// compare shares, or scale by a stage timed on one CPU thread.
pub const SAMPLE_HZ: i32 = 1000;

#[cfg(not(feature = "cpu-profile"))]
pub use disabled::Sampler;
#[cfg(feature = "cpu-profile")]
pub use enabled::Sampler;

/// An error that says how to get the profiler, in a build without it.
pub fn ensure_available() -> anyhow::Result<()> {
    if cfg!(feature = "cpu-profile") {
        Ok(())
    } else {
        anyhow::bail!(
            "this posed was built without the CPU profiler: rebuild with --features cpu-profile"
        )
    }
}

#[cfg(not(feature = "cpu-profile"))]
mod disabled {
    use std::path::Path;

    use anyhow::Result;

    pub struct Sampler;

    impl Sampler {
        pub fn start() -> Result<Self> {
            super::ensure_available().map(|()| Sampler)
        }

        pub fn write_folded(self, _path: &Path) -> Result<()> {
            Ok(())
        }
    }
}

#[cfg(feature = "cpu-profile")]
mod enabled {
    use std::collections::HashMap;
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::path::Path;

    use anyhow::{Context, Result};
    use findshlibs::{Segment, SharedLibrary, TargetSharedLibrary};

    pub struct Sampler {
        guard: pprof::ProfilerGuard<'static>,
    }

    impl Sampler {
        pub fn start() -> Result<Self> {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(super::SAMPLE_HZ)
                // Unwinding from inside these can deadlock in the signal
                // handler (pprof-rs's advice).
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()
                // pprof-rs runs one profiler per process.
                .context("starting the CPU sampler (is another one running in this process?)")?;
            Ok(Sampler { guard })
        }

        /// Stops sampling and writes the folded stacks to `path`.
        pub fn write_folded(self, path: &Path) -> Result<()> {
            let report = self
                .guard
                .report()
                .build_unresolved()
                .context("collecting the CPU samples")?;
            drop(self.guard);
            let libraries = Libraries::loaded();
            let mut names: HashMap<usize, String> = HashMap::new();
            let mut out = String::new();
            for (stack, count) in &report.data {
                let thread =
                    String::from_utf8_lossy(&stack.thread_name[..stack.thread_name_length]);
                out.push_str(if thread.is_empty() { "?" } else { &thread });
                let ips: Vec<usize> = stack.frames.iter().map(|f| f.ip() as usize).collect();
                for &ip in &ips {
                    names.entry(ip).or_insert_with(|| libraries.name(ip));
                }
                let frames: Vec<&str> = ips.iter().map(|ip| names[ip].as_str()).collect();
                // Outermost frame first, the sampler's own frames left out.
                for name in frames[interrupted(&frames)..].iter().rev() {
                    out.push(';');
                    out.push_str(name);
                }
                let _ = writeln!(out, " {count}");
            }
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(out.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
        }
    }

    /// Where the interrupted code starts in a stack (innermost first): the
    /// unwinder and the signal handler run on top of it, and the kernel's
    /// signal-return trampoline in libc sits between.
    fn interrupted(frames: &[&str]) -> usize {
        let sampler = |name: &&str| {
            ["!backtrace::", "!pprof::", "perf_signal_handler"]
                .iter()
                .any(|part| name.contains(part))
        };
        match frames.iter().take(16).rposition(sampler) {
            None => 0,
            Some(last) => {
                let next = last + 1;
                let trampoline = frames.get(next).is_some_and(|f| f.starts_with("libc"));
                (next + usize::from(trampoline)).min(frames.len())
            }
        }
    }

    /// The loaded objects' address ranges, to name frames that have no symbol.
    struct Libraries(Vec<(usize, usize, String)>);

    impl Libraries {
        fn loaded() -> Self {
            let mut ranges = Vec::new();
            TargetSharedLibrary::each(|lib| {
                let path = lib.name().to_string_lossy();
                let file = path.rsplit('/').next().unwrap_or_default();
                let file = if file.is_empty() { "posed" } else { file }.to_owned();
                for seg in lib.segments() {
                    let start = seg.actual_virtual_memory_address(lib).0;
                    ranges.push((start, start + seg.len(), file.clone()));
                }
            });
            Libraries(ranges)
        }

        fn library(&self, ip: usize) -> &str {
            self.0
                .iter()
                .find(|(start, end, _)| (*start..*end).contains(&ip))
                .map_or("?", |(_, _, name)| name.as_str())
        }

        /// `library!function` for the code at `ip`, and for each function
        /// inlined into it, outermost first, joined by `;`.
        fn name(&self, ip: usize) -> String {
            let library = self.library(ip);
            let mut inlined = Vec::new();
            // A return address points after the call; look up the call.
            backtrace::resolve(ip.saturating_sub(1) as *mut std::ffi::c_void, |symbol| {
                // `{:#}`: demangled, without Rust's hash suffix.
                if let Some(name) = symbol.name() {
                    inlined.push(format!("{library}!{:#}", name).replace(';', ","));
                }
            });
            if inlined.is_empty() {
                return format!("{library}!?");
            }
            inlined.reverse();
            inlined.join(";")
        }
    }
}
