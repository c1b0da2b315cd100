#!/usr/bin/env bash
# The install step of the compose stack (deploy/compose.yaml): makes every secret it reads, in
# deploy/secrets/ (git ignores it; the folder is 0700, so no other user of the host can read what is in it):
#   postgres-password            PostgreSQL's telgate user (PostgreSQL and telgate)
#   telgate-api-token            the bearer token of telgate's admin listener (/metrics, /readyz, the read API)
#   mqtt-<user>-password         one per MQTT user: telgate (the gateways), backend, and each --mqtt-user
#   mosquitto-passwd             Mosquitto's password file: those users, hashed by mosquitto_passwd
#   mqtt-ca.crt, mqtt-ca.key     a CA of its own (the key stays here, 0600; the certificate goes to clients)
#   mosquitto.crt, mosquitto.key the broker's TLS certificate, signed by that CA, for the names
#                                mosquitto, localhost, 127.0.0.1 and each --mqtt-host
#   influxdb-admin-password, influxdb-telgate-password (writes), influxdb-grafana-password (reads)
#   grafana-admin-password       Grafana's user admin
# Passwords are 192 random bits in hex (openssl rand), written without a newline; none is ever printed.
#
# Usage: deploy/init-secrets.sh [--dir DIR] [--mqtt-user NAME]... [--mqtt-host NAME]... [--days N]
#   --dir DIR        where to write (default: deploy/secrets beside this script)
#   --mqtt-user NAME one more MQTT user, e.g. a tenant's backend (docs/deploy.md, "Tenants")
#   --mqtt-host NAME one more name (or IP address) in the broker's certificate: the host name backends on
#                    other machines connect to. Given, the broker's certificate is made anew.
#   --days N         validity of the broker's certificate (default 825; the CA's is 3650)
# Run again, it keeps every file that exists and makes what is missing; mosquitto-passwd is made anew each
# time from the mqtt-*-password files. To change a secret, delete its file and run it again (PostgreSQL,
# InfluxDB and Grafana take their password only when their volume is new: see docs/deploy.md).
# Needs openssl, and mosquitto_passwd (package mosquitto) or docker to run it from eclipse-mosquitto:2.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$here/secrets"
users=(telgate backend)
hosts=()
days=825

die() { printf 'init-secrets: %s\n' "$*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || die "--dir needs a folder"; dir="$2"; shift 2 ;;
    --mqtt-user) [ $# -ge 2 ] || die "--mqtt-user needs a name"; users+=("$2"); shift 2 ;;
    --mqtt-host) [ $# -ge 2 ] || die "--mqtt-host needs a name"; hosts+=("$2"); shift 2 ;;
    --days) [ $# -ge 2 ] || die "--days needs a number"; days="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$days" =~ ^[0-9]+$ ]] || die "--days: not a number: $days"
for u in "${users[@]}"; do
  # a user name is also a topic level in the ACL's %u patterns: no wildcards, no slashes, no ':'
  [[ "$u" =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "--mqtt-user: letters, digits, '.', '_' and '-' only: $u"
done
for h in "${hosts[@]}"; do
  [[ "$h" =~ ^[A-Za-z0-9.:-]{1,253}$ ]] || die "--mqtt-host: not a host name or an IP address: $h"
done
command -v openssl >/dev/null || die "openssl is not installed"

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
made=()
kept=()

# readable by the containers' own users (postgres, telgate uid 10001, mosquitto, nobody, grafana): the
# files are 0644 inside a 0700 folder, which Docker's bind mount of each secret passes by
shared() { chmod 644 "$dir/$1"; }

random_secret() {  # NAME: a random password in NAME unless it exists
  local name="$1" tmp
  if [ -s "$dir/$name" ]; then
    kept+=("$name")
  else
    tmp="$(mktemp "$dir/.$name.XXXXXX")"
    openssl rand -hex 24 | tr -d '\n' >"$tmp"
    mv "$tmp" "$dir/$name"
    made+=("$name")
  fi
  shared "$name"
}

# PostgreSQL: an installation made before this script kept its password in deploy/postgres/password, and
# its volume knows only that one
if [ ! -s "$dir/postgres-password" ] && [ -s "$here/postgres/password" ] && [ "$dir" = "$here/secrets" ]; then
  tr -d '\n' <"$here/postgres/password" >"$dir/postgres-password"
fi
random_secret postgres-password
random_secret telgate-api-token
random_secret influxdb-admin-password
random_secret influxdb-telgate-password
random_secret influxdb-grafana-password
random_secret grafana-admin-password

# MQTT: the users asked for and those of an earlier run
for f in "$dir"/mqtt-*-password; do
  [ -e "$f" ] || continue
  u="${f##*/mqtt-}"
  users+=("${u%-password}")
done
mapfile -t users < <(printf '%s\n' "${users[@]}" | sort -u)
for u in "${users[@]}"; do
  random_secret "mqtt-$u-password"
done
# the password file: plain `user:password` lines (never on a command line), hashed in place by
# mosquitto_passwd -U (PBKDF2-SHA512), then moved into place
plain="$(mktemp "$dir/.mosquitto-passwd.XXXXXX")"
trap 'rm -f "$plain"' EXIT
for u in "${users[@]}"; do
  printf '%s:%s\n' "$u" "$(cat "$dir/mqtt-$u-password")" >>"$plain"
done
if command -v mosquitto_passwd >/dev/null || [ -x /usr/bin/mosquitto_passwd ]; then
  "$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)" -U "$plain"
elif command -v docker >/dev/null; then
  docker run --rm -v "$dir:/secrets" eclipse-mosquitto:2 mosquitto_passwd -U "/secrets/${plain##*/}"
else
  die "neither mosquitto_passwd (apt-get install mosquitto) nor docker is installed"
fi
if grep -qv '^[^:]*:\$[0-9]*\$' "$plain"; then
  die "mosquitto_passwd left a password unhashed"
fi
mv "$plain" "$dir/mosquitto-passwd"
trap - EXIT
shared mosquitto-passwd
made+=(mosquitto-passwd)

# TLS: a CA of the stack's own and the broker's certificate
if [ ! -s "$dir/mqtt-ca.crt" ] || [ ! -s "$dir/mqtt-ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
    -keyout "$dir/mqtt-ca.key" -out "$dir/mqtt-ca.crt" -subj "/CN=telgate MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  rm -f "$dir/mosquitto.crt"  # signed by a CA that is gone
  made+=(mqtt-ca.crt mqtt-ca.key)
else
  kept+=(mqtt-ca.crt mqtt-ca.key)
fi
chmod 600 "$dir/mqtt-ca.key"
shared mqtt-ca.crt
if [ ! -s "$dir/mosquitto.crt" ] || [ ! -s "$dir/mosquitto.key" ] || [ ${#hosts[@]} -gt 0 ]; then
  san="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"
  for h in "${hosts[@]}"; do
    if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
  done
  ext="$(mktemp "$dir/.ext.XXXXXX")"
  csr="$(mktemp "$dir/.csr.XXXXXX")"
  printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -keyout "$dir/mosquitto.key" -out "$csr" -subj "/CN=mosquitto" 2>/dev/null
  openssl x509 -req -in "$csr" -CA "$dir/mqtt-ca.crt" -CAkey "$dir/mqtt-ca.key" -sha256 -days "$days" \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$ext" -out "$dir/mosquitto.crt" 2>/dev/null
  rm -f "$ext" "$csr"
  made+=(mosquitto.crt mosquitto.key)
else
  kept+=(mosquitto.crt mosquitto.key)
fi
shared mosquitto.crt
shared mosquitto.key  # the broker drops to its own user before it reads it

printf 'init-secrets: in %s\n' "$dir"
[ ${#made[@]} -eq 0 ] || printf '  made: %s\n' "${made[*]}"
[ ${#kept[@]} -eq 0 ] || printf '  kept: %s\n' "${kept[*]}"
printf '  MQTT users: %s\n' "${users[*]}"
