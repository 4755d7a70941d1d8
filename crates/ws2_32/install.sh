#!/usr/bin/env bash
# Installs the C interface for C programs: winsock2.h, libws2_32.so, libws2_32.a and a
# pkg-config file, ws2_32.pc.
#
#   crates/ws2_32/install.sh [--prefix DIR] [--from LIBDIR]
#
#   --prefix DIR   where to install (default /usr/local): DIR/include, DIR/lib and
#                  DIR/lib/pkgconfig
#   --from LIBDIR  install the libraries already built in LIBDIR; without it the script
#                  builds them first (cargo build --release -p ws2_32)
#
# Then: cc app.c $(pkg-config --cflags --libs ws2_32), with PKG_CONFIG_PATH including
# DIR/lib/pkgconfig unless pkg-config searches it already.
set -euo pipefail

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }

crate=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$crate/../.." && pwd)
prefix=/usr/local
from=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --from) from=${2:?--from needs a directory}; shift 2 ;;
    --from=*) from=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -z "$from" ]; then
  cargo build --release -p ws2_32 --manifest-path "$root/Cargo.toml"
  from=${CARGO_TARGET_DIR:-$root/target}/release
fi
for lib in libws2_32.so libws2_32.a; do
  [ -f "$from/$lib" ] || { echo "install.sh: $from/$lib not found" >&2; exit 1; }
done

# The .pc file names the prefix, so it must be absolute.
mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)

install -D -m 644 "$crate/include/winsock2.h" "$prefix/include/winsock2.h"
install -D -m 755 "$from/libws2_32.so" "$prefix/lib/libws2_32.so"
install -D -m 644 "$from/libws2_32.a" "$prefix/lib/libws2_32.a"
mkdir -p "$prefix/lib/pkgconfig"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$crate/ws2_32.pc.in" \
  >"$prefix/lib/pkgconfig/ws2_32.pc"
echo "installed winsock2.h, libws2_32.so, libws2_32.a and ws2_32.pc under $prefix"
