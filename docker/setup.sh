#!/bin/sh
# Makes the compose cluster's secrets, once, in the secrets volume: the schedulers' token
# table (hashes only), the admin, client and worker tokens, the S3 server's keys with an
# AWS credentials file for the schedulers and workers, and a private CA with the
# certificates of etcd, the schedulers, the workers and a client (tls/). Nothing here is
# committed or passed through the environment. Run again, it keeps what is there.
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

# TLS between every process: a CA, and certificates (P-256) for etcd (server and peer), the
# schedulers (server, and client of etcd), the workers and clients (client).
tls="$dir/tls"
rm -rf "$tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=baton compose CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
issue() { # NAME SUBJECT_ALT_NAMES EXTENDED_KEY_USAGE
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$tls/$1.key" -out "$tls/$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$2" "$3" \
    > "$tls/$1.ext"
  openssl x509 -req -in "$tls/$1.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 825 -extfile "$tls/$1.ext" -out "$tls/$1.pem" 2>/dev/null
  rm -f "$tls/$1.csr" "$tls/$1.ext"
}
local_names="DNS:localhost,IP:127.0.0.1"
issue etcd "DNS:etcd1,DNS:etcd2,DNS:etcd3,$local_names" serverAuth,clientAuth
issue scheduler "DNS:scheduler1,DNS:scheduler2,DNS:scheduler3,$local_names" serverAuth,clientAuth
issue worker "DNS:worker" clientAuth
issue client "DNS:client" clientAuth
rm -f "$tls/ca.key" "$tls/ca.srl"

mv "$dir/tokens.new" "$dir/tokens"
echo "baton secrets: made (admin token in $dir/admin.token)"
