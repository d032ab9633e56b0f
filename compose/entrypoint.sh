#!/bin/sh
# The image's entrypoint. The container starts as root only for this: regproxy itself runs as
# uid 10001 (user regproxy) keeping two capabilities, NET_BIND_SERVICE (ports below 1024) and
# DAC_READ_SEARCH, which reads any file and writes none, so the recipe's root-owned 0600
# domain.key is readable, also when it is replaced later (TLS files reload live). Nothing else:
# no other capability, no way back to root (no_new_privs, bounding set), no supplementary groups.
# Started with `--user` (not root), it runs regproxy as that user and the files must be readable
# by it; without DAC_READ_SEARCH in the container (docker run without --cap-add), it says so.
set -eu
uid=10001
if [ "$(id -u)" != 0 ]; then
  exec regproxy "$@"
fi
caps=+net_bind_service
bounding=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
if [ $(( 0x$bounding >> 2 & 1 )) = 1 ]; then  # bit 2: CAP_DAC_READ_SEARCH
  caps=$caps,+dac_read_search
else
  echo "regproxy-entrypoint: no CAP_DAC_READ_SEARCH (add it: cap_add: [DAC_READ_SEARCH]);" \
    "every file must be readable by uid $uid" >&2
fi
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
  --inh-caps="-all,$caps" --ambient-caps="-all,$caps" --bounding-set="-all,$caps" \
  regproxy "$@"
