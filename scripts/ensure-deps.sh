#!/usr/bin/env bash
# Makes sure this machine can build Poller: a Swift 6.1+ toolchain on the PATH and liburing
# (Debian's liburing-dev). Installs liburing-dev with apt-get when it is missing and we are
# root; otherwise says exactly what to do. Sourced or run by the other scripts.
set -euo pipefail

# The library list is read into a variable first: `ldconfig -p | grep -q` under pipefail fails
# at random, since grep exits at its first match and ldconfig dies of SIGPIPE (issue 11).
have_liburing() {
  local libs
  libs=$(ldconfig -p 2>/dev/null) || libs=""
  [ -f /usr/include/liburing.h ] && [[ "$libs" == *liburing.so.2* ]] &&
    { [ -e /usr/lib/x86_64-linux-gnu/liburing.so ] || [ -e /usr/lib/aarch64-linux-gnu/liburing.so ] ||
      ls /usr/lib/*/liburing.so /usr/lib/liburing.so >/dev/null 2>&1; }
}

if ! command -v swift >/dev/null 2>&1; then
  echo "ensure-deps: no 'swift' on the PATH. Install a Swift 6.1+ toolchain (swift.org) and retry." >&2
  exit 1
fi

if have_liburing; then
  exit 0
fi

echo "ensure-deps: liburing-dev is missing; installing it (needed for the io_uring backend)." >&2
if [ "$(id -u)" != 0 ]; then
  cat >&2 <<'MSG'
ensure-deps: not root, so liburing-dev cannot be installed here. Either:
  - ask an administrator to run: apt-get update && apt-get install -y liburing-dev
  - or build without io_uring:  swift build --disable-default-traits   (epoll only)
MSG
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<'MSG'
ensure-deps: no apt-get on this machine. Install liburing (headers and the liburing.so link)
with your package manager (for example 'dnf install liburing-devel'), or build epoll-only with
'swift build --disable-default-traits'.
MSG
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq liburing-dev >/dev/null
if ! have_liburing; then
  echo "ensure-deps: apt-get reported success but liburing is still not usable." >&2
  exit 1
fi
echo "ensure-deps: liburing-dev installed." >&2
