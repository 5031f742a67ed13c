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
