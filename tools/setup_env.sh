#!/usr/bin/env bash
# Set up (idempotently) the project's virtual environment in .venv/ at the repository root.
#
#   bash tools/setup_env.sh          # torch, dynnorm (editable), OpenMMLab, Lightning and test extras
#
# What takes time is cached: the mmcv 2.1.0 wheel (compiled from its sdist, ~10 min on 2 cores) is kept in
# $DYNNORM_CACHE/wheelhouse (default ~/.cache/dynnorm), and a stamp in .venv records the inputs of the last
# successful setup, so a second run returns in a second.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
cache="${DYNNORM_CACHE:-$HOME/.cache/dynnorm}"
wheelhouse="$cache/wheelhouse/torch-2.14.1-py311"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
MMCV_VERSION=2.1.0
# setuptools < 82 still ships pkg_resources, which mmcv's setup.py and mmengine's Config (for `mmdet::` bases) import.
SETUPTOOLS_PIN=setuptools==69.5.1

inputs_hash=$(cat "$root/setup.cfg" "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
stamp="$venv/.dynnorm-setup-$inputs_hash"
if [[ -f "$stamp" ]]; then
  echo "[setup] .venv is up to date ($stamp)"
  exit 0
fi

pip_() {
  # The machine-wide pip config names local package folders that may not exist; drop that noise.
  "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
pip_install() { pip_ install -q "$@"; }

echo "[setup] virtual environment: $venv"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip_install --upgrade pip wheel
pip_install "${TORCH_PINS[@]}"
# torch declares setuptools>=77 but runs with the pinned one; the pin must come after torch.
pip_install "$SETUPTOOLS_PIN"

build_mmcv_wheel() {
  # mmcv publishes no wheels for this torch: compile the sdist with CPU ops against the installed torch.
  # Its setup.py hard-codes -std=c++14/17, while torch >= 2.10 headers require C++20.
  local work
  work=$(mktemp -d)
  echo "[setup] building mmcv $MMCV_VERSION from source (about 10 minutes on 2 cores), cached in $wheelhouse"
  pip_ download -q --no-deps --no-binary=:all: --no-build-isolation -d "$work" "mmcv==$MMCV_VERSION"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
  pip_install ninja
  (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" \
    pip_ wheel -q --no-build-isolation --no-deps -w "$work/dist" .)
  mkdir -p "$wheelhouse"
  mv "$work"/dist/mmcv-*.whl "$wheelhouse/"
  rm -rf "$work"
}

if ! ls "$wheelhouse"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  build_mmcv_wheel
fi
pip_install "$wheelhouse"/mmcv-"$MMCV_VERSION"-*.whl
pip_install -e "$root[all,test]"
# Installing the extras may pull a newer setuptools: pin it back (see SETUPTOOLS_PIN).
pip_install "$SETUPTOOLS_PIN"

rm -f "$venv"/.dynnorm-setup-*
touch "$stamp"
echo "[setup] done"
