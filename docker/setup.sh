#!/bin/sh
# Makes the compose cluster's secrets, once, in the secrets volume: the schedulers' token
# table (hashes only), the admin, client and worker tokens, and the S3 server's keys with
# an AWS credentials file for the schedulers and workers. Nothing here is committed or
# passed through the environment. Run again, it keeps what is there.
set -eu
dir=${BATON_SECRETS_DIR:-/var/lib/baton/secrets}
umask 077
if [ -s "$dir/tokens" ]; then
  echo "baton secrets: already made, kept"
  exit 0
fi
rand() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
rm -f "$dir/tokens.new"
baton token new --role admin --name admin --append "$dir/tokens.new" > "$dir/admin.token"
baton token new --role client --name client --append "$dir/tokens.new" > "$dir/client.token"
# Workers may take any id (one token for every replica of a scaled worker service).
baton token new --role worker --name '*' --append "$dir/tokens.new" > "$dir/worker.token"
key=$(rand)
secret=$(rand)
printf '%s' "$key" > "$dir/s3-access-key"
printf '%s' "$secret" > "$dir/s3-secret-key"
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key" "$secret" \
  > "$dir/aws-credentials"
mv "$dir/tokens.new" "$dir/tokens"
echo "baton secrets: made (admin token in $dir/admin.token)"
