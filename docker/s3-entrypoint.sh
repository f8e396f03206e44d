#!/bin/sh
# The S3 server of the compose cluster: s3s-fs over /var/lib/baton/s3, with the bucket
# (a folder) created at start and the keys read from the secrets volume, so that they are
# not in the container's configuration (`docker inspect`).
set -eu
data=/var/lib/baton/s3
secrets=${BATON_SECRETS_DIR:-/var/lib/baton/secrets}
mkdir -p "$data/${BATON_S3_BUCKET:-baton}"
exec s3s-fs --host 0.0.0.0 --port 9000 \
  --access-key "$(cat "$secrets/s3-access-key")" \
  --secret-key "$(cat "$secrets/s3-secret-key")" \
  "$data"
