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

# bench_nginx_stream DIR CA SPEC...: start nginx's stream module (Debian's
# libnginx-mod-stream, installed when missing) as a relay that parses and
# records nothing, config and logs in DIR; its pid in STREAM_PID. Each SPEC
# is LISTEN_PORT:UPSTREAM_PORT[:tls] on 127.0.0.1; with tls the relay
# speaks TLS to the upstream, verified for "localhost" against CA, with
# session reuse.
bench_nginx_stream() {
    local dir=$1 ca=$2 mod=/usr/lib/nginx/modules/ngx_stream_module.so
    local spec listen up mode servers=""
    shift 2
    [ -f "$mod" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q libnginx-mod-stream >/dev/null
    for spec; do
        IFS=: read -r listen up mode <<<"$spec"
        servers+="
  server {
    listen 127.0.0.1:$listen; proxy_pass 127.0.0.1:$up;"
        [ "$mode" = tls ] && servers+="
    proxy_ssl on; proxy_ssl_verify on; proxy_ssl_name localhost;
    proxy_ssl_trusted_certificate $ca; proxy_ssl_session_reuse on;"
        servers+="
  }"
    done
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<NGX
load_module $mod;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
stream {
  tcp_nodelay on;$servers
}
NGX
    nginx -c "$dir/nginx.conf" -p "$dir" </dev/null
    STREAM_PID=$(cat "$dir/nginx.pid")
}
