//! The host sampler behind `posed bench --cpu-profile`: with the feature it
//! records where a busy thread spends its time; without it, asking for it
//! is a clear error.

/// pprof-rs runs one profiler per process; the tests take turns.
#[cfg(feature = "cpu-profile")]
static ONE_SAMPLER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(feature = "cpu-profile")]
#[test]
fn the_sampler_sees_a_busy_function_and_leaves_itself_out() {
    use std::time::{Duration, Instant};

    #[inline(never)]
    fn spin_for_the_sampler(d: Duration) -> u64 {
        let start = Instant::now();
        let mut x = 1u64;
        while start.elapsed() < d {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        x
    }

    let _turn = ONE_SAMPLER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spin.folded");
    let sampler = posed::cpu_profile::Sampler::start().unwrap();
    spin_for_the_sampler(Duration::from_millis(600));
    sampler.write_folded(&path).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let stacks: Vec<(Vec<&str>, u64)> = text
        .lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
            (
                stack.split(';').collect(),
                count.parse().expect("a sample count"),
            )
        })
        .collect();
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    let spinning: u64 = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f.contains("spin_for_the_sampler")))
        .map(|(_, n)| n)
        .sum();
    assert!(total > 0, "no samples in 600 ms of CPU work");
    assert!(
        spinning * 2 > total,
        "the busy function is in {spinning} of {total} samples"
    );
    for (frames, _) in &stacks {
        let leaf = frames.last().unwrap();
        assert!(
            !leaf.contains("backtrace::") && !leaf.contains("pprof::"),
            "the sampler's own frame is the leaf: {leaf}"
        );
        assert!(leaf.contains('!'), "frames are library!function: {leaf}");
    }
}

#[cfg(feature = "cpu-profile")]
#[test]
fn the_route_harness_writes_a_profile_of_each_case() {
    use posed::weights::synth::{synth_hands, Size, Variant};

    let _turn = ONE_SAMPLER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    synth_hands(Size::Tiny, Variant::F32, None, &models, 5).unwrap();
    let profiles = dir.path().join("prof");
    let options = posed::bench::BenchOptions {
        pose_dtypes: vec!["f32".into()],
        compile: vec![false],
        tracking: vec![false],
        per_frame: vec![1],
        flip_test: false,
        matte_sizes: Vec::new(),
        refiner_tile: None,
        profile: false,
        cpu_profile: Some(profiles.clone()),
        warmup: 1,
        runs: 8,
    };
    posed::bench::run_dir(posed::routes::RouteId::Hands, &models, &options, None).unwrap();

    let text = std::fs::read_to_string(profiles.join("hands-f32-x1.folded")).unwrap();
    // The timed frames on the calling thread, and MLX's work under them.
    for frame in ["posed::bench::time_case", "libmlx"] {
        assert!(text.contains(frame), "no {frame} frame in the profile");
    }
}

#[cfg(not(feature = "cpu-profile"))]
#[test]
fn without_the_feature_the_profiler_says_how_to_get_it() {
    let err = posed::cpu_profile::Sampler::start()
        .err()
        .expect("no sampler");
    assert!(err.to_string().contains("--features cpu-profile"), "{err}");
}
