#!/bin/bash
# Cost of authentication: FindMissingBlobs latency and Execute throughput
# with no auth, with a bearer token and with mTLS, in rotation.
#   BIN=DIR (where memobuild and memobuild-loadtest are; default target/release)
#   SMALL=1 one-digest FindMissingBlobs calls from one client, no Execute
set -u
T=${BIN:-target/release}
T=$(cd "$T" && pwd)
LT=$T/memobuild-loadtest
MB=$T/memobuild
D=$(mktemp -d)
cd $D
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench ca" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=keyCertSign" 2>/dev/null
for n in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj "/CN=$n" 2>/dev/null
done
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" > s.ext
printf "extendedKeyUsage=clientAuth\n" > c.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile s.ext 2>/dev/null
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile c.ext 2>/dev/null
H=$(printf %s benchtoken | sha256sum | cut -d' ' -f1)
cat > principals.toml <<P
[[token]]
principal = "bench"
sha256 = "$H"
capabilities = ["admin"]
[[certificate]]
name = "client"
principal = "bench-cert"
capabilities = ["admin"]
P
run() { # mode round
  mode=$1; r=$2; S=$D/state-$mode-$r; mkdir -p $S
  extra=(); env=(); ep=grpc://127.0.0.1:37377
  case $mode in
    token) extra=(--principals-file $D/principals.toml); env=(MEMOBUILD_TOKEN=benchtoken);;
    mtls) extra=(--principals-file $D/principals.toml --tls-cert $D/server.pem --tls-key $D/server.key --tls-client-ca $D/ca.pem)
          env=(MEMOBUILD_TLS_CA=$D/ca.pem MEMOBUILD_TLS_CLIENT_CERT=$D/client.pem MEMOBUILD_TLS_CLIENT_KEY=$D/client.key); ep=grpcs://localhost:37377;;
  esac
  $MB server --listen 127.0.0.1:37377 --state-dir $S "${extra[@]}" 2>$S.log &
  PID=$!
  sleep 1.5
  if [ "${SMALL:-0}" = 1 ]; then
    fm=$(env "${env[@]}" $LT find-missing --endpoint $ep --digests 1 --requests 5000 --concurrency 1 --json 2>>$S.lt)
    ex=null
  else
    fm=$(env "${env[@]}" $LT find-missing --endpoint $ep --digests 1000 --requests 3000 --concurrency 16 --json 2>>$S.lt)
    ex=$(env "${env[@]}" $LT execute --endpoint $ep --actions 300 --concurrency 32 --skip-cache-lookup --json 2>>$S.lt)
  fi
  kill $PID; wait $PID 2>/dev/null
  echo "{\"mode\":\"$mode\",\"round\":$r,\"find_missing\":$fm,\"execute\":$ex}"
}
for r in $(seq ${ROUNDS:-3}); do for m in none token mtls; do run $m $r; done; done
rm -rf $D
