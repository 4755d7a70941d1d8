#!/usr/bin/env bash
# Builds a Rust workspace for x86_64-pc-windows-gnu and runs its tests under wine64, on
# Debian 12 (bookworm), as root (it installs packages when they are missing).
#
# Usage: .ci/windows-wine.sh <project-dir> [cargo test args...]
#
# rustup here has no Windows target and cannot download one, so the compiler is Debian's
# rustc-web (bookworm-security), unpacked privately rather than installed (it cannot clash
# with rustup or with Debian's rustc package), with a Windows std built from Debian's
# rust-web-src once. It needs only apt and crates.io.
#
# Cache: everything it builds or unpacks goes to $WIN_TOOLS (default /tmp/win-tools); keep
# that directory between CI runs. The first run takes a few minutes (the std build), later
# ones reuse it. Runs that share a cache may run at once: the set-up steps take a lock.
#
# Wine 8.0 quirks handled here: it lacks bcryptprimitives.dll, which Rust's std >= 1.78
# imports (ProcessPrng), so step 3 builds a small stand-in; and a panic with
# RUST_BACKTRACE=1 can crash its dbghelp, so the tests run with RUST_BACKTRACE=0.
set -euo pipefail
PROJ=$(cd "${1:?usage: windows-wine.sh <project-dir> [cargo test args...]}" && pwd)
shift
TOOLS=${WIN_TOOLS:-/tmp/win-tools}
T=x86_64-pc-windows-gnu
WINE=/usr/lib/wine/wine64 # Debian's wine64 package puts it here, not on PATH
mkdir -p "$TOOLS/bin"

# Writes a file only when its content changes, so a run sharing the cache never sees a
# wrapper script half-written.
put() {
  local file=$1 text=$2
  if [ "$(cat "$file" 2>/dev/null)" != "$text" ]; then
    printf '%s\n' "$text" >"$file.tmp"
    chmod +x "$file.tmp"
    mv "$file.tmp" "$file"
  fi
}

export RUSTC="$TOOLS/bin/rustc" RUSTDOC="$TOOLS/bin/rustdoc"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$TOOLS/bin/wine-runner"
export WINEPREFIX=${WINEPREFIX:-$TOOLS/prefix} WINEDEBUG=${WINEDEBUG:--all}
export WINEDLLOVERRIDES=${WINEDLLOVERRIDES:-mscoree,mshtml=}
unset DISPLAY WAYLAND_DISPLAY

# Steps 0-3 set up the cache, under a lock held until the tests start.
exec 9>"$TOOLS/.lock"
flock 9

# 0. System packages: wine64 (64-bit only wine, 8.0 in bookworm) and the mingw gcc (linker
#    and C runtime).
if ! command -v x86_64-w64-mingw32-gcc >/dev/null || [ ! -x "$WINE" ]; then
  apt-get update -qq
  apt-get install -y --no-install-recommends wine64 gcc-mingw-w64-x86-64
fi

# 1. Debian's rustc-web compiler and std sources, unpacked into $TOOLS/rw (no dpkg install).
if [ ! -x "$TOOLS/rw/usr/bin/rustc" ]; then
  apt-cache show rustc-web >/dev/null 2>&1 || apt-get update -qq
  LIBSTD=$(apt-cache depends libstd-rust-web-dev | awk '/Depends: libstd-rust-web-[0-9]/{print $2; exit}')
  LLVM=$(apt-cache depends "$LIBSTD" | awk '/Depends: libllvm[0-9]/{print $2; exit}')
  rm -rf "$TOOLS/debs" "$TOOLS/rw"
  mkdir -p "$TOOLS/debs"
  (cd "$TOOLS/debs" && apt-get download rustc-web libstd-rust-web-dev "$LIBSTD" rust-web-src "$LLVM")
  for f in "$TOOLS"/debs/*.deb; do dpkg-deb -x "$f" "$TOOLS/rw"; done
fi
for b in rustc rustdoc; do
  # \$: the wrapper expands LD_LIBRARY_PATH and its arguments when it runs.
  put "$TOOLS/bin/$b" "#!/bin/sh
LD_LIBRARY_PATH=\"$TOOLS/rw/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\" exec \"$TOOLS/rw/usr/bin/$b\" \"\$@\""
done

# 2. A Windows std for that compiler, built once with -Zbuild-std and put in its sysroot.
SYSLIB="$TOOLS/rw/usr/lib/rustlib/$T/lib"
if ! ls "$SYSLIB"/libstd-*.rlib >/dev/null 2>&1; then
  D="$TOOLS/stdbuild"
  rm -rf "$D"
  mkdir -p "$D/src"
  printf '[package]\nname = "stdbuild"\nversion = "0.0.0"\nedition = "2021"\n[profile.release]\ndebug = 1\n' >"$D/Cargo.toml"
  echo '#[test] fn t() {}' >"$D/src/lib.rs"
  (cd "$D" && RUSTC_BOOTSTRAP=1 cargo test --no-run --release --target $T \
    -Zbuild-std=std,panic_unwind,panic_abort,test,proc_macro)
  mkdir -p "$SYSLIB"
  find "$D/target/$T/release/deps" -name '*.rlib' ! -name 'libstdbuild-*' -exec cp {} "$SYSLIB/" \;
fi

# 3. The wine prefix, with the bcryptprimitives.dll stand-in (ProcessPrng over RtlGenRandom).
if [ ! -f "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" ]; then
  "$WINE" wineboot --init >/dev/null 2>&1 || true
  cat >"$TOOLS/bcryptprimitives.c" <<'C'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID, ULONG); /* RtlGenRandom */
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE p, SIZE_T n) {
  while (n) { ULONG c = n > 0x10000000 ? 0x10000000 : (ULONG)n;
    if (!SystemFunction036(p, c)) return FALSE; p += c; n -= c; }
  return TRUE; }
C
  x86_64-w64-mingw32-gcc -O2 -shared -s -Wl,--kill-at \
    -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
    "$TOOLS/bcryptprimitives.c" -ladvapi32
fi
put "$TOOLS/bin/wine-runner" "#!/bin/sh
exec $WINE \"\$@\""
exec 9>&- # unlocks; the tests need no lock

# 4. Build and test for Windows, in a target directory of its own (another rustc than the
#    Linux build's). The wineserver is left to exit by itself once its last client ends:
#    killing it would kill the tests of any other run that shares the prefix.
cd "$PROJ"
export RUST_BACKTRACE=0 CARGO_TARGET_DIR="$PROJ/target/wine"
cargo test --target $T "$@"
