//! `cargo xtask device-bundle`: builds everything a GPU session runs (test executables, `fftconv`,
//! `xtask`) with every backend, strips it into `.device/` with the machine's helper files, and
//! writes `.device/run.sh`, which runs the whole check-and-time cycle there in one command.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// Test targets copied into the bundle: (package, test target). (The CLI's tests need the
/// `fftconv` binary at its build path, so the bundle runs `fftconv devices` directly instead.)
const TESTS: [(&str, &str); 6] = [
    ("conv", "conformance"),
    ("conv", "backward"),
    ("backend-vulkan", "forward"),
    ("backend-vulkan", "probe"),
    ("backend-cuda", "forward"),
    ("backend-cuda", "probe"),
];

/// What the bundle may weigh at most (the device tool carries 64 MiB in all).
const MAX_BUNDLE_BYTES: u64 = 60 << 20;

pub fn run() -> ExitCode {
    match bundle() {
        Ok(size) => {
            println!(
                "bundle ready in .device/ ({:.1} MiB). On the GPU machine, from the checkout root:\n  bash .device/run.sh        (logs under $OUT)",
                size as f64 / (1 << 20) as f64
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bundle() -> Result<u64, String> {
    let root = workspace_root()?;
    let dir = root.join(".device");
    let bin = dir.join("bin");
    let tests = dir.join("tests");
    for d in [&bin, &tests] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(|e| format!("clearing {}: {e}", d.display()))?;
        }
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    // The GPU machine's helper files (env.sh and the loader packages), when this checkout has them.
    let shared = root.join("../shared/device");
    if shared.is_dir() {
        copy_tree(&shared, &dir)?;
    } else {
        eprintln!(
            "note: {} not found; the bundle has no env.sh",
            shared.display()
        );
    }

    // Test executables, named after their package and target.
    let mut args = vec!["test", "--no-run", "--release", "--all-features"];
    args.extend(["--message-format=json"]);
    for (package, _) in TESTS {
        args.extend(["-p", package]);
    }
    let output = cargo(&root, &args)?;
    let mut found = Vec::new();
    for line in output.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(target)) =
            (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        if msg["profile"]["test"].as_bool() != Some(true) {
            continue;
        }
        let package = package_name(msg["package_id"].as_str().unwrap_or_default());
        if let Some((p, t)) = TESTS
            .iter()
            .find(|(p, t)| *t == target && package.as_deref() == Some(*p))
        {
            let name = format!("{p}-{t}");
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, PathBuf::from(exe)));
            }
        }
    }
    if found.len() != TESTS.len() {
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        return Err(format!(
            "expected {} test executables, found {names:?}",
            TESTS.len()
        ));
    }
    for (name, exe) in &found {
        install(exe, &tests.join(name))?;
    }

    // fftconv and xtask with every backend.
    cargo(
        &root,
        &[
            "build",
            "--release",
            "--all-features",
            "-p",
            "cli",
            "-p",
            "xtask",
        ],
    )?;
    for name in ["fftconv", "xtask"] {
        install(&root.join("target/release").join(name), &bin.join(name))?;
    }
    std::fs::write(dir.join("run.sh"), RUN_SH).map_err(|e| format!("writing run.sh: {e}"))?;
    kernel_cache(&root, &dir.join("cuda-cache"))?;

    let size = dir_size(&dir)?;
    if size > MAX_BUNDLE_BYTES {
        return Err(format!(
            ".device/ holds {size} bytes, more than the {MAX_BUNDLE_BYTES} the device tool carries"
        ));
    }
    Ok(size)
}

/// Fills `cache` with the sm_90 kernel modules (`backend-cuda/tests/nvrtc_compile.rs` with
/// `FFTCONV_NVRTC_FILL_CACHE=1`), compiled here by NVRTC from `target/nvrtc` (`.ci/run`
/// unpacks it there), so the GPU session loads them instead of spending ~45 s of device time
/// per Monarch module in NVRTC. Images whose key changed (another source) are dropped; without
/// NVRTC here the bundle goes without a cache.
fn kernel_cache(root: &Path, cache: &Path) -> Result<(), String> {
    let nvrtc = root.join("target/nvrtc");
    if !nvrtc.join("libnvrtc.so").exists() {
        eprintln!(
            "note: {} has no libnvrtc.so (run .ci/run once, or unpack the nvidia-cuda-nvrtc 13.0 \
             wheel there): the bundle ships no kernel cache, so the GPU compiles",
            nvrtc.display()
        );
        return Ok(());
    }
    // Only this source's images: a stale cache would only take space in the 64 MiB.
    if cache.exists() {
        std::fs::remove_dir_all(cache).map_err(|e| format!("clearing {}: {e}", cache.display()))?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "test",
            "--release",
            "-p",
            "backend-cuda",
            "--test",
            "nvrtc_compile",
        ])
        .env("LD_LIBRARY_PATH", &nvrtc)
        .env("FFTCONV_REQUIRE_NVRTC", "1")
        .env("FFTCONV_NVRTC_FILL_CACHE", "1")
        .env("FFTCONV_NVRTC_ARCHS", "90")
        .env("FFTCONV_CUDA_CACHE", cache)
        .current_dir(root)
        .status()
        .map_err(|e| format!("running the nvrtc_compile test: {e}"))?;
    if !status.success() {
        return Err("NVRTC could not compile the kernels (nvrtc_compile test)".into());
    }
    Ok(())
}

/// The script the bundle runs on the GPU machine.
///
/// Lessons of the 2026-11-26 sessions: the device tool brings back at most 8 files from `$OUT`,
/// a session has ~15 minutes of device time in all, and the CPU baseline makes sweeps to 4M slow.
/// So the steps run in priority order under one deadline (`FFTCONV_DEADLINE` seconds), caches and
/// bench JSON stay outside `$OUT`, and every log lands in `$OUT/all.txt` (the JSON in one tarball).
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Generated by `cargo xtask device-bundle`. Run on the GPU machine from the checkout root:
#   FFTCONV_DEADLINE=480 bash .device/run.sh [--no-bench]
# Steps run in priority order (correctness, then the main table, then A/B experiments, Vulkan,
# the long sizes, profiles); one whose turn comes within 15 s of the deadline is skipped. All
# logs are concatenated into $OUT/all.txt, the bench JSON into $OUT/bench-json.tgz.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$here/out}
work=${TMPDIR:-/tmp}/fftconv-run
rm -rf "$work"
mkdir -p "$OUT" "$work/logs"
# env.sh unpacks the Vulkan loader and points it at NVIDIA's driver: only where that driver is.
if [ -f "$here/env.sh" ] && [ -e /usr/local/nvidia ]; then
    source "$here/env.sh"
fi
deadline=$((SECONDS + ${FFTCONV_DEADLINE:-480}))
status=0
ran=" "
step() {
    local name=$1 limit=$2
    shift 2
    # A step named twice (the priority order above, the --no-bench order below) runs once.
    [[ "$ran" == *" $name "* ]] && return
    ran+="$name "
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "SKIPPED (deadline): $name"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit $limit s, at $SECONDS s)"
    if timeout "$limit" "$@" > "$work/logs/$name.log" 2>&1; then
        tail -n 2 "$work/logs/$name.log"
    else
        echo "FAILED (exit $?): $name"
        tail -n 25 "$work/logs/$name.log"
        status=1
    fi
}
# bench NAME LIMIT [VAR=VALUE ...] OPTIONS: `xtask bench OPTIONS` with those variables set.
bench() {
    local name=$1 limit=$2
    shift 2
    local vars=()
    while [ $# -gt 0 ] && [[ "$1" == *=* ]]; do
        vars+=("$1")
        shift
    done
    step "$name" "$limit" env "${vars[@]}" CARGO_TARGET_DIR="$work/target-$name" \
        "$here/bin/xtask" bench "$@"
}
finish() {
    (cd "$work/logs" && for f in *.log; do echo "=== log $f"; cat "$f"; done) > "$OUT/all.txt"
    (cd "$work" && tar czf "$OUT/bench-json.tgz" target-*/bench/latest.json 2> /dev/null)
    echo "done at $SECONDS s; logs in $OUT/all.txt"
}
trap finish EXIT
"$here/bin/fftconv" devices | tee "$work/logs/devices.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$work/logs/devices.log" 2>&1
export FFTCONV_REQUIRE_BACKENDS=${FFTCONV_REQUIRE_BACKENDS:-vulkan,cuda}
# The kernel modules compiled for sm_90 by `cargo xtask device-bundle` (NVRTC 13.0 there, keyed
# by source, options, architecture and NVRTC version): loaded instead of compiled when they match.
export FFTCONV_CUDA_CACHE="$work/cuda-cache"
if [ -d "$here/cuda-cache" ]; then
    cp -r "$here/cuda-cache" "$work/cuda-cache"
fi
T=$here/tests
S="256,4K,16K,64K,1M"
# 1. Correctness of the CUDA backend (the CPU backend runs in CI). A session has ~15 minutes of
# device time in all, machine start included, so the first benches come right after the
# conformance suite (every bench row is also checked against the f64 oracle on sampled rows).
step test-conformance-cuda 120 "$T/conv-conformance" cuda --test-threads 8
if [ "${1:-}" != "--no-bench" ]; then
    # Session 17 measured the split backward from 256 (1.02-1.45x over the fused kernel below
    # 4K, now the default) and the forward at 3 blocks per SM (3-8% from 256 to 4K) through the
    # environment. Unmeasured after that: the forward built at 3 blocks by default
    # (MT_FORWARD_MIN_BLOCKS), the taps kernel's 16-byte row stores and no per-step test of the
    # slots' maxima (predicted 0-5% on the split backward at 256 .. 1K). First the suites, the
    # backward to 16K, the forward against the old 2 blocks in one run.
    step test-backward-cuda 120 "$T/conv-backward" cuda --test-threads 8
    bench bench-backward-small 60 --backend cuda --dtype f16 --sizes 256..16K --backward \
        --reps 3
    # Session 22 (no GPU): the split backward at 8K and 16K (fftconv_monarch_wide for du,
    # fftconv_monarch_backward_taps_wide for the taps; docs/perf.md has the prediction) against
    # the fused wide kernels of the default (bench-backward-small above), same run.
    bench bench-backward-split-to-16k 40 FFTCONV_CUDA_MONARCH_SPLIT_BACKWARD=16384 --backend cuda \
        --dtype f16 --sizes 8K,16K --backward --reps 3
    step test-backward-cuda-split-to-16k 120 env FFTCONV_CUDA_MONARCH_SPLIT_BACKWARD=16384 \
        "$T/conv-backward" cuda --test-threads 8
    bench bench-forward-default 40 --backend cuda --dtype f16 --sizes 256,1K,4K --reps 5
    bench bench-forward-min-blocks-2 100 FFTCONV_CUDA_MONARCH_MIN_BLOCKS=2 --backend cuda \
        --dtype f16 --sizes 256,1K,4K --reps 5
    # Session 24 (no GPU): fftconv_monarch_prefetch (256 .. 4K: a grid of one block per resident
    # slot, each running the tiles in turn with the next tile's rows copied by cp.async during the
    # current one; docs/perf.md has the prediction): its suite, then FlashFFTConv's shapes and
    # ThunderKittens' case against the default, each pair in adjacent steps.
    step test-conformance-cuda-prefetch 120 env FFTCONV_CUDA_MONARCH_PREFETCH=1 \
        "$T/conv-conformance" cuda --test-threads 8
    bench bench-anchors-small 40 --backend cuda --dtype f16 --anchors --sizes 256,1K,4K --reps 5
    bench bench-anchors-small-prefetch 40 FFTCONV_CUDA_MONARCH_PREFETCH=1 --backend cuda \
        --dtype f16 --anchors --sizes 256,1K,4K --reps 5
    bench bench-thunderkittens-default 30 --backend cuda --dtype bf16 --circular --sizes 4K \
        --shape 16x1024 --reps 5
    bench bench-thunderkittens-prefetch 30 FFTCONV_CUDA_MONARCH_PREFETCH=1 --backend cuda \
        --dtype bf16 --circular --sizes 4K --shape 16x1024 --reps 5
    # The split backward's du and taps kernels prefetch too (256 .. 4K): against
    # bench-backward-small.
    step test-backward-cuda-prefetch 120 env FFTCONV_CUDA_MONARCH_PREFETCH=1 "$T/conv-backward" \
        cuda --test-threads 8
    bench bench-backward-small-prefetch 40 FFTCONV_CUDA_MONARCH_PREFETCH=1 --backend cuda \
        --dtype f16 --sizes 256..4K --backward --reps 3
    # Where its stalls are left (session 24's guess: the filter bins' and twiddles' L2 gathers,
    # one or two per row and warp): ncu's source view of the prefetching forward at 4K.
    step ncu-source-monarch-prefetch 90 bash -c "FFTCONV_CUDA_MONARCH_PREFETCH=1 \
        FFTCONV_CUDA_LINEINFO=1 /usr/local/cuda/bin/ncu -k regex:'fftconv_monarch_prefetch\$' \
        --launch-count 1 --set full -o $work/source-prefetch $here/bin/xtask bench \
        --backend cuda --dtype f16 --sizes 4K --reps 1 --mb 64 > /dev/null && \
        /usr/local/cuda/bin/ncu --import $work/source-prefetch.ncu-rep --page source \
        --print-source cuda,sass --csv | gzip > $OUT/ncu-source-monarch-prefetch.csv.gz && \
        /usr/local/cuda/bin/ncu --import $work/source-prefetch.ncu-rep --page details --csv \
        | head -c 200000"
    # Session 18 (no GPU): Vulkan's register-radix forward for one-pass plans (256 .. 4K on
    # NVIDIA; 1.7-2.7x faster than the radix-2 fused pass on lavapipe). Its suite (the
    # cooperative-matrix path selected), then it against CUDA and the radix-2 pass. Session 19:
    # the Vulkan floor ("copy bandwidth vulkan") is the faster of vkCmdCopyBuffer (0.83 TB/s
    # before) and a compute-shader copy, so its "x floor" no longer flatters Vulkan.
    step test-backend-vulkan-forward 120 env FFTCONV_REQUIRE_COOPERATIVE_MATRIX=1 \
        "$T/backend-vulkan-forward" --test-threads 4
    # Session 20: 8K and 16K as one register-radix pass (lines longer than the shared memory,
    # exchanged in 2 and 4 rounds; 1024 invocations at 16K) against the plan's column passes
    # (FFTCONV_VULKAN_EXCHANGE_ROUNDS=1), CUDA in the same run.
    bench bench-vulkan-register 75 --backend cuda,vulkan --dtype f16 --sizes 256,1K,4K,8K,16K \
        --reps 5
    bench bench-vulkan-one-round 40 FFTCONV_VULKAN_EXCHANGE_ROUNDS=1 --backend vulkan \
        --dtype f16 --sizes 8K,16K --reps 5
    bench bench-vulkan-radix2 60 FFTCONV_VULKAN_REGISTER_FFT=0 --backend vulkan --dtype f16 \
        --sizes 256,1K,4K --reps 5
    # Session 21: the Vulkan backward's FFTs (fused backward, step schedule) on the register-radix
    # passes against the radix-2 rounds, same run.
    bench bench-backward-vulkan 45 --backend vulkan --dtype f16 --sizes 256,4K,16K --backward \
        --reps 3
    bench bench-backward-vulkan-radix2 45 FFTCONV_VULKAN_REGISTER_FFT=0 --backend vulkan \
        --dtype f16 --sizes 256,4K,16K --backward --reps 3
    # Session 23: Vulkan's half spectra (the forward's intermediates in f16, scaled per tile:
    # 32K .. 4M with 16-bit I/O) against f32 spectra, same run (docs/perf.md has the prediction).
    bench bench-vulkan-half-spectra 60 --backend cuda,vulkan --dtype f16 \
        --sizes 32K,64K,256K,1M,4M --reps 3
    bench bench-vulkan-f32-spectra 60 FFTCONV_VULKAN_HALF_SPECTRA=0 --backend vulkan \
        --dtype f16 --sizes 32K,64K,256K,1M,4M --reps 3
    # Where the backward's time goes where it is furthest from issue 5's 2.5x (session 17: 256
    # 2.9x, 8K 3.5x, 16K 4.2x): per-kernel durations at the card's clocks.
    step ncu-times-backward-small 75 /usr/local/cuda/bin/ncu --clock-control none \
        -k regex:fftconv_ --launch-count 400 --metrics gpu__time_duration.sum \
        --print-summary per-kernel "$here/bin/xtask" bench --backend cuda --dtype f16 \
        --sizes 256,8K,16K --backward --reps 1 --mb 64
    # FlashFFTConv's shapes (forward, the filter preparation, 75% sparsity), then the backward
    # suite and sweep (session 16's changes, measured in session 17: docs/perf.md).
    bench bench-anchors-filter 150 --backend cuda --dtype f16 --anchors --filter --reps 3 \
        --keep-frequencies 1,0.25
    step test-backward-cuda 120 "$T/conv-backward" cuda --test-threads 8
    bench bench-backward 150 --backend cuda --dtype f16 --sizes 256..1M --backward --reps 3
    # Session 16: ncu put the 4K backward's kernels at ~2x the forward (split) and 3.4x (one
    # kernel), the bench at 4.2-5.1x and 5.6-6.3x. Per-kernel durations at the card's own
    # clocks (--clock-control none; ncu locks the base clock, 1.35 GHz, by default) next to a
    # plain bench of the same shape, and the split's A/B.
    step ncu-times-backward-4k 75 /usr/local/cuda/bin/ncu --clock-control none \
        -k regex:fftconv_ --launch-count 400 --metrics gpu__time_duration.sum \
        --print-summary per-kernel "$here/bin/xtask" bench --backend cuda --dtype f16 \
        --sizes 4K --backward --reps 1 --mb 64
    bench bench-backward-4k-64mb 30 --backend cuda --dtype f16 --sizes 4K --backward --reps 5 \
        --mb 64
    bench bench-backward-unsplit 45 FFTCONV_CUDA_MONARCH_SPLIT_BACKWARD=0 --backend cuda \
        --dtype f16 --sizes 4K --backward --reps 5
    # Where the 4K forward's and the split taps kernel's instructions and stalls go: ncu's
    # source view per CUDA line and SASS instruction (-lineinfo), the whole CSV compressed under
    # $OUT, and the details page (session 16's run of the earlier kernels: docs/perf.md).
    for k in monarch monarch_backward_taps; do
        step "ncu-source-$k" 90 bash -c "FFTCONV_CUDA_LINEINFO=1 /usr/local/cuda/bin/ncu \
            -k regex:'fftconv_$k\$' --launch-count 1 --set full -o $work/source-$k \
            $here/bin/xtask bench --backend cuda --dtype f16 --sizes 4K --reps 1 --mb 64 \
            --backward > /dev/null && /usr/local/cuda/bin/ncu --import $work/source-$k.ncu-rep \
            --page source --print-source cuda,sass --csv | gzip > $OUT/ncu-source-$k.csv.gz \
            && /usr/local/cuda/bin/ncu --import $work/source-$k.ncu-rep --page details \
            --csv | head -c 200000"
    done
    # The Vulkan backend on NVIDIA (its suites last ran on a GPU in session 10): the
    # cooperative-matrix path (f16, bf16; NVIDIA lists 16x16x16) must be selected; then the
    # portable path forced; then FlashFFTConv's shapes on both backends in one run.
    step test-conformance-vulkan 120 "$T/conv-conformance" vulkan --test-threads 8
    step test-backend-vulkan-forward 120 env FFTCONV_REQUIRE_COOPERATIVE_MATRIX=1 \
        "$T/backend-vulkan-forward" --test-threads 4
    step test-conformance-vulkan-portable 120 env FFTCONV_VULKAN_PORTABLE=1 \
        "$T/conv-conformance" vulkan --test-threads 8
    bench bench-anchors 120 --backend cuda,vulkan --dtype f16 --anchors --reps 3
    bench bench-monarch-thunderkittens 60 --backend cuda --dtype bf16 --circular --sizes 4K \
        --shape 16x1024 --reps 5
    # Where the time goes, per kernel: every fftconv_ kernel's duration summed per name (the
    # bench rows above give the wall times to compare with).
    for what in "filter-64k --sizes 64K --filter" "backward --sizes 4K,64K --backward"; do
        read -r -a words <<< "$what"
        step "ncu-times-${words[0]}" 75 /usr/local/cuda/bin/ncu -k regex:fftconv_ \
            --launch-count 400 --metrics gpu__time_duration.sum --print-summary per-kernel \
            "$here/bin/xtask" bench --backend cuda --dtype f16 "${words[@]:1}" --reps 1 --mb 64
    done
fi
step test-backward-cuda 120 "$T/conv-backward" cuda --test-threads 8
step test-backend-cuda-forward 120 "$T/backend-cuda-forward" --test-threads 4 --nocapture
step test-backend-cuda-probe 60 "$T/backend-cuda-probe" --nocapture
if [ "${1:-}" != "--no-bench" ]; then
    bench bench-backward-no-monarch 150 FFTCONV_CUDA_MONARCH=0 --backend cuda --dtype f16 \
        --sizes 256..1M --backward --reps 3
    bench bench-monarch 200 --backend cuda --dtype f16,bf16 --sizes 256..4M --reps 5 \
        --keep-frequencies 1,0.25
    bench bench-monarch-baseline 200 FFTCONV_CUDA_MONARCH=0 --backend cuda --dtype f16,bf16 \
        --sizes 256..4M --reps 5 --keep-frequencies 1,0.25
    # 32K .. 128K: one thread-block cluster per pair (sm_90; off by default since session 10's
    # H200 run: 1.00x / 0.98x / 0.90x of the four launches bench-monarch above ran).
    bench bench-monarch-cluster 60 FFTCONV_CUDA_MONARCH_CLUSTER=1 --backend cuda --dtype f16 \
        --sizes 32K..128K --reps 5
    # The Monarch kernels below 8K with registers for 1 block per SM (default 2 since session
    # 10: the backward's 167 registers at 1 ran 1.6-1.7x slower on the H200).
    bench bench-monarch-min-blocks 60 FFTCONV_CUDA_MONARCH_MIN_BLOCKS=1 --backend cuda \
        --dtype f16 --sizes 256,1K,4K --backward --reps 5
fi
# The same suites on the passes the Monarch pass replaced (FFTCONV_CUDA_MONARCH=0).
step test-conformance-cuda-no-monarch 120 env FFTCONV_CUDA_MONARCH=0 "$T/conv-conformance" \
    cuda --test-threads 8
step test-backend-cuda-forward-no-monarch 120 env FFTCONV_CUDA_MONARCH=0 \
    "$T/backend-cuda-forward" --test-threads 4 --nocapture
step test-backward-cuda-no-monarch 120 env FFTCONV_CUDA_MONARCH=0 "$T/conv-backward" cuda \
    --test-threads 8
if [ "${1:-}" != "--no-bench" ]; then
    # 2. The main table: forward, backward, 75% sparsity, up to 64K (CUDA; cuFFT in the same run).
    bench bench-f16 150 --backend cuda --dtype f16 --sizes 256..64K --backward --reps 3 \
        --keep-frequencies 1,0.25
    # FlashFFTConv's own shapes (ANCHORS.md), so times compare with its table directly.
    bench bench-anchors 120 --backend cuda,vulkan --dtype f16 --anchors --reps 3
    # ThunderKittens' case (ANCHORS.md: 0.234 ms at N = 4096 circular, B = 16, H = 1024, bf16).
    bench bench-thunderkittens 60 --backend cuda,vulkan --dtype bf16 --circular --sizes 1K,4K \
        --shape 16x1024 --reps 5
    # 3. A/B experiments at five sizes, each against the default in its own run.
    bench bench-radix16 60 FFTCONV_CUDA_RADIX_LOG2=4 --backend cuda --dtype f16 --sizes $S --reps 3
    bench bench-vector-io 60 FFTCONV_CUDA_VECTOR_IO=1 --backend cuda --dtype f16 --sizes $S \
        --reps 3
    bench bench-segment-table 60 FFTCONV_CUDA_SEGMENT_TABLE=1 --backend cuda --dtype f16 \
        --sizes $S --reps 3
fi
# 4. Vulkan on NVIDIA: the cooperative-matrix path (f16, bf16; NVIDIA lists 16x16x16) must be
# selected; then the portable path forced, for correctness and the A/B.
step test-conformance-vulkan 120 "$T/conv-conformance" vulkan --test-threads 8
step test-backward-vulkan 120 "$T/conv-backward" vulkan --test-threads 8
step test-backend-vulkan-forward 120 env FFTCONV_REQUIRE_COOPERATIVE_MATRIX=1 \
    "$T/backend-vulkan-forward" --test-threads 4
step test-backend-vulkan-probe 60 "$T/backend-vulkan-probe" --nocapture
step test-conformance-vulkan-portable 120 env FFTCONV_VULKAN_PORTABLE=1 "$T/conv-conformance" \
    vulkan --test-threads 8
step test-backend-vulkan-forward-f16-products 90 env FFTCONV_REQUIRE_COOPERATIVE_MATRIX=1 \
    FFTCONV_VULKAN_COOP_F16_PRODUCTS=1 "$T/backend-vulkan-forward" --test-threads 4
if [ "${1:-}" != "--no-bench" ]; then
    bench bench-vulkan 90 --backend vulkan --dtype f16 --sizes $S --reps 3
    bench bench-vulkan-portable 90 FFTCONV_VULKAN_PORTABLE=1 --backend vulkan --dtype f16 \
        --sizes $S --reps 3
    bench bench-vulkan-coop-f16-products 60 FFTCONV_VULKAN_COOP_F16_PRODUCTS=1 --backend vulkan \
        --dtype f16 --sizes $S --reps 3
    # The Vulkan shader experiments (lavapipe measured both slower; NVIDIA's compiler may not).
    bench bench-vulkan-fast-div 45 FFTCONV_VULKAN_FAST_DIV=1 --backend vulkan --dtype f16 \
        --sizes 256,4K,64K --reps 3
    bench bench-vulkan-const-twiddles 45 FFTCONV_VULKAN_CONST_TWIDDLES=1 --backend vulkan \
        --dtype f16 --sizes 256,4K,64K --reps 3
    # 5. The long sizes.
    bench bench-f16-long 150 --backend cuda --dtype f16 --sizes 128K..4M --backward --reps 3
fi
if [ "${FFTCONV_PROFILE:-0}" = 1 ]; then
    # 6. Tuning data: the tensor-core rounds (slower in 2026-11-26's run), the middle round off,
    # and ncu on the fused kernels.
    bench bench-tensor-cores 60 FFTCONV_CUDA_TENSOR_CORES=1 --backend cuda --dtype f16 \
        --sizes $S --reps 3
    bench bench-middle-off 60 FFTCONV_CUDA_MIDDLE_ROUND=0 --backend cuda --dtype f16 --sizes $S \
        --reps 3
    # The fused kernels at 4K and 16K (forward and backward), then every kernel of a 64K call
    # (column passes too: the multi-pass sizes are the furthest from their target).
    step ncu 90 /usr/local/cuda/bin/ncu -k regex:fused --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section InstructionStats --section ComputeWorkloadAnalysis \
        "$here/bin/xtask" bench --backend cuda --dtype f16 --sizes 4K,16K --reps 1 --mb 64 --backward
    step ncu-monarch 90 env FFTCONV_CUDA_MONARCH=1 /usr/local/cuda/bin/ncu -k regex:monarch \
        --launch-count 11 --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section InstructionStats --section ComputeWorkloadAnalysis \
        "$here/bin/xtask" bench --backend cuda --dtype f16 --sizes 256,4K,16K,64K --reps 1 --mb 64
    step ncu-64k 90 /usr/local/cuda/bin/ncu -k regex:fftconv_ --launch-count 8 \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section InstructionStats --section MemoryWorkloadAnalysis \
        "$here/bin/xtask" bench --backend cuda --dtype f16 --sizes 64K --reps 1 --mb 64
fi
exit $status
"#;

fn cargo(root: &Path, args: &[&str]) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("cargo {} failed", args.join(" ")));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("cargo output: {e}"))
}

/// The package name in a cargo package id: `path+file:///.../crates/conv#0.1.0` (the folder
/// name, which is the package name in this workspace) or `...#name@0.1.0`.
fn package_name(id: &str) -> Option<String> {
    if let Some(url) = id.strip_prefix("path+") {
        let (path, fragment) = url.rsplit_once('#')?;
        if let Some((name, _)) = fragment.split_once('@') {
            return Some(name.to_string());
        }
        return path.rsplit('/').next().map(str::to_string);
    }
    id.split_whitespace().next().map(str::to_string)
}

/// Copies `src` to `dst` and strips its symbols (the bundle must stay small).
fn install(src: &Path, dst: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(dst);
    std::fs::copy(src, dst).map_err(|e| format!("copying {}: {e}", src.display()))?;
    let stripped = Command::new("strip")
        .arg(dst)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        eprintln!("note: could not strip {}", dst.display());
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dst).map_err(|e| format!("creating {}: {e}", dst.display()))?;
    let entries = std::fs::read_dir(src).map_err(|e| format!("reading {}: {e}", src.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        let target = dst.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            // The helper files are read-only: replace, do not overwrite.
            let _ = std::fs::remove_file(&target);
            std::fs::copy(&path, &target)
                .map_err(|e| format!("copying {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> Result<u64, String> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf, String> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "no workspace root".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_from_ids() {
        assert_eq!(
            package_name("path+file:///work/main/crates/conv#0.1.0").as_deref(),
            Some("conv")
        );
        assert_eq!(
            package_name("path+file:///work/main/crates/backend-vulkan#0.1.0").as_deref(),
            Some("backend-vulkan")
        );
        assert_eq!(
            package_name("path+file:///work/main/crates/cli#cli@0.1.0").as_deref(),
            Some("cli")
        );
        assert_eq!(
            package_name("conv 0.1.0 (path+file:///work/main/crates/conv)").as_deref(),
            Some("conv")
        );
    }
}
