#!/usr/bin/env bash
# Install learn2learn 0.2.0 (its last release) into the given Python environment.
#
# Why a script: the 0.2.0 sdist ships Cython-generated C that includes `longintrepr.h`, a header
# Python 3.11 removed (learn2learn issue #413), so `pip install learn2learn` fails to build.
# Recipe: download the sdist, regenerate the C with Cython < 3, build a wheel without build
# isolation, install it without its unneeded deps (gsutil, qpth), then the deps it needs at import.
#
# Usage: scripts/install_learn2learn.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
PY=$(realpath -s "${1:-.venv/bin/python}")
VERSION=0.2.0

if "$PY" -c "import learn2learn, sys; sys.exit(learn2learn.__version__ != '$VERSION')" 2>/dev/null; then
  echo "learn2learn $VERSION already installed"; exit 0
fi

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$PY" -m pip install --quiet "cython<3" "setuptools<81" wheel
# Only learn2learn's sdist: `--no-binary :all:` would also build pip's build dependencies (Cython)
# from source just to read the sdist's metadata, which took most of a fresh `make install`.
"$PY" -m pip download --quiet --no-deps --no-binary learn2learn "learn2learn==$VERSION" -d "$work"
tar -xzf "$work/learn2learn-$VERSION.tar.gz" -C "$work"
src="$work/learn2learn-$VERSION"
# Regenerate the C sources for this Python (the shipped ones target Python <= 3.10).
(cd "$src" && "$PY" -m cython -3 learn2learn/data/*.pyx)
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$work/dist" "$src"
"$PY" -m pip install --quiet --no-deps "$work"/dist/learn2learn-*.whl
# What learn2learn imports at load time (not gsutil or qpth, which only some extras use).
"$PY" -m pip install --quiet gym torchvision scipy requests tqdm
"$PY" -c "import learn2learn; print('learn2learn', learn2learn.__version__, 'installed')"
