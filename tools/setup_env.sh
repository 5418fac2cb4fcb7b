#!/usr/bin/env bash
# Set up (idempotently) the project's virtual environment in .venv/ at the repository root.
#
#   bash tools/setup_env.sh          # torch, dynnorm (editable), OpenMMLab, Lightning, test and docs extras
#
# What takes time is cached: the mmcv 2.1.0 wheel (compiled from its sdist, ~10 min on 2 cores) is kept in
# $DYNNORM_CACHE/wheelhouse (default ~/.cache/dynnorm), and a stamp in .venv records the inputs of the last
# successful setup, so a second run returns in a second. Each step prints one line; what pip and the compilers
# say goes to a log in .venv/setup-logs/, printed only when the step fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
logs="$venv/setup-logs"
cache="${DYNNORM_CACHE:-$HOME/.cache/dynnorm}"
wheelhouse="$cache/wheelhouse/torch-2.14.1-py311"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
MMCV_VERSION=2.1.0
# setuptools < 82 still ships pkg_resources, which mmcv's setup.py and mmengine's Config (for `mmdet::` bases) import.
SETUPTOOLS_PIN=setuptools==69.5.1

# The C++ operators are compiled by the editable install: their sources are inputs too.
inputs=("$root/setup.cfg" "$root/pyproject.toml" "$root/setup.py" "${BASH_SOURCE[0]}" "$root"/dynnorm/csrc/*)
inputs_hash=$(cat "${inputs[@]}" | sha256sum | cut -c1-16)
stamp="$venv/.dynnorm-setup-$inputs_hash"
if [[ -f "$stamp" ]]; then
  echo "[setup] .venv is up to date ($stamp)"
  exit 0
fi

pip_() {
  # The machine-wide pip config names local package folders that may not exist; drop that noise. (A pipe, not a
  # process substitution: the step's log is complete when pip returns.)
  "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 |
    { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

step() {
  # step NAME DESCRIPTION COMMAND...: run COMMAND with its output in $logs/NAME.log; on failure show the log's end.
  local log="$logs/$1.log" description=$2 status
  shift 2
  echo "[setup] $description (log: $log)"
  set +e
  (set -e; "$@") >"$log" 2>&1
  status=$?
  set -e
  if ((status != 0)); then
    echo "[setup] failed: $description (exit status $status); the end of $log:" >&2
    tail -n 200 "$log" >&2
    exit "$status"
  fi
}

install_torch() {
  pip_ install --upgrade pip wheel
  pip_ install "${TORCH_PINS[@]}"
  # torch declares setuptools>=77 but runs with the pinned one; the pin must come after torch.
  pip_ install "$SETUPTOOLS_PIN"
}

build_mmcv_wheel() {
  # mmcv publishes no wheels for this torch: compile the sdist with CPU ops against the installed torch.
  # Its setup.py hard-codes -std=c++14/17, while torch >= 2.10 headers require C++20.
  local work
  work=$(mktemp -d)
  pip_ download --no-deps --no-binary=:all: --no-build-isolation -d "$work" "mmcv==$MMCV_VERSION"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
  pip_ install ninja
  (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
    pip_ wheel --no-build-isolation --no-deps -w "$work/dist" .)
  mkdir -p "$wheelhouse"
  mv "$work"/dist/mmcv-*.whl "$wheelhouse/"
  rm -rf "$work"
}

install_dynnorm() {
  pip_ install "$wheelhouse"/mmcv-"$MMCV_VERSION"-*.whl
  # Without build isolation: dynnorm's C++ extension compiles against the installed torch (-v: the compiler's
  # output goes to the log). editable_mode=compat puts the repository root itself on the path (a .pth file),
  # not just the `dynnorm` package that setuptools' default editable finder maps: the repository-level
  # `tasks` and `benchmarks` packages then import from any folder, with no sys.path edits in scripts or tests.
  pip_ install -v --no-build-isolation -e "$root[all,test,docs]" --config-settings editable_mode=compat
  # Installing the extras may pull a newer setuptools: pin it back (see SETUPTOOLS_PIN).
  pip_ install "$SETUPTOOLS_PIN"
}

echo "[setup] virtual environment: $venv"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
mkdir -p "$logs"
step torch "installing ${TORCH_PINS[*]}" install_torch
if ! ls "$wheelhouse"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  step mmcv-build "building mmcv $MMCV_VERSION from source (about 10 minutes on 2 cores), cached in $wheelhouse" \
    build_mmcv_wheel
fi
step dynnorm "installing mmcv $MMCV_VERSION and dynnorm (editable) with its extras" install_dynnorm

rm -f "$venv"/.dynnorm-setup-*
touch "$stamp"
echo "[setup] done"
