# Sourced by quickstart.sh and test.sh: installs dlu (and EXTRAS) into ./.venv unless a
# virtualenv is active, and Debian's Fashion-MNIST where apt is usable. Idempotent.
# Sets PY to the Python to use.

_dlu_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="${VIRTUAL_ENV}/bin/python"
else
  if [ ! -x "${_dlu_root}/.venv/bin/python" ]; then
    echo "Creating ${_dlu_root}/.venv"
    "${PYTHON:-python3}" -m venv "${_dlu_root}/.venv"
  fi
  PY="${_dlu_root}/.venv/bin/python"
fi

# Reinstall only when the package metadata or the requested extras change.
_dlu_stamp_dir="$("${PY}" -c 'import sys; print(sys.prefix)')"
_dlu_stamp="${_dlu_stamp_dir}/.dlu-installed-$(cat "${_dlu_root}/setup.cfg" "${_dlu_root}/pyproject.toml" | sha1sum | cut -c1-12)-${EXTRAS:-none}"
if [ ! -f "${_dlu_stamp}" ]; then
  echo "Installing dlu${EXTRAS:+[${EXTRAS}]} and its dependencies (first run takes a minute or two)"
  "${PY}" -m pip install -q --upgrade pip
  "${PY}" -m pip install -q -e "${_dlu_root}${EXTRAS:+[${EXTRAS}]}"
  rm -f "${_dlu_stamp_dir}"/.dlu-installed-*
  touch "${_dlu_stamp}"
fi

# Real Fashion-MNIST offline: Debian ships the original IDX files.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  _sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then _sudo="sudo -n"; fi
  fi
  if [ "$(id -u)" = 0 ] || [ -n "${_sudo}" ]; then
    echo "Installing Debian's dataset-fashion-mnist"
    { ${_sudo} apt-get update -qq && DEBIAN_FRONTEND=noninteractive ${_sudo} apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
      || echo "Could not install dataset-fashion-mnist with apt; Fashion-MNIST needs tfds and internet, or --idx_dir"
  fi
fi
