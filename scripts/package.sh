#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks what it holds (dpkg-deb -c).
#   scripts/package.sh             build target/debian/rtmp-relay_*.deb and check its contents
#   INSTALL=1 scripts/package.sh   ... then install it with dpkg and check the installed config
# cargo-deb is installed with `cargo install cargo-deb --locked` when missing: that compiles
# it from source (about 12 minutes on a busy 2-core machine), so CI runs this script only
# when RTMP_RELAY_PACKAGE=1 (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb"
    cargo install cargo-deb --locked
fi
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed (Debian's dpkg package)" >&2; exit 1; }

echo "== cargo build --release"
cargo build --release --locked -p rtmp-relay --bin rtmp-relay
bin=target/release/rtmp-relay
# The packaged default config must be the one this binary generates.
if ! "$bin" default-config | diff -u packaging/rtmp-relay.toml -; then
    echo "packaging/rtmp-relay.toml is out of date: $bin default-config > packaging/rtmp-relay.toml" >&2
    exit 1
fi
"$bin" check-config packaging/rtmp-relay.toml >/dev/null
mkdir -p target/package
"$bin" --help > target/package/rtmp-relay.help.txt

echo "== cargo deb"
rm -rf target/debian
cargo deb --no-build --locked -p rtmp-relay --output target/debian/
deb=$(ls target/debian/rtmp-relay_*.deb)
echo "built $deb"

echo "== dpkg-deb -c"
dpkg-deb -c "$deb" | tee target/package/contents.txt
missing=0
for path in ./usr/bin/rtmp-relay \
    ./etc/rtmp-relay/rtmp-relay.toml \
    ./usr/share/doc/rtmp-relay/README.md \
    ./usr/share/doc/rtmp-relay/rtmp-relay.help.txt \
    ./usr/share/rtmp-relay/grafana-dashboard.json; do
    if ! awk '{print $6}' target/package/contents.txt | grep -qx "$path"; then
        echo "missing from the package: $path" >&2
        missing=1
    fi
done
# The unit goes to /lib or /usr/lib depending on the cargo-deb version.
if ! awk '{print $6}' target/package/contents.txt | grep -Eq '^\./(usr/)?lib/systemd/system/rtmp-relay\.service$'; then
    echo "missing from the package: the systemd unit" >&2
    missing=1
fi
dpkg-deb -f "$deb" Package Version Depends
dpkg-deb -e "$deb" target/package/control
grep -qx /etc/rtmp-relay/rtmp-relay.toml target/package/control/conffiles \
    || { echo "the config is not a conffile" >&2; missing=1; }
grep -q adduser target/package/control/postinst \
    || { echo "the postinst does not create the user" >&2; missing=1; }
grep -q 'rtmp-relay.service' target/package/control/postinst \
    || { echo "the postinst does not enable the unit" >&2; missing=1; }
[ "$missing" -eq 0 ] || exit 1
echo "== package contents ok"

if [ "${INSTALL:-0}" = 1 ]; then
    echo "== dpkg -i"
    DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" || apt-get install -f -y -qq
    getent passwd rtmp-relay >/dev/null || { echo "no rtmp-relay user" >&2; exit 1; }
    [ -d /var/lib/rtmp-relay/recordings ] || { echo "no record directory" >&2; exit 1; }
    /usr/bin/rtmp-relay check-config /etc/rtmp-relay/rtmp-relay.toml >/dev/null
    echo "== installed ok"
fi
