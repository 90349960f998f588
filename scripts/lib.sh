# Shell functions shared by the scripts in this directory; source it:
#   . scripts/lib.sh     (from the repository root, as scripts/test does)
# Nothing here runs on its own.

# A step's title, with the time since the script started (which step costs
# what, in CI's log).
say() { printf '\n==> %s  [%dm%02ds]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }
need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
ensure_pkg() { # ensure_pkg COMMAND PACKAGE... (COMMAND __x__: install, check nothing)
  local cmd=$1; shift
  if command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ]; then return 0; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: \`$cmd\` is missing and apt-get is not available: install the package(s) $* and run again" >&2
    exit 1
  fi
  say "installing $* (for \`$cmd\`)"
  if [ -z "$apt_updated" ]; then need_root apt-get update -qq; apt_updated=1; fi
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
    echo "error: apt-get could not install $* (for \`$cmd\`): install \`$cmd\` by other means (README.md, Quick start) and run again" >&2
    exit 1
  }
  case "$cmd" in __*__) return 0 ;; esac
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || { echo "error: installing $* did not provide \`$cmd\`" >&2; exit 1; }
}

# ensure_libclang: installs libclang-dev when have_libclang (below) finds no
# libclang, and fails with a clear line when even that does not provide one.
ensure_libclang() {
  have_libclang >/dev/null && return 0
  ensure_pkg __libclang__ libclang-dev
  have_libclang >/dev/null || {
    echo "error: no libclang for bindgen (libgssapi's bindings) after installing libclang-dev: install libclang and set LIBCLANG_PATH to its directory" >&2
    exit 1
  }
}

# have_libclang: succeeds when bindgen (libgssapi-sys's build script) will
# find libclang, looking where clang-sys (1.9, `runtime` feature, as bindgen
# enables it) looks, for the names it accepts:
#   libclang.so, libclang-*.so, libclang.so.*, libclang-*.so.*
# but never libclang-cpp* (the C++ library, a different one, which clang-sys
# skips too; Debian's libclang-cpp14 alone does not make bindgen work).
#
# With LIBCLANG_PATH set, clang-sys looks there only (a directory, or the
# library file itself), and so does this. Otherwise: `llvm-config --prefix`'s
# bin, lib and lib64; LD_LIBRARY_PATH; LIBRARY_PATH; then /usr/local/llvm*/lib*
# and /usr/local/lib*, /usr/lib* with up to two levels below (which includes
# /usr/lib/llvm-NN/lib and /usr/lib/x86_64-linux-gnu).
# Prints the library it found.
have_libclang() {
  local dirs=() d f name prefix
  if [ -n "${LIBCLANG_PATH:-}" ]; then
    if [ -f "$LIBCLANG_PATH" ] && libclang_name "$(basename -- "$LIBCLANG_PATH")"; then
      echo "$LIBCLANG_PATH"
      return 0
    fi
    dirs=("$LIBCLANG_PATH")
  else
    if prefix=$("${LLVM_CONFIG_PATH:-llvm-config}" --prefix 2>/dev/null); then
      dirs+=("$prefix/bin" "$prefix/lib" "$prefix/lib64")
    fi
    local paths=()
    IFS=: read -ra paths <<<"${LD_LIBRARY_PATH:-}:${LIBRARY_PATH:-}"
    dirs+=("${paths[@]}")
    # The trailing slash makes the globs match directories only.
    for d in /usr/local/llvm*/lib*/ /usr/local/lib*/*/*/ /usr/local/lib*/*/ /usr/local/lib*/ \
      /usr/lib*/*/*/ /usr/lib*/*/ /usr/lib*/; do
      dirs+=("${d%/}")
    done
  fi
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    for f in "$d"/libclang*.so*; do
      [ -e "$f" ] || continue
      name=$(basename -- "$f")
      if libclang_name "$name"; then
        echo "$f"
        return 0
      fi
    done
  done
  return 1
}

# libclang_name NAME: is NAME a file name clang-sys loads as libclang?
libclang_name() {
  case "$1" in
    *-cpp.*) return 1 ;;
    libclang.so | libclang-*.so | libclang.so.* | libclang-*.so.*) return 0 ;;
    *) return 1 ;;
  esac
}

# What the example services need to build: a C compiler (aws-lc), and for
# SPNEGO MIT Kerberos headers, pkg-config and libclang (libgssapi's bindings).
ensure_example_deps() {
  if ! command -v cc >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "==> installing gcc (a C compiler is needed to build aws-lc)"
      if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq gcc >/dev/null
      else sudo apt-get update -qq && sudo apt-get install -y -qq gcc >/dev/null; fi
    else
      echo "error: no C compiler: install gcc and run again" >&2; exit 1
    fi
  fi
  # The examples include SPNEGO (--keytab): MIT Kerberos headers and libclang
  # for libgssapi's bindings.
  need_pkgs=""
  command -v krb5-config >/dev/null 2>&1 || need_pkgs="$need_pkgs libkrb5-dev"
  command -v pkg-config >/dev/null 2>&1 || need_pkgs="$need_pkgs pkg-config"
  have_libclang >/dev/null || need_pkgs="$need_pkgs libclang-dev"
  if [ -n "$need_pkgs" ]; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "==> installing$need_pkgs (to build the Kerberos support)"
      if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_pkgs >/dev/null
      else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need_pkgs >/dev/null; fi
    else
      echo "error: install$need_pkgs and run again" >&2; exit 1
    fi
  fi
}

# check_disk GIB WHAT: a warning line when the file system that will hold
# the build directory (CARGO_TARGET_DIR, else ./target) has less than GIB
# GiB free, counting what target/ already holds as reusable. A full disk
# otherwise shows only as rustc's "No space left on device" deep in a build.
check_disk() {
  local want=$1 what=$2 dir="${CARGO_TARGET_DIR:-$PWD/target}" probe free_k have_k=0
  probe=$dir
  while [ ! -d "$probe" ]; do probe=$(dirname -- "$probe"); done
  free_k=$(df -Pk -- "$probe" | awk 'NR==2 {print $4}')
  if [ -d "$dir" ]; then have_k=$(du -sk -- "$dir" 2>/dev/null | awk '{print $1}'); fi
  if [ $(((free_k + have_k) / 1048576)) -lt "$want" ]; then
    echo "warning: $((free_k / 1048576)) GiB free for $dir (which holds $((have_k / 1048576)) GiB); $what takes about $want GiB: free some space or point CARGO_TARGET_DIR elsewhere, or the build may stop with \"No space left on device\"" >&2
  fi
}
