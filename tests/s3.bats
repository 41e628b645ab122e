#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# s3.bats - images in S3 buckets (the s3 protocol driver, drivers/curl.c: libcurl's AWS SigV4 signing)
# against a real radosgw: tests/tools/ceph-cluster starts a single-node Ceph cluster on 127.0.0.1 for the
# file (about a minute) and stops it at the end; objects are put with curl's own SigV4. qcow2, vmdk and
# vhdx objects read like `qemu-img convert -O raw` of the local file through --s3-endpoint (path-style);
# a remote image's relative backing name resolves in the same bucket; a local qcow2 overlay over an s3
# base (--backing URL) takes writes that qemu-img checks; credentials come from the AWS environment
# variables or the credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE); wrong or missing
# credentials are exit 2 in one line, and the secret key appears in no message, info, info.json, audit
# log or daemon log.

load helpers

setup_file() { ceph_start; }
teardown_file() { ceph_stop; }

setup() {
  setup_tmp; cd "$TMP"
  # shellcheck disable=SC1091
  . "$CEPH_DIR/env"
  unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_SHARED_CREDENTIALS_FILE
  export AWS_REGION=us-east-1
  BUCKET=b$(date +%s%N | tail -c 10)
  s3_call -X PUT "$S3_ENDPOINT/$BUCKET"
}
teardown() { teardown_servers; }

# s3_call CURL-ARGS...: a request signed with the test user's keys (curl's own SigV4, an unsigned payload).
s3_call() {
  curl -sSf --aws-sigv4 "aws:amz:us-east-1:s3" -u "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o /dev/null "$@"
}
s3_put() { s3_call -T "$1" "$S3_ENDPOINT/$BUCKET/$2"; }

with_keys() { AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY "$@"; }

@test "qcow2, vmdk and vhdx objects read like qemu-img convert of the local file (--s3-endpoint, path-style)" {
  format_trio
  local f
  for f in d.qcow2 d.vmdk d.vhdx; do
    s3_put "$f" "img/$f"
    with_keys reads_like "$f" --s3-endpoint "$S3_ENDPOINT" "s3://$BUCKET/img/$f"
  done
  with_keys "$IMGFUSE" convert -q --s3-endpoint "$S3_ENDPOINT" -O raw "s3://$BUCKET/img/d.vmdk" conv.raw
  same_bytes conv.raw "$(raw_of d.qcow2)"
  # -o s3.endpoint= is the same option
  run with_keys "$IMGFUSE" hash -o x "s3://$BUCKET/img/d.qcow2"
  [ "$status" -eq 2 ]
  with_keys reads_like d.qcow2 -o "s3.endpoint=$S3_ENDPOINT" "s3://$BUCKET/img/d.qcow2"
}

@test "a relative backing name resolves in the same bucket; a local overlay over an s3 base takes writes" {
  qemu-img create -q -f qcow2 base.qcow2 32M
  qio base.qcow2 'write -P 0x55 0 32M'
  qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
  qio top.qcow2 'write -P 0x66 1M 1M'
  s3_put base.qcow2 dir/base.qcow2
  s3_put top.qcow2 dir/top.qcow2
  with_keys mount_img --s3-endpoint "$S3_ENDPOINT" "s3://$BUCKET/dir/top.qcow2"
  same_bytes "$MNT/disk.raw" "$(raw_of top.qcow2)"
  grep -q "s3://$BUCKET/dir/base.qcow2" "$MNT/info"
  unmount_img
  qemu-img create -q -f qcow2 -b "$TMP/base.qcow2" -F qcow2 ov.qcow2
  with_keys overlay_takes_writes "s3://$BUCKET/dir/base.qcow2" --s3-endpoint "$S3_ENDPOINT"
}

@test "credentials from the credentials file; wrong or missing credentials are exit 2 in one line; the secret is never shown" {
  qemu-img create -q -f qcow2 d.qcow2 8M
  qio d.qcow2 'write -P 0x5e 0 1M'
  s3_put d.qcow2 d.qcow2
  local url="s3://$BUCKET/d.qcow2"
  printf '[default]\naws_access_key_id = nobody\naws_secret_access_key = nothing\n\n[rgw]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
    "$S3_ACCESS_KEY" "$S3_SECRET_KEY" > creds
  AWS_SHARED_CREDENTIALS_FILE=$TMP/creds AWS_PROFILE=rgw mount_img --debug --audit-log "$TMP/audit.log" \
    --s3-endpoint "$S3_ENDPOINT" "$url"
  same_bytes "$MNT/disk.raw" "$(raw_of d.qcow2)"
  cat "$MNT/info" "$MNT/info.json" > shown-info
  unmount_img
  run grep -F -e "$S3_SECRET_KEY" shown-info "$TMP/audit.log" "$TMP/daemon.log"
  [ "$status" -eq 1 ]
  grep -q "image: $url" shown-info
  # the default profile's keys are wrong
  run env AWS_SHARED_CREDENTIALS_FILE="$TMP/creds" "$IMGFUSE" info --s3-endpoint "$S3_ENDPOINT" "$url"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $url: access denied (HTTP 403): wrong credentials, or no right to read the object" ]
  run env AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="x$S3_SECRET_KEY" "$IMGFUSE" --audit-log "$TMP/a2.log" \
    --s3-endpoint "$S3_ENDPOINT" "$url" "$MNT"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $url: access denied (HTTP 403): wrong credentials, or no right to read the object" ]
  run grep -F -e "$S3_SECRET_KEY" "$TMP/a2.log"
  [ "$status" -ne 0 ]
  run env HOME="$TMP" "$IMGFUSE" info --s3-endpoint "$S3_ENDPOINT" "$url"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $url: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them in ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE)" ]
  run with_keys "$IMGFUSE" info --s3-endpoint "$S3_ENDPOINT" "s3://$BUCKET/missing.qcow2"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: s3://$BUCKET/missing.qcow2: not found on the server (HTTP 404)" ]
  run with_keys "$IMGFUSE" info --s3-endpoint "ftp://127.0.0.1/" "$url"
  [ "$status" -eq 2 ]
  [ "$output" = "imgfuse: $url: --s3-endpoint 'ftp://127.0.0.1/': not an http:// or https:// URL" ]
}
