//! NVRTC, without a GPU: every module the host compiles (`backend_cuda::module_variants`: the
//! base passes per dtype, the Monarch pass per tensor-core dtype, defaults and experiments) for
//! sm_90 and sm_80 (CUDA 13 dropped sm_70), with the options the host passes.
//!
//! The emulation and the clang + ptxas check (`device_compile.rs`) see the same source through
//! other compilers; only NVRTC has NVRTC's predefined macros and front end. Session 11 added a
//! guard that NVRTC (which predefines `__USE_FAST_MATH__` as 0) rejected, and no Monarch
//! module compiled on the GPU for four sessions; this test would have caught it.
//!
//! NVRTC loads at run time (`libnvrtc.so` on the library path; CI unpacks the
//! `nvidia-cuda-nvrtc` wheel). Where it is missing the test says it skipped, unless
//! `FFTCONV_REQUIRE_NVRTC=1`. `FFTCONV_NVRTC_ARCHS` picks the architectures (comma-separated
//! compute capabilities, e.g. `90,80`).
//!
//! `FFTCONV_NVRTC_FILL_CACHE=1` also stores each image in the kernel disk cache
//! (`FFTCONV_CUDA_CACHE`) under the key a GPU process looks up, and skips variants already
//! there: `cargo xtask device-bundle` ships such a cache, so the GPU session does not spend its
//! minutes in NVRTC (each Monarch module takes ~45 s there too).

use std::sync::Mutex;

fn archs() -> Vec<(i32, i32)> {
    let list = std::env::var("FFTCONV_NVRTC_ARCHS").unwrap_or_else(|_| "90,80".to_owned());
    list.split(',')
        .filter_map(|a| {
            let a = a.trim();
            let n: i32 = a.parse().ok()?;
            Some((n / 10, n % 10))
        })
        .collect()
}

#[test]
fn every_module_compiles_with_nvrtc() {
    let variants: Vec<_> = archs()
        .into_iter()
        .flat_map(|cc| {
            backend_cuda::module_variants(cc)
                .into_iter()
                // The Monarch modules take ~45 s each: every variant for the newest target,
                // the default f16 one for the others.
                .filter(move |v| {
                    cc.0 >= 9
                        || !v.label.starts_with("monarch")
                        || v.label.contains("F16 min blocks None")
                })
        })
        .collect();
    assert!(
        variants.iter().any(|v| v.label.starts_with("monarch")),
        "no Monarch module among the variants"
    );
    let fill_cache = std::env::var("FFTCONV_NVRTC_FILL_CACHE").is_ok_and(|v| v == "1");
    let compile = |v: &backend_cuda::ModuleVariant| -> Result<usize, backend_cuda::CudaError> {
        if fill_cache {
            if let Some(file) = backend_cuda::cache_file_of(v)?.filter(|f| f.exists()) {
                eprintln!("{}: cached in {}", v.label, file.display());
                return Ok(1);
            }
        }
        let image = backend_cuda::compile_variant(v)?;
        if fill_cache {
            let file = backend_cuda::cache_image(v, &image)?;
            assert!(
                file.is_some(),
                "{}: the cache is off or not writable",
                v.label
            );
        }
        Ok(image.len())
    };
    // The first compile tells whether NVRTC is there at all.
    let first = compile(&variants[0]);
    if let Err(backend_cuda::CudaError::Unavailable { reason: why }) = &first {
        if std::env::var("FFTCONV_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("FFTCONV_REQUIRE_NVRTC=1 but NVRTC is unavailable: {why}");
        }
        eprintln!("skipped: NVRTC is unavailable ({why})");
        return;
    }
    let results = Mutex::new(vec![(variants[0].label.clone(), first)]);
    let next = Mutex::new(variants[1..].iter());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(v) = next.lock().unwrap().next() else {
                    break;
                };
                let start = std::time::Instant::now();
                let r = compile(v);
                eprintln!(
                    "{}: {} in {:.1} s",
                    v.label,
                    match &r {
                        Ok(bytes) => format!("{bytes} bytes"),
                        Err(_) => "FAILED".to_owned(),
                    },
                    start.elapsed().as_secs_f64()
                );
                results.lock().unwrap().push((v.label.clone(), r));
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), variants.len());
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(label, r)| match r {
            Ok(bytes) if *bytes > 0 => None,
            Ok(_) => Some(format!("{label}: empty image")),
            Err(e) => Some(format!("{label}: {e}")),
        })
        .collect();
    assert!(failed.is_empty(), "NVRTC failed:\n{}", failed.join("\n\n"));
}
