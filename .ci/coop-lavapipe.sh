#!/usr/bin/env bash
# Fetches a lavapipe with VK_KHR_cooperative_matrix (Mesa 26 from trixie-backports, which lists
# 8x8x8 f16 -> f32 subgroup shapes), its validation layer and the trixie libraries they need,
# glibc included, unpacked under target/coop-lavapipe/ (no root, nothing installed system-wide),
# and writes target/coop-lavapipe/run: a wrapper that runs a program under that glibc's loader
# with that lavapipe as the only Vulkan driver. Cargo runs test binaries through it with
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/target/coop-lavapipe/run
# so the Vulkan backend's cooperative-matrix shaders run on the CPU. Idempotent: a finished
# unpack is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/target/coop-lavapipe"
if [ -x "$dest/run" ]; then
    echo "$dest/run (cached)"
    exit 0
fi
rm -rf "$dest.partial"
mkdir -p "$dest.partial/debs" "$dest.partial/root"
cd "$dest.partial"
mirror=http://deb.debian.org/debian
for suite in trixie trixie-backports; do
    curl -fsS --retry 3 -o "$suite.xz" "$mirror/dists/$suite/main/binary-amd64/Packages.xz"
    xz -dc "$suite.xz" >"$suite.packages"
done
# The dependency closure of mesa-vulkan-drivers (from backports), libvulkan1 and the validation
# layer (one that knows VK_KHR_cooperative_matrix), first alternatives, each package from trixie
# unless only backports has it.
python3 - >files.txt <<'PY'
import re, sys
def index(path):
    out, cur = {}, {}
    for line in open(path, encoding="utf-8", errors="replace"):
        if line == "\n":
            if "Package" in cur:
                out.setdefault(cur["Package"], cur)
            cur = {}
        elif line[0] not in " \t":
            k, _, v = line.partition(":")
            cur[k] = v.strip()
    return out
main, bpo = index("trixie.packages"), index("trixie-backports.packages")
provides = {}
for name, p in main.items():
    for x in p.get("Provides", "").split(","):
        x = x.strip().split(" ")[0]
        if x:
            provides.setdefault(x, name)
skip = {"debconf", "debconf-2.0", "perl-base", "dpkg", "libc-bin", "usrmerge", "base-files"}
want, seen, files = ["mesa-vulkan-drivers", "libvulkan1", "vulkan-validationlayers"], set(), []
while want:
    n = want.pop()
    if n in seen or n in skip or n.startswith("gcc-") and n.endswith("-base"):
        continue
    seen.add(n)
    p = bpo.get(n) if n == "mesa-vulkan-drivers" else main.get(n) or bpo.get(n)
    if p is None and n in provides:
        p = main[provides[n]]
    if p is None:
        sys.exit(f"trixie has no package {n}")
    files.append(p["Filename"])
    for field in ("Depends", "Pre-Depends"):
        for alt in p.get(field, "").split(","):
            a = re.sub(r"\(.*?\)", "", alt.split("|")[0]).strip().split(":")[0]
            if a:
                want.append(a)
print("\n".join(sorted(set(files))))
PY
echo "coop-lavapipe: $(wc -l <files.txt) packages"
while read -r f; do
    curl -fsS --retry 3 -o "debs/$(basename "$f")" "$mirror/$f"
    dpkg-deb -x "debs/$(basename "$f")" root
done <files.txt
lib="$dest/root/usr/lib/x86_64-linux-gnu"
printf '{"ICD":{"api_version":"1.4.0","library_path":"%s/libvulkan_lvp.so"},"file_format_version":"1.0.1"}\n' \
    "$lib" >lvp_icd.json
cat >run <<EOF
#!/bin/sh
# Runs a program under trixie's glibc with Mesa 26's lavapipe (cooperative matrices) as the only
# Vulkan driver and trixie's validation layer (written by .ci/coop-lavapipe.sh).
export VK_DRIVER_FILES="$dest/lvp_icd.json" VK_ICD_FILENAMES="$dest/lvp_icd.json"
export VK_LAYER_PATH="$dest/root/usr/share/vulkan/explicit_layer.d"
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "\$@"
EOF
chmod +x run
rm -rf debs ./*.xz ./*.packages
cd ..
mv "$dest.partial" "$dest"
"$dest/run" /bin/true
echo "$dest/run"
