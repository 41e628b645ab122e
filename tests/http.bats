#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# http.bats - images on web servers (the http protocol driver, drivers/curl.c, through libcurl): nginx servers
# started here on free ports of 127.0.0.1 (one process each, master_process off, their files under the
# test's temp dir) and stopped in teardown, over HTTPS with a CA and a certificate the test makes. qcow2,
# vmdk and vhdx images read like `qemu-img convert -O raw` of the local file, over http and https and
# through a redirect; a remote image's relative backing name resolves on its server; a local qcow2 overlay
# over a remote base (--backing URL) takes writes that qemu-img checks; a server killed or stopped during
# reads gives the reader EIO within --timeout, `ls` works meanwhile and reads succeed once it is back; a
# wrong certificate is exit 2 in one line (no silent insecure mode); a file replaced on the server while
# mounted gives EIO, never mixed bytes; a server that ignores Range is refused, one that refuses HEAD is
# read through a ranged GET; open costs one request (the first chunk's ranged GET); a URL written inside an image is refused (no request made) unless
# --unsafe-backing. Under a 100 ms server delay: readahead GETs span several chunks and many are in flight,
# a read's missing chunks go out in one round, and the partition probe asks both ends of the disk at once.

load helpers

setup() { setup_tmp; cd "$TMP"; }
teardown() { teardown_servers; }

# start_nginx NAME PORT ROOT [tls] [EXTRA DIRECTIVES]: nginx serving ROOT on 127.0.0.1:PORT as one
# process (pid in $TMP/NAME.pid, access log $TMP/NAME/access.log); tls: with $TMP/srv.pem and srv.key.
# NGINX_MAIN and NGINX_HTTP: more directives for the main and the http context (load_module, log_format).
start_nginx() {
  local name=$1 port=$2 root=$3 tls=${4:-} extra=${5:-}
  mkdir -p "$TMP/$name/tmp"
  local listen="listen 127.0.0.1:$port;"
  [ "$tls" = tls ] && listen="listen 127.0.0.1:$port ssl; ssl_certificate $TMP/srv.pem; ssl_certificate_key $TMP/srv.key;"
  cat > "$TMP/$name/nginx.conf" <<EOF
${NGINX_MAIN:-}
pid $TMP/$name/nginx.pid;
error_log $TMP/$name/error.log;
events { worker_connections 64; }
http {
  access_log $TMP/$name/access.log;
  client_body_temp_path $TMP/$name/tmp; proxy_temp_path $TMP/$name/tmp; fastcgi_temp_path $TMP/$name/tmp;
  uwsgi_temp_path $TMP/$name/tmp; scgi_temp_path $TMP/$name/tmp;
  ${NGINX_HTTP:-}
  server { $listen root $root; $extra }
}
EOF
  nginx -e "$TMP/$name/error.log" -c "$TMP/$name/nginx.conf" -g 'daemon off; master_process off;' 3>&- &
  echo $! > "$TMP/$name.pid"
  local i
  for i in $(seq 1 100); do
    curl -sk -o /dev/null "http$([ "$tls" = tls ] && echo s)://127.0.0.1:$port/" && return 0
    kill -0 "$(cat "$TMP/$name.pid")" 2>/dev/null || { cat "$TMP/$name/error.log" >&2; return 1; }
    sleep 0.05
  done
  echo "nginx $name did not answer" >&2; return 1
}

# make_ca NAME: a CA of the test ($TMP/NAME.pem, NAME.key).
make_ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/$1.key" -out "$TMP/$1.pem" -days 2 \
    -subj "/CN=imgfuse test CA $1" 2>/dev/null
}

# make_server_cert CA SAN: $TMP/srv.pem and srv.key for SAN (e.g. IP:127.0.0.1), signed by CA.
make_server_cert() {
  openssl req -newkey rsa:2048 -nodes -keyout "$TMP/srv.key" -out "$TMP/srv.csr" -subj "/CN=imgfuse test server" 2>/dev/null
  printf 'subjectAltName=%s\n' "$2" > "$TMP/san.ext"
  openssl x509 -req -in "$TMP/srv.csr" -CA "$TMP/$1.pem" -CAkey "$TMP/$1.key" -CAcreateserial -days 2 \
    -extfile "$TMP/san.ext" -out "$TMP/srv.pem" 2>/dev/null
}

@test "qcow2, vmdk and vhdx images on http, https (--cacert) and through a redirect read like qemu-img convert" {
  mkdir www
  format_trio www
  make_ca ca
  make_server_cert ca "IP:127.0.0.1,DNS:localhost"
  local port tport; port=$(free_port); tport=$(free_port)
  start_nginx plain "$port" "$TMP/www" "" "location /old/ { return 302 /d.qcow2; }"
  start_nginx secure "$tport" "$TMP/www" tls
  local f
  for f in d.qcow2 d.vmdk d.vhdx; do
    reads_like "www/$f" "http://127.0.0.1:$port/$f"
    reads_like "www/$f" --cacert "$TMP/ca.pem" "https://127.0.0.1:$tport/$f"
  done
  # several transfers in flight, and ranged GETs only (206)
  grep -c '"GET /d.qcow2 HTTP/1.1" 206' plain/access.log
  run grep -v '"curl/\|"GET /d\.[a-z2]* HTTP/1.1" 206 \|"HEAD /d\.[a-z2]* HTTP/1.1" 200 0 \|"HEAD /old/x HTTP/1.1" 302 ' plain/access.log
  echo "$output"
  [ -z "$output" ]
  # a redirect is followed (at open; the reads go where it led)
  run "$IMGFUSE" hash "http://127.0.0.1:$port/old/x"
  [ "$status" -eq 0 ]
  [ "${output%% *}" = "$(sha256sum < "$(raw_of www/d.qcow2)" | cut -d' ' -f1)" ]
  # convert and info take the same options
  "$IMGFUSE" convert -q --cacert "$TMP/ca.pem" -O raw "https://127.0.0.1:$tport/d.vhdx" conv.raw
  same_bytes conv.raw "$(raw_of www/d.qcow2)"
  run "$IMGFUSE" info --cacert "$TMP/ca.pem" -o x "https://127.0.0.1:$tport/d.vmdk"
  [ "$status" -eq 2 ]
}

@test "a wrong certificate is exit 2 in one line: an unknown CA, no --cacert, a certificate for another name" {
  mkdir www
  qemu-img create -q -f qcow2 www/d.qcow2 8M
  make_ca ca
  make_ca other
  make_server_cert ca "DNS:elsewhere.example"
  local port; port=$(free_port)
  start_nginx secure "$port" "$TMP/www" tls
  local url="https://127.0.0.1:$port/d.qcow2"
  run "$IMGFUSE" info "$url"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: $url: cannot reach the server: SSL certificate problem: unable to get local issuer certificate" ]]
  run "$IMGFUSE" info --cacert "$TMP/other.pem" "$url"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: $url: cannot reach the server: SSL certificate problem: "* ]]
  run "$IMGFUSE" info --cacert "$TMP/ca.pem" "$url"
  echo "$output"
  [ "$status" -eq 2 ]
  [ "${#lines[@]}" -eq 1 ]
  [[ "$output" == "imgfuse: $url: cannot reach the server: "*"127.0.0.1"* ]]
  run "$IMGFUSE" "$url" "$MNT"
  [ "$status" -eq 2 ]
  not_mounted "$MNT"
  # the right name: it opens
  stop_server secure
  make_server_cert ca "IP:127.0.0.1"
  start_nginx secure "$port" "$TMP/www" tls
  run "$IMGFUSE" info --cacert "$TMP/ca.pem" "$url"
  [ "$status" -eq 0 ]
  # --cacert for an image that is no https/s3 URL
  run "$IMGFUSE" info --cacert "$TMP/ca.pem" www/d.qcow2
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: --cacert: only for https:// and s3:// images (not www/d.qcow2)" ]
}

@test "a remote image's relative backing name resolves on the same server; a local overlay over a remote base takes writes" {
  mkdir -p www/sub
  qemu-img create -q -f qcow2 www/sub/base.qcow2 32M
  qio www/sub/base.qcow2 'write -P 0x55 0 32M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 www/sub/top.qcow2
  qio www/sub/top.qcow2 'write -P 0x66 1M 1M'
  local port; port=$(free_port)
  start_nginx srv "$port" "$TMP/www"
  mount_img "http://127.0.0.1:$port/sub/top.qcow2"
  same_bytes "$MNT/disk.raw" "$(raw_of www/sub/top.qcow2)"
  grep -q "http://127.0.0.1:$port/sub/base.qcow2" "$MNT/info"
  unmount_img
  # a local qcow2 overlay over the remote base
  qemu-img create -q -f qcow2 -b "$TMP/www/sub/base.qcow2" -F qcow2 ov.qcow2
  overlay_takes_writes "http://127.0.0.1:$port/sub/base.qcow2"
  cmp -n 1048576 -i 8M:8M after.raw "$(raw_of www/sub/base.qcow2)"
  # the http driver itself is read-only
  run "$IMGFUSE" --rw -f raw "http://127.0.0.1:$port/sub/base.qcow2" "$MNT"
  [ "$status" -eq 2 ]
  [[ "$output" == *"the http driver is read-only"* ]]
}

@test "a server killed during reads: EIO within --timeout, ls works, reads succeed once it is back" {
  mkdir www
  truncate -s 64M www/r.raw
  qemu-io -f raw -c 'write -P 0x5a 0 64M' www/r.raw >/dev/null
  local port; port=$(free_port)
  start_nginx srv "$port" "$TMP/www" "" "limit_rate 1m;" # 16 GETs at once: 16 MB/s, 60 MiB in ~4 s
  mount_img --direct-io --timeout 3 -f raw "http://127.0.0.1:$port/r.raw"
  killed_server_fails_reads srv
  # a server that hangs (stopped) costs the reader --timeout, not more; back, reads work again (new connections)
  start_nginx srv "$port" "$TMP/www"
  hung_server_fails_reads srv 700 www/r.raw
  unmount_img
  grep -q "a read failed" "$TMP/daemon.log"
}

@test "a file replaced on the server while mounted: EIO for what was not read yet, never mixed bytes" {
  mkdir www
  truncate -s 16M www/r.raw
  qemu-io -f raw -c 'write -P 0x41 0 16M' www/r.raw >/dev/null
  local port; port=$(free_port)
  start_nginx srv "$port" "$TMP/www"
  mount_img --direct-io -f raw "http://127.0.0.1:$port/r.raw"
  dd if="$MNT/disk.raw" of=first bs=64k count=1 iflag=direct 2>/dev/null
  cmp -n 65536 first www/r.raw
  # the same size, other bytes, another modification time: a new ETag
  qemu-io -f raw -c 'write -P 0x42 0 16M' www/r.raw >/dev/null
  touch -d '2001-01-01' www/r.raw
  run dd if="$MNT/disk.raw" of=later bs=64k count=1 skip=200 iflag=direct
  echo "$output"
  [ "$status" -ne 0 ]
  [[ "$output" == *"Input/output error"* ]]
  unmount_img
  grep -q "the file changed on the server since it was opened" "$TMP/daemon.log"
  grep -q '" 412 ' srv/access.log
}

@test "a server that ignores Range is refused; one that refuses HEAD is read (open sends no HEAD)" {
  mkdir www
  qemu-img create -q -f qcow2 www/d.qcow2 16M
  qio www/d.qcow2 'write -P 0x77 4M 1M'
  local port hport; port=$(free_port); hport=$(free_port)
  start_nginx norange "$port" "$TMP/www" "" "max_ranges 0;"
  run "$IMGFUSE" info "http://127.0.0.1:$port/d.qcow2"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: http://127.0.0.1:$port/d.qcow2: the server does not serve byte ranges (it answers Range with the whole file)" ]
  start_nginx nohead "$hport" "$TMP/www" "" 'if ($request_method = HEAD) { return 405; }'
  reads_like www/d.qcow2 "http://127.0.0.1:$hport/d.qcow2"
  run grep -c '"HEAD ' nohead/access.log
  [ "$output" = 0 ]
  run "$IMGFUSE" info "http://127.0.0.1:$hport/none.qcow2"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: http://127.0.0.1:$hport/none.qcow2: not found on the server (HTTP 404)" ]
}

@test "open is one round trip: a ranged GET of the first 256 KiB sizes the file and serves the reads inside it" {
  mkdir www
  qemu-img create -q -f qcow2 -o cluster_size=4096 www/d.qcow2 16M
  qio www/d.qcow2 'write -P 0x5a 0 64k'
  [ "$(stat -c %s www/d.qcow2)" -lt 262144 ]
  local port; port=$(free_port)
  start_nginx srv "$port" "$TMP/www"
  run "$IMGFUSE" hash "http://127.0.0.1:$port/d.qcow2"
  [ "$status" -eq 0 ]
  [ "${output%% *}" = "$(qemu-img convert -O raw www/d.qcow2 d.raw && sha256sum d.raw | cut -d' ' -f1)" ]
  grep '"imgfuse"' srv/access.log > req.log
  cat req.log
  [ "$(wc -l < req.log)" -eq 1 ]
  grep -q '"GET /d.qcow2 HTTP/1.1" 206 '"$(stat -c %s www/d.qcow2)"' ' req.log
  # a larger file: the first GET asks exactly one chunk, and no HEAD is sent
  head -c 1M /dev/urandom > www/big.raw
  run "$IMGFUSE" hash -f raw "http://127.0.0.1:$port/big.raw"
  [ "$status" -eq 0 ]
  [ "${output%% *}" = "$(sha256sum www/big.raw | cut -d' ' -f1)" ]
  grep '"imgfuse"' srv/access.log | grep big.raw | head -1 | grep -q '"GET /big.raw HTTP/1.1" 206 262144 '
  run grep -c '"HEAD ' srv/access.log
  [ "$output" = 0 ]
}

@test "a URL written inside an image is refused (no request made) unless --unsafe-backing; --timeout is checked" {
  mkdir www
  qemu-img create -q -f qcow2 www/base.qcow2 8M
  qio www/base.qcow2 'write -P 0x99 0 1M'
  local port; port=$(free_port)
  start_nginx srv "$port" "$TMP/www"
  qemu-img create -q -f qcow2 -u -b "http://127.0.0.1:$port/base.qcow2" -F qcow2 h.qcow2 8M
  refused_open h.qcow2 "backing file 'http://127.0.0.1:$port/base.qcow2' refused: a remote location named inside an image is never followed; use --backing-dir DIR or --backing FILE (or --unsafe-backing)"
  [ ! -s srv/access.log ] || ! grep -q base.qcow2 srv/access.log
  reads_like www/base.qcow2 --unsafe-backing h.qcow2
  grep -q "GET /base.qcow2" srv/access.log
  # a password in the URL: refused before any request, and never shown
  run "$IMGFUSE" --audit-log "$TMP/audit.log" "http://bob:hunter2@127.0.0.1:$port/base.qcow2" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: http://bob:***@127.0.0.1:$port/base.qcow2: a password in the URL is not supported (the http driver takes none)" ]
  run grep -q hunter2 "$TMP/audit.log"
  [ "$status" -ne 0 ]
  run "$IMGFUSE" --timeout 0 "http://127.0.0.1:$port/base.qcow2" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: http://127.0.0.1:$port/base.qcow2: http option 'timeout': 0 is not between 1 and 3600 seconds" ]
}

# start_slow_nginx NAME PORT ROOT SECONDS: start_nginx whose every answer waits SECONDS before its first byte
# (the echo module's echo_sleep, then the static file), as a distant server's; $TMP/NAME/span.log has
# "$msec $request_time $body_bytes_sent $http_range $http_user_agent" for each request.
start_slow_nginx() {
  NGINX_MAIN="load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;" \
    NGINX_HTTP='log_format span "$msec $request_time $body_bytes_sent $http_range $http_user_agent";' \
    start_nginx "$1" "$2" "$3" "" \
    "access_log $TMP/$1/span.log span; location / { echo_sleep $4; echo_exec @file; } location @file { }"
}

# max_in_flight LOG: the most requests a "$msec $request_time ..." access log shows in flight at once.
max_in_flight() {
  awk '{ printf "%.3f 1\n%.3f -1\n", $1 - $2, $1 }' "$1" | sort -n -k1,1 -k2,2 |
    awk '{ n += $2; if (n > m) m = n } END { print m + 0 }'
}

@test "a sequential reader's readahead asks several chunks per GET and several GETs at once; the bytes match" {
  mkdir www
  head -c 24M /dev/urandom > www/big.raw
  local port; port=$(free_port)
  # every answer waits 100 ms before its first byte, as a distant server's would
  start_slow_nginx srv "$port" "$TMP/www" 0.1
  mount_img -f raw "http://127.0.0.1:$port/big.raw"
  cat "$MNT/disk.raw" > got.raw
  unmount_img
  cmp got.raw www/big.raw
  grep ' imgfuse$' srv/span.log > req.log
  cat req.log
  echo "GETs: $(wc -l < req.log), of several chunks: $(awk '$3 > 262144' req.log | wc -l), in flight at most: $(max_in_flight req.log)"
  # the 96 chunks of 256 KiB were asked in fewer GETs (readahead GETs span up to 4 chunks), many at once
  [ "$(wc -l < req.log)" -le 64 ]
  [ "$(awk '$3 > 262144' req.log | wc -l)" -ge 16 ]
  [ "$(max_in_flight req.log)" -ge 8 ]
}

# started_at LOG OFFSET: when the GET of the byte at OFFSET started, by a "$msec $request_time $bytes
# bytes=A-B" log (ms).
started_at() {
  awk -v o="$2" '{ split(substr($4, 7), r, "-") } r[1] <= o + 0 && o + 0 <= r[2] { printf "%.0f\n", ($1 - $2) * 1000 }' "$1" | head -1
}

@test "info of a qcow2 on a server reads what it needs and little more, each read's missing chunks in one round" {
  mkdir www
  qemu-img create -q -f qcow2 www/d.qcow2 64M
  qio www/d.qcow2 'write -P 0x11 0 24M'
  local port; port=$(free_port)
  start_slow_nginx srv "$port" "$TMP/www" 0.1
  run "$IMGFUSE" info "http://127.0.0.1:$port/d.qcow2"
  [ "$status" -eq 0 ]
  grep -q "virtual_size: 67108864 " <<< "$output"
  grep ' imgfuse$' srv/span.log > req.log
  cat req.log
  echo "bytes: $(awk '{ n += $3 } END { print n + 0 }' req.log)"
  # info reads the header, refcount table, L1 and L2 (the first two chunks) and the guest's first MiB (its
  # partition probe, file bytes 320 KiB to 1.3 MiB): 6 chunks, and a readahead window of two more at most
  # (it was 19 chunks when every read within the first chunk grew the window)
  [ "$(awk '{ n += $3 } END { print n + 0 }' req.log)" -le $((8 * 262144)) ]
  # the 1 MiB probe's missing chunks (3 to 5) are asked in one round, not a chunk or two per round trip
  local a b; a=$(started_at req.log 786432); b=$(started_at req.log 1310720)
  echo "chunk 3 asked at $a ms, chunk 5 at $b ms"
  [ -n "$a" ] && [ -n "$b" ] && [ $((b - a)) -lt 50 ] && [ $((a - b)) -lt 50 ]
}

@test "the partition probe of a remote disk asks its first and its last MiB at once" {
  mkdir www
  head -c 64M /dev/urandom > www/d.raw
  local port; port=$(free_port)
  start_slow_nginx srv "$port" "$TMP/www" 0.1
  run "$IMGFUSE" info -f raw "http://127.0.0.1:$port/d.raw"
  [ "$status" -eq 0 ]
  grep ' imgfuse$' srv/span.log > req.log
  cat req.log
  # the open's GET has the first chunk (and the format probe the last); the partition probe then asks the
  # rest of the first MiB and the last MiB together
  local a b; a=$(started_at req.log 262144); b=$(started_at req.log $((63 * 1048576)))
  echo "the first MiB's second chunk asked at $a ms, the last MiB's first at $b ms"
  [ -n "$a" ] && [ -n "$b" ] && [ $((b - a)) -lt 50 ] && [ $((a - b)) -lt 50 ]
}
