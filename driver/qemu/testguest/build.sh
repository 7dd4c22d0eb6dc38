#!/usr/bin/env bash
# build.sh OUTDIR: builds the QEMU driver's test guest into OUTDIR:
#
#   OUTDIR/vmlinuz    the kernel linux-image-amd64 depends on (Debian's)
#   OUTDIR/vmlinux    the same kernel uncompressed, for QEMU to boot through
#                     its PVH entry: Debian's vmlinuz is xz-compressed, and
#                     decompressing it under TCG takes half the boot (about
#                     12 s to the first tick against 6 s here)
#   OUTDIR/initrd.gz  busybox, the kernel modules the guest needs, /init
#                     (./init) and the guest program (./guest)
#   OUTDIR/stamp      what they were built from
#
# Everything comes from Debian packages (apt-get download) and this
# directory. A second run with the same kernel, busybox, Go and sources
# does nothing; the kernel part is kept in OUTDIR/kernel and reused while
# the kernel does not change. Concurrent runs on one OUTDIR take turns
# (flock on OUTDIR/.lock).
#
# Exit status 3 means this machine cannot build the guest (not Debian, no
# package lists, no network, Go missing): testguest.Build skips the test
# then. As root, missing package lists are fetched with apt-get update.
# Root is not needed otherwise. GO names the go command (default: go).
set -euo pipefail
trap 'echo "build.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GO=${GO:-go}
# The kernel modules the guest loads at boot (/etc/haven-modules, for
# ./init), which Debian's kernel does not have built in: the watchdog, and
# virtio PCI, SCSI and block with the SCSI disk driver, so that disks
# hot-added on a virtio-scsi controller or a PCIe root port appear.
modules="i6300esb virtio_pci virtio_scsi sd_mod virtio_blk"

unavailable() {
	echo "build.sh: cannot build the test guest here: $*" >&2
	exit 3
}

mkdir -p "$1"
out=$(cd "$1" && pwd)
exec 9>"$out/.lock"
flock 9

for c in apt-get apt-cache dpkg-deb dpkg-query; do
	command -v "$c" >/dev/null || unavailable "no $c (a Debian machine is needed)"
done
command -v "$GO" >/dev/null || unavailable "no $GO (Go) on PATH"

# The kernel: the package Debian's linux-image-amd64 depends on now (the
# meta package pins its exact version). One apt-cache call: each takes a
# second where apt keeps no binary cache, as in Debian's container images.
versions() {
	apt-cache show --no-all-versions linux-image-amd64 busybox-static 2>/dev/null | awk '
		$1 == "Package:" { pkg = $2 }
		$1 == "Version:" && pkg == "busybox-static" { bb = $2 }
		$1 == "Depends:" && pkg == "linux-image-amd64" {
			for (i = 2; i < NF; i++) if ($i ~ /^linux-image-/ && $(i + 1) == "(=") { k = $i; v = $(i + 2); sub(/[),]+$/, "", v) }
		}
		END { if (k != "" && bb != "") print k, v, bb }'
}
read -r kpkg kver bbver < <(versions) || true
if [ -z "${kpkg:-}" ] && [ "$(id -u)" = 0 ]; then
	echo "build.sh: no package lists: running apt-get update"
	apt-get update -qq || unavailable "apt-get update failed"
	read -r kpkg kver bbver < <(versions) || true
fi
[ -n "${kpkg:-}" ] || unavailable "apt-cache does not know linux-image-amd64 and busybox-static (run apt-get update as root)"

# Busybox: the installed busybox-static, or the candidate downloaded.
bb_installed=""
if [ "$(dpkg-query -W -f '${db:Status-Status}' busybox-static 2>/dev/null)" = installed ]; then
	bb_installed=/bin/busybox
	bbver=$(dpkg-query -W -f '${Version}' busybox-static)
fi

# The guest's sources, by content (names relative to this directory).
src=$(
	cd "$here"
	{
		find guest -name '*.go' ! -name '*_test.go' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
		sha256sum build.sh init
		# The module's requirements: the guest imports golang.org/x/sys.
		sha256sum <"$("$GO" env GOMOD)"
	} | sha256sum | cut -d' ' -f1
)
stamp="kernel $kpkg $kver
busybox-static $bbver
go $("$GO" env GOVERSION)
source $src"

if [ -f "$out/vmlinuz" ] && [ -f "$out/vmlinux" ] && [ -f "$out/initrd.gz" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "build.sh: $out is up to date ($kpkg $kver)"
	exit 0
fi

tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# download PKG=VERSION into $tmp/deb and unpacks it into $tmp/$2.
# As root apt-get would download as the user _apt, which cannot write to
# this root-only directory.
download() {
	mkdir -p "$tmp/deb" "$tmp/$2"
	(cd "$tmp/deb" && apt-get download -qq -o APT::Sandbox::User=root "$1") ||
		unavailable "apt-get download $1 failed"
	dpkg-deb -x "$tmp/deb/${1%%=*}"_*.deb "$tmp/$2"
}

if [ -n "$bb_installed" ]; then
	busybox=$bb_installed
else
	echo "build.sh: downloading busybox-static $bbver"
	download "busybox-static=$bbver" busybox
	busybox=$tmp/busybox/bin/busybox
fi

# The kernel part, $out/kernel: vmlinuz, vmlinux, and the modules the
# guest loads with all they depend on, under lib/modules/<release>.
kstamp="$kpkg $kver $modules"
if [ "$(cat "$out/kernel/stamp" 2>/dev/null)" != "$kstamp" ]; then
	echo "build.sh: downloading $kpkg $kver"
	download "$kpkg=$kver" kpkg
	mods=""
	for d in "$tmp/kpkg/lib/modules"/* "$tmp/kpkg/usr/lib/modules"/*; do
		if [ -d "$d" ]; then
			mods=$d
			break
		fi
	done
	[ -n "$mods" ] || { echo "build.sh: no lib/modules in $kpkg" >&2; exit 1; }
	release=$(basename "$mods")
	# Debian generates modules.dep at install time; busybox's depmod does
	# it here for the whole tree, which gives the dependencies.
	"$busybox" depmod -b "$tmp/kpkg" "$release"
	k=$tmp/kernel
	mkdir -p "$k/lib/modules/$release"
	for m in $modules; do
		line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$mods/modules.dep") ||
			{ echo "build.sh: module $m is not in $kpkg" >&2; exit 1; }
		for f in ${line/:/}; do
			mkdir -p "$k/lib/modules/$release/$(dirname "$f")"
			cp "$mods/$f" "$k/lib/modules/$release/$f"
		done
	done
	"$busybox" depmod -b "$k" "$release"
	cp "$tmp/kpkg/boot/vmlinuz-$release" "$k/vmlinuz"
	# vmlinuz is a boot stub followed by the xz stream of vmlinux.
	if ! xz=$(command -v xz); then
		echo "build.sh: downloading xz-utils"
		download xz-utils xz
		xz=$tmp/xz/usr/bin/xz
	fi
	off=$(LC_ALL=C grep -obUaP -m1 '\xfd7zXZ\x00' "$k/vmlinuz" | awk -F: 'NR == 1 { print $1 }')
	[ -n "$off" ] || { echo "build.sh: no xz stream in vmlinuz-$release" >&2; exit 1; }
	# Through a file: xz stops reading at the end of the stream, which
	# would fail a pipe from tail (SIGPIPE, under pipefail).
	tail -c +$((off + 1)) "$k/vmlinuz" >"$tmp/vmlinux.xz"
	"$xz" -dc --single-stream "$tmp/vmlinux.xz" >"$k/vmlinux"
	[ "$(head -c 4 "$k/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
		{ echo "build.sh: vmlinuz-$release did not hold an ELF vmlinux" >&2; exit 1; }
	echo "$kstamp" >"$k/stamp"
	rm -rf "$out/kernel"
	mv "$k" "$out/kernel"
fi

# The initramfs.
root=$tmp/root
mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/lib"
ln -s bin "$root/sbin" # the kernel runs /sbin/modprobe to load modules
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
cp -r "$out/kernel/lib/modules" "$root/lib/modules"
mkdir "$root/etc"
echo "$modules" >"$root/etc/haven-modules"
install -m 0755 "$here/init" "$root/init"
echo "build.sh: building the guest program"
# Static (no cgo), for the guest's bare userland. No -trimpath: the
# build then reuses what other builds left in the build cache (0.7 s
# after a plain go build of ./guest; with -trimpath, 26 s).
(cd "$here" && env GOFLAGS= CGO_ENABLED=0 GOOS=linux GOARCH=amd64 \
	"$GO" build -ldflags='-s -w' -o "$root/bin/haven-guest" ./guest)
# cpio reports the blocks it wrote on stderr: shown only when it fails.
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>"$tmp/cpio.err") |
	gzip -9 -n >"$tmp/initrd.gz" || { cat "$tmp/cpio.err" >&2; exit 1; }

echo "$stamp" >"$tmp/stamp"
# No stamp while the files change, the new one last: an interrupted run
# leaves none, and the next run builds again.
rm -f "$out/stamp"
# Links to the kernel part, not copies (vmlinux is 60 MiB): made again
# only when the kernel changed.
for f in vmlinuz vmlinux; do
	if ! [ "$out/kernel/$f" -ef "$out/$f" ]; then
		ln "$out/kernel/$f" "$tmp/$f"
		mv "$tmp/$f" "$out/$f"
	fi
done
mv "$tmp/initrd.gz" "$out/initrd.gz"
mv "$tmp/stamp" "$out/stamp"
echo "build.sh: built $out/vmlinux and $out/initrd.gz ($kpkg $kver, initrd $(($(stat -c %s "$out/initrd.gz") / 1024)) KiB)"
