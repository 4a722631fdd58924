# Sourced by init: the python end-to-end suites named in dw.suites (e2e_nft's cases) on this
# guest's kernel. The host's root, shared read only over virtio-9p, is the lower layer of an
# overlay whose upper layer is a tmpfs, so the suites run on Debian's userland unchanged and
# may write (/tmp, useradd) without touching the host. Each case prints one DWVM line.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose host /host
mkdir -p /upper && mount -t tmpfs tmpfs /upper && mkdir -p /upper/u /upper/w
if ! mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /sysroot; then
  check e2e_root_mounted fail "overlay over 9p"
  return 1
fi
for d in proc sys dev dev/pts run; do umount /sysroot/$d 2>/dev/null; done
mount -t proc proc /sysroot/proc
mount -t sysfs sys /sysroot/sys
mount --bind /dev /sysroot/dev
mount --bind /dev/pts /sysroot/dev/pts
# /tmp stays the overlay's (writable, in its tmpfs upper layer): a tmpfs of its own would
# hide a checkout that lives under /tmp, as a CI clone does.
mount -t tmpfs tmpfs /sysroot/run
ip link set lo up
chroot /sysroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  DNSWARD_BIN="$dw_bin" /usr/bin/python3 "$dw_root/test/vm/guest/run_e2e.py" \
  "$dw_root/test/e2e" $(echo "$dw_suites" | tr , ' ')
