# bench/lib.sh -- shell functions the bench scripts share (sourced).

# bench_data_dir DIR: a mailgated data folder (mode 0700) holding a
# self-signed P-256 certificate for CN=localhost as cert.pem / key.pem.
bench_data_dir() {
    mkdir -p "$1"
    chmod 0700 "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$1/key.pem" -out "$1/cert.pem" -days 2 \
        -subj /CN=localhost >/dev/null 2>&1
}

# bench_require_fresh PREFIX: stop when PREFIX is this tree's own install
# (var/install) and older than a C source of the tree: a stale build would
# be measured as if it were the code under test. STALE_OK=1 measures it
# anyway; another tree's install (PREFIX=, BASE=) is not checked.
bench_require_fresh() {
    local bin=$1/sbin/mailgated newer
    [ "${STALE_OK:-0}" = 1 ] && return 0
    [ "$1" = "$top/var/install" ] || return 0
    newer=$(cd "$top" && find core modules store -name '*.[ch]' -newer "$bin" -print -quit)
    [ -z "$newer" ] && return 0
    echo "$bin is older than $newer: rebuild it (./quickstart run," \
        "then Ctrl-C) or set STALE_OK=1" >&2
    exit 1
}
